"""`recon train`: fine-tune a model (TRL SFT or DPO, LoRA or full) on a Parquet file of training rows.

Mounted in cli.py at the top level (`recon train ...`). This module parses options and prints; the
training itself is `recon_data.train.train`. It imports nothing heavy at import time, so `recon --help`
stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from .errors import ReconError

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Fine-tune models on training rows (TRL SFT or DPO)."""


def _parse_extra(items: list[str]) -> dict:
    """KEY=VALUE pairs; VALUE is JSON when it parses (true, 4, 0.1, "x"), else the raw string."""
    extra: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ReconError(f"--extra {item!r}: expected KEY=VALUE, e.g. gradient_accumulation_steps=4")
        try:
            extra[key.strip()] = json.loads(value)
        except ValueError:
            extra[key.strip()] = value
    return extra


def _read_rows(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ReconError(f"--data {path}: no such file; pass a Parquet file of rows with prompt, completion")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ReconError(f"--data {path}: not a readable Parquet file ({err})") from err


H_DATA = ("Parquet file of training rows: `prompt` (chat messages under the training template) and "
          "`completion` (str); for dpo also `record_id` and the score column.")
H_OUT = "Output model folder (written atomically via OUT.tmp)."
H_MODEL = "Base model: 'embedded', a HF model folder or a .gguf file."
H_METHOD = "sft (completion-only loss) or dpo (best vs worst completion per record)."
H_LORA_R = "LoRA rank; 0 = full fine-tuning. The adapter is merged into the saved weights."
H_MAX_LEN = "Max tokens per example; longer ones are truncated (counted in the model card)."
H_REF = "Name of the training data recorded in the model card, e.g. my-data@1 (default: the file name)."
H_SCORE = "dpo: the column that ranks completions, higher is better (e.g. score.proxy)."
H_EXTRA = ("Extra TRL config field as KEY=VALUE (repeatable), e.g. bf16=true gradient_checkpointing=true "
           "gradient_accumulation_steps=4 beta=0.1 (bf16/fp16 apply only on CUDA).")
H_OVERWRITE = "Replace an existing OUT trained on something else (an identical finished run is reused)."

ScoreOpt = Annotated[str | None, typer.Option("--score-column", help=H_SCORE, show_default=False)]


@app.command("train")
def train_command(
    data: Annotated[Path, typer.Option("--data", help=H_DATA, show_default=False)],
    out: Annotated[Path, typer.Option("--out", help=H_OUT, show_default=False)],
    model: Annotated[str, typer.Option("--model", help=H_MODEL)] = "embedded",
    method: Annotated[str, typer.Option("--method", help=H_METHOD)] = "sft",
    lora_r: Annotated[int, typer.Option("--lora-r", help=H_LORA_R, min=0)] = 16,
    lora_alpha: Annotated[
        int | None, typer.Option("--lora-alpha", help="LoRA alpha (default 2 x rank).", show_default=False)
    ] = None,
    epochs: Annotated[float, typer.Option("--epochs", help="Training epochs (fractions allowed).")] = 1.0,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (linear decay).")] = 2e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Per-device batch size.", min=1)] = 8,
    max_length: Annotated[int, typer.Option("--max-length", help=H_MAX_LEN, min=2)] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed for LoRA init, data order and dropout.")] = 0,
    dataset_ref: Annotated[str | None, typer.Option("--dataset-ref", help=H_REF, show_default=False)] = None,
    score_column: ScoreOpt = None,
    extra: Annotated[list[str] | None, typer.Option("--extra", help=H_EXTRA, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=H_OVERWRITE)] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Disable progress bars.")] = False,
) -> None:
    """Fine-tune MODEL on the rows in DATA and write a plain HF model folder to OUT.

    OUT holds the merged weights, the tokenizer, README.md (a model card naming the dataset) and recon_model.json (provenance that sampling from OUT records). A finished OUT from the same data and settings is reused; a different one is refused without --overwrite.

    Example: recon train --data rows.parquet --model embedded --out runs/m1 --lora-r 16 --epochs 2
    """  # noqa: E501
    from .train import train

    try:
        options = _parse_extra(extra or [])
        if score_column:
            options["score_column"] = score_column
        if overwrite:
            options["overwrite"] = True
        lora = {"r": lora_r, "alpha": lora_alpha} if lora_r > 0 else None
        path = train(
            _read_rows(data), base_model=model, out_dir=out, method=method, lora=lora, epochs=epochs,
            learning_rate=lr, batch_size=batch_size, max_length=max_length, seed=seed,
            dataset_ref=dataset_ref or data.name, extra=options, progress=not no_progress,
        )  # fmt: skip
    except ReconError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate launch: the main process reports
        return
    meta = json.loads((path / "recon_model.json").read_text())
    stats = meta["stats"]
    typer.echo(
        f"trained {meta['model_id']} (revision {meta['revision']}) -> {path}\n"
        f"  {meta['method']} on {meta['dataset']}: {stats['trained_examples']} examples, "
        f"{stats['steps']} steps, "
        f"train loss {meta['train_loss']:.4f}; truncated {stats['truncated']}, "
        f"dropped {stats['dropped_prompt_too_long']} (prompt longer than --max-length)"
    )
