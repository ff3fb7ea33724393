"""``tidings event ...`` and ``tidings schema``: the contract from the shell."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import typer

from tidings.cli.errors import CliError
from tidings.cli.signatures import sign_command, verify_command
from tidings.contract import EVENT_TYPES, EventError, dump_event, event_json_schema, parse_event
from tidings.contract.samples import SampleFactory

app = typer.Typer(help="Validate, sign, verify and sample events.", no_args_is_help=True)


def read_input(path: str) -> bytes:
    """The bytes of FILE, or of standard input for ``-``."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


@app.command("validate", help="Parse an event (FILE or - for stdin) and print it normalised.")
def validate_command(file: str = typer.Argument(..., help="event JSON file, or - for standard input")) -> None:
    try:
        event = parse_event(read_input(file))
    except EventError as exc:
        raise CliError(f"invalid event: {exc}") from None
    sys.stdout.buffer.write(orjson.dumps(orjson.loads(dump_event(event)), option=orjson.OPT_INDENT_2) + b"\n")


@app.command("sample", help="Print sample events, one JSON document a line.")
def sample_command(
    event_type: str = typer.Option("message_created", "--type", help=f"one of: {', '.join(EVENT_TYPES)}"),
    seed: int = typer.Option(0, "--seed", help="the same seed gives the same events"),
    count: int = typer.Option(1, "--count", min=1, max=1_000_000, help="how many events"),
) -> None:
    if event_type not in EVENT_TYPES:
        raise CliError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    out = sys.stdout.buffer
    for event in SampleFactory(seed).events(count, event_type):
        out.write(dump_event(event) + b"\n")


def schema_command(
    event_type: str = typer.Argument(None, help=f"one of: {', '.join(EVENT_TYPES)}; all when omitted"),
) -> None:
    try:
        schema = event_json_schema(event_type)
    except EventError as exc:
        raise CliError(str(exc)) from None
    sys.stdout.buffer.write(orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n")


app.command("sign", help="Print the signature headers of an event as a JSON object.")(sign_command)
app.command("verify", help="Check an event's signature headers; exit 0 when authentic.")(verify_command)
