"""sample_rows with the transformers backend on the tiny real model: schema, determinism, cache
accounting, resume after a real SIGKILL, malformed input, and the `recon sample` CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recon_data.backends import Completion, Prompt
from recon_data.backends.hf import split_on_oom
from recon_data.errors import ConfigError, ReconError
from recon_data.sample import SAMPLE_COLUMNS, SamplingParams, sample_rows, sample_rows_with_stats

REPO = Path(__file__).resolve().parents[1]


def prompt_rows(k: int, prefix: str = "write") -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "suite": "toy",
            "gen_messages": [
                {"role": "system", "content": "be honest"},
                {"role": "user", "content": f"{prefix} {i}"},
            ],
        }
        for i in range(k)
    ]


def run(rows, model, cache_dir=None, **kw):
    params = kw.pop("params", SamplingParams(n=2, max_new_tokens=12, seed=kw.pop("seed", 0)))
    return sample_rows_with_stats(
        rows,
        model=str(model),
        params=params,
        cache_dir=cache_dir,
        batch_size=kw.pop("batch_size", 2),
        progress=False,
        **kw,
    )


def completions(rows: list[dict]) -> list[tuple[str, int, str]]:
    return [(r["id"], r["sample_index"], r["completion"]) for r in rows]


def test_each_prompt_row_yields_n_sample_rows_with_the_documented_columns(tiny_model_dir):
    rows = prompt_rows(3)
    out = sample_rows(
        rows,
        model=str(tiny_model_dir),
        params=SamplingParams(n=3, max_new_tokens=10, seed=5),
        cache_dir=None,
        batch_size=2,
        progress=False,
    )
    assert len(out) == 9
    assert [(r["id"], r["sample_index"]) for r in out] == [(f"r{i}", j) for i in range(3) for j in range(3)]
    for r in out:
        assert set(SAMPLE_COLUMNS) <= set(r)
        assert r["suite"] == "toy" and r["gen_messages"] == rows[int(r["id"][1:])]["gen_messages"]
        assert isinstance(r["completion"], str)
        assert r["backend"] == "transformers" and r["seed"] == 5
        assert r["model_id"] == str(tiny_model_dir.resolve()) and len(r["model_revision"]) == 16
        assert json.loads(r["sampling_params"]) == {
            "n": 3,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": 10,
        }
        assert r["sampling_params"] == json.dumps(json.loads(r["sampling_params"]), sort_keys=True)
        assert r["finish_reason"] in {"stop", "length"}
        assert 1 <= r["completion_tokens"] <= 10 and r["prompt_tokens"] > 5
        assert r["finish_reason"] == "stop" or r["completion_tokens"] == 10
        assert len(r["sample_key"]) == 64
    assert len({r["sample_key"] for r in out}) == 9
    # the random tiny model rarely stops, so the length path is exercised; prompts differ, completions too
    assert len({r["completion"] for r in out}) > 1


def test_same_seed_gives_the_same_table_and_another_seed_a_different_one(tiny_model_dir):
    rows = prompt_rows(5)
    a, _ = run(rows, tiny_model_dir, seed=11)
    b, _ = run(rows, tiny_model_dir, seed=11)
    c, _ = run(rows, tiny_model_dir, seed=12)
    assert a == b
    assert completions(a) != completions(c)
    assert {r["sample_key"] for r in a}.isdisjoint({r["sample_key"] for r in c})


def test_greedy_sampling_makes_all_n_samples_of_a_prompt_identical(tiny_model_dir):
    out, _ = run(
        prompt_rows(2), tiny_model_dir, params=SamplingParams(n=3, temperature=0.0, max_new_tokens=8)
    )
    for i in range(2):
        assert len({r["completion"] for r in out if r["id"] == f"r{i}"}) == 1


def test_second_run_is_served_entirely_from_the_cache(tiny_model_dir, tmp_path):
    rows = prompt_rows(5)
    first, s1 = run(rows, tiny_model_dir, tmp_path / "cache")
    assert (s1.generated, s1.cached, s1.chunks_generated) == (10, 0, 3)
    assert s1.completion_tokens == sum(r["completion_tokens"] for r in first)
    second, s2 = run(rows, tiny_model_dir, tmp_path / "cache")
    assert (s2.generated, s2.cached, s2.chunks_generated, s2.chunks_cached) == (0, 10, 0, 3)
    assert second == first
    uncached, _ = run(rows, tiny_model_dir, None)
    assert uncached == first


def test_cache_is_keyed_by_params_so_a_new_n_or_seed_misses(tiny_model_dir, tmp_path):
    rows = prompt_rows(2)
    run(rows, tiny_model_dir, tmp_path / "c")
    _, s = run(rows, tiny_model_dir, tmp_path / "c", params=SamplingParams(n=3, max_new_tokens=12))
    assert (s.cached, s.generated) == (0, 6)
    _, s = run(rows, tiny_model_dir, tmp_path / "c", params=SamplingParams(n=2, max_new_tokens=12, seed=1))
    assert (s.cached, s.generated) == (0, 4)


def test_no_cache_writes_nothing(tiny_model_dir, tmp_path):
    before = set(tmp_path.rglob("*"))
    run(prompt_rows(2), tiny_model_dir, None)
    assert set(tmp_path.rglob("*")) == before


def test_identical_prompts_share_samples_and_are_generated_once(tiny_model_dir, tmp_path):
    rows = prompt_rows(2) + [{**prompt_rows(1)[0], "id": "dup"}]
    out, s = run(rows, tiny_model_dir, tmp_path / "c")
    assert (s.unique_keys, s.generated, len(out)) == (4, 4, 6)
    assert [r["completion"] for r in out if r["id"] == "dup"] == [
        r["completion"] for r in out if r["id"] == "r0"
    ]


def test_partly_cached_chunk_keeps_cached_samples_and_fills_the_rest_as_a_fresh_run_would(
    tiny_model_dir, tmp_path
):
    rows = prompt_rows(6)
    cached, _ = run(rows[:2], tiny_model_dir, tmp_path / "c", batch_size=2)  # chunk {0,1}
    fresh, _ = run(rows, tiny_model_dir, None, batch_size=3)  # chunks {0,1,2} {3,4,5}
    mixed, s = run(rows, tiny_model_dir, tmp_path / "c", batch_size=3)
    assert (s.cached, s.generated, s.discarded) == (4, 8, 4)  # chunk {0,1,2} regenerated whole
    assert completions(mixed)[:4] == completions(cached)  # first write wins
    assert completions(mixed)[4:] == completions(fresh)[4:]  # new keys: as an uncached run of this input
    assert completions(fresh)[:4] != completions(cached)  # (the chunking really changed the samples)
    again, s2 = run(rows, tiny_model_dir, tmp_path / "c", batch_size=3)
    assert again == mixed and s2.generated == 0


def test_messages_key_selects_another_column(tiny_model_dir):
    rows = [{"id": "a", "prompt": [{"role": "user", "content": "hi"}]}]
    out, _ = run(rows, tiny_model_dir, messages_key="prompt")
    assert len(out) == 2 and out[0]["prompt"] == rows[0]["prompt"]


def test_empty_input_gives_empty_output_without_loading_a_model():
    out = sample_rows([], model="no-such-model", params=SamplingParams(), cache_dir=None, progress=False)
    assert out == []


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"id": "x"}, "no 'gen_messages' column"),
        ({"id": "x", "gen_messages": "hello"}, "non-empty list"),
        ({"id": "x", "gen_messages": []}, "non-empty list"),
        ({"id": "x", "gen_messages": [{"role": "user"}]}, "message 0"),
        ({"id": "x", "gen_messages": [{"role": "user", "content": 3}]}, "message 0"),
        (["not", "a", "dict"], "must be a dict"),
    ],
)
def test_malformed_prompt_rows_raise_a_one_line_error_naming_the_row(tiny_model_dir, row, fragment):
    rows = prompt_rows(1) + [row]
    with pytest.raises(ReconError) as err:
        run(rows, tiny_model_dir)
    assert fragment in str(err.value) and "row 1" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": 1.5},
        {"temperature": -1},
        {"temperature": float("nan")},
        {"top_p": 0},
        {"top_p": 1.5},
        {"max_new_tokens": 0},
        {"seed": -1},
        {"n": True},
    ],
)
def test_invalid_sampling_params_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        SamplingParams(**kwargs)


def test_unknown_backend_bad_batch_size_and_unknown_option_are_config_errors(tiny_model_dir):
    with pytest.raises(ConfigError, match="unknown sampling backend"):
        run(prompt_rows(1), tiny_model_dir, backend="nope")
    with pytest.raises(ConfigError, match="batch_size"):
        run(prompt_rows(1), tiny_model_dir, batch_size=0)
    with pytest.raises(ConfigError, match="does not take option"):
        run(prompt_rows(1), tiny_model_dir, options={"temprature": 1})


def test_missing_model_is_a_recon_error(tmp_path):
    with pytest.raises(ReconError, match="not found"):
        sample_rows(
            prompt_rows(1),
            model=str(tmp_path / "nope"),
            params=SamplingParams(),
            cache_dir=None,
            progress=False,
        )


def test_progress_prints_a_one_line_summary(tiny_model_dir, capsys):
    sample_rows(
        prompt_rows(2),
        model=str(tiny_model_dir),
        params=SamplingParams(n=2, max_new_tokens=4),
        cache_dir=None,
        progress=True,
    )
    err = capsys.readouterr().err
    assert "sampled 4 rows from 2 prompts: 4 generated, 0 cached" in err


def test_out_of_memory_halves_the_batch_down_to_one_prompt_then_gives_advice():
    calls = []
    params = SamplingParams(n=2)

    def fits_two(prompts, seed):
        calls.append((len(prompts), seed))
        if len(prompts) > 2:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate; out of memory")
        return [[Completion(p.messages[0]["content"], 1, 1, "stop")] * 2 for p in prompts]

    prompts = [Prompt([{"role": "user", "content": str(i)}], i) for i in range(5)]
    out = split_on_oom(fits_two, prompts, 7, params)
    assert [o[0].text for o in out] == ["0", "1", "2", "3", "4"]
    assert [n for n, _ in calls] == [5, 3, 2, 1, 2]
    assert len({s for _, s in calls[1:]}) == 4  # each part seeded from its position

    def never_fits(prompts, seed):
        raise MemoryError

    with pytest.raises(ReconError, match="out of memory .* single prompt"):
        split_on_oom(never_fits, prompts, 7, params)

    def other_error(prompts, seed):
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError):
        split_on_oom(other_error, prompts, 7, params)


KILL_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys, time
    from pathlib import Path
    import recon_data.sample as sample
    from recon_data.sample import SamplingParams, sample_rows

    original = sample.load_backend

    def slow_backend(*args):  # real generation, then a pause per chunk so the kill lands mid-run
        be = original(*args)
        def generate(prompts, params, seed):
            out = be.generate(prompts, params, seed)
            time.sleep(0.05)
            return out
        return dataclasses.replace(be, generate=generate)

    sample.load_backend = slow_backend
    rows = json.loads(Path(sys.argv[1]).read_text())
    sample_rows(rows, model=sys.argv[2], params=SamplingParams(n=2, max_new_tokens=16, seed=3),
                cache_dir=Path(sys.argv[3]), batch_size=2, progress=False)
    print("finished")
""")


