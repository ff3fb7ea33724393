"""``tidings simulate``: traffic against any running platform, with a progress bar."""

from __future__ import annotations

import asyncio

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidings.cli.errors import CliError
from tidings.traffic import TrafficSummary, run_traffic


def summary_table(summary: TrafficSummary) -> Table:
    figures = summary.as_dict()
    table = Table(title="traffic summary", show_header=False)
    for label, key, unit in [("sent", "sent", ""), ("refused (4xx)", "refused", ""), ("errors", "errors", ""),
                             ("duplicates ingested once", "duplicates", ""), ("delivered", "delivered", ""),
                             ("failed", "failed", ""), ("still pending", "pending", ""),
                             ("latency p50", "latency_p50_ms", " ms"), ("latency p99", "latency_p99_ms", " ms"),
                             ("elapsed", "elapsed_s", " s")]:
        value = figures[key]
        text = "n/a" if value is None else (f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}")
        table.add_row(label, text)
    return table


def simulate_command(
    api: str = typer.Option(..., "--api", help="the platform's base URL, e.g. http://127.0.0.1:8000"),
    api_key: str = typer.Option(..., "--api-key", help="an organization's API key (x-APIKey)"),
    rate: float = typer.Option(10.0, "--rate", min=0.1, max=10_000, help="actions a second"),
    duration: float = typer.Option(10.0, "--duration", min=0.1, max=86_400, help="seconds"),
    seed: int = typer.Option(0, "--seed", help="the same seed gives the same traffic"),
    org_id: int = typer.Option(None, "--org-id", help="the organization, with a PROVIDER key"),
    json_output: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Consumers write on every channel and content type, business users reply."""
    console = Console(stderr=json_output)
    total = max(1, int(rate * duration))
    with Progress(TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("sent {task.fields[sent]} refused {task.fields[refused]} errors {task.fields[errors]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("traffic", total=total, sent=0, refused=0, errors=0)

        def on_result(summary: TrafficSummary) -> None:
            progress.update(task, completed=summary.attempted, sent=summary.sent, refused=summary.refused,
                            errors=summary.errors)

        try:
            summary = asyncio.run(run_traffic(api, api_key, rate=rate, duration=duration, seed=seed,
                                              org_id=org_id, on_result=on_result))
        except OSError as error:
            raise CliError(f"cannot reach the platform at {api}: {error}") from None
        except RuntimeError as error:
            raise CliError(str(error)) from None
        progress.update(task, total=summary.attempted or 1)
    if json_output:
        print(orjson.dumps(summary.as_dict()).decode())
    else:
        console.print(summary_table(summary))
