"""`recon suites ...`: list, show and export the built-in task suites, and convert user data to records.

Mounted in cli.py as `app.add_typer(cli_suites.app, name="suites")`. This module parses options and
prints; records come from `recon_data.suites` and `recon_data.suites.loaders`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .errors import ReconError

app = typer.Typer(
    help="Built-in task suites (records = input variables for templates + reference for scorers).",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()

SeedOpt = Annotated[
    int, typer.Option("--seed", help="Generation seed; the same seed gives identical records.")
]
SplitOpt = Annotated[
    str | None, typer.Option("--split", help="Only this split: train or eval.", show_default=False)
]


@app.command("list")
def list_suites(seed: SeedOpt = 0) -> None:
    """List the built-in suites with their description and record counts per split."""
    from .suites import suite_info

    table = Table(title="built-in suites")
    for col in ("suite", "train", "eval", "total", "description"):
        table.add_column(col, overflow="fold")
    for row in suite_info(seed):
        table.add_row(
            row["name"], str(row["train"]), str(row["eval"]), str(row["total"]), escape(row["description"])
        )
    out.print(table)


def _block(value: object) -> str:
    """Strings as they are, lists of strings one per line, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Suite name (see `recon suites list`).", show_default=False)],
    n: Annotated[int, typer.Option("--n", "-n", help="How many records to print.", min=1)] = 3,
    split: SplitOpt = None,
    seed: SeedOpt = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print records as JSON lines instead.")] = False,
) -> None:
    """Print the first N records of a suite: every input variable and every reference field."""
    from .suites import load_suite

    records = load_suite(name, split=split, limit=n, seed=seed)
    if as_json:
        for rec in records:
            typer.echo(json.dumps(rec, sort_keys=True, ensure_ascii=False))
        return
    for rec in records:
        table = Table(show_header=False, expand=True)
        table.add_column("field", style="bold cyan", no_wrap=True)
        table.add_column("value", overflow="fold")
        for part in ("input", "reference"):
            for key, value in sorted(rec[part].items()):
                table.add_row(f"{part}.{key}", escape(_block(value)))
        out.print(Panel(table, title=f"{escape(rec['id'])}  [dim]({rec['split']})[/]", title_align="left"))


def _write_atomic(path: Path, write) -> None:
    """Write via a temporary file in the same folder and rename, so no half-written file is ever left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_records(records: list[dict], path: Path) -> None:
    """Records to .parquet (the Arrow record schema, JSON strings) or .jsonl (input/reference as objects)."""
    from .suites import records_to_table

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = records_to_table(records)
        _write_atomic(path, lambda p: pq.write_table(table, p))
    elif suffix == ".jsonl":
        lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
        _write_atomic(path, lambda p: p.write_text(lines, encoding="utf-8"))
    else:
        raise ReconError(f"--out {path}: use a .parquet or .jsonl file name", exit_code=2)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Suite name (see `recon suites list`).", show_default=False)],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Output file: .parquet or .jsonl.", show_default=False)
    ],
    split: SplitOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Keep only the first N records.", min=0)
    ] = None,
    seed: SeedOpt = 0,
) -> None:
    """Write a suite's records to a Parquet or JSONL file (written atomically)."""
    from .suites import load_suite

    records = load_suite(name, split=split, limit=limit, seed=seed)
    write_records(records, out_path)
    out.print(f"wrote {len(records)} records of {escape(name)} to {escape(str(out_path))}")


def _mapping(text: str) -> dict:
    """A mapping given inline (JSON/YAML) or as a path to a .json/.yaml file."""
    path = Path(text)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise ReconError(f"--mapping file not found: {path}", exit_code=2)
        text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ReconError(
            f"--mapping is not valid JSON/YAML: {str(err).splitlines()[0]}", exit_code=2
        ) from None
    if not isinstance(data, dict):
        raise ReconError(
            '--mapping must be an object like {"input": {"question": "q"}, "reference": '
            '{"answer": "a"}, "id": "id"}',
            exit_code=2,
        )
    return data


@app.command()
def convert(
    data: Annotated[
        Path,
        typer.Argument(help="A .jsonl, .parquet or .csv file, or a `datasets` folder.", show_default=False),
    ],
    mapping: Annotated[
        str,
        typer.Option(
            "--mapping",
            "-m",
            show_default=False,
            help='Field mapping, inline JSON/YAML or a file: {"id": col, "input": '
            '{var: col}, "reference": {key: col}, "split": col}.',
        ),
    ],
    suite_name: Annotated[
        str,
        typer.Option(
            "--name",
            help="Suite name written into every record (and used by template ids).",
            show_default=False,
        ),
    ],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Output file: .parquet or .jsonl.", show_default=False)
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="jsonl, parquet, csv or hf (default: from the suffix).", show_default=False
        ),
    ] = None,
) -> None:
    """Turn your own data into suite records via a field mapping (for use with your own templates)."""
    from .suites.loaders import load_records

    records = load_records(data, format=fmt, mapping=_mapping(mapping), suite_name=suite_name)
    write_records(records, out_path)
    splits = {s: sum(r["split"] == s for r in records) for s in ("train", "eval")}
    out.print(
        f"wrote {len(records)} records ({splits['train']} train, {splits['eval']} eval) to "
        f"{escape(str(out_path))}"
    )