def _entries(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return dict(con.execute("SELECT key, completion FROM samples"))
        finally:
            con.close()
    except sqlite3.OperationalError:  # table not created yet
        return {}


def test_sigkill_mid_run_then_resume_regenerates_nothing_cached_and_matches_an_uninterrupted_run(
    tiny_model_dir, tmp_path
):
    rows = prompt_rows(40, prefix="count to")
    total = 40 * 2
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "run.py").write_text(KILL_SCRIPT)
    cache = tmp_path / "cache"
    db = cache / "samples.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "run.py"),
            str(tmp_path / "rows.json"),
            str(tiny_model_dir),
            str(cache),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(_entries(db)) < 4:
            time.sleep(0.005)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _entries(db)
    assert 4 <= len(before) < total
    assert len(before) % 4 == 0  # whole chunks only (2 prompts x 2 samples)

    params = SamplingParams(n=2, max_new_tokens=16, seed=3)
    resumed, stats = sample_rows_with_stats(
        rows, model=str(tiny_model_dir), params=params, cache_dir=cache, batch_size=2, progress=False
    )
    assert (stats.cached, stats.generated, stats.discarded) == (len(before), total - len(before), 0)
    after = _entries(db)
    assert all(after[k] == v for k, v in before.items())
    assert len(after) == total
    uninterrupted = sample_rows(
        rows, model=str(tiny_model_dir), params=params, cache_dir=None, batch_size=2, progress=False
    )
    assert resumed == uninterrupted


