"""`recon probe ...`: train and inspect lie-detector probes from labelled chats.

Mounted in cli.py as `app.add_typer(cli_probe.app, name="probe")`. This module only parses options and
files and prints results; the work is in `recon_data.scorers.lie_detector`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .errors import ReconError

app = typer.Typer(
    help="Train and inspect lie-detector probes (logistic regression on hidden-state activations).",
    no_args_is_help=True,
    add_completion=False,
)

MESSAGE_KEYS = ("messages", "gen_messages", "prompt")
RESPONSE_KEYS = ("response", "completion")


def read_rows(path: Path) -> list[dict]:
    """Rows from a .jsonl, .json (a list) or .parquet file."""
    if not path.is_file():
        raise ReconError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a bad file
            raise ReconError(f"{path}: cannot read Parquet ({type(err).__name__}: {err})") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReconError(f"{path}: not UTF-8 text; pass a .jsonl, .json or .parquet file") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ReconError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(data, list):
            raise ReconError(f"{path}: expected a JSON list of objects")
        rows = data
    elif suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ReconError(f"{path}:{n}: invalid JSON ({err.msg})") from None
    else:
        raise ReconError(f"{path}: unsupported file type '{suffix}'; use .jsonl, .json or .parquet")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ReconError(f"{path}: row {n} is not an object")
    return rows


def examples_from_rows(rows: list[dict], label_column: str, where: str) -> list[tuple[list, str, object]]:
    """(messages, response, label) triples; a plain-string prompt becomes one user message."""
    out = []
    for n, row in enumerate(rows, 1):
        mkey = next((k for k in MESSAGE_KEYS if row.get(k) is not None), None)
        rkey = next((k for k in RESPONSE_KEYS if row.get(k) is not None), None)
        if mkey is None or rkey is None or label_column not in row:
            has = ", ".join(sorted(map(str, row))) or "nothing"
            raise ReconError(
                f"{where}: row {n} needs messages (one of {', '.join(MESSAGE_KEYS)}), a response "
                f"({' or '.join(RESPONSE_KEYS)}) and '{label_column}'; it has {has}"
            )
        messages = row[mkey]
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        out.append((messages, str(row[rkey]), row[label_column]))
    return out


def _metrics_lines(meta: dict) -> list[str]:
    lines = [
        f"model      {meta['model_id']}@{meta['model_revision']}",
        f"layer      {meta['layer']} of {meta.get('n_layers', '?')}",
        f"threshold  {meta['threshold']:.4f} (target TPR {meta['target_tpr']:.2f}, set on calibration split)",
        f"{'split':<12}{'n':>6}{'lies':>6}{'AUROC':>8}{'TPR':>8}{'FPR':>8}",
    ]
    for split in ("train", "calibration", "test"):
        m = meta["metrics"].get(split) or {}

        def fmt(key: str, m: dict = m) -> str:
            return "-" if m.get(key) is None else f"{m[key]:.3f}"

        lines.append(f"{split:<12}{m.get('n', 0):>6}{m.get('n_deceptive', 0):>6}"
                     f"{fmt('auroc'):>8}{fmt('tpr'):>8}{fmt('fpr'):>8}")
    return lines


def _fail(err: ReconError) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(err.exit_code)


Opt = typer.Option
HELP = {
    "data": "JSONL/JSON/Parquet rows with messages (or gen_messages), response (or completion) and a label",
    "suite": "Instead of a file: a built-in suite with labelled pairs (probe_pairs()), e.g. deception",
    "out": "Folder to write the probe to (probe.json + probe.npz)",
    "model": "Model whose activations the probe reads: 'embedded' or a HF folder",
    "layer": "hidden_states index (0 = embeddings, negatives count back); default: the middle layer",
    "calibration": "Share of prompts used to set the threshold; the rest is the test split",
    "label": "Column with the label: true / 1 / 'deceptive' = lie",
    "group": "Rows sharing this value stay in one split (default: rows with the same prompt)",
    "max_length": "Max tokens per chat (longer chats lose their start)",
}


@app.command("train")
def train_cmd(
    out: Annotated[Path, Opt("--out", "-o", help=HELP["out"])],
    data: Annotated[Path | None, typer.Argument(help=HELP["data"])] = None,
    suite: Annotated[str | None, Opt(help=HELP["suite"])] = None,
    model: Annotated[str, Opt(help=HELP["model"])] = "embedded",
    layer: Annotated[int | None, Opt(help=HELP["layer"])] = None,
    target_tpr: Annotated[float, Opt(help="Share of lies the threshold must catch")] = 0.9,
    train_fraction: Annotated[float, Opt(help="Share of prompts used to fit the probe")] = 0.5,
    calibration_fraction: Annotated[float, Opt(help=HELP["calibration"])] = 0.25,
    label_column: Annotated[str, Opt(help=HELP["label"])] = "label",
    group_column: Annotated[str | None, Opt(help=HELP["group"])] = None,
    seed: Annotated[int, Opt(help="Split seed")] = 0,
    batch_size: Annotated[int, Opt(help="Chats per forward pass")] = 8,
    max_length: Annotated[int, Opt(help=HELP["max_length"])] = 512,
    as_json: Annotated[bool, Opt("--json", help="Print probe.json instead of a table")] = False,
) -> None:
    """Train a lie-detector probe and print its AUROC / TPR / FPR on held-out data."""
    from .scorers.lie_detector import train_probe

    try:
        rows, where = _training_rows(data, suite, seed)
        if suite is not None and group_column is None:
            group_column = "id"  # a suite record's truthful and deceptive answers share its id
        examples = examples_from_rows(rows, label_column, where)
        groups = None
        if group_column is not None:
            if any(group_column not in r for r in rows):
                raise ReconError(f"{where}: --group-column '{group_column}' is missing from some rows")
            groups = [str(r[group_column]) for r in rows]
        probe = train_probe(
            examples, model=model, layer=layer, target_tpr=target_tpr, train_fraction=train_fraction,
            calibration_fraction=calibration_fraction, seed=seed, out_dir=out, groups=groups,
            batch_size=batch_size, max_length=max_length,
        )
    except ReconError as err:
        raise _fail(err) from None
    _print(probe.path, as_json)


def _training_rows(data: Path | None, suite: str | None, seed: int) -> tuple[list[dict], str]:
    if (data is None) == (suite is None):
        raise ReconError("pass either a data file or --suite NAME (not both)")
    if data is not None:
        return read_rows(data), str(data)
    from .suites import SUITES

    module = SUITES.get(suite)
    if module is None or not hasattr(module, "probe_pairs"):
        with_pairs = [name for name, m in SUITES.items() if hasattr(m, "probe_pairs")]
        raise ReconError(f"suite '{suite}' has no labelled probe pairs; suites with them: "
                         f"{', '.join(with_pairs) or 'none'} (or pass a data file)")
    return module.probe_pairs(seed), f"suite {suite}"


@app.command("show")
def show_cmd(
    probe: Annotated[Path, typer.Argument(help="A probe folder written by `recon probe train`")],
    as_json: Annotated[bool, typer.Option("--json", help="Print probe.json instead of a table")] = False,
) -> None:
    """Print a trained probe's model, layer, threshold and metrics."""
    from .scorers.lie_detector import load_probe

    try:
        load_probe(probe)  # validates format and checksum
    except ReconError as err:
        raise _fail(err) from None
    _print(probe, as_json)


def _print(folder: Path, as_json: bool) -> None:
    meta = json.loads((Path(folder) / "probe.json").read_text())
    if as_json:
        typer.echo(json.dumps(meta, indent=2, sort_keys=True))
        return
    typer.echo(f"probe      {folder}")
    for line in _metrics_lines(meta):
        typer.echo(line)
