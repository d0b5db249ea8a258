"""`recon report`: numbers, CIs and files from a hand-built metrics table committed to a real store."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pyarrow as pa
import pytest
from matplotlib.image import imread

from recon_data.errors import ReconError
from recon_data.report import differences, load_metrics, summarize, write_report, write_report_files
from recon_data.store import Store

RUN = "toy"
SUITE, TEMPLATE = "code_test_hacking", "code_test_hacking/neutral/plain"
T_975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom
SEEDS, ROUNDS, ARMS = (0, 1, 2), (0, 1, 2), ("standard", "recontextualized")
# Per-seed differences (recontextualized − standard) at the last round: one metric's CI covers 0, one's does not.
HACK_DIFF = {0: 0.10, 1: 0.20, 2: 0.30}
SCORE_DIFF = {0: 0.10, 1: 0.11, 2: 0.12}


def _value(metric: str, arm: str, seed: int, rnd: int) -> float:
    base = (0.2 if metric == "hack_rate" else 1.0) + 0.01 * seed  # round 0: the base model, same in every arm
    if rnd == 0:
        return base
    value = base + 0.05 * rnd * (seed + 1)
    if arm == "recontextualized" and rnd == ROUNDS[-1]:
        value += (HACK_DIFF if metric == "hack_rate" else SCORE_DIFF)[seed]
    return value


def _rows(seeds=SEEDS) -> list[dict]:
    rows = []
    for seed in seeds:
        for arm in ARMS:
            for rnd in ROUNDS:
                for metric in ("hack_rate", "mean score.proxy", "share label.code=hack"):
                    v = _value(metric, arm, seed, rnd)
                    rows.append({"run": RUN, "round": rnd, "seed": seed, "arm": arm,
                                 "model_id": "base-model" if rnd == 0 else f"{arm}-s{seed}-r{rnd}",
                                 "model_revision": "abc123", "eval_dataset": f"{RUN}-eval-{arm}-s{seed}-r{rnd}@1",
                                 "suite": SUITE, "eval_template": TEMPLATE, "metric": metric, "value": v,
                                 "ci_low": v - 0.05, "ci_high": v + 0.07, "n": 40})
    return rows


PIPELINE = {"name": RUN, "description": "Toy run: does relabelling lower the hack rate?", "model": "embedded",
            "suite": {"name": SUITE},
            "arms": {"standard": {"generate": "code_test_hacking/neutral/plain",
                                  "train": "code_test_hacking/neutral/plain"},
                     "recontextualized": {"generate": "code_test_hacking/discourage/no_hack",
                                          "train": "code_test_hacking/permit/hack"}}}


@pytest.fixture()
def store(store_dir) -> Store:
    s = Store(store_dir)
    s.commit(f"{RUN}-metrics", pa.Table.from_pylist(_rows()), pipeline=PIPELINE)
    return s


def _table_rows(markdown: str, metric: str) -> list[str]:
    section = markdown.split(f"## {metric} — ")[1].split("\n## ")[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| arm")]


def test_report_writes_markdown_plots_and_csv_into_the_run_folder(store):
    report = write_report(store, RUN)
    out = store.root / "runs" / RUN / "report"
    assert report == out / "report.md"
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # something was drawn
        assert f"]({png.name})" in report.read_text()
    assert (out / "summary.csv").is_file()
    assert not (out / "report.html").exists()
    assert not list(out.glob(".*tmp"))


def test_markdown_table_holds_the_mean_over_seeds_of_every_arm_and_round(store):
    text = write_report(store, RUN).read_text()
    for metric in ("hack_rate", "mean score.proxy"):
        lines = _table_rows(text, metric)
        assert len(lines) == len(ARMS) * len(ROUNDS)
        for arm in ARMS:
            for rnd in ROUNDS:
                mean = statistics.mean(_value(metric, arm, s, rnd) for s in SEEDS)
                assert any(line.startswith(f"| {arm} | {rnd} | {mean:.4g} | [") and line.endswith("| 3 |")
                           for line in lines), (metric, arm, rnd, mean)


def test_ci_over_seeds_is_the_student_t_interval(store):
    cell = next(s for s in summarize(load_metrics(store, RUN))
                if (s["metric"], s["arm"], s["round"]) == ("hack_rate", "standard", 2))
    values = [_value("hack_rate", "standard", s, 2) for s in SEEDS]
    half = T_975_DF2 * statistics.stdev(values) / math.sqrt(3)
    assert cell["mean"] == pytest.approx(statistics.mean(values))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((cell["mean"] - half, cell["mean"] + half))
    assert cell["n_seeds"] == 3


def test_difference_ci_comes_from_per_seed_differences_and_is_read_in_plain_words(store):
    diffs = {d["metric"]: d for d in differences(load_metrics(store, RUN))}
    hack, score = diffs["hack_rate"], diffs["mean score.proxy"]
    assert (hack["arm"], hack["baseline"], hack["round"]) == ("recontextualized", "standard", 2)
    half = T_975_DF2 * 0.1 / math.sqrt(3)  # sd of [0.1, 0.2, 0.3] is 0.1
    assert (hack["difference"], hack["ci_low"], hack["ci_high"]) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    assert hack["verdict"] == "difference not distinguishable from 0 at 95%"
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert (score["difference"], score["ci_low"], score["ci_high"]) == pytest.approx((0.11, 0.11 - half, 0.11 + half))
    assert score["verdict"].startswith("difference distinguishable from 0 at 95% (above")
    text = write_report(store, RUN).read_text()
    assert (f"**Round 2: recontextualized − standard = 0.2 [{0.2 - T_975_DF2 * 0.1 / math.sqrt(3):.4g}, "
            f"{0.2 + T_975_DF2 * 0.1 / math.sqrt(3):.4g}]** over 3 seed(s)") in text
    assert "difference not distinguishable from 0 at 95%." in _section(text, "hack_rate")


def _section(text: str, metric: str) -> str:
    return text.split(f"## {metric} — ")[1].split("\n## ")[0]


def test_header_names_run_description_arm_templates_models_and_creation_time(store):
    text = write_report(store, RUN).read_text()
    head = text.split("\n## ")[0]
    assert head.startswith(f"# Report: {RUN}\n")
    assert PIPELINE["description"] in head
    assert "| recontextualized | `code_test_hacking/discourage/no_hack` | `code_test_hacking/permit/hack` |" in head
    assert "- base model: `embedded` → `base-model` (abc123)" in head
    assert "- recontextualized models at round 2: `recontextualized-s0-r2`, `recontextualized-s1-r2`" in head
    assert store.manifest(f"{RUN}-metrics")["created_at"] in head


def test_one_seed_uses_the_rows_own_ci(store_dir):
    rows = _rows(seeds=(0,))
    summary = summarize(rows)
    cell = next(s for s in summary if (s["metric"], s["arm"], s["round"]) == ("hack_rate", "standard", 1))
    v = _value("hack_rate", "standard", 0, 1)
    assert (cell["mean"], cell["ci_low"], cell["ci_high"], cell["n_seeds"]) == pytest.approx((v, v - 0.05, v + 0.07, 1))
    diff = next(d for d in differences(rows) if d["metric"] == "hack_rate")
    assert diff["difference"] == pytest.approx(0.1)
    assert diff["ci_high"] - diff["difference"] == pytest.approx(math.sqrt(2 * 0.06**2))


def test_one_seed_interval_that_misses_its_value_by_rounding_still_plots(store_dir, tmp_path):
    rows = _rows(seeds=(0,))
    for r in rows:
        if r["metric"] == "hack_rate":  # what evaluate.wilson_ci gives for 0 of 3: a lower bound of 5.6e-17
            r.update(value=0.0, ci_low=5.551115123125783e-17, ci_high=0.5615)
    store = Store(store_dir)
    store.commit(f"{RUN}-metrics", pa.Table.from_pylist(rows))
    write_report(store, RUN, tmp_path)
    assert imread(next(tmp_path.glob("*hack_rate.png"))).shape[0] > 100


def test_null_and_nan_values_are_left_out_of_the_seed_mean():
    rows = _rows()
    target = [r for r in rows if (r["metric"], r["arm"], r["round"]) == ("hack_rate", "standard", 1)]
    target[0]["value"], target[1]["value"] = None, math.nan
    cell = next(s for s in summarize(rows) if (s["metric"], s["arm"], s["round"]) == ("hack_rate", "standard", 1))
    assert cell["n_seeds"] == 1 and cell["seeds"] == [target[2]["seed"]]


def test_html_format_writes_report_html_too(store, tmp_path):
    paths = write_report_files(store, RUN, tmp_path / "out", "html")
    html = (tmp_path / "out" / "report.html").read_text()
    assert (tmp_path / "out" / "report.html") in paths
    assert html.startswith("<!doctype html>") and html.count("<img ") == 3 and "<table>" in html
    assert "<script" not in html


def test_metric_filter_keeps_only_matching_plots(store, tmp_path):
    write_report(store, RUN, tmp_path, metrics=["hack_rate"])
    assert [p.name for p in tmp_path.glob("*.png")] == [f"{SUITE}__{TEMPLATE.replace('/', '-')}__hack_rate.png"]
    with pytest.raises(ReconError, match="no metric of run 'toy' matches.*metrics: hack_rate, mean score.proxy"):
        write_report(store, RUN, tmp_path, metrics=["nope"])


def test_run_without_metrics_names_the_datasets_that_exist(store_dir):
    store = Store(store_dir)
    store.commit("other-scored", pa.table({"x": [1]}))
    with pytest.raises(ReconError, match=r"run 'absent' has no metrics dataset 'absent-metrics'.*other-scored"):
        write_report(store, "absent")


@pytest.mark.parametrize("run", ["../escape", "a/b", "x@1"])
def test_run_name_cannot_reach_outside_the_store(store, run):
    with pytest.raises(ReconError, match="invalid run name"):
        write_report(store, run)


def test_malformed_metrics_tables_fail_with_one_line(store_dir):
    store = Store(store_dir)
    store.commit("bad-metrics", pa.table({"round": [0], "value": [1.0]}))
    with pytest.raises(ReconError, match="not a metrics table, column.*seed"):
        load_metrics(store, "bad")
    rows = _rows()
    with pytest.raises(ReconError, match="two rows for seed 0"):
        summarize([*rows, rows[0]])


def test_cli_prints_paths_and_reports_a_missing_run_in_one_line(store, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "recon_data.cli", "report", RUN, "--store", str(store.root),
                         "--out", str(tmp_path / "r"), "--format", "html"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    printed = ok.stdout.split()
    assert printed[:2] == [str(tmp_path / "r" / "report.md"), str(tmp_path / "r" / "report.html")]
    assert all((tmp_path / "r" / p).exists() for p in printed)
    bad = subprocess.run([sys.executable, "-m", "recon_data.cli", "report", "nope", "--store", str(store.root)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "no metrics dataset 'nope-metrics'" in bad.stderr and "toy-metrics" in bad.stderr


# ---- README block ---------------------------------------------------------------------------------
README = """# Project

