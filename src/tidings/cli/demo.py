"""``tidings demo``: the platform, a receiver and traffic, on an embedded SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidings.cli.errors import CliError


def demo_command(
    duration: Annotated[float | None, typer.Option("--duration", min=1, help="seconds to run (default: until Ctrl-C)")] = None,
    rate: Annotated[float, typer.Option("--rate", min=0.1, max=500, help="simulated actions a second")] = 8.0,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="where the demo keeps its databases and logs")] = Path("tidings-demo"),
    port: Annotated[int, typer.Option("--port", min=0, max=65532,
                                      help="the platform's port; the receiver, a flaky endpoint and the "
                                           "receiver's admin listener take the next three (each, when taken, "
                                           "one the system picks; 0: all four so)")] = 8000,
    seed: Annotated[int, typer.Option("--seed", help="the same seed gives the same traffic")] = 1,
) -> None:
    """Run the platform, a receiver and simulated traffic, with a live summary."""
    from tidings.demo import DemoOptions, run_demo, summary_line

    console = Console()
    ports = [port + offset if port else 0 for offset in range(4)]
    options = DemoOptions(data_dir=data_dir, platform_port=ports[0], receiver_port=ports[1], flaky_port=ports[2],
                          admin_port=ports[3], rate=rate, duration=duration, seed=seed)
    with console.status("starting…") as status:
        try:
            state = asyncio.run(run_demo(options, say=console.print,
                                         status=lambda line: status.update(line)))
        except (RuntimeError, OSError) as error:
            raise CliError(f"the demo could not run: {error}") from None
    console.print(summary_line(state, sum(t.elapsed for t in state.traffic) / max(1, len(state.traffic))))
