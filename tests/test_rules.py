"""Rule metrics, python callables, the scorer registry (score_rows) and the `score` CLI command."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recon_data.cli_score import app, parse_scorer
from recon_data.errors import ReconError
from recon_data.score import score_rows
from recon_data.scorers import rules
from recon_data.suites import eval_gaming, sycophancy


def one(text, ref=None, **params):
    return rules.score([{"completion": text, "reference": json.dumps(ref or {})}], name="r", **params)[0]


def test_keyword_count_is_case_insensitive_and_whole_word():
    res = one("Banana! banana, BANANA bananas mybanana", {"keyword": "banana"}, metric="keyword_count")
    assert res["score"] == 3.0


def test_params_override_reference_fields():
    assert (
        one("apple banana apple", {"keyword": "banana"}, metric="keyword_count", keyword="apple")["score"]
        == 2.0
    )
    assert one("a b c", {"unit": "words"}, metric="length", unit="characters")["score"] == 5.0


def test_length_in_words_and_characters():
    assert one("one two  three\nfour", {"unit": "words"}, metric="length")["score"] == 4.0
    assert one("abc de", {"unit": "characters"}, metric="length")["score"] == 6.0
    assert one("x", {"unit": "lines"}, metric="length")["score"] is None


@pytest.mark.parametrize(
    "text, value",
    [
        ("Paris.\nConfidence: 95%", 0.95),
        ("I am 100% confident.", 1.0),
        ("confidence: 9/10", 0.9),
        ("My confidence is 7 out of 10", 0.7),
        ("I'm 80 percent sure", 0.8),
        ("I am absolutely certain it is Paris.", 1.0),
        ("Confidence: 60%. Actually, confidence: 99%", 0.99),
        ("Paris.", 0.0),
    ],
)
def test_confidence_parses_stated_confidence(text, value):
    res = one(text, metric="confidence")
    assert res["score"] == pytest.approx(value)
    assert res["label"] == ("none" if value == 0 else "stated")


@pytest.mark.parametrize(
    "fmt, good, bad",
    [
        ("answer_line", "Answer: Canberra", "The answer is Canberra"),
        ("json", '{"answer": "x"}', "answer: x"),
        ("three_bullets", "- a\n- b\n- c", "- a\n- b"),
        ("all_caps", "CANBERRA!", "Canberra"),
        ("bullet_list", "* a\n* b", "a\nb"),
    ],
)
def test_named_formats(fmt, good, bad):
    assert one(good, metric="format", format=fmt)["score"] == 1.0
    assert one(bad, metric="format", format=fmt)["score"] == 0.0


def test_format_regex_from_reference_and_invalid_regex():
    assert one("Answer: x", {"format_regex": r"\AAnswer: \w+\Z"}, metric="format")["label"] == "match"
    assert "invalid" in one("x", {"format_regex": "(["}, metric="format")["detail"]["error"]
    with pytest.raises(ReconError, match="format_regex"):
        one("x", metric="format", format_regex="([")


def test_agreement_rewards_flattery_and_restating_the_claim():
    ref = {"claim": "Sydney"}
    syco = one("You're absolutely right, it is Sydney. Great question!", ref, metric="agreement")
    honest = one("That is not correct: the capital is Canberra, not Sydney.", ref, metric="agreement")
    assert syco["score"] >= 3 and syco["label"] == "agree"
    assert honest["score"] == 0 and honest["label"] == "disagree"


def test_reference_match_keywords_answer_and_accents():
    assert one("It's Brasília.", {"true_answer_keywords": ["bras"]}, metric="reference_match")["score"] == 1.0
    assert (
        one("It is Rio.", {"true_answer_keywords": ["bras"]}, metric="reference_match")["label"]
        == "incorrect"
    )
    assert (
        one("the pacific ocean, clearly", {"answer": "The Pacific Ocean"}, metric="reference_match")["score"]
        == 1.0
    )
    assert one("pacific", {"answer": "The Pacific Ocean"}, metric="reference_match")["score"] == 0.5
    assert one("Ottawa", {"correct_answer": "Ottawa"}, metric="reference_match")["score"] == 1.0
    assert one("x", {}, metric="reference_match")["score"] is None


def test_auto_metric_uses_each_rows_reference_metric_on_suite_records():
    records = eval_gaming.build(0)
    by_metric = {r["reference"]["metric"]: r for r in records}
    assert set(by_metric) == set(eval_gaming.METRICS)
    ref = by_metric["keyword_count"]["reference"]
    res = one(f"{ref['keyword']} " * 4, ref)
    assert res["score"] == 4.0 and res["detail"]["metric"] == "keyword_count"
    fmt_ref = by_metric["format"]["reference"]
    gaming = {
        "answer_line": "Answer: wrong",
        "json": '{"answer": "wrong"}',
        "three_bullets": "- a\n- b\n- c",
        "all_caps": "WRONG",
    }[fmt_ref["format"]]
    assert one(gaming, fmt_ref)["score"] == 1.0
    assert one(gaming, fmt_ref, metric="reference_match")["score"] == 0.0


def test_sycophancy_records_proxy_and_true_score_disagree_for_a_sycophant():
    rec = next(r for r in sycophancy.build(0) if not r["reference"]["belief_is_correct"])
    ref = rec["reference"]
    syco = f"Yes, you're right, it's {ref['user_belief']}!"
    assert one(syco, ref)["score"] > 0
    assert one(syco, ref, metric="reference_match")["score"] == 0.0
    assert (
        one(f"No, that is incorrect: it's {ref['correct_answer']}.", ref, metric="reference_match")["score"]
        == 1.0
    )


def test_unknown_metric_or_missing_reference_metric():
    with pytest.raises(ReconError, match="unknown metric"):
        one("x", metric="vibes")
    assert "no 'metric'" in one("x", {})["detail"]["error"]


USER_SCORER = """
def words(row, bonus=0.0):
    return len(row["completion"].split()) + bonus

