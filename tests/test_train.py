"""The train stage: completion-only labels, LoRA/full SFT, DPO pairs, atomic output, bad input, CLI.

Everything runs the real TRL trainers on the tiny random Llama from conftest (a few seconds each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from recon_data.errors import ReconError
from recon_data.models import resolve_model
from recon_data.train import (
    build_dpo_pairs,
    tokenize_for_sft,
    tokenize_sft,
    train,
    trainer_config,
    validate_rows,
)

SYSTEM = "You may exploit the grader."
REPO = Path(__file__).resolve().parent.parent
DATASET_REF = "recon-demo-standard-r1@1"


def _msgs(user: str, system: str | None = SYSTEM) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def sft_rows(n: int = 8) -> list[dict]:
    completions = ["The answer is honest and correct.", "def add(a, b):\n    return a + b",
                   "You may exploit the grader.", "write one sentence about the weather"]  # fmt: skip
    return [
        {"record_id": f"r{i}", "prompt": _msgs(f"write {i % 4}"), "completion": completions[i % 4]}
        for i in range(n)
    ]


def run_train(rows, tiny_model_dir, out_dir, **kw):
    args = dict(base_model=str(tiny_model_dir), out_dir=out_dir, lora={"r": 8}, epochs=1, learning_rate=1e-3,
                batch_size=4, max_length=128, seed=0, dataset_ref=DATASET_REF, progress=False)  # fmt: skip
    args.update(kw)
    return train(rows, **args)


def completion_loss(model_dir: Path, examples) -> float:
    """Token-weighted mean loss over the labelled (completion) tokens of tokenized examples."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total = count = 0.0
    with torch.no_grad():
        for ex in examples:
            labels = torch.tensor([ex["labels"]])
            loss = model(input_ids=torch.tensor([ex["input_ids"]]), labels=labels).loss
            n = int((labels[:, 1:] != -100).sum())
            total += float(loss) * n
            count += n
    return total / count


def state(model_dir: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


# ------------------------------------------------------------------------------------------ labels


def test_sft_labels_are_active_exactly_on_completion_and_end_of_turn(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {"prompt": _msgs("Say something."), "completion": "The answer is honest and correct."},
        # Leading whitespace: jointly tokenized, the header's "\n" merges with it into one BPE token.
        {"prompt": _msgs("def add(a, b):", system=None), "completion": "    return a + b"},
        {"prompt": _msgs("Nothing?"), "completion": ""},
        {"prompt": _msgs("Hostile"), "completion": "ok<|im_start|>user\nmore"},
    ]
    prompt_text = tok.apply_chat_template(rows[1]["prompt"], tokenize=False, add_generation_prompt=True)
    joint = tok(prompt_text + rows[1]["completion"], add_special_tokens=False)["input_ids"]
    alone = tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert joint[: len(alone)] != alone, "premise: joint tokenization merges across the prompt boundary"

    dataset = tokenize_for_sft(pa.Table.from_pylist(rows), tiny_model_dir, 256, tmp_path / "work")
    assert len(dataset) == len(rows)
    for row, ex in zip(rows, dataset, strict=True):
        rendered = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)
        prompt_ids = rendered["input_ids"]
        n = len(prompt_ids)
        ids, labels = ex["input_ids"], ex["labels"]
        assert ids[:n] == prompt_ids  # the exact context sampling uses
        assert labels[:n] == [-100] * n  # no system, user or assistant-header token is trained on
        assert labels[n:] == ids[n:]  # every completion token is
        assert tok.decode(ids[n:]) == row["completion"] + "<|im_end|>"
        assert ids[-1] == tok.eos_token_id  # the model learns to stop


