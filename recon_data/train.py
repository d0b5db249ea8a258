"""Train the next round's model on relabelled training rows with TRL (SFT or DPO, LoRA or full).

Input: training rows whose `prompt` holds the chat messages under the *training* template and whose
`completion` is the raw sampled text. Output: a plain HF model folder (a LoRA adapter is merged into the
base weights) with the tokenizer, a model card `README.md` naming the dataset version it was trained on,
and `recon_model.json` ({model_id, revision, base_model, dataset, method, train_loss, ...}) that
`models.resolve_model` reads, so samples drawn from the trained model record where they came from.

SFT runs TRL's SFTTrainer with completion-only loss: labels are -100 on every prompt token (system, user,
the assistant header) and active on the completion and the end-of-turn token that closes it. The prompt
tokens are exactly what sampling feeds the model (see `tokenize_sft_example` for why we tokenize before
handing the examples to TRL). DPO builds one pair per record: the best- and worst-scored completion of
that record under the same training prompt.

The output folder is published atomically: training writes `<out>.tmp` and renames it when complete, so a
killed run never leaves a folder that looks finished (a stale `.tmp` is removed by the next run). Under
`torchrun` / `accelerate launch` every rank calls `train`; only the main process touches the output
folders, the others wait for it at barriers, and the weights are gathered through `Trainer.save_model`
(so DDP, FSDP and ZeRO-3 all work; a LoRA adapter is merged on the main process after gathering). An
existing finished folder whose recorded training spec (base model, data fingerprint, dataset ref, method,
hyperparameters) equals this call's is returned as is, so a resumed pipeline skips the work; any other
existing folder is refused unless `extra={"overwrite": True}`, and then it is swapped out, never
half-overwritten.

This module does not sample, score, filter or relabel, never downloads a model, and writes nothing but
`out_dir` and its `.tmp` / `.old` siblings.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import ReconError
from .models import ModelRef, resolve_model

log = logging.getLogger(__name__)

METHODS = ("sft", "dpo")
LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}
# dropout 0 is PEFT's own default; on CPU, dropout on every LoRA input costs ~25% of a training step.
LORA_DEFAULTS = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
# `extra` keys read here; every other key must be a field of TRL's SFTConfig / DPOConfig.
OWN_EXTRA = {"overwrite", "score_column"}
# Config fields that come from train()'s own arguments or bookkeeping; `extra` must not set them.
RESERVED = {
    "output_dir", "num_train_epochs", "learning_rate", "per_device_train_batch_size", "max_length", "seed",
    "data_seed", "report_to", "use_cpu", "disable_tqdm", "completion_only_loss", "assistant_only_loss",
    "push_to_hub", "hub_model_id", "resume_from_checkpoint",
}  # fmt: skip
PRECISION_KEYS = ("bf16", "fp16", "tf32")
PAIR_KEYS = ("chosen", "rejected")


@dataclasses.dataclass
class PairStats:
    """How DPO pair building went: how many (record, prompt) groups gave a pair and why the others did not."""

    records: int = 0
    pairs: int = 0
    skipped_single: int = 0
    skipped_tied: int = 0
    rows_without_score: int = 0


# ------------------------------------------------------------------------------------------ input checks


def _row_name(i: int, row: Mapping) -> str:
    rid = row.get("record_id", row.get("id"))
    return f"row {i}" + (f" (record {rid!r})" if rid is not None else "")


def _check_message_list(value: Any, where: str) -> list[dict]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or not value:
        raise ReconError(
            f"train: {where} 'prompt' must be a non-empty list of {{role, content}} messages, "
            f"got {type(value).__name__}: build training prompts with relabel"
        )
    for m in value:
        ok = isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        if not ok:
            raise ReconError(
                f"train: {where} 'prompt' has a message that is not {{role: str, content: str}}: "
                f"{str(m)[:80]!r}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def validate_rows(rows: Sequence[Mapping] | pa.Table) -> list[dict]:
    """Check every row has a message-list `prompt` and a string `completion`; return copies as plain dicts."""
    if isinstance(rows, pa.Table):
        rows = rows.to_pylist()
    elif isinstance(rows, (Mapping, str, bytes)) or not isinstance(rows, Sequence):
        raise ReconError(f"train: rows must be a list of dicts or a pyarrow Table, got {type(rows).__name__}")
    if not rows:
        raise ReconError("train: no training rows (did the filter keep nothing?): check the filter stats")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            kind = type(row).__name__
            raise ReconError(f"train: row {i} is a {kind}, expected a dict with prompt and completion")
        for col in ("prompt", "completion"):
            if row.get(col) is None:
                raise ReconError(
                    f"train: {_row_name(i, row)} has no '{col}': training rows need 'prompt' (chat messages "
                    "under the training template) and 'completion' (the sampled text)"
                )
        if not isinstance(row["completion"], str):
            kind = type(row["completion"]).__name__
            raise ReconError(f"train: {_row_name(i, row)} 'completion' is {kind}, expected a string")
        out.append({**row, "prompt": _check_message_list(row["prompt"], _row_name(i, row))})
    return out


def _positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_args(method: str, epochs: float, learning_rate: float, batch_size: int, max_length: int) -> None:
    if method not in METHODS:
        raise ReconError(f"train: unknown method {method!r}: use one of {', '.join(METHODS)}")
    for ok, msg in (
        (_positive_number(epochs), f"epochs={epochs!r} must be a number > 0"),
        (_positive_number(learning_rate), f"learning_rate={learning_rate!r} must be a number > 0"),
        (_positive_number(batch_size) and isinstance(batch_size, int),
         f"batch_size={batch_size!r} must be an integer >= 1"),
        (_positive_number(max_length) and isinstance(max_length, int) and max_length >= 2,
         f"max_length={max_length!r} must be an integer >= 2"),
    ):  # fmt: skip
        if not ok:
            raise ReconError(f"train: {msg}")


def lora_settings(lora: Mapping | bool | None) -> dict | None:
    """Normalise `lora`: None/False/r=0 = full fine-tuning, True = defaults, dict = overrides (alpha = 2r)."""
    if lora is None or lora is False:
        return None
    if lora is True:
        return dict(LORA_DEFAULTS)
    if not isinstance(lora, Mapping):
        raise ReconError(f"train: lora must be a mapping like {{r: 16, alpha: 32}} or null, got {lora!r}")
    unknown = set(lora) - LORA_KEYS
    if unknown:
        raise ReconError(f"train: unknown lora keys {sorted(unknown)}: use {sorted(LORA_KEYS)}")
    out = {**LORA_DEFAULTS, **{k: v for k, v in lora.items() if v is not None}}
    r = out["r"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise ReconError(f"train: lora r={r!r} must be an integer >= 0 (0 = full fine-tuning)")
    if r == 0:
        return None
    if lora.get("alpha") is None:
        out["alpha"] = 2 * r
    if not _positive_number(out["alpha"]):
        raise ReconError(f"train: lora alpha={out['alpha']!r} must be a number > 0")
    if not (isinstance(out["dropout"], (int, float)) and 0 <= out["dropout"] < 1):
        raise ReconError(f"train: lora dropout={out['dropout']!r} must be in [0, 1)")
    return out


# ------------------------------------------------------------------------------------------ examples


def build_dpo_pairs(rows: list[dict], score_column: str) -> tuple[list[dict], PairStats]:
    """One preference pair per (record, training prompt): chosen = best score, rejected = worst.

    Higher scores are better. Ties keep input order (first best, last worst). A group with one scored
    completion, or with all scores equal, gives no pair and is counted; rows with a null/NaN score are
    counted and left out. No pair at all is a user error.
    """
    stats = PairStats()
    groups: dict[tuple[str, str], list[tuple[float, dict]]] = {}
    for i, row in enumerate(rows):
        rid = row.get("record_id", row.get("id"))
        if rid is None:
            raise ReconError(f"train: DPO pairs completions by 'record_id'; {_row_name(i, row)} has none")
        if score_column not in row:
            raise ReconError(
                f"train: DPO score column {score_column!r} missing from {_row_name(i, row)}: set "
                "extra.score_column / --score-column to one of the row's score.<name> columns"
            )
        score = row[score_column]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            stats.rows_without_score += 1
            continue
        key = (str(rid), json.dumps(row["prompt"], sort_keys=True))
        groups.setdefault(key, []).append((float(score), row))
    stats.records = len(groups)
    pairs: list[dict] = []
    for (rid, _), items in groups.items():
        if len(items) < 2:
            stats.skipped_single += 1
            continue
        best = max(items, key=lambda t: t[0])
        worst = min(reversed(items), key=lambda t: t[0])
        if best[0] == worst[0]:
            stats.skipped_tied += 1
            continue
        pairs.append({
            "prompt": best[1]["prompt"],
            "chosen": [{"role": "assistant", "content": best[1]["completion"]}],
            "rejected": [{"role": "assistant", "content": worst[1]["completion"]}],
            "record_id": rid,
        })  # fmt: skip
    stats.pairs = len(pairs)
    if not pairs:
        raise ReconError(
            f"train: no DPO pairs from {len(rows)} rows on {score_column!r} ({stats.skipped_single} records "
            f"with one scored completion, {stats.skipped_tied} with all scores equal, "
            f"{stats.rows_without_score} rows unscored): sample n >= 2 per record and keep more than the best"
        )
    return pairs, stats


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as err:  # jinja errors from the model's own template: bad roles, order, ...
        raise ReconError(f"train: the model's chat template rejected a prompt: {err}") from err


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_sft_example(tokenizer: Any, prompt: list[dict], completion: str) -> dict:
    """input_ids = the prompt exactly as sampling renders it + the assistant turn; mask 1 on the latter.

    Why not TRL's own tokenization: it tokenizes prompt+completion as one string, so when a completion
    starts with whitespace (code) the template's newline after the assistant header merges with it into
    one byte-level BPE token; that token, half prompt, gets a label, and the prompt the model trains on
    differs from the one it sees at inference. Here the prompt ids are exactly
    `apply_chat_template(prompt, add_generation_prompt=True)` and the rest of the rendered conversation
    is tokenized on its own, ending at the end-of-turn (eos) token: what the template prints after it is
    never generated, so it is not trained on.
    """
    prompt_text = _render(tokenizer, prompt, True)
    full_text = _render(tokenizer, prompt + [{"role": "assistant", "content": completion}], False)
    prompt_ids = _ids(tokenizer, prompt_text)
    eot = tokenizer.eos_token
    exact = full_text.startswith(prompt_text)
    if exact:
        suffix = full_text[len(prompt_text) :]
        if eot and eot in suffix:
            suffix = suffix[: suffix.rindex(eot) + len(eot)]
        completion_ids = _ids(tokenizer, suffix)
    else:  # the template renders the prompt differently inside a full conversation: TRL's rule
        full_ids = _ids(tokenizer, full_text)
        n = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
                 min(len(prompt_ids), len(full_ids)))  # fmt: skip
        prompt_ids, completion_ids = prompt_ids[:n], full_ids[n:]
        eot_id = tokenizer.eos_token_id
        if eot_id in completion_ids:
            completion_ids = completion_ids[: len(completion_ids) - completion_ids[::-1].index(eot_id)]
    return {
        "input_ids": prompt_ids + completion_ids,
        "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids),
        "prompt_exact": exact,
    }


def tokenize_sft(tokenizer: Any, rows: list[dict], max_length: int) -> tuple[list[dict], dict]:
    """Pre-tokenized SFT examples for TRL, plus counts of what `max_length` truncates or drops."""
    examples, truncated, dropped, inexact, longest = [], 0, 0, 0, 0
    for row in rows:
        ex = tokenize_sft_example(tokenizer, row["prompt"], row["completion"])
        inexact += not ex.pop("prompt_exact")
        prompt_len = ex["completion_mask"].count(0)
        longest = max(longest, len(ex["input_ids"]))
        if prompt_len >= max_length:
            dropped += 1
        elif len(ex["input_ids"]) > max_length:
            truncated += 1
        examples.append(ex)
    if inexact:
        log.warning("train: the chat template renders %d prompts differently inside the full conversation; "
                    "their completion starts where the token sequences diverge", inexact)  # fmt: skip
    report = {
        "examples": len(rows), "truncated": truncated, "dropped_prompt_too_long": dropped,
        "prompt_boundary_inexact": inexact, "longest_tokens": longest, "max_length": max_length,
    }  # fmt: skip
    return examples, report


def dpo_length_report(tokenizer: Any, pairs: list[dict], max_length: int) -> dict:
    """Count DPO pairs that `max_length` truncates (a completion cut) or drops (the prompt alone fills it)."""
    truncated = dropped = longest = 0
    for ex in pairs:
        prompt_len = len(_ids(tokenizer, _render(tokenizer, ex["prompt"], True)))
        full = max(len(_ids(tokenizer, _render(tokenizer, ex["prompt"] + ex[k], False))) for k in PAIR_KEYS)
        longest = max(longest, full)
        if prompt_len >= max_length:
            dropped += 1
        elif full > max_length:
            truncated += 1
    return {"examples": len(pairs), "truncated": truncated, "dropped_prompt_too_long": dropped,
            "longest_tokens": longest, "max_length": max_length}  # fmt: skip


# ------------------------------------------------------------------------------------------ trainer setup


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Silence datasets/transformers bars and info chatter when progress=False; restore them after."""
    import datasets
    import transformers.utils.logging as tf_logging

    if progress:
        yield
        return
    datasets_bars = datasets.utils.logging.is_progress_bar_enabled()
    tf_bars = tf_logging.is_progress_bar_enabled()
    verbosity = tf_logging.get_verbosity()
    datasets.disable_progress_bars()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if tf_bars:
            tf_logging.enable_progress_bar()
        tf_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[None]:
    """Make TRL's fused LM head score only the labelled positions on CPU, as it already does on GPUs.

    TRL 1.16 computes the loss in vocabulary tiles; on devices without Triton it projects *every* position
    (prompt and padding included) through the LM head and masks afterwards, to keep tile shapes fixed for
    compilers like Neuron. On CPU there is nothing to recompile and the loss is the same, while the head is
    the largest cost of a step for a small model with a big vocabulary (measured on SmolLM2-135M with 40-token
    completions: one training round 84 s -> 50 s, identical loss). Scoped to the training call and restored.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if not callable(original):  # a TRL without this switch: leave it alone
        yield
        return
    trl_utils._use_triton = lambda device: getattr(device, "type", None) == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def trainer_config(
    method: str, *, output_dir: Path, epochs: float, learning_rate: float, batch_size: int, max_length: int,
    seed: int, extra: Mapping | None = None, progress: bool = True,
) -> Any:  # fmt: skip
    """TRL config with CPU-safe defaults (fp32, no gradient checkpointing, no checkpoints on disk).

    TRL defaults to bf16 and gradient checkpointing; both are turned off here and come back only through
    `extra` (bf16/fp16 only when CUDA is present, so one YAML runs on both).
    """
    import torch
    from trl import DPOConfig, SFTConfig

    cls = SFTConfig if method == "sft" else DPOConfig
    fields = {f.name for f in dataclasses.fields(cls)}
    cuda = torch.cuda.is_available()
    passthrough: dict[str, Any] = {}
    for key, value in dict(extra or {}).items():
        if key in OWN_EXTRA:
            continue
        if key in RESERVED:
            raise ReconError(f"train: extra.{key} is set by train() itself: use the matching train argument")
        if key not in fields:
            raise ReconError(
                f"train: unknown extra option {key!r}: use a {cls.__name__} field (e.g. bf16, "
                "gradient_checkpointing, gradient_accumulation_steps, warmup_ratio, max_steps, beta for dpo)"
            )
        if key in PRECISION_KEYS and value and not cuda:
            log.warning("train: extra.%s ignored: no CUDA device, training in float32", key)
            continue
        passthrough[key] = value
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir), "num_train_epochs": float(epochs),
        "learning_rate": float(learning_rate), "per_device_train_batch_size": batch_size,
        "max_length": max_length, "seed": seed, "data_seed": seed,
        "report_to": "none", "use_cpu": not cuda, "disable_tqdm": not progress, "bf16": False, "fp16": False,
        "gradient_checkpointing": False, "dataloader_num_workers": 0, "dataloader_pin_memory": cuda,
        "save_strategy": "no", "save_only_model": True, "logging_steps": 10,
    }  # fmt: skip
    if method == "sft":
        kwargs.update(completion_only_loss=True, packing=False)
    kwargs.update(passthrough)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ReconError(f"train: invalid training options: {str(err).splitlines()[0]}") from err


def load_base(ref: ModelRef) -> tuple[Any, Any]:
    """The base model in float32 (mixed precision, if any, is the trainer's job) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    if not getattr(tokenizer, "chat_template", None):
        raise ReconError(
            f"train: model {ref.model_id} ({ref.path}) has no chat template; training rows are chat "
            "messages, so use an instruct/chat model"
        )
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype="float32")
    return model, tokenizer