# ---- CLI -------------------------------------------------------------------------------------------


def _cli(args, env=None):
    from recon_data.cli_sample import app

    return CliRunner().invoke(app, args, env=env)


def test_cli_sample_writes_typed_parquet_and_cache_stats_reports_it(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in prompt_rows(3)) + "\n\n")
    out = tmp_path / "out" / "samples.parquet"
    args = [
        "sample",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--n",
        "2",
        "--max-new-tokens",
        "6",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--limit",
        "2",
        "-q",
    ]
    res = _cli(args)
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table.num_rows == 4
    assert str(table.schema.field("sample_index").type) == "int32"
    assert str(table.schema.field("seed").type) == "int64"
    messages_type = table.schema.field("gen_messages").type
    assert pa.types.is_list(messages_type) and {f.name for f in messages_type.value_type} == {
        "role",
        "content",
    }
    assert [p.name for p in out.parent.iterdir()] == ["samples.parquet"]  # no temp files left

    res = _cli(["cache-stats", "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["entries"] == 4 and info["bytes"] > 0
    assert info["by_model"][0]["backend"] == "transformers"

    jsonl = tmp_path / "samples.jsonl"
    res = _cli([*args[:4], str(jsonl), *args[5:]])
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["completion"] for line in jsonl.read_text().splitlines()] == table.column(
        "completion"
    ).to_pylist()


def test_cli_reports_bad_input_in_one_line_with_exit_1_and_writes_nothing(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(prompt_rows(1)[0]) + "\n{not json\n")
    out = tmp_path / "out.parquet"
    res = _cli(["sample", "--prompts", str(prompts), "--out", str(out), "--model", str(tiny_model_dir)])
    assert res.exit_code == 1
    assert ".jsonl:2: invalid JSON" in res.stderr and "Traceback" not in res.output
    assert not out.exists()
    res = _cli(["sample", "--prompts", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert res.exit_code == 1 and "not found" in res.stderr
    res = _cli(["sample", "--prompts", str(prompts), "--out", str(out), "--backend", "nope", "--limit", "1"])
    assert res.exit_code == 2 and "unknown sampling backend" in res.stderr
    res = _cli(
        ["sample", "--prompts", str(prompts), "--out", str(out), "--option", "novalue", "--limit", "1"]
    )
    assert res.exit_code == 1 and "key=value" in res.stderr
    res = _cli(["cache-stats", "--cache-dir", str(tmp_path / "nocache")])
    assert res.exit_code == 1 and "no sampling cache" in res.stderr


def test_cli_help_documents_every_option():
    res = _cli(["sample", "--help"])
    assert res.exit_code == 0
    for flag in (
        "--prompts",
        "--out",
        "--model",
        "--backend",
        "--n",
        "--seed",
        "--batch-size",
        "--no-cache",
        "--limit",
        "--option",
        "--cache-dir",
    ):
        assert flag in res.output


def test_a_chat_template_that_rejects_the_messages_is_a_recon_error(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    model_dir = tmp_path / "strict-model"
    shutil.copytree(tiny_model_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    tok.save_pretrained(model_dir)
    with pytest.raises(
        ReconError, match=r"rejected messages with roles \['system', 'user'\]: no system role"
    ):
        run(prompt_rows(1), model_dir)


def test_a_cpu_allocator_failure_counts_as_out_of_memory_and_splits_the_batch():
    import torch

    from recon_data.backends.hf import is_oom

    try:  # a real allocator failure: more bytes than any machine has
        torch.empty(1 << 50, dtype=torch.uint8)
    except RuntimeError as exc:
        real = exc
    assert "can't allocate memory" in str(real) and is_oom(real)
    assert not is_oom(RuntimeError("shape mismatch"))


def test_a_prompt_far_beyond_the_context_is_refused_by_index_before_tokenizing(tiny_model_dir):
    from recon_data.backends.hf import PromptTooLong, load

    be = load(str(tiny_model_dir), {}, 4)
    huge = "word " * 1_000_000  # 5 MB: tokenizing and masking it would take seconds and gigabytes
    prompts = [Prompt([{"role": "user", "content": c}], 0) for c in ("fine", huge, "also fine")]
    with pytest.raises(PromptTooLong, match=r"at least .* tokens; with max_new_tokens=12 .* 1,024-token context") as e:
        be.generate(prompts, SamplingParams(n=1, max_new_tokens=12), 0)
    assert e.value.index == 1 and isinstance(e.value, ReconError)


def test_a_prompt_just_over_the_context_in_tokens_is_refused_with_its_token_count(tiny_model_dir):
    from recon_data.backends.hf import PromptTooLong, load

    be = load(str(tiny_model_dir), {}, 4)
    text = " ".join(f"w{i}" for i in range(700))  # short in characters, ~1,400+ tokens for the tiny BPE
    prompts = [Prompt([{"role": "user", "content": "ok"}], 0), Prompt([{"role": "user", "content": text}], 0)]
    with pytest.raises(PromptTooLong, match=r"has [\d,]+ tokens; with max_new_tokens=12") as err:
        be.generate(prompts, SamplingParams(n=1, max_new_tokens=12), 0)
    assert err.value.index == 1
    with pytest.raises(ReconError, match="max_new_tokens=2000 leaves no room"):
        be.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=2000), 0)
    # a prompt that fits still generates
    out = be.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=4), 0)
    assert len(out) == 1 and out[0][0].completion_tokens <= 4


def test_sampling_a_row_whose_prompt_overflows_the_context_is_a_one_line_recon_error(tiny_model_dir):
    rows = prompt_rows(2)
    rows[1]["gen_messages"][1]["content"] = "x " * 200_000
    with pytest.raises(ReconError, match="cannot fit the 1,024-token context"):
        run(rows, tiny_model_dir)


def test_a_full_cache_disk_says_disk_full_and_keeps_the_chunks_already_written(tmp_path):
    from recon_data.sample_cache import CachedSample, SampleCache

    with SampleCache(tmp_path / "c") as cache:
        cache.put_many({"a": CachedSample("kept", 1, 1, "stop")}, model_id="m", backend="b")
        pages = cache._db.execute("PRAGMA page_count").fetchone()[0]
        cache._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
        big = {f"k{i}": CachedSample("x" * 4000, 1, 1, "stop") for i in range(50)}
        with pytest.raises(ReconError, match=r"disk full while writing; free space and rerun") as err:
            cache.put_many(big, model_id="m", backend="b")
        assert "unreadable" not in str(err.value) and "--no-cache" not in str(err.value)
        assert cache.get_many(["a", "k0"]).keys() == {"a"}
    with SampleCache(tmp_path / "c") as cache:
        assert cache.entries() == 1
