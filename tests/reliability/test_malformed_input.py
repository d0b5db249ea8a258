"""Malformed and hostile input through the real CLI: each case must give exactly one clear error line on
stderr naming the file / key / dataset at fault, exit != 0 (2 for config errors), no traceback, and the
store must stay valid (`recon datasets verify good` still passes)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from recon_data.store import Store

from ._util import assert_clean_failure, describe, recon, tiny_pipeline, write_yaml

pytestmark = pytest.mark.reliability


@dataclass
class Ctx:
    tmp: Path
    model: Path
    store: Path

    def pipeline(self, name: str = "bad", **overrides) -> dict:
        return {**tiny_pipeline(self.model, name=name, rounds=1, eval=None), **overrides}

    @property
    def clean(self) -> Path:
        """A store holding only an intact `good` dataset."""
        root = self.tmp / "clean-store"
        if not root.exists():
            Store(root).commit("good", pa.table({"id": ["a", "b"], "x": [1, 2]}))
        return root

    def templates(self, files: dict[str, str | bytes]) -> Path:
        """A user template dir holding `custom/custom/<name>` files."""
        root = self.tmp / "tpl"
        for name, text in files.items():
            path = root / "custom" / "custom" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return root

    def data_pipeline(self, data: bytes) -> Path:
        """A pipeline over a user JSONL file (`q` rendered by a user template)."""
        (self.tmp / "data.jsonl").write_bytes(data)
        tpl = self.templates({"q.jinja": "{{ q }}"})
        return write_yaml(
            self.tmp / "data.yaml",
            self.pipeline(
                suite={"path": str(self.tmp / "data.jsonl"), "mapping": {"input": {"q": "q"}}, "split": None},
                templates_dirs=[str(tpl)],
                arms={"a": {"generate": "custom/custom/q", "train": "custom/custom/q"}},
                scorers=[{"name": "len", "type": "rule", "params": {"metric": "length"}}],
                filters=[],
            ),
        )


@dataclass
class Case:
    argv: list
    code: int
    contains: list[str]
    sole_line: bool = True


def _yaml(ctx: Ctx, name: str, text: str | bytes) -> Path:
    path = ctx.tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _run(ctx: Ctx, path: Path) -> list:
    return ["run", path, "--store", ctx.store, "--no-progress"]


def _with(ctx: Ctx, name: str, **overrides) -> Path:
    return write_yaml(ctx.tmp / name, ctx.pipeline(**overrides))


def _render(ctx: Ctx, files: dict, ref: str, record: str = '{"task": "t"}') -> list:
    return ["templates", "render", ref, "--templates", ctx.templates(files), "--record", record]


GOOD_DATA = b'{"q": "one"}\n{"q": "two"}\n'

CASES: dict[str, Callable[[Ctx], Case]] = {
    # ---- pipeline files (config errors: exit 2) ----
    "pipeline-broken-yaml": lambda c: Case(
        _run(c, _yaml(c, "broken.yaml", "name: x\nsuite: {name: eval_gaming\narms: [\n")),
        2,
        ["broken.yaml", "invalid yaml"],
    ),
    "pipeline-unknown-key": lambda c: Case(
        _run(c, write_yaml(c.tmp / "unknown.yaml", {**c.pipeline(), "roundz": 2})),
        2,
        ["unknown.yaml", "roundz"],
    ),
    "pipeline-unknown-nested-key": lambda c: Case(
        _run(c, _with(c, "nested.yaml", sampler={"n": 2, "temprature": 0.7})), 2, ["sampler.temprature"]
    ),
    "pipeline-wrong-type": lambda c: Case(
        _run(c, _with(c, "type.yaml", rounds="two")), 2, ["type.yaml", "rounds"]
    ),
    "pipeline-wrong-nested-type": lambda c: Case(
        _run(c, _with(c, "ntype.yaml", train={"epochs": [1]})), 2, ["train.epochs"]
    ),
    "pipeline-duplicate-key": lambda c: Case(  # (a missing model makes a wrongly accepted file fail fast)
        _run(
            c,
            _yaml(
                c,
                "dup.yaml",
                write_yaml(c.tmp / "d0.yaml", c.pipeline(model=str(c.tmp / "no-model"))).read_text()
                + "rounds: 5\n",
            ),
        ),
        2,
        ["dup.yaml", "rounds"],
    ),
    "pipeline-not-utf8": lambda c: Case(
        _run(c, _yaml(c, "latin1.yaml", "name: caf\xe9\n".encode("latin-1"))), 2, ["latin1.yaml", "utf-8"]
    ),
    "pipeline-missing-file": lambda c: Case(_run(c, c.tmp / "nope.yaml"), 2, ["nope.yaml", "not found"]),
    "pipeline-top-level-list": lambda c: Case(_run(c, _yaml(c, "list.yaml", "- a\n- b\n")), 2, ["list.yaml"]),
    "pipeline-empty-file": lambda c: Case(_run(c, _yaml(c, "empty.yaml", "")), 2, ["empty.yaml"]),
    "pipeline-unknown-template": lambda c: Case(
        _run(
            c,
            _with(
                c,
                "tid.yaml",
                arms={"a": {"generate": "eval_gaming/neutral/nope", "train": "eval_gaming/neutral/plain"}},
            ),
        ),
        1,
        ["eval_gaming/neutral/nope"],
    ),
    "pipeline-missing-templates-dir": lambda c: Case(
        _run(c, _with(c, "tdir.yaml", templates_dirs=[str(c.tmp / "no-such-dir")])), 1, ["no-such-dir"]
    ),
    # ---- templates ----
    "render-missing-variable": lambda c: Case(
        _render(c, {"needs.jinja": "{{ task }} and {{ nope }}"}, "custom/custom/needs"), 1, ["nope"]
    ),
    "render-not-utf8-template": lambda c: Case(
        _render(c, {"latin.jinja": "{{ task }} caf\xe9".encode("latin-1")}, "custom/custom/latin"),
        1,
        ["latin.jinja", "utf-8"],
    ),
    "render-syntax-error": lambda c: Case(
        _render(c, {"syntax.jinja": "line one\n{{ task "}, "custom/custom/syntax"),
        1,
        ["syntax.jinja", "syntax"],
    ),
    "render-yaml-template-unknown-key": lambda c: Case(
        _render(c, {"y.yaml": "user: '{{ task }}'\nassistant: hi\n"}, "custom/custom/y"),
        1,
        ["y.yaml", "assistant"],
    ),
    "render-record-not-json": lambda c: Case(
        _render(c, {"ok.jinja": "{{ task }}"}, "custom/custom/ok", record="{task: t}"), 1, ["--record"]
    ),
    "render-record-not-object": lambda c: Case(
        _render(c, {"ok.jinja": "{{ task }}"}, "custom/custom/ok", record="[1, 2]"), 1, ["--record"]
    ),
    "render-record-file-missing": lambda c: Case(
        _render(c, {"ok.jinja": "{{ task }}"}, "custom/custom/ok", record=f"@{c.tmp / 'no-record.json'}"),
        1,
        ["no-record.json"],
    ),
    "render-record-file-not-utf8": lambda c: Case(
        _render(
            c,
            {"ok.jinja": "{{ task }}"},
            "custom/custom/ok",
            record="@" + str(_yaml(c, "rec.json", '{"task": "caf\xe9"}'.encode("latin-1"))),
        ),
        1,
        ["rec.json"],
    ),
    "render-unknown-template": lambda c: Case(
        ["templates", "render", "custom/custom/none", "--record", "{}"],
        1,
        ["custom/custom/none", "not found"],
    ),
    # ---- user data through `recon run` ----
    "data-not-utf8": lambda c: Case(
        _run(c, c.data_pipeline(b'{"q": "one"}\n{"q": "caf\xe9"}\n')), 1, ["data.jsonl:2", "utf-8"]
    ),
    "data-garbage-lines": lambda c: Case(
        _run(c, c.data_pipeline(GOOD_DATA + b"\x00\x01garbage{{\n")), 1, ["data.jsonl:3", "json"]
    ),
    "data-not-an-object": lambda c: Case(
        _run(c, c.data_pipeline(GOOD_DATA + b"[1, 2]\n")), 1, ["data.jsonl:3"]
    ),
    "data-empty-file": lambda c: Case(_run(c, c.data_pipeline(b"")), 1, ["data.jsonl", "empty"]),
    "data-missing-column": lambda c: Case(
        _run(c, c.data_pipeline(b'{"question": "one"}\n')), 1, ["data.jsonl", "'q'"]
    ),
    "run-missing-template-variable": lambda c: Case(
        _run(
            c,
            write_yaml(
                c.tmp / "var.yaml",
                c.pipeline(
                    templates_dirs=[str(c.templates({"needs.jinja": "{{ task }} {{ nope }}"}))],
                    arms={"a": {"generate": "custom/custom/needs", "train": "eval_gaming/neutral/plain"}},
                ),
            ),
        ),
        1,
        ["custom/custom/needs", "nope"],
        sole_line=False,
    ),
    # ---- datasets in the store ----
    "show-flipped-byte": lambda c: Case(
        ["datasets", "show", "flipped", "--store", c.store], 1, ["flipped@1"]
    ),
    "show-truncated-manifest": lambda c: Case(
        ["datasets", "show", "trunc", "--store", c.store], 1, ["trunc@1", "manifest.json"]
    ),
    "show-version-without-manifest": lambda c: Case(
        ["datasets", "show", "hollow", "--store", c.store], 1, ["hollow@1", "manifest.json"]
    ),
    "show-truncated-part": lambda c: Case(["datasets", "show", "cut", "--store", c.store], 1, ["cut@1"]),
    "show-missing-dataset": lambda c: Case(["datasets", "show", "nope", "--store", c.store], 1, ["nope"]),
    "show-missing-version": lambda c: Case(
        ["datasets", "show", "good@9", "--store", c.store], 1, ["good", "9"]
    ),
    "show-bad-name": lambda c: Case(["datasets", "show", "../etc", "--store", c.store], 1, ["../etc"]),
    "show-bad-version": lambda c: Case(["datasets", "show", "good@x", "--store", c.store], 1, ["good@x"]),
    "verify-missing-dataset": lambda c: Case(["datasets", "verify", "nope", "--store", c.store], 1, ["nope"]),
    "sql-syntax-error": lambda c: Case(["sql", "selec * frm good", "--store", c.clean], 1, ["sql", "selec"]),
    "sql-unknown-table": lambda c: Case(["sql", 'select * from "nope"', "--store", c.clean], 1, ["nope"]),
    "sql-bad-format": lambda c: Case(
        ["sql", "select 1", "--store", c.clean, "--format", "xml"], 2, ["--format"]
    ),
    "sql-on-damaged-store": lambda c: Case(["sql", 'select * from "cut"', "--store", c.store], 1, ["cut"]),
}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture()
def damaged_store(tmp_path) -> Path:
    """`good` (intact) beside `flipped` (one byte flipped in its part), `trunc` (manifest cut short),
    `cut` (part cut short) and `hollow` (a version folder with nothing in it)."""
    root = tmp_path / "store"
    store = Store(root)
    rng = random.Random(0)
    table = pa.table(
        {"id": [str(i) for i in range(3000)], "text": [f"row {i} {rng.random()}" for i in range(3000)]}
    )
    for name in ("good", "flipped", "trunc", "cut"):
        store.commit(name, table)
    _flip_byte(store.version_dir("flipped") / "part-00000.parquet")
    manifest = store.version_dir("trunc") / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:120])
    part = store.version_dir("cut") / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    (root / "datasets" / "hollow" / "v1").mkdir(parents=True)
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_gives_one_clear_error_line(case, tiny_model_dir, damaged_store, tmp_path):
    ctx = Ctx(tmp_path, tiny_model_dir, damaged_store)
    c = CASES[case](ctx)
    done = recon(*c.argv, timeout=300)
    assert_clean_failure(done, code=c.code, contains=c.contains, sole_line=c.sole_line)
    still = recon("datasets", "verify", "good", "--store", damaged_store)
    assert still.returncode == 0, describe(still)
    assert Store(damaged_store).names() == ["cut", "flipped", "good", "hollow", "trunc"] or (
        Store(damaged_store).names() == ["cut", "flipped", "good", "trunc"]
    ), "a failed command wrote a dataset"


def test_verify_reports_each_damaged_version_on_one_line_and_passes_the_intact_one(damaged_store):
    done = recon("datasets", "verify", "--store", damaged_store)
    assert done.returncode == 1 and "Traceback" not in done.stderr, describe(done)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert all(line.startswith("FAIL ") for line in lines), f"a problem spans several lines:\n{done.stderr}"
    by_dataset = {
        name: [line for line in lines if f" {name}@1:" in line]
        for name in ("flipped", "trunc", "cut", "hollow")
    }
    assert "part-00000.parquet" in by_dataset["flipped"][0] and "checksum" in by_dataset["flipped"][0]
    assert "manifest.json" in by_dataset["trunc"][0]
    assert "part-00000.parquet" in by_dataset["cut"][0]
    assert "manifest.json" in by_dataset["hollow"][0]
    assert not [line for line in lines if " good@" in line]
    assert recon("datasets", "verify", "good", "--store", damaged_store).returncode == 0


def test_one_damaged_version_does_not_stop_queries_and_listing_of_the_others(damaged_store):
    query = recon("sql", 'select count(*) as n from "good"', "--store", damaged_store, "--format", "json")
    assert query.returncode == 0, describe(query)
    assert json.loads(query.stdout) == [{"n": 3000}]
    listing = recon("datasets", "list", "--store", damaged_store)
    assert listing.returncode == 0 and "good" in listing.stdout, describe(listing)


HUGE = 5_000_000


def test_huge_record_rendered_into_the_prompt_fails_clearly_before_generating(tiny_model_dir, tmp_path):
    """A 5 MB field in the prompt is far beyond the model's context: refuse it by name, don't OOM."""
    ctx = Ctx(tmp_path, tiny_model_dir, tmp_path / "store")
    line = json.dumps({"q": "word " * (HUGE // 5)}).encode()
    pipeline = ctx.data_pipeline(GOOD_DATA + line + b"\n")
    done = recon(
        "run", pipeline, "--store", ctx.store, "--no-progress", cpu_seconds=240, memory_bytes=12 << 30
    )
    assert_clean_failure(done, code=1, contains=["data/000002"], sole_line=False)
    assert not Store(ctx.store).names()


def test_huge_record_field_not_in_the_prompt_travels_through_a_run_intact(tiny_model_dir, tmp_path):
    ctx = Ctx(tmp_path, tiny_model_dir, tmp_path / "store")
    blob = "".join(random.Random(1).choice("abcdefghij") for _ in range(HUGE))
    rows = [{"q": "one", "blob": "small"}, {"q": "two", "blob": blob}]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tpl = ctx.templates({"q.jinja": "{{ q }}"})
    pipeline = write_yaml(
        tmp_path / "big.yaml",
        ctx.pipeline(
            name="big",
            suite={
                "path": str(tmp_path / "big.jsonl"),
                "split": None,
                "mapping": {"input": {"q": "q", "blob": "blob"}},
            },
            templates_dirs=[str(tpl)],
            arms={"a": {"generate": "custom/custom/q", "train": "custom/custom/q"}},
            scorers=[{"name": "len", "type": "rule", "params": {"metric": "length"}}],
            filters=[],
            sampler={"n": 1, "max_new_tokens": 4, "batch_size": 2},
        ),
    )
    done = recon("run", pipeline, "--store", ctx.store, "--no-progress")
    assert done.returncode == 0, describe(done)
    store = Store(ctx.store)
    assert store.verify() == []
    kept = [json.loads(r["input"])["blob"] for r in store.read("big-a-s0-r1").to_pylist()]
    assert sorted(kept, key=len) == ["small", blob]