def build_trainer(
    method: str, model: Any, tokenizer: Any, examples: list[dict], config: Any, lora: dict | None,
    progress: bool = True,
) -> Any:  # fmt: skip
    """The TRL trainer exactly as `train` runs it; SFT examples must come from `tokenize_sft`.

    SFT: TRL sees a pre-tokenized dataset (`input_ids` + `completion_mask`), skips its own tokenization
    and, because `completion_only_loss=True`, turns the mask into labels (-100 outside the completion),
    then truncates to `max_length` and drops examples left with no label.
    """
    import datasets
    from transformers import PrinterCallback
    from trl import DPOTrainer, SFTTrainer

    peft_config = None
    if lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=float(lora["dropout"]),
            target_modules=lora["target_modules"], task_type="CAUSAL_LM",
        )  # fmt: skip
    cls = SFTTrainer if method == "sft" else DPOTrainer
    trainer = cls(
        model=model, args=config, train_dataset=datasets.Dataset.from_list(examples),
        processing_class=tokenizer, peft_config=peft_config,
    )  # fmt: skip
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer


def tokenize_for_sft(
    rows: Sequence[Mapping] | pa.Table, model: str | Path, max_length: int, work_dir: Path
) -> Any:
    """The SFT training examples exactly as the trainer holds them (input_ids + labels), for inspection."""
    rows = validate_rows(rows)
    with _quiet(False):
        base, tokenizer = load_base(resolve_model(str(model)))
        examples, _ = tokenize_sft(tokenizer, rows, max_length)
        config = trainer_config("sft", output_dir=work_dir, epochs=1, learning_rate=1e-4, batch_size=1,
                                max_length=max_length, seed=0, progress=False)  # fmt: skip
        return build_trainer("sft", base, tokenizer, examples, config, None, False).train_dataset