Intro text.

<!-- recon report toy: begin -->
old numbers that must go
<!-- recon report toy: end -->

Text after.
"""


def _store_with_eval_section(store_dir) -> Store:
    s = Store(store_dir)
    pipeline = {**PIPELINE, "eval": {"templates": [TEMPLATE], "n": 2, "hack": {"column": "score.proxy", "min": 3}}}
    rows = [r for r in _rows() if r["metric"] != "share label.code=hack"]
    warm = [{**rows[0], "arm": arm, "round": 0, "seed": 0, "eval_template": t, "metric": "hack_rate",
             "value": v, "ci_low": v / 2, "ci_high": v * 2} for arm, t, v in
            [("warmup-before", TEMPLATE, 0.0), ("warmup-after", TEMPLATE, 0.15),
             ("warmup-after", "code_test_hacking/permit/hack", 0.35)]]  # fmt: skip
    s.commit(f"{RUN}-metrics", pa.Table.from_pylist(rows + warm), pipeline=pipeline)
    (s.root / "runs" / RUN).mkdir(parents=True, exist_ok=True)
    (s.root / "runs" / RUN / "runs.jsonl").write_text(
        '{"started_at": "2026-01-01T00:00:00Z", "seconds": 1500.0, "skipped_steps": 0, "cpu_count": 2}\n'
        '{"started_at": "2026-01-02T00:00:00Z", "seconds": 3.0, "skipped_steps": 40, "cpu_count": 2}\n'
    )
    return s


def test_readme_block_is_replaced_with_the_measured_table_differences_and_timing(store_dir, tmp_path):
    from recon_data.report import update_readme

    s = _store_with_eval_section(store_dir)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    written = update_readme(s, RUN, readme)
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# Project\n\nIntro text.") and "Text after." in text
    block = text.split("<!-- recon report toy: begin -->")[1].split("<!-- recon report toy: end -->")[0]
    # the standard arm's round-2 hack rate: mean over seeds of _value(...), with its t-interval
    values = [_value("hack_rate", "standard", seed, 2) for seed in SEEDS]
    mean = statistics.mean(values)
    half = T_975_DF2 * statistics.stdev(values) / math.sqrt(3)
    assert f"| standard | 2 | {mean:.3g} [{mean - half:.3g}, {mean + half:.3g}] |" in block
    diff = statistics.mean(HACK_DIFF.values())
    assert f"- hack_rate at round 2: **{diff:.3g} [" in block
    assert "40 held-out prompts × 2 samples" not in block and "20 held-out prompts × 2 samples" in block
    assert "`score.proxy` ≥ 3" in block
    assert "took **25.0 min** wall on 2 cores" in block  # the uninterrupted run, not the 3-second resume
    assert "| organism (after warm-up) | 0.15 [0.075, 0.3] | 0.35 [0.175, 0.7] |" in block
    assert "![hack_rate by round](docs/toy_hack_rate.png)" in block
    png = tmp_path / "docs" / "toy_hack_rate.png"
    assert png in written and imread(png).ndim == 3
    update_readme(s, RUN, readme)
    assert readme.read_text() == text  # regenerating gives the same file


def test_readme_without_markers_is_refused_and_left_untouched(store_dir, tmp_path):
    from recon_data.report import update_readme

    s = _store_with_eval_section(store_dir)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    with pytest.raises(ReconError, match="no results block for run 'toy'.*recon report toy: begin"):
        update_readme(s, RUN, readme)
    assert readme.read_text() == "# no markers here\n"
    assert not (tmp_path / "docs").exists()
    cli = subprocess.run([sys.executable, "-m", "recon_data.cli", "report", RUN, "--store", str(s.root), "--out",
                          str(tmp_path / "r"), "--readme", str(readme)], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr and "no results block" in cli.stderr
    assert not (tmp_path / "r").exists()  # checked before the report was written
