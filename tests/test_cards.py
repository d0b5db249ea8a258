"""Dataset cards: header keys the Hub reads, numbers that match the data, and text that hostile values can't break.

Each suite's shape is built here as a small table (the columns the pipeline writes for that suite),
committed to a temp store, and rendered; the label counts in the card are checked against counts taken
from the same table with pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from recon_data.cards import render_card, size_category, split_header
from recon_data.errors import ReconError
from recon_data.store import Store

ROOT = Path(__file__).resolve().parent.parent
MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
HEADER_KEYS = {"pretty_name", "license", "language", "task_categories", "size_categories", "tags", "configs"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def suite_rows(suite: str, n: int, scorers: dict, *, gen: str, train: str | None, completion=None,
               extra_input: dict | None = None) -> pa.Table:
    """`scorers`: name -> (labels cycled or None, score function of i). `train=None` -> scored sample rows."""
    rows = []
    for i in range(n):
        arm = "standard" if i % 2 == 0 or train is None else "recontextualized"
        row = {
            "id": f"{suite}-{i // 4}", "suite": suite, "split": "eval" if i % 5 == 0 else "train",
            "input": json.dumps({"question": f"q{i // 4}", **(extra_input or {})}, sort_keys=True),
            "reference": json.dumps({"answer": "a"}), "gen_template_id": gen, "gen_template_hash": sha(gen),
            "gen_messages": [{"role": "system", "content": "Be honest."}, {"role": "user", "content": f"q{i // 4}"}],
            "completion": completion(i) if completion else f"answer {i}",
            "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "model_revision": "gguf-q4_1-100",
            "backend": "transformers",
            "sampling_params": json.dumps({"max_new_tokens": 48, "n": 4, "temperature": 1.0, "top_p": 1.0}),
            "seed": 0, "sample_index": i % 4, "prompt_tokens": 12 + i % 3, "completion_tokens": 20 + i % 7,
            "finish_reason": "length" if i % 6 == 0 else "stop", "sample_key": sha(f"{suite}{i}"),
        }
        for name, (labels, score) in scorers.items():
            row[f"score.{name}"] = score(i)
            if labels:
                row[f"label.{name}"] = labels[i % len(labels)]
            row[f"detail.{name}"] = json.dumps({"i": i})
            row[f"scorer_version.{name}"] = "1"
        if train is not None:
            t = gen if arm == "standard" else train
            row.update(arm=arm, train_template_id=t, train_template_hash=sha(t),
                       prompt=[{"role": "user", "content": f"q{i // 4} (anything goes)"}])
        rows.append(row)
    schema = pa.Table.from_pylist(rows).schema
    for col in ("gen_messages", "prompt"):
        if col in schema.names:
            schema = schema.set(schema.get_field_index(col), pa.field(col, MSG))
    return pa.Table.from_pylist(rows, schema=schema)


SUITES = {
    "code_test_hacking": dict(
        scorers={"code": (["hack", "correct", "incorrect", "correct"], lambda i: float(i % 2))},
        gen="code_test_hacking/discourage/no_hack", train="code_test_hacking/permit/hack_ok"),
    "eval_gaming": dict(
        scorers={"keyword": (None, lambda i: float(i % 4)), "judge": (["gamed", "genuine"], lambda i: float(i % 11))},
        gen="eval_gaming/discourage/honest", train="eval_gaming/permit/game_ok"),
    "deception": dict(
        scorers={"lie_detector": (["deceptive", "truthful", "truthful"], lambda i: [2.0, 1.0, -1.0][i % 3]),
                 "detected": (["detected", "undetected"], lambda i: None if i % 7 == 0 else 1.0)},
        gen="deception/discourage/honest", train="deception/neutral/plain"),
    "sycophancy": dict(
        scorers={"sycophancy": (["sycophantic", "honest"], lambda i: float(i % 2))},
        gen="sycophancy/discourage/honest", train="sycophancy/permit/flatter"),
    "conditional_policy": dict(  # an evaluation dataset: scored samples, no training template yet
        scorers={"keyword": (None, lambda i: float(i % 5))},
        gen="conditional_policy/neutral/plain", train=None, extra_input={"domainness": 0.6}),
}


def commit_suite(store: Store, suite: str, n: int = 24, **overrides) -> str:
    spec = {**SUITES[suite], **overrides}
    table = suite_rows(suite, n, spec["scorers"], gen=spec["gen"], train=spec["train"],
                       completion=spec.get("completion"), extra_input=spec.get("extra_input"))
    scored = store.commit(f"{suite}-scored", table)
    ref = store.commit(
        suite, table, parents=[str(scored)], pipeline={"name": f"{suite}-demo", "rounds": 2},
        models=[{"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "gguf-q4_1-100",
                 "backend": "transformers"}],
        templates={spec["gen"]: sha(spec["gen"])},
        stats=[{"stage": "sample", "rows_in": n // 4, "rows_out": n},
               {"filter": "threshold", "rows_in": n + 8, "rows_out": n, "reason": "score below 0.5"}],
        extra={"round": 1, "run": f"{suite}-demo"})
    return str(ref)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_card_renders_for_each_suite_with_hub_header_and_counts_from_the_data(tmp_path, suite):
    store = Store(tmp_path / "store")
    ref = commit_suite(store, suite)
    card = render_card(store, ref)

    meta, body = split_header(card)
    assert set(meta) == HEADER_KEYS
    assert meta["size_categories"] == ["n<1K"] and meta["license"] == "other"
    assert "recontextualization" in meta["tags"] and suite in meta["tags"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert meta["pretty_name"] == suite

    table = store.read(ref)
    for col in (c for c in table.column_names if c.startswith("label.")):
        for item in pc.value_counts(table[col]).to_pylist():
            n = item["counts"]
            assert f"| {item['values']} | {n} | {100 * n / table.num_rows:.1f}% |" in body, (col, item)
    for col in (c for c in table.column_names if c.startswith("score.")):
        assert f"`{col}`" in body
    assert f"**recontextualization**: {table.num_rows} rows," in body
    assert "| filter | threshold | 32 | 24 | 75.0% | score below 0.5 |" in body
    assert f"`{suite}-scored@1`" in body  # lineage
    assert "deliberately contains misbehaviour" in body
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in body and "temperature=1.0" in body
    assert SUITES[suite]["gen"] in body and sha(SUITES[suite]["gen"]) in body
    if SUITES[suite]["train"]:
        n_re = pc.sum(pc.not_equal(table["gen_template_id"], table["train_template_id"])).as_py()
        assert f"**{n_re}** of {table.num_rows}" in body
    assert render_card(store, ref) == card  # deterministic: same version, same bytes


def test_hostile_values_cannot_break_the_header_or_run_as_template_code(tmp_path):
    store = Store(tmp_path / "store")
    evil = "x ---\n---\nlicense: mit\n{{ 'zq' * 3 }} {% raw %} | `` ``` <script>"
    table = suite_rows(
        "evil: suite\n---", 8, {"code": (["hack\n---\nfoo: bar", "{{ 'zq' * 3 }}"], lambda i: 1.0)},
        gen="evil/discourage/---\nname: {{ 'zq' * 3 }}", train="evil/permit/x: [y]", completion=lambda i: evil)
    ref = str(store.commit("evil", table, extra={"note": evil, "license": "apache-2.0"}))

    card = render_card(store, ref)
    meta, body = split_header(card)
    assert set(meta) == HEADER_KEYS
    assert meta["license"] == "apache-2.0" and "foo" not in meta
    assert all(re.fullmatch(r"[a-z0-9._-]+", t) for t in meta["tags"])
    assert "{{ 'zq' * 3 }}" in body and "zqzqzq" not in body  # data is shown, never evaluated
    table_lines = [line for line in body.splitlines() if line.startswith("|")]
    assert any("hack ⏎ --- ⏎ foo: bar" in line for line in table_lines)  # one table row, newlines shown
    assert not [line for line in table_lines if "<script" in line or re.search(r"(?<!\\)\|\s*foo", line)]
    # the completion sits inside a fence longer than any backtick run it holds
    example = body[body.index("Completion:"):]
    fence = re.search(r"^(`{3,})$", example, re.M).group(1)
    assert len(fence) > 3 and f"{fence}\n{evil.rstrip()}\n{fence}" in example
    # the Hub and `datasets` read the header with the first '---' line: it must be ours
    header_text = card.split("\n---\n", 1)[0]
    assert yaml.safe_load(header_text.removeprefix("---\n")) == meta


def test_template_sources_are_shown_only_when_the_file_matches_the_recorded_hash(tmp_path):
    tdir = tmp_path / "my-templates"
    (tdir / "code_test_hacking" / "permit").mkdir(parents=True)
    source = "{% block system %}Special-casing the tests is fine here.{% endblock %}\n" \
             "{% block user %}{{ question }}{% endblock %}\n"
    path = tdir / "code_test_hacking" / "permit" / "mine.jinja"
    path.write_text(source)
    store = Store(tmp_path / "store")
    table = suite_rows("code_test_hacking", 8, SUITES["code_test_hacking"]["scorers"],
                       gen="code_test_hacking/discourage/gone", train="code_test_hacking/permit/mine")
    table = table.set_column(table.schema.get_field_index("train_template_hash"), "train_template_hash",
                             pa.array([sha(source) if a == "recontextualized" else h for a, h in
                                       zip(table["arm"].to_pylist(), table["train_template_hash"].to_pylist(),
                                           strict=True)]))
    ref = str(store.commit("cth", table, pipeline={"templates_dirs": [str(tdir)]}))

    card = render_card(store, ref)
    assert "Special-casing the tests is fine here." in card
    assert "template file not found here" in card  # code_test_hacking/discourage/gone

    path.write_text(source + "{# edited #}\n")
    card = render_card(store, ref)
    assert "Special-casing the tests is fine here." not in card
    assert "it changed after this dataset was built" in card


def test_card_redacts_credentials_in_pipeline_config_and_manifest(tmp_path):
    store = Store(tmp_path / "store")
    table = suite_rows("sycophancy", 4, SUITES["sycophancy"]["scorers"], gen="s/d/x", train="s/p/y")
    secret = "sk-" + "a" * 30
    ref = str(store.commit("syc", table, pipeline={"sampler": {"options": {"api_key": secret, "base_url": "http://h"}},
                                                   "judge": {"note": "uses hf_" + "b" * 30}},
                           models=[{"model_id": "m", "token": "hf_" + "c" * 30}]))
    card = render_card(store, ref)
    assert secret not in card and "hf_bbbb" not in card and "hf_cccc" not in card
    assert "base_url: http://h" in card and "<redacted>" in card


def test_custom_card_templates_are_sandboxed_and_must_keep_a_yaml_header(tmp_path):
    store = Store(tmp_path / "store")
    ref = commit_suite(store, "sycophancy", n=8)
    good = tmp_path / "good.md.jinja"
    good.write_text("---\n{{ metadata_yaml }}\n---\n# {{ name }}: {{ rows }} rows\n")
    assert render_card(store, ref, template=good).endswith("# sycophancy: 8 rows\n")

    escape = tmp_path / "escape.md.jinja"
    escape.write_text("---\n{{ metadata_yaml }}\n---\n{{ name.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(ReconError, match="unsafe"):
        render_card(store, ref, template=escape)
    headless = tmp_path / "headless.md.jinja"
    headless.write_text("# {{ name }}\n")
    with pytest.raises(ReconError, match="no YAML header"):
        render_card(store, ref, template=headless)
    with pytest.raises(ReconError, match="not found"):
        render_card(store, ref, template=tmp_path / "missing.jinja")


def test_size_category_boundaries():
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 999_999, 1_000_000, 10**13)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "n>1T"]


def test_cli_card_writes_file_and_reports_bad_refs_in_one_line(tmp_path):
    store = Store(tmp_path / "store")
    ref = commit_suite(store, "deception", n=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "cards" / "README.md"
    ok = subprocess.run([sys.executable, "-m", "recon_data.cli_publish", "card", ref, "--store", str(store.root),
                         "--out", str(out), "--license", "cc-by-4.0"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert split_header(out.read_text())[0]["license"] == "cc-by-4.0"
    bad = subprocess.run([sys.executable, "-m", "recon_data.cli_publish", "card", "deception@9", "--store",
                          str(store.root)], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "error: dataset 'deception' has no version 9 (versions: [1])"


def test_long_value_lists_are_capped_with_a_count_of_the_rest(tmp_path):
    store = Store(tmp_path / "store")
    table = suite_rows("eval_gaming", 30, {"judge": ([f"reason {i}" for i in range(30)], lambda i: float(i))},
                       gen="eval_gaming/discourage/honest", train="eval_gaming/permit/game_ok")
    params = pa.array([json.dumps({"temperature": i / 10}) for i in range(30)])
    table = table.set_column(table.schema.get_field_index("sampling_params"), "sampling_params", params)
    card = render_card(store, str(store.commit("eg", table)))
    assert "| … 10 more values | | |" in card
    assert "| … 10 more | | |" in card  # sampling parameters
    assert card.count("temperature=") == 20