# ------------------------------------------------------------------------------------------ output


def weights_revision(folder: Path) -> str:
    """sha256 over the saved weight files (sorted by name), 16 hex digits: the trained model's revision."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in {".safetensors", ".bin"})
    if not files:
        raise RuntimeError(f"no weight files were saved in {folder}")
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


def data_fingerprint(examples: list[dict]) -> str:
    """sha256 prefix over the training examples in order: two runs on the same data agree."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _model_card(meta: dict) -> str:
    hp, base, stats = meta["hyperparameters"], meta["base_model"], meta["stats"]
    final = f"{meta['final_loss']:.4f}" if meta["final_loss"] is not None else "n/a"
    kind = "LoRA, merged into the weights" if hp["lora"] else "full fine-tuning"
    unit = "preference pairs" if meta["method"] == "dpo" else "examples"
    return "\n".join([
        "---",
        f"base_model: {json.dumps(base['model_id'])}",
        "library_name: transformers",
        "tags: [recon-data, trl, " + meta["method"] + "]",
        "---",
        "",
        f"# {meta['model_id']}",
        "",
        f"Trained by recon-data with TRL {meta['method'].upper()} ({kind}) on dataset `{meta['dataset']}`.",
        "",
        f"- Base model: `{base['model_id']}` at revision `{base['revision']}`",
        f"- Dataset: `{meta['dataset']}` (data sha256 `{meta['data_sha256']}`, {stats['examples']} {unit})",
        f"- Training loss: {meta['train_loss']:.4f} (mean over training); last logged loss: {final}",
        f"- Revision (sha256 of the weights): `{meta['revision']}`",
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps(hp, indent=2, sort_keys=True),
        "```",
        "",
        "## Data handling",
        "",
        "```json",
        json.dumps(stats, indent=2, sort_keys=True),
        "```",
        "",
    ])  # fmt: skip


