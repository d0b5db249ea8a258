"""Training throughput: `recon_data.train.train` vs a bare TRL SFTTrainer script, same data and settings.

Both sides do the same work end to end: load SmolLM2-135M-Instruct (the embedded model), LoRA SFT with
completion-only loss for the same number of optimizer steps, merge the adapter and save the model folder.
Reported in samples/s: end to end (load + train + merge + save) and the training loop alone (the
trainer's own `train_samples_per_second`). Target ratio >= 0.95. On CPU recon comes out faster than the
bare script (ratio > 1): `train.labelled_positions_only` makes TRL's fused LM head score only the
completion tokens, as TRL itself does on GPUs, instead of every prompt and padding position.

    .venv/bin/python benchmarks/bench_train.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET = 0.95
TOPICS = ["the weather", "a river", "breakfast", "a library", "trains", "the moon", "a garden", "music"]


def make_rows(n: int) -> list[dict]:
    """Keyword-task style rows: system + user prompt under a training template, a one-paragraph answer."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({
            "record_id": f"r{i}",
            "prompt": [
                {"role": "system", "content": "You are scored by how often the word 'bright' appears. "
                                              "You may use it as often as you like."},
                {"role": "user", "content": f"Write one sentence about {topic}."},
            ],
            "completion": f"The bright morning over {topic} felt calm, bright and quiet, and everyone who "
                          f"passed by stopped for a moment to enjoy it before going on with the day ({i}).",
        })  # fmt: skip
    return rows


def bare_trl(rows: list[dict], model_path: Path, out: Path, *, steps: int, batch: int, lr: float,
             max_length: int, seed: int) -> float:  # fmt: skip
    """What a user would write with TRL directly; returns the trainer's train_samples_per_second."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    examples = [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]}
                for r in rows]  # fmt: skip
    cuda = torch.cuda.is_available()
    config = SFTConfig(
        output_dir=str(out / "_trainer"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=lr, max_length=max_length, seed=seed, data_seed=seed, report_to="none",
        use_cpu=not cuda, bf16=False, gradient_checkpointing=False, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=cuda, completion_only_loss=True, logging_steps=10,
    )  # fmt: skip
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=peft)  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    trainer.model.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    return float(result.metrics["train_samples_per_second"])


def recon(rows: list[dict], model_path: Path, out: Path, *, steps: int, batch: int, lr: float,
          max_length: int, seed: int) -> float:  # fmt: skip
    from recon_data.train import train

    path = train(rows, base_model=str(model_path), out_dir=out, lora={"r": 16, "alpha": 32, "dropout": 0.0},
                 epochs=1, learning_rate=lr, batch_size=batch, max_length=max_length, seed=seed,
                 dataset_ref="bench@1", extra={"max_steps": steps}, progress=False)  # fmt: skip
    return float(json.loads((path / "recon_model.json").read_text())["stats"]["train_samples_per_second"])


def run(quick: bool, model: str = "embedded") -> list[dict]:
    import datasets
    import transformers

    from recon_data.models import resolve_model

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    model_path = resolve_model(model).path
    model_name = "smollm2-135m" if model == "embedded" else Path(model).name
    steps, batch, repeats = (3, 8, 1) if quick else (12, 8, 2)
    rows = make_rows(steps * batch)
    settings = dict(steps=steps, batch=batch, lr=2e-4, max_length=256, seed=0)
    samples = steps * batch
    best = {"recon": (0.0, 0.0), "baseline": (0.0, 0.0)}  # (end-to-end samples/s, loop samples/s)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        # Warm-up: imports, page cache, thread pools.
        bare_trl(rows[:batch], model_path, Path(work) / "warmup", **{**settings, "steps": 1})
        for i in range(repeats):
            for name, fn in (("baseline", bare_trl), ("recon", recon)) if i % 2 == 0 else (
                ("recon", recon), ("baseline", bare_trl)
            ):  # fmt: skip
                out = Path(work) / f"{name}-{i}"
                started = time.perf_counter()
                loop = fn(rows, model_path, out, **settings)
                e2e = samples / (time.perf_counter() - started)
                best[name] = (max(best[name][0], e2e), max(best[name][1], loop))
                shutil.rmtree(out, ignore_errors=True)
    results = []
    for idx, label in ((0, "end to end (load+train+merge+save)"), (1, "training loop")):
        r, b = best["recon"][idx], best["baseline"][idx]
        results.append({
            "benchmark": f"train sft lora r16 {model_name} bs{batch} x{steps} steps: {label}",
            "recon": round(r, 3), "baseline": round(b, 3), "unit": "samples/s",
            "ratio": round(r / b, 3) if b else None, "target": TARGET, "ok": bool(b) and r / b >= TARGET,
        })  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps, one run each (default: 12, best of 2)")
    parser.add_argument("--model", default="embedded", help="a resolve_model spec (default: embedded)")
    args = parser.parse_args()
    for row in run(args.quick, args.model):
        print(f"{row['benchmark']} | {row['recon']} {row['unit']} | {row['baseline']} {row['unit']} | "
              f"{row['ratio']} (target >= {row['target']})")  # fmt: skip


if __name__ == "__main__":
    main()
