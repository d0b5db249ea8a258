"""The `recon` command line: every stage is a subcommand; `recon run` drives a whole pipeline.

Errors a user can cause print one line (`error: ...`) and exit non-zero without a traceback
(2 for config/usage errors, 1 otherwise). Sub-apps of the stage modules live in `cli_<area>.py`
and are mounted here. This module parses arguments and prints; it holds no stage logic.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ReconError

app = typer.Typer(
    help="recon-data: build recontextualized training datasets and run rounds of offline training on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)
templates_app = typer.Typer(help="List and render prompt templates.", no_args_is_help=True)
datasets_app = typer.Typer(help="Inspect, verify and compare dataset versions in the store.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
app.add_typer(datasets_app, name="datasets")

out = Console()
err = Console(stderr=True)

StoreOpt = typer.Option(None, "--store", show_default=False,
                        help="Store dir or URL, e.g. s3://bucket/prefix (default: $RECON_STORE, else recon-store).")
TemplatesOpt = typer.Option(None, "--templates", help="Extra template directory (repeatable); shadows built-ins.")


def _store(path: str | None):
    from .store import Store, default_store_root

    return Store(path or default_store_root())


def repo_pipelines_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "pipelines"


# ---- run / demo ------------------------------------------------------------------------------------
@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML file (see pipelines/).", show_default=False),
    store: str | None = StoreOpt,
    no_progress: bool = typer.Option(False, "--no-progress", help="Disable progress bars."),
    templates: list[Path] | None = TemplatesOpt,
) -> None:
    """Run a pipeline end to end: sample → score → filter → relabel → commit → train → evaluate, per arm,
    seed and round. Idempotent: finished steps are skipped, a killed run resumes where it stopped."""
    from .config import load_pipeline
    from .pipeline import run_pipeline

    cfg = load_pipeline(pipeline)
    if templates:
        cfg = cfg.model_copy(update={"templates_dirs": [*cfg.templates_dirs, *map(str, templates)]})
    result = run_pipeline(cfg, _store(store), config_path=str(pipeline), progress=not no_progress)
    _print_run(result, _store(store))


@app.command()
def demo(
    store: str | None = StoreOpt,
    no_progress: bool = typer.Option(False, "--no-progress", help="Disable progress bars."),
) -> None:
    """Run pipelines/demo.yaml on the embedded SmolLM2-135M-Instruct (CPU, a few minutes)."""
    run(repo_pipelines_dir() / "demo.yaml", store, no_progress, None)


def _print_run(result, store) -> None:
    out.print(f"\n[bold]{result.name}[/] finished in {result.seconds:.0f} s "
              f"({result.skipped_steps} step(s) already done were skipped)")
    table = Table(title="datasets and models")
    table.add_column("arm/seed/round")
    table.add_column("dataset")
    table.add_column("model")
    for key, ref in result.datasets.items():
        table.add_row(key, ref, result.models.get(key, ""))
    out.print(table)
    if result.metrics:
        headline = [m for m in result.metrics if m["metric"] == "hack_rate"] or [
            m for m in result.metrics if m["metric"].startswith("mean score.")]
        metric = headline[0]["metric"]
        t = Table(title=f"{metric} on the eval split (95% CI)")
        for col in ("arm", "seed", "round", "eval template", metric, "n"):
            t.add_column(col)
        for m in sorted((m for m in result.metrics if m["metric"] == metric),
                        key=lambda m: (m["arm"], m["seed"], m["round"], m["eval_template"])):
            t.add_row(m["arm"], str(m["seed"]), str(m["round"]), m["eval_template"],
                      f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]", str(m["n"]))
        out.print(t)
        out.print(f"metrics: [green]{result.metrics_ref}[/] — query with "
                  f"`recon sql 'select * from \"{result.metrics_ref.split('@')[0]}\"'`")
    out.print(f"store: {store.url if store.is_remote else store.root.resolve()}")


# ---- templates -------------------------------------------------------------------------------------
@templates_app.command("list")
def templates_list(
    templates: list[Path] | None = TemplatesOpt,
    suite: str | None = typer.Option(None, "--suite", help="Only this suite."),
) -> None:
    """Show every template: suite, stance, id and sha256 (first 12 hex digits)."""
    from .templates import discover

    table = Table()
    for col in ("suite", "stance", "id", "sha256", "path"):
        table.add_column(col)
    for t in discover(templates or []).values():
        if suite is None or t.suite == suite:
            table.add_row(t.suite, t.stance, t.id, t.sha256[:12], str(t.path))
    out.print(table)


@templates_app.command("render")
def templates_render(
    template: str = typer.Argument(..., help="Template id (suite/stance/name) or a template file path."),
    record: str = typer.Option("{}", "--record", help="The record's input variables as a JSON object "
                               "(or @file.json)."),
    templates: list[Path] | None = TemplatesOpt,
) -> None:
    """Render a template with the given variables and print the chat messages."""
    from .templates import load_template, render

    try:
        text = Path(record[1:]).read_text(encoding="utf-8") if record.startswith("@") else record
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise ReconError(f"--record {record}: cannot read it ({why}); pass a UTF-8 JSON file") from None
    try:
        variables = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReconError(f"--record is not valid JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(variables, dict):
        raise ReconError("--record must be a JSON object of template variables")
    t = load_template(template, templates or [])
    out.print(f"[bold]{t.id}[/]  sha256 {t.sha256}")
    for m in render(t, variables):
        out.print(f"{m['role']}: {m['content']}", highlight=False, markup=False)


# ---- datasets --------------------------------------------------------------------------------------
@datasets_app.command("list")
def datasets_list(store: str | None = StoreOpt) -> None:
    """List datasets with their versions and the latest row count."""
    s = _store(store)
    table = Table()
    for col in ("name", "versions", "latest rows", "created"):
        table.add_column(col)
    damaged = []
    for name in s.names():
        versions = ",".join(map(str, s.versions(name)))
        try:
            m = s.manifest(name)
        except ReconError as e:  # one damaged version must not hide the others
            damaged.append(str(e))
            table.add_row(name, versions, "damaged", "")
            continue
        table.add_row(name, versions, str(m["rows"]), m.get("created_at", ""))
    out.print(table)
    if damaged:
        err.print(f"warning: {len(damaged)} damaged latest version(s), run `recon datasets verify`: "
                  + "; ".join(damaged), highlight=False, markup=False, soft_wrap=True)


@datasets_app.command("show")
def datasets_show(
    ref: str = typer.Argument(..., help="NAME (latest) or NAME@V."),
    store: str | None = StoreOpt,
    rows: int = typer.Option(3, "--rows", help="Example rows to print."),
) -> None:
    """Print a version's manifest and a few rows."""
    s = _store(store)
    manifest = s.manifest(ref)
    out.print_json(json.dumps({k: v for k, v in manifest.items() if k != "pipeline"}, default=str))
    if rows:
        table = s.read(ref).slice(0, rows)
        for r in table.to_pylist():
            out.print({k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in r.items()})


