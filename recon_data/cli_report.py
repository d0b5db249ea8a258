"""`recon report RUN`: plots and tables of a finished run's metrics, arm against arm.

Mounted in cli.py at top level (its single command is appended to the main app). This module only
parses options and prints paths; the work is in `recon_data.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Report a run's metrics.", no_args_is_help=True, add_completion=False)


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run name (the pipeline's `name`).", show_default=False)],
    store: Annotated[str | None, typer.Option(
        "--store", help="Store directory or URL (default: $RECON_STORE, else ./recon-store).",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: <store>/runs/<RUN>/report/).", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help="md, or html for report.html beside report.md.")] = "md",
    metric: Annotated[list[str] | None, typer.Option(
        "--metric", help="Only metrics whose name starts with this (repeatable), e.g. hack_rate.")] = None,
    readme: Annotated[Path | None, typer.Option(
        "--readme", help="Also rewrite this file's results block (between '<!-- recon report RUN: begin -->' "
        "and '<!-- recon report RUN: end -->') and its plot under docs/.", show_default=False)] = None,
) -> None:
    """Write report.md (and report.html) with one plot per metric — by round, one line per arm, 95% CIs over
    seeds — the table of means, and each arm's difference from `standard` at the last round."""
    from .report import check_readme, update_readme, write_report_files
    from .store import Store, default_store_root

    if readme is not None:
        check_readme(readme, run)  # before anything is written
    st = Store(store or default_store_root())
    paths = write_report_files(st, run, out, format, metric or None)
    if readme is not None:
        paths += update_readme(st, run, readme)
    console = Console()
    for path in paths:
        console.print(str(path), highlight=False, soft_wrap=True)
