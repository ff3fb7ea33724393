"""The ``tidings`` command. Each sub-command group lives in its own module."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from tidings import __version__
from tidings.cli import demo, events, keys, platform, receiver, serve, simulate, worker
from tidings.cli.errors import CliError

app = typer.Typer(
    name="tidings",
    help="tidings: a conversations webhook platform and its receiver.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(asked: bool) -> None:
    if asked:
        print(f"tidings {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version of tidings and exit.")] = False,
) -> None:
    """tidings: a conversations webhook platform and its receiver."""


app.add_typer(keys.app, name="keys")
app.add_typer(events.app, name="event")
app.add_typer(receiver.app, name="receiver")
app.command("receive")(receiver.receive_command)
platform.mount(app)
app.command("demo", help="Run the platform, a receiver and simulated traffic on an embedded SQLite.")(demo.demo_command)
app.command("serve", help="Serve the platform: the /v2 API, the dashboard and a dispatcher.")(serve.serve_command)
app.command("worker", help="Deliver webhooks from the database, alone; several can share one PostgreSQL.")(
    worker.worker_command
)
app.command("simulate", help="Send simulated traffic to a running platform, with a progress bar.")(
    simulate.simulate_command
)
app.command("schema", help="Print the JSON Schema of an event type (all of them when none is given).")(
    events.schema_command
)


def main() -> None:
    """Entry point: one clear line and a non-zero exit on any expected failure."""
    try:
        app(standalone_mode=False)
    except CliError as exc:
        # One line, whatever the cause's own message spans (drivers add hints on new lines).
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except SQLAlchemyError as exc:
        # An unreachable or unusable database is an expected failure of any command that takes --db.
        cause = getattr(exc, "orig", None) or exc
        print("error: the database cannot be used: " + " ".join(str(cause).split()), file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        # Usage errors of the command-line parser (typer ships its own click).
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            message = exc.format_message().strip()
            if message:  # empty when the help was shown for a bare group
                print(f"error: {message}", file=sys.stderr)
            sys.exit(exc.exit_code)
        raise