@datasets_app.command("verify")
def datasets_verify(
    name: str | None = typer.Argument(None, help="Dataset name; all datasets if omitted."),
    store: str | None = StoreOpt,
) -> None:
    """Re-hash every file against its manifest; exit 1 on any mismatch."""
    s = _store(store)
    problems = s.verify(name)
    if problems:
        for p in problems:
            err.print(f"[red]FAIL[/] {escape(p)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    count = sum(len(s.versions(n)) for n in ([name] if name else s.names()))
    out.print(f"ok: {count} version(s) verified in {s.url if s.is_remote else s.root}")


@datasets_app.command("diff")
def datasets_diff(
    a: str = typer.Argument(..., help="NAME[@V]"),
    b: str = typer.Argument(..., help="NAME[@V]"),
    store: str | None = StoreOpt,
) -> None:
    """Compare two versions: schema changes and rows only in one of them."""
    out.print_json(json.dumps(_store(store).diff(a, b)))


# ---- sql -------------------------------------------------------------------------------------------
@app.command()
def sql(
    query: str = typer.Argument(..., help='SQL over the store; views: "name" (latest) and "name@3".'),
    store: str | None = StoreOpt,
    format: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
) -> None:
    """Query every dataset version with DuckDB. Quote names with '-' or '@': select * from "demo@1"."""
    if format not in ("table", "csv", "json"):
        raise ReconError(f"--format must be table, csv or json (got '{format}')", exit_code=2)
    result = _store(store).sql(query)
    if format == "json":
        sys.stdout.write(json.dumps(result.to_pylist(), default=str, ensure_ascii=False) + "\n")
    elif format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    else:
        table = Table()
        for col in result.column_names:
            table.add_column(col)
        for row in result.to_pylist():
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        out.print(table)


# ---- mount the stage sub-apps ------------------------------------------------------------------------
def _mount() -> None:
    """Sub-apps written beside their stage modules; a missing one is skipped (optional features)."""
    for module, name in (("cli_suites", "suites"), ("cli_sample", None), ("cli_score", None),
                         ("cli_train", None), ("cli_probe", "probe"), ("cli_publish", None),
                         ("cli_report", None)):
        try:
            sub = importlib.import_module(f"recon_data.{module}").app
        except ModuleNotFoundError as e:
            if e.name == f"recon_data.{module}":
                continue
            raise
        if name:
            app.add_typer(sub, name=name)
        else:
            for command in sub.registered_commands:
                app.registered_commands.append(command)
            for group in sub.registered_groups:
                app.registered_groups.append(group)


_mount()


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except ReconError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, read-only store, permissions: what the OS said, and where
        where = f": {e.filename}" if e.filename else ""
        err.print(f"[bold red]error:[/] {escape(str(e.strerror or e))}{escape(where)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