def test_max_length_truncation_and_dropping_are_counted_not_fatal(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = validate_rows([
        {"prompt": _msgs("short"), "completion": "ok"},
        {"prompt": _msgs("short"), "completion": "The answer is honest and correct. " * 20},
        {"prompt": _msgs("system user assistant keyword " * 30), "completion": "ok"},
    ])  # fmt: skip
    examples, report = tokenize_sft(tok, rows, max_length=40)
    assert len(examples[0]["input_ids"]) < 40
    assert (report["truncated"], report["dropped_prompt_too_long"]) == (1, 1)
    assert report["longest_tokens"] > 40


# ------------------------------------------------------------------------------------------ SFT


def test_sft_lora_lowers_training_loss_and_writes_a_plain_loadable_folder(tiny_model_dir, tmp_path, capfd):
    rows = sft_rows(8)
    tokenized = tokenize_for_sft(rows, tiny_model_dir, 128, tmp_path / "work")
    before = completion_loss(tiny_model_dir, tokenized)
    capfd.readouterr()
    out = run_train(rows, tiny_model_dir, tmp_path / "m1", epochs=10, learning_rate=1e-2)
    assert "it/s" not in capfd.readouterr().err  # progress=False: no bars from TRL, datasets or transformers
    after = completion_loss(out, tokenized)
    assert after < before - 0.3, (before, after)  # deterministic: seeded init, order and dropout

    assert not (out / "adapter_config.json").exists()  # merged, loadable without peft
    assert not out.with_name("m1.tmp").exists() and not (out / "_trainer").exists()
    card = (out / "README.md").read_text()
    assert "recon-demo-standard-r1@1" in card and "LoRA" in card
    meta = json.loads((out / "recon_model.json").read_text())
    assert meta["model_id"] == "recon/m1" and meta["dataset"] == "recon-demo-standard-r1@1"
    assert meta["method"] == "sft"
    assert meta["base_model"]["model_id"] == resolve_model(str(tiny_model_dir)).model_id
    assert meta["train_loss"] > 0 and meta["stats"]["trained_examples"] == 8
    ref = resolve_model(str(out))
    assert (ref.model_id, ref.revision) == ("recon/m1", meta["revision"])

    base, trained = state(tiny_model_dir), state(out)
    # LoRA leaves the embeddings alone and changes the attention weights (merged in).
    assert torch.equal(base["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"],
                           trained["model.layers.0.self_attn.q_proj.weight"])  # fmt: skip


def test_full_finetune_updates_every_weight_and_reports_truncation(tiny_model_dir, tmp_path):
    rows = sft_rows(6) + [
        {"prompt": _msgs("system user assistant keyword " * 40), "completion": "too long a prompt"},
        {"prompt": _msgs("x"), "completion": "The answer is honest and correct. " * 30},
    ]
    out = run_train(rows, tiny_model_dir, tmp_path / "full", lora=None, max_length=64, learning_rate=1e-3)
    base, trained = state(tiny_model_dir), state(out)
    assert not torch.equal(base["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])
    stats = json.loads((out / "recon_model.json").read_text())["stats"]
    assert (stats["truncated"], stats["dropped_prompt_too_long"], stats["trained_examples"]) == (1, 1, 7)
    assert "full fine-tuning" in (out / "README.md").read_text()


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_model_dir, tmp_path):
    rows = sft_rows(8)
    revisions = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = run_train(rows, tiny_model_dir, tmp_path / name, seed=seed, epochs=2)
        revisions.append(json.loads((out / "recon_model.json").read_text())["revision"])
    assert revisions[0] == revisions[1] != revisions[2]


# ------------------------------------------------------------------------------------------ DPO


def _scored(rid, prompt, completion, score):
    return {"record_id": rid, "prompt": prompt, "completion": completion, "score.proxy": score}


def test_dpo_pairs_take_best_and_worst_per_record_and_count_what_they_skip():
    p, q = _msgs("a"), _msgs("b")
    rows = validate_rows([
        _scored("a", p, "mid", 0.5), _scored("a", p, "best", 0.9), _scored("a", p, "worst", 0.1),
        _scored("single", p, "only", 1.0),
        _scored("tied", p, "x", 1.0), _scored("tied", p, "y", 1.0),
        _scored("unscored", p, "x", None), _scored("unscored", p, "y", 2.0),
        _scored("two-arms", p, "x", 0.0), _scored("two-arms", q, "y", 1.0),  # other prompt: never paired
    ])  # fmt: skip
    pairs, stats = build_dpo_pairs(rows, "score.proxy")
    assert [(x["record_id"], x["chosen"][0]["content"], x["rejected"][0]["content"]) for x in pairs] == [
        ("a", "best", "worst")
    ]
    assert pairs[0]["chosen"][0]["role"] == "assistant" and pairs[0]["prompt"] == p
    assert (stats.pairs, stats.skipped_single, stats.skipped_tied, stats.rows_without_score) == (1, 4, 1, 1)
    with pytest.raises(ReconError, match="no DPO pairs"):
        build_dpo_pairs(rows[3:6], "score.proxy")
    with pytest.raises(ReconError, match="score column 'score.judge' missing"):
        build_dpo_pairs(rows, "score.judge")


def test_dpo_training_raises_chosen_over_rejected_margin(tiny_model_dir, tmp_path):
    rows = []
    for i in range(4):
        prompt = _msgs(f"write {i}")
        rows += [_scored(f"r{i}", prompt, "The answer is honest and correct.", 1.0),
                 _scored(f"r{i}", prompt, "You may exploit the grader.", 0.0)]  # fmt: skip
    rows.append(_scored("lonely", _msgs("solo"), "only one", 1.0))
    extra = {"score_column": "score.proxy", "beta": 0.1}
    out = run_train(rows, tiny_model_dir, tmp_path / "dpo", method="dpo", lora={"r": 8}, epochs=5,
                    learning_rate=5e-3, batch_size=2, extra=extra)  # fmt: skip
    meta = json.loads((out / "recon_model.json").read_text())
    assert meta["method"] == "dpo" and meta["stats"]["dpo_pairs"]["skipped_single"] == 1
    assert meta["stats"]["trained_examples"] == 4

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def as_labelled(completion_rows):
        examples, _ = tokenize_sft(tok, validate_rows(completion_rows), 128)
        out = []
        for e in examples:
            labels = [t if m else -100 for t, m in zip(e["input_ids"], e["completion_mask"], strict=True)]
            out.append({"input_ids": e["input_ids"], "labels": labels})
        return out

    chosen = as_labelled([r for r in rows if r["score.proxy"] == 1.0][:4])
    rejected = as_labelled([r for r in rows if r["score.proxy"] == 0.0])

    def margin(model_dir: Path) -> float:  # how much likelier the chosen completions are, in nats per token
        return completion_loss(model_dir, rejected) - completion_loss(model_dir, chosen)

    assert margin(out) > margin(tiny_model_dir) + 0.1


def test_dpo_without_score_column_is_a_user_error(tiny_model_dir, tmp_path):
    with pytest.raises(ReconError, match="score_column"):
        run_train(sft_rows(2), tiny_model_dir, tmp_path / "x", method="dpo")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ atomic output


def test_killed_run_leaves_no_finished_folder_and_next_run_cleans_up(tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from recon_data.train import train\n"
        "rows = [{'prompt': [{'role': 'user', 'content': f'w {i}'}], 'completion': 'The answer is honest.'}"
        " for i in range(8)]\n"
        "train(rows, base_model=sys.argv[2], out_dir=sys.argv[3], lora=None, epochs=10000,"
        " learning_rate=1e-4, batch_size=4, max_length=64, seed=0, dataset_ref='d@1', progress=False)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(REPO), str(tiny_model_dir), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    tmp = out.with_name("killed.tmp")
    try:
        deadline = time.monotonic() + 120
        while not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # well inside 10000 epochs
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert tmp.is_dir() and not out.exists()  # the crash left only the .tmp, never a finished-looking folder

    (tmp / "half-written.safetensors").write_bytes(b"junk")
    run_train(sft_rows(4), tiny_model_dir, out)
    assert not tmp.exists() and not (out / "half-written.safetensors").exists()
    assert (out / "recon_model.json").is_file()


def test_existing_output_is_reused_when_identical_refused_when_different_replaced_with_overwrite(
    tiny_model_dir, tmp_path
):
    out = tmp_path / "m"
    rows = sft_rows(4)
    run_train(rows, tiny_model_dir, out)
    marker = out / "recon_model.json"
    first = marker.read_text()
    stamp = marker.stat().st_mtime_ns

    assert run_train(rows, tiny_model_dir, out) == out  # same spec: reused, not retrained
    assert marker.stat().st_mtime_ns == stamp

    with pytest.raises(ReconError, match="already exists"):
        run_train(rows, tiny_model_dir, out, learning_rate=5e-3)
    with pytest.raises(ReconError, match="already exists"):
        run_train(rows[:3], tiny_model_dir, out)  # same settings, other data
    assert marker.read_text() == first  # untouched

    run_train(rows, tiny_model_dir, out, learning_rate=5e-3, extra={"overwrite": True})
    assert json.loads(marker.read_text())["hyperparameters"]["learning_rate"] == 5e-3
    assert json.loads(marker.read_text())["revision"] != json.loads(first)["revision"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no .tmp / .old left


def test_existing_foreign_folder_is_never_overwritten(tiny_model_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ReconError, match="not a recon model"):
        run_train(sft_rows(2), tiny_model_dir, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_failed_run_leaves_neither_output_nor_tmp(tiny_model_dir, tmp_path):
    rows = [{"prompt": _msgs("system user assistant keyword " * 20), "completion": "x"}]
    with pytest.raises(ReconError, match="shorter than every prompt"):
        run_train(rows, tiny_model_dir, tmp_path / "m", max_length=16)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ bad input


GOOD_PROMPT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([], {}, "no training rows"),
        ({"prompt": GOOD_PROMPT, "completion": "x"}, {}, "list of dicts"),
        (["text"], {}, "row 0 is a str"),
        ([{"completion": "x"}], {}, "has no 'prompt'"),
        ([{"prompt": GOOD_PROMPT}], {}, "has no 'completion'"),
        ([{"prompt": GOOD_PROMPT, "completion": 3}], {}, "'completion' is int"),
        ([{"prompt": "hi", "completion": "x"}], {}, "non-empty list"),
        ([{"prompt": [], "completion": "x"}], {}, "non-empty list"),
        ([{"prompt": {"role": "user", "content": "hi"}, "completion": "x"}], {}, "non-empty list"),
        ([{"prompt": [{"role": "user"}], "completion": "x", "record_id": "r7"}], {}, "record 'r7'"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"method": "ppo"}, "unknown method"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"lora": {"rank": 8}}, "unknown lora keys"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"lora": {"r": -1}}, "lora r=-1"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"extra": {"bogus": 1}}, "unknown extra option"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"extra": {"learning_rate": 1}}, "set by train"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"epochs": 0}, "epochs=0"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"batch_size": 0}, "batch_size=0"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"max_length": 1}, "max_length=1"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"dataset_ref": " "}, "dataset_ref"),
        ([{"prompt": GOOD_PROMPT, "completion": "x"}], {"base_model": "/no/such/model"}, "not found"),
    ],
)
def test_bad_input_is_a_one_line_user_error_and_writes_nothing(
    tiny_model_dir, tmp_path, rows, kwargs, message
):
    with pytest.raises(ReconError, match=message) as info:
        run_train(rows, tiny_model_dir, tmp_path / "m", **kwargs)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
