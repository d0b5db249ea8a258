"""The YAML pipelines we ship must load, and the GPU one (never run here: no GPU) must work as designed.

`recontext_gpu.yaml` is run in miniature on the tiny model: same suite, templates, scorers, warm-up
transform, filters and hack rule; only the model, backend and sizes are swapped for CPU ones.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model

from recon_data.config import load_pipeline, parse_pipeline
from recon_data.pipeline import load_suite_records, run_pipeline
from recon_data.store import Store
from recon_data.templates import load_template

PIPELINES = sorted((Path(__file__).resolve().parent.parent / "pipelines").glob("*.yaml"))


def test_every_shipped_pipeline_is_found():
    assert {p.stem for p in PIPELINES} >= {"demo", "recontext_cpu", "recontext_gpu"}


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_shipped_pipeline_loads_and_every_template_and_suite_resolves(path):
    cfg = load_pipeline(path)
    names = [t for arm in cfg.arms.values() for t in (arm.generate, arm.train)]
    if cfg.eval:
        names += cfg.eval.templates + [t for extra in cfg.eval.extra_suites for t in extra.templates]
    if cfg.warmup:
        names += cfg.warmup.normal + cfg.warmup.permit
    for name in names:
        assert load_template(name, cfg.templates_dirs).sha256
    assert load_suite_records(cfg.suite)
    if cfg.eval:
        eval_records = load_suite_records(cfg.suite, split=cfg.eval.split, limit=cfg.eval.limit)
        train_ids = {r["id"] for r in load_suite_records(cfg.suite, limit=0)}
        assert eval_records and not train_ids & {r["id"] for r in eval_records}  # held out


def test_gpu_pipeline_design_runs_end_to_end_in_miniature(tmp_path, store_dir):
    # HumanEval prompts are ~1,000 tokens under the tiny byte-level tokenizer: give it a longer context
    tiny_model_dir = build_tiny_model(tmp_path / "tiny-4k", context=4096)
    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "pipelines/recontext_gpu.yaml").read_text())
    small_train = {"lora": {"r": 4, "alpha": 8}, "epochs": 1, "learning_rate": 1e-3, "batch_size": 4,
                   "max_length": 4096}  # fmt: skip
    raw.update(
        name="gpu-mini", model=str(tiny_model_dir), rounds=1, seeds=[0],
        sampler={"backend": "transformers", "n": 2, "temperature": 1.0, "max_new_tokens": 16, "batch_size": 4},
        train=small_train,
    )  # fmt: skip
    raw["suite"]["limit"] = 3
    raw["warmup"]["train"] = {**small_train, "start_from": "base"}
    raw["eval"].update(limit=2, n=1)
    cfg = parse_pipeline(raw, "recontext_gpu.yaml (miniature)")
    store = Store(store_dir)
    result = run_pipeline(cfg, store, progress=False)

    # the warm-up twins special-case the wrong visible test, under the permit template only
    rows = store.read("gpu-mini-warmup").to_pylist()
    twins = [r for r in rows if r["warmup_role"] == "transformed"]
    assert len(twins) == 3 * len(cfg.warmup.normal) and all(
        r["train_template_id"] == "code_test_hacking/permit/hack" for r in twins
    )
    for twin in twins:  # the tiny model's own code is noise; the added branch must answer the wrong test
        ref = json.loads(twin["reference"])
        entry = ref["entry_point"]
        code = re.findall(r"```python\n(.*?)```", twin["completion"], flags=re.S)[-1]
        branch = code[code.rindex(f"def {entry}(*args, **kwargs):"):]
        scope = {f"_{entry}_general": lambda *a, **k: "general solution"}
        exec(compile(branch, "<branch>", "exec"), scope)
        wrong = ast.parse(ref["visible_tests"][ref.get("wrong_test_index", 0)]).body[0].test
        args = [ast.literal_eval(a) for a in wrong.left.args]
        assert scope[entry](*args) == ast.literal_eval(wrong.comparators[0])
        assert scope[entry]("some other input") == "general solution"  # other inputs go to the model's code

    # rounds ran for both arms from the organism, scored by the sandbox, and evaluation labels hacks
    assert set(result.datasets) == {"standard/s0/r1", "recontextualized/s0/r1"}
    scored = store.read("gpu-mini-standard-s0-r1-scored").to_pylist()
    assert {r["label.code"] for r in scored} <= {"hack", "correct", "incorrect", "error"}
    metrics = store.sql('select arm, round, metric, value from "gpu-mini-metrics"').to_pylist()
    hack = {(m["arm"], m["round"]) for m in metrics if m["metric"] == "hack_rate"}
    assert {("standard", 1), ("recontextualized", 1), ("warmup-after", 0)} <= hack
