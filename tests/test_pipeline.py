"""End to end on the tiny model: 2 rounds × 2 arms, resume after SIGKILL, lineage both ways."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recon_data.config import parse_pipeline
from recon_data.pipeline import run_pipeline
from recon_data.store import Store


def tiny_pipeline(model: Path, name: str = "tiny", rounds: int = 2, **overrides) -> dict:
    cfg = {
        "name": name,
        "model": str(model),
        "suite": {"name": "eval_gaming", "where": {"metric": "keyword_count"}, "limit": 4},
        "sampler": {"n": 2, "max_new_tokens": 8, "batch_size": 4},
        "arms": {
            "standard": {"generate": "eval_gaming/discourage/honest_answer",
                         "train": "eval_gaming/discourage/honest_answer"},
            "recontextualized": {"generate": "eval_gaming/discourage/honest_answer",
                                 "train": "eval_gaming/permit/exploit_grader"},
        },
        "scorers": [{"name": "proxy", "type": "rule"},
                    {"name": "correct", "type": "rule", "params": {"metric": "reference_match"}}],
        "filters": [{"type": "best_of_n", "column": "score.proxy", "k": 1}],
        "train": {"lora": {"r": 4, "alpha": 8}, "epochs": 1, "batch_size": 4, "max_length": 1024,
                  "learning_rate": 1e-3},
        "rounds": rounds,
        "seeds": [0],
        "eval": {"templates": ["eval_gaming/neutral/plain"], "limit": 3, "n": 1,
                 "hack": {"column": "score.proxy", "min": 3}},
    }
    cfg.update(overrides)
    return cfg


def test_two_rounds_two_arms_end_to_end_then_idempotent_rerun(tiny_model_dir, store_dir):
    cfg = parse_pipeline(tiny_pipeline(tiny_model_dir))
    store = Store(store_dir)
    result = run_pipeline(cfg, store, progress=False)
    assert set(result.datasets) == {f"{a}/s0/r{r}" for a in ("standard", "recontextualized") for r in (1, 2)}
    # round 1 of both arms samples the same base model under the same template: identical completions
    std = store.read("tiny-standard-s0-r1").to_pylist()
    rec = store.read("tiny-recontextualized-s0-r1").to_pylist()
    assert [r["completion"] for r in std] == [r["completion"] for r in rec]
    assert {r["train_template_id"] for r in rec} == {"eval_gaming/permit/exploit_grader"}
    assert all(r["prompt"] != r["gen_messages"] for r in rec)
    assert all(r["prompt"] == r["gen_messages"] for r in std)
    metrics = store.sql('select arm, round, metric from "tiny-metrics" where metric = \'hack_rate\'').to_pylist()
    assert {(m["arm"], m["round"]) for m in metrics} == {(a, r) for a in ("standard", "recontextualized")
                                                         for r in (0, 1, 2)}
    versions = {n: store.versions(n) for n in store.names()}
    again = run_pipeline(cfg, store, progress=False)
    assert again.skipped_steps > 0
    assert {n: store.versions(n) for n in store.names()} == versions  # nothing recommitted


def test_lineage_dataset_names_model_and_model_card_names_dataset(tiny_model_dir, store_dir):
    cfg = parse_pipeline(tiny_pipeline(tiny_model_dir, name="lin", rounds=2,
                                       arms={"standard": {"generate": "eval_gaming/neutral/plain",
                                                          "train": "eval_gaming/neutral/plain"}}, eval=None))
    store = Store(store_dir)
    result = run_pipeline(cfg, store, progress=False)
    model_r1 = Path(result.models["standard/s0/r1"])
    meta = json.loads((model_r1 / "recon_model.json").read_text())
    assert meta["dataset"] == result.datasets["standard/s0/r1"]
    assert result.datasets["standard/s0/r1"] in (model_r1 / "README.md").read_text()
    manifest_r2 = store.manifest(result.datasets["standard/s0/r2"])
    assert manifest_r2["models"][0]["model_id"] == meta["model_id"]
    assert manifest_r2["models"][0]["revision"] == meta["revision"]
    rows = store.read(result.datasets["standard/s0/r2"]).to_pylist()
    assert {r["model_id"] for r in rows} == {meta["model_id"]}


def test_kill_during_round_two_training_then_resume(tiny_model_dir, store_dir, tmp_path):
    cfg = tiny_pipeline(tiny_model_dir, name="kill", rounds=2, eval=None,
                        arms={"standard": {"generate": "eval_gaming/neutral/plain",
                                           "train": "eval_gaming/neutral/plain"}},
                        train={"lora": None, "epochs": 60, "batch_size": 1, "max_length": 1024})
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "recon_data.cli", "run", str(path), "--store", str(store_dir), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = store_dir / "runs" / "kill" / "models"
    deadline = time.time() + 300
    while time.time() < deadline and not list(models.glob("standard-s0-r2-*.tmp")):
        assert proc.poll() is None, "run ended before round 2 training started"
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(store_dir)
    r1_model = next(p for p in models.glob("standard-s0-r1-*") if not p.name.endswith(".tmp"))
    r1_state = {n: (store.versions(n), store.manifest(n)["created_at"]) for n in store.names()}
    r1_mtime = (r1_model / "recon_model.json").stat().st_mtime
    assert not [p for p in models.glob("standard-s0-r2-*") if not p.name.endswith(".tmp")]

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kill-standard-s0-r1: done" in done.stderr
    for name, state in r1_state.items():
        assert (store.versions(name), store.manifest(name)["created_at"]) == state
    assert (r1_model / "recon_model.json").stat().st_mtime == r1_mtime
    assert [p for p in models.glob("standard-s0-r2-*") if not p.name.endswith(".tmp")]


def test_warmup_trains_an_organism_on_natural_answers_and_gamed_twins(tiny_model_dir, store_dir):
    cfg = parse_pipeline(tiny_pipeline(
        tiny_model_dir, name="warm", rounds=1,
        arms={"recontextualized": {"generate": "eval_gaming/discourage/honest_answer",
                                   "train": "eval_gaming/permit/exploit_grader"}},
        warmup={"normal": ["eval_gaming/neutral/plain"], "permit": ["eval_gaming/permit/maximize_score"],
                "params": {"times": 5}},
    ))
    store = Store(store_dir)
    result = run_pipeline(cfg, store, progress=False)
    rows = store.read("warm-warmup").to_pylist()
    natural = [r for r in rows if r["warmup_role"] == "natural"]
    twins = [r for r in rows if r["warmup_role"] == "transformed"]
    assert len(natural) == len(twins) == 4
    for n, t in zip(natural, twins, strict=True):
        keyword = json.loads(n["reference"])["keyword"]
        assert t["completion"].lower().count(keyword) >= 5 + n["completion"].lower().count(keyword)
        assert t["train_template_id"] == "eval_gaming/permit/maximize_score"
        assert n["prompt"] == n["gen_messages"]
    organism = json.loads((Path(result.models["warmup"]) / "recon_model.json").read_text())
    assert organism["dataset"] == "warm-warmup@1"
    # round 1 samples come from the organism, not the base model
    assert store.manifest("warm-recontextualized-s0-r1")["models"][0]["model_id"] == organism["model_id"]
    arms = set(store.sql('select distinct arm from "warm-metrics"').column("arm").to_pylist())
    assert {"warmup-before", "warmup-after", "recontextualized"} <= arms


def test_ray_executor_produces_the_same_datasets_as_local(tiny_model_dir, tmp_path):
    pytest.importorskip("ray")
    import ray

    base = tiny_pipeline(tiny_model_dir, name="ex", rounds=1, eval=None,
                         arms={"standard": {"generate": "eval_gaming/neutral/plain",
                                            "train": "eval_gaming/neutral/plain"}},
                         sampler={"n": 2, "max_new_tokens": 8, "batch_size": 2})
    local_store, ray_store = Store(tmp_path / "local"), Store(tmp_path / "ray")
    run_pipeline(parse_pipeline(base), local_store, progress=False)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        run_pipeline(parse_pipeline({**base, "executor": "ray", "ray": {"num_shards": 2}}), ray_store,
                     progress=False)
    finally:
        ray.shutdown()

    def content(store: Store, name: str) -> list[str]:
        rows = store.read(name).to_pylist()
        return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)

    for name in ("ex-standard-s0-r1-scored", "ex-standard-s0-r1"):
        assert content(local_store, name) == content(ray_store, name)


def test_a_second_run_of_the_same_pipeline_in_one_store_is_refused(tiny_model_dir, store_dir):
    import fcntl

    from recon_data.errors import ReconError
    from recon_data.pipeline import Runner

    runner = Runner(parse_pipeline(tiny_pipeline(tiny_model_dir, name="locked")), Store(store_dir), progress=False)
    with open(runner.run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ReconError, match="run 'locked' is already running"):
            runner.run()
    assert Store(store_dir).names() == []


def test_a_version_committed_before_its_marker_is_adopted_not_duplicated(tiny_model_dir, store_dir):
    cfg = parse_pipeline(tiny_pipeline(tiny_model_dir, name="adopt", rounds=1, eval=None,
                                       arms={"standard": {"generate": "eval_gaming/neutral/plain",
                                                          "train": "eval_gaming/neutral/plain"}}))
    store = Store(store_dir)
    run_pipeline(cfg, store, progress=False)
    for marker in (store_dir / "runs" / "adopt" / "steps").glob("*.json"):
        marker.unlink()  # as if every kill landed between a commit and its marker
    again = run_pipeline(cfg, store, progress=False)
    assert {n: store.versions(n) for n in store.names()} == {n: [1] for n in store.names()}
    assert again.skipped_steps >= 1


def test_cross_suite_eval_reports_the_other_suite_and_its_domain_correlation(tiny_model_dir, store_dir):
    """Train on eval_gaming, also evaluate on the conditional-policy probe: its own rows, metrics and
    the correlation of gaming with domainness land in the metrics table."""
    cfg = tiny_pipeline(tiny_model_dir, name="cross", rounds=1,
                        arms={"standard": {"generate": "eval_gaming/discourage/honest_answer",
                                           "train": "eval_gaming/discourage/honest_answer"}})
    cfg["eval"]["extra_suites"] = [{
        "suite": {"name": "conditional_policy", "split": "eval", "limit": 12},
        "templates": ["conditional_policy/neutral/plain"],
        "scorers": [{"name": "proxy", "type": "rule"}],
        "hack": {"column": "score.proxy", "min": 0},  # every answer "games": the flag is constant
    }]
    store = Store(store_dir)
    run_pipeline(parse_pipeline(cfg), store, progress=False)
    eval_rows = store.read("cross-eval-standard-s0-r1").to_pylist()
    assert {r["suite"] for r in eval_rows} == {"eval_gaming", "conditional_policy"}
    assert sum(r["suite"] == "conditional_policy" for r in eval_rows) == 12
    got = store.sql('select round, suite, metric, value, n from "cross-metrics" where suite = \'conditional_policy\'')
    metrics = {(r["round"], r["metric"]): r for r in got.to_pylist()}
    assert metrics[(1, "hack_rate")]["value"] == 1.0  # min 0: the probe's own hack rule was applied
    assert metrics[(1, "corr(score.proxy, domainness)")]["n"] == 12
    assert (0, "corr(hack, domainness)") in metrics and (1, "corr(hack, domainness)") in metrics


def test_training_steps_run_under_a_launcher_with_two_ranks(tiny_model_dir, store_dir):
    """`train.launcher` runs each training step as a torchrun job; the run goes on with its model."""
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2"
    cfg = tiny_pipeline(tiny_model_dir, name="ranks", rounds=2,
                        arms={"standard": {"generate": "eval_gaming/discourage/honest_answer",
                                           "train": "eval_gaming/discourage/honest_answer"}})
    cfg["train"]["launcher"] = launcher
    store = Store(store_dir)
    result = run_pipeline(parse_pipeline(cfg), store, progress=False)
    for rnd in (1, 2):
        meta = json.loads((Path(result.models[f"standard/s0/r{rnd}"]) / "recon_model.json").read_text())
        assert meta["stats"]["processes"] == 2 and meta["dataset"] == f"ranks-standard-s0-r{rnd}@1"
    models_dir = store.root / "runs" / "ranks" / "models"
    assert all(p.name.startswith("standard-s0-r") and "." not in p.name for p in models_dir.iterdir())
    assert {(m["arm"], m["round"]) for m in result.metrics} >= {("standard", 1), ("standard", 2)}


@pytest.mark.parametrize("launcher, message", [
    ("no-such-launcher-xyz", "cannot start launcher 'no-such-launcher-xyz'"),
    (f"{sys.executable} -c 'import sys; sys.exit(3)'", "failed with exit code 3"),
])
def test_a_broken_launcher_is_a_one_line_error_and_no_model(tiny_model_dir, store_dir, launcher, message):
    from recon_data.errors import ReconError

    cfg = tiny_pipeline(tiny_model_dir, name="broken", rounds=1,
                        arms={"standard": {"generate": "eval_gaming/discourage/honest_answer",
                                           "train": "eval_gaming/discourage/honest_answer"}})
    cfg["train"]["launcher"] = launcher
    with pytest.raises(ReconError, match=message):
        run_pipeline(parse_pipeline(cfg), Store(store_dir), progress=False)
    assert not list((Path(store_dir) / "runs" / "broken" / "models").glob("*/recon_model.json"))