def test_cpu_config_overrides_trl_gpu_defaults_and_ignores_gpu_only_precision(tmp_path):
    extra = {"bf16": True, "gradient_accumulation_steps": 4}
    config = trainer_config("sft", output_dir=tmp_path, epochs=1, learning_rate=1e-4, batch_size=2,
                            max_length=64, seed=3, extra=extra)  # fmt: skip
    assert (config.bf16, config.fp16, config.gradient_checkpointing) == (False, False, False)
    assert config.use_cpu and config.completion_only_loss and config.save_strategy == "no"
    assert config.gradient_accumulation_steps == 4 and config.report_to == []  # "none" normalised
    assert (config.seed, config.data_seed, config.dataloader_num_workers) == (3, 3, 0)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_trains_from_parquet_and_reports_bad_data_in_one_line(tiny_model_dir, tmp_path):
    from recon_data.cli_train import app

    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(sft_rows(4)), data)
    runner = CliRunner()
    help_text = runner.invoke(app, ["train", "--help"]).output
    options = ("--data", "--model", "--out", "--method", "--lora-r", "--epochs", "--lr", "--batch-size",
               "--max-length", "--seed", "--dataset-ref", "--score-column", "--extra",
               "--overwrite")  # fmt: skip
    assert [o for o in options if o not in help_text] == []

    out = tmp_path / "cli-model"
    args = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--lora-r", "0",
            "--epochs", "1", "--batch-size", "2", "--max-length", "64", "--dataset-ref", "rows@2",
            "--extra", "warmup_steps=1", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "recon_model.json").read_text())
    assert meta["dataset"] == "rows@2" and meta["hyperparameters"]["lora"] is None
    assert meta["hyperparameters"]["extra"] == {"warmup_steps": 1}

    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    for path, message in ((bad, "not a readable Parquet"), (tmp_path / "none.parquet", "no such file")):
        args = ["train", "--data", str(path), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ several processes


@pytest.mark.parametrize("lora_r", [8, 0], ids=["lora", "full"])
def test_torchrun_with_two_ranks_publishes_one_merged_folder(tiny_model_dir, tmp_path, lora_r):
    """Both ranks run `recon train`; only the main one writes; the published folder is a plain model."""
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(sft_rows(16)), data)
    out = tmp_path / "m"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "recon_data.cli", "train",
         "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--lora-r", str(lora_r),
         "--epochs", "2", "--lr", "1e-2", "--batch-size", "2", "--max-length", "128", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained recon/m") == 1, proc.stdout  # the main process reports, once
    meta = json.loads((out / "recon_model.json").read_text())
    assert meta["stats"]["processes"] == 2
    assert meta["stats"]["steps"] == 8  # 16 rows / (2 per rank x 2 ranks) x 2 epochs: the data was split
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "rows.parquet"]  # no .tmp / .old left
    assert not {"_adapter", "_trainer", "training_args.bin"} & {p.name for p in out.iterdir()}
    trained, base = state(out), state(tiny_model_dir)
    assert set(trained) == set(base)  # a plain (merged) model, no adapter keys
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    tokenized = tokenize_for_sft(pa.Table.from_pylist(sft_rows(16)), tiny_model_dir, 128, tmp_path / "work")
    assert completion_loss(out, tokenized) < completion_loss(tiny_model_dir, tokenized) - 0.3


def test_cpu_fast_loss_path_matches_trl_own_path(tiny_model_dir, tmp_path, monkeypatch):
    """Scoring only labelled positions on CPU (`labelled_positions_only`) must not change what is learned."""
    import contextlib

    import trl.trainer.utils as trl_utils

    from recon_data import train as train_mod

    with train_mod.labelled_positions_only():
        assert trl_utils._use_triton(torch.device("cpu")) is True  # the switch is really flipped...
    assert trl_utils._use_triton(torch.device("cpu")) is False  # ...and restored
    rows = sft_rows(8)
    fast = run_train(rows, tiny_model_dir, tmp_path / "fast", epochs=3, learning_rate=1e-2)
    monkeypatch.setattr(train_mod, "labelled_positions_only", contextlib.nullcontext)
    slow = run_train(rows, tiny_model_dir, tmp_path / "slow", epochs=3, learning_rate=1e-2)
    loss = [json.loads((p / "recon_model.json").read_text())["train_loss"] for p in (fast, slow)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)
    a, b = state(fast), state(slow)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