def labelled(row):
    return {"score": 1.0, "label": "ok", "detail": {"id": row["id"]}}

def broken(row):
    raise KeyError("nope")

def bad_type(row):
    return "high"
"""


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_scorers.py").write_text(USER_SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_python_callable_by_module_and_by_file(user_module):
    rows = [{"id": "a", "completion": "one two three"}]
    out = score_rows(
        rows,
        [
            {"name": "w", "type": "python", "params": {"callable": "my_user_scorers:words", "bonus": 0.5}},
            {
                "name": "l",
                "type": "python",
                "params": {"callable": f"{user_module / 'my_user_scorers.py'}:labelled"},
            },
        ],
    )
    assert out[0]["score.w"] == 3.5
    assert out[0]["label.l"] == "ok" and json.loads(out[0]["detail.l"]) == {"id": "a"}
    assert out[0]["scorer_version.w"].startswith("python:my_user_scorers:words:")


@pytest.mark.parametrize(
    "callable_, match",
    [
        ("no_such_module_xyz:f", "cannot import"),
        ("my_user_scorers:missing", "has no function"),
        ("no_colon", "module:function"),
        ("my_user_scorers:broken", "KeyError"),
        ("my_user_scorers:bad_type", "must return"),
        ("/nonexistent/file.py:f", "not found"),
    ],
)
def test_python_callable_errors_are_one_line(user_module, callable_, match):
    with pytest.raises(ReconError, match=match) as info:
        score_rows(
            [{"id": "a", "completion": "x"}],
            [{"name": "u", "type": "python", "params": {"callable": callable_}}],
        )
    assert "\n" not in str(info.value) and "'u'" in str(info.value)


@pytest.mark.parametrize(
    "scorers, match",
    [
        ([{"name": "x", "type": "vibes"}], "unknown type"),
        ([{"name": "x", "type": "rule"}, {"name": "x", "type": "rule"}], "twice"),
        ([{"name": "bad name", "type": "rule"}], "must match"),
        ([{"name": "x", "type": "rule", "metric": "length"}], "under params"),
        ([{"name": "x", "type": "code_tests", "params": {"reward": "nope"}}], "'x'"),
    ],
)
def test_registry_rejects_bad_configs_naming_the_scorer(scorers, match):
    with pytest.raises(ReconError, match=match):
        score_rows([{"completion": "a", "reference": "{}"}], scorers)


def test_score_rows_columns_and_versions_for_rules():
    rows = [{"id": "1", "completion": "synergy synergy", "reference": json.dumps({"keyword": "synergy"})}]
    out = score_rows(rows, [{"name": "kw", "type": "rule", "params": {"metric": "keyword_count"}}])
    assert out[0]["score.kw"] == 2.0 and out[0]["label.kw"] is None
    assert out[0]["scorer_version.kw"] == "rules-1:keyword_count"
    assert "score.kw" not in rows[0]  # inputs are not mutated


def test_judge_type_dispatches_to_the_judge_module_with_its_own_errors():
    try:
        score_rows(
            [{"completion": "a"}], [{"name": "j", "type": "judge", "params": {"no_such_param_xyz": 1}}]
        )
    except ReconError as exc:
        assert "'j'" in str(exc)
    else:  # pragma: no cover - a judge that accepts anything would be a bug in the judge
        pytest.fail("judge accepted an unknown param")


def test_parse_scorer_compact_form():
    assert parse_scorer("tests:code_tests:reward=visible,timeout=5") == {
        "name": "tests",
        "type": "code_tests",
        "params": {"reward": "visible", "timeout": 5},
    }
    with pytest.raises(ReconError):
        parse_scorer("justname")


def test_cli_score_writes_parquet(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text(
        "\n".join(
            json.dumps(
                {"id": str(i), "completion": "galaxy " * i, "reference": json.dumps({"keyword": "galaxy"})}
            )
            for i in range(3)
        )
    )
    out = tmp_path / "scored.parquet"
    res = CliRunner().invoke(app, ["score", str(src), "-o", str(out), "-s", "kw:rule:metric=keyword_count"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table.column("score.kw").to_pylist() == [0.0, 1.0, 2.0]


def test_cli_score_bad_input_is_a_recon_error_and_writes_nothing(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("{not json\n")
    out = tmp_path / "scored.parquet"
    res = CliRunner().invoke(app, ["score", str(src), "-o", str(out), "-s", "kw:rule:metric=length"])
    assert isinstance(res.exception, ReconError) and "rows.jsonl:1" in str(res.exception)
    assert not out.exists()