def _existing_spec(out_dir: Path) -> dict | None:
    try:
        meta = json.loads((out_dir / "recon_model.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("spec") if isinstance(meta, dict) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished tmp folder into place; an older folder is moved aside first, then removed."""
    old = out_dir.with_name(out_dir.name + ".old")
    _remove(old)
    if out_dir.exists() or out_dir.is_symlink():
        out_dir.rename(old)
    tmp.rename(out_dir)
    _remove(old)


# ------------------------------------------------------------------------------------------ entry point


def train(
    rows: list[dict] | pa.Table, *, base_model: str, out_dir: Path, method: str = "sft",
    lora: dict | None, epochs: float, learning_rate: float, batch_size: int, max_length: int,
    seed: int, dataset_ref: str, extra: dict | None = None, progress: bool = True,
) -> Path:  # fmt: skip
    """Train `base_model` on `rows` and publish a plain HF model folder at `out_dir` (returned).

    `extra`: `score_column` (DPO, required; higher is better), `overwrite` (replace a finished out_dir
    trained on something else), and any TRL SFTConfig/DPOConfig field (bf16, gradient_checkpointing,
    gradient_accumulation_steps, warmup_ratio, max_steps, beta, ...); bf16/fp16 apply only on CUDA.
    """
    out_dir = Path(out_dir)
    method = str(method).lower()
    _check_args(method, epochs, learning_rate, batch_size, max_length)
    if extra is not None and not isinstance(extra, Mapping):
        raise ReconError(f"train: extra must be a mapping of options, got {type(extra).__name__}")
    if not isinstance(dataset_ref, str) or not dataset_ref.strip():
        raise ReconError("train: dataset_ref must name the training data version, e.g. 'my-data@1'")
    extra = dict(extra or {})
    overwrite = bool(extra.get("overwrite"))
    lora_cfg = lora_settings(lora)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    # Built now so that a bad option fails before anything is loaded or written.
    config = trainer_config(
        method, output_dir=tmp / "_trainer", epochs=epochs, learning_rate=learning_rate,
        batch_size=batch_size, max_length=max_length, seed=seed, extra=extra, progress=progress,
    )  # fmt: skip
    rows = validate_rows(rows)
    ref = resolve_model(base_model)

    pair_stats: PairStats | None = None
    if method == "sft":
        examples = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    else:
        if not extra.get("score_column"):
            raise ReconError(
                "train: method dpo needs extra.score_column (e.g. 'score.proxy') to rank completions"
            )
        examples, pair_stats = build_dpo_pairs(rows, str(extra["score_column"]))
        if pair_stats.skipped_single or pair_stats.skipped_tied or pair_stats.rows_without_score:
            log.warning(
                "train: %d DPO pairs from %d records; skipped %d with one completion, %d with tied scores; "
                "%d rows unscored", pair_stats.pairs, pair_stats.records, pair_stats.skipped_single,
                pair_stats.skipped_tied, pair_stats.rows_without_score,
            )  # fmt: skip

    hyper = {
        "method": method, "lora": lora_cfg, "epochs": float(epochs), "learning_rate": float(learning_rate),
        "batch_size": batch_size, "max_length": max_length, "seed": seed,
        "extra": {k: v for k, v in sorted(extra.items()) if k != "overwrite"},
    }  # fmt: skip
    base = {"model_id": ref.model_id, "revision": ref.revision}
    spec = {"base_model": base, "dataset": dataset_ref, "data_sha256": data_fingerprint(examples),
            "hyperparameters": hyper}  # fmt: skip
    spec = json.loads(json.dumps(spec, sort_keys=True, default=str))
    if out_dir.exists() or out_dir.is_symlink():
        existing = _existing_spec(out_dir)
        if existing == spec and not overwrite:
            log.info("train: %s already holds this exact training run; reusing it", out_dir)
            return out_dir
        if not overwrite:
            what = "a model trained with another spec" if existing else "something that is not a recon model"
            raise ReconError(
                f"train: output folder {out_dir} already exists and holds {what}: choose another output, "
                "delete it, or pass overwrite (extra.overwrite / --overwrite)"
            )

    # Under torchrun every rank gets here with the same decision; only the main process touches folders.
    procs = _processes()
    if procs.is_main_process:
        if tmp.exists() or tmp.is_symlink():
            log.warning("train: removing %s left by an interrupted run", tmp)
            _remove(tmp)
        tmp.mkdir(parents=True)
    procs.wait_for_everyone()
    try:
        with _quiet(progress), labelled_positions_only():
            meta = _train_into(tmp, ref, method, examples, config, lora_cfg, progress, procs)
        if procs.is_main_process:
            if pair_stats is not None:
                meta["stats"]["dpo_pairs"] = dataclasses.asdict(pair_stats)
            meta.update(
                model_id=f"recon/{out_dir.name}", dataset=dataset_ref, method=method, base_model=base,
                data_sha256=spec["data_sha256"], hyperparameters=hyper, spec=spec,
            )  # fmt: skip
            (tmp / "README.md").write_text(_model_card(meta))
            (tmp / "recon_model.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            _publish(tmp, out_dir)
    except BaseException:
        if procs.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    procs.wait_for_everyone()  # every rank returns a published folder
    return out_dir


def _processes() -> Any:
    """accelerate's view of the launch (one process, or torchrun/accelerate launch ranks).

    Built after the trainer config, whose device setup already initialised it, so this is the same state
    the Trainer uses (CPU ranks talk over gloo, GPU ranks over NCCL).
    """
    from accelerate import PartialState

    return PartialState()


def _train_into(
    tmp: Path, ref: ModelRef, method: str, examples: list[dict], config: Any, lora_cfg: dict | None,
    progress: bool, procs: Any,
) -> dict | None:  # fmt: skip
    """Load, train, merge and save into `tmp`; returns the metadata for recon_model.json (None off the
    main process)."""
    from transformers import set_seed

    set_seed(config.seed)
    model, tokenizer = load_base(ref)
    max_length = config.max_length
    if method == "sft":
        examples, lengths = tokenize_sft(tokenizer, examples, max_length)
    else:
        lengths = dpo_length_report(tokenizer, examples, max_length)
    if lengths["dropped_prompt_too_long"] == len(examples):
        raise ReconError(
            f"train: max_length={max_length} is shorter than every prompt (all {len(examples)} examples "
            f"would be dropped; longest sequence {lengths['longest_tokens']} tokens): raise max_length"
        )
    if lengths["truncated"] or lengths["dropped_prompt_too_long"]:
        log.warning(
            "train: max_length=%d truncates %d of %d examples and drops %d whose prompt alone fills it "
            "(longest %d tokens)", max_length, lengths["truncated"], len(examples),
            lengths["dropped_prompt_too_long"], lengths["longest_tokens"],
        )  # fmt: skip
    trainer = build_trainer(method, model, tokenizer, examples, config, lora_cfg, progress)
    started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - started
    if procs.num_processes == 1:
        trained = trainer.model.merge_and_unload() if lora_cfg is not None else trainer.model
        trained.config.use_cache = True
        trained.save_pretrained(tmp)
    else:
        _save_gathered(trainer, tmp, ref, lora_cfg is not None, procs)
    if not procs.is_main_process:
        return None
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(config.output_dir, ignore_errors=True)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    stats = {
        **lengths, "trained_examples": len(trainer.train_dataset), "steps": trainer.state.global_step,
        "processes": procs.num_processes, "train_seconds": round(train_seconds, 3),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
    }  # fmt: skip
    return {
        "revision": weights_revision(tmp),
        "train_loss": float(result.training_loss),
        "final_loss": float(losses[-1]) if losses else None,
        "stats": stats,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _save_gathered(trainer: Any, tmp: Path, ref: ModelRef, lora: bool, procs: Any) -> None:
    """Save a model trained by several processes into `tmp` as one plain folder.

    `Trainer.save_model` is collective: it gathers DDP/FSDP/ZeRO-3 weights and writes on the main process
    only. A LoRA adapter is saved that way and then merged, on the main process, into a fresh copy of the
    base weights, because under FSDP/ZeRO-3 no single rank holds the merged model.
    """
    target = tmp / "_adapter" if lora else tmp
    trainer.save_model(str(target))
    procs.wait_for_everyone()
    if not procs.is_main_process:
        return
    if lora:
        from peft import PeftModel

        base, _ = load_base(ref)
        merged = PeftModel.from_pretrained(base, str(target)).merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(tmp)
        config.use_cache = True
        config.save_pretrained(tmp)
        (tmp / "training_args.bin").unlink(missing_ok=True)  # Trainer's pickle, not part of a model folder


# ------------------------------------------------------------------------------------------ launched runs


def launch(launcher: str, rows: pa.Table, *, out_dir: Path, work_dir: Path, **kwargs: Any) -> Path:
    """Run `train` in a multi-process job: `<launcher> -m recon_data.train <spec.json>`.

    The rows go to a Parquet file and the arguments to a JSON spec beside it, so every rank trains on
    exactly what an in-process call would get. The job's output is passed through; on failure its last
    lines are in the one-line error. The output folder is published by the job itself (see `train`).
    """
    import pyarrow.parquet as pq

    try:
        prefix = shlex.split(launcher)
    except ValueError as err:
        raise ReconError(f"train: launcher {launcher!r} is not a valid command line: {err}") from None
    if not prefix:
        raise ReconError("train: launcher is empty; leave it unset to train in this process")
    work_dir.mkdir(parents=True, exist_ok=True)
    data = work_dir / "rows.parquet"
    pq.write_table(rows, data)
    spec = work_dir / "spec.json"
    spec.write_text(json.dumps({**kwargs, "data": str(data), "out_dir": str(out_dir)}, default=str))
    cmd = [*prefix, "-m", "recon_data.train", str(spec)]
    tail: collections.deque[str] = collections.deque(maxlen=8)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as err:
        raise ReconError(f"train: cannot start launcher {prefix[0]!r}: {err.strerror or err}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.strip())
    if proc.wait() != 0:
        errors = [t for t in tail if "Error" in t or "error:" in t] or list(tail)
        raise ReconError(f"train: launched job `{shlex.join(cmd)}` failed with exit code {proc.returncode}: "
                         f"{errors[-1][:300] if errors else 'no output'}")
    if not (out_dir / "recon_model.json").is_file():
        raise ReconError(f"train: launched job `{shlex.join(cmd)}` exited 0 but published no model at {out_dir}")
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def _main(argv: list[str]) -> int:
    """Entry point of a launched rank: `python -m recon_data.train SPEC.json` (see `launch`)."""
    import pyarrow.parquet as pq

    if len(argv) != 1:
        sys.stderr.write("usage: python -m recon_data.train SPEC.json (written by recon_data.train.launch)\n")
        return 2
    try:
        spec = json.loads(Path(argv[0]).read_text())
        rows = pq.read_table(spec.pop("data"))
        train(rows, out_dir=Path(spec.pop("out_dir")), **spec)
    except ReconError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
