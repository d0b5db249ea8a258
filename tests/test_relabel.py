"""Relabelling: the fast renderer must produce exactly what `templates.render` produces, row for row."""

from __future__ import annotations

import copy
import json
import random

import jinja2
import jinja2.meta
import pyarrow as pa
import pytest

from recon_data.errors import ReconError
from recon_data.relabel import compile_renderer, generation_rows, record_rows, relabel, relabel_table, render_inputs
from recon_data.templates import discover, load_template, render

TRICKY = [
    "", " ", "\n", "  padded  ", "{{ not_a_var }}", "{% if x %}", "{# c #}", "'\"`", "back\\slash\\n",
    "tab\tend", "nul\x00byte", "üñíçødé — ∑ 🙂", "\u2028line\u2029sep", "<b>&amp;</b>", "a" * 500,
    "line1\r\nline2", "}}{{", "%}", "\\u0000", "👩‍👩‍👧",
]


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def toy_templates(tmp_path):
    """Templates covering every way `render` builds messages, and Jinja features rows might hit."""
    _write(tmp_path, "toy/permit/blocks.jinja",
           "{% block system %}\n  {{ sys }}  \n{% endblock %}\n{% block user %}Task: {{ task }}\n"
           "{% for item in items %}- {{ item }}\n{% endfor %}{{ n * 2 }} {{ flag }} {{ cycler }}{% endblock %}\n")
    _write(tmp_path, "toy/neutral/plain.jinja", "{{ task|upper }} / {{ task|length }} / {{ items|join(',') }}")
    _write(tmp_path, "toy/discourage/honest.yaml",
           "system: '{{ sys }}'\nuser: |\n  Q: {{ task }}\n  {% if flag %}flagged{% endif %}\n")
    _write(tmp_path, "toy/custom/shared.jinja",
           "{% block system %}{{ items.append('x') or '' }}{{ sys }}{% endblock %}"
           "{% block user %}{% set k = items|length %}{{ k }}:{{ task[:3] }}{{ range(2)|list }}{% endblock %}")
    _write(tmp_path, "toy/custom/setinblock.jinja",  # a block's {% set %} must not leak into the next block
           "{% block system %}{% set task = 'overwritten' %}{% set fresh = 1 %}{{ task }}{{ sys }}{% endblock %}"
           "{% block user %}{{ task }}|{{ fresh is defined }}|{{ self.system() }}{% endblock %}")
    _write(tmp_path, "toy/custom/userfirst.jinja",
           "{% block user %}{{ task }}{% endblock %}{% block system %}{{ sys }}{% endblock %}")
    return {t.id: t for t in discover([tmp_path]).values() if t.suite == "toy"}


def _variables(rng: random.Random, names) -> dict:
    out = {name: rng.choice(TRICKY) + rng.choice(TRICKY) for name in names}
    out.update(items=[rng.choice(TRICKY) for _ in range(rng.randint(0, 3))], n=rng.randint(-5, 5),
               flag=rng.choice([True, False, None, 0, "yes"]), extra={"nested": [1, "two"]},
               cycler=rng.choice(TRICKY))  # a record field may shadow a Jinja global
    return out


def _old_relabel(rows, template, arm):
    """The original one-render-per-row implementation, kept here as the reference semantics."""
    out = []
    for row in rows:
        new = dict(row)
        new["arm"] = arm
        new["train_template_id"] = template.id
        new["train_template_hash"] = template.sha256
        new["prompt"] = render(template, json.loads(row["input"]))
        out.append(new)
    return out


def _rows(rng: random.Random, names, records: int, samples: int) -> list[dict]:
    rows = []
    for r in range(records):
        variables = _variables(rng, names)
        rows += [{"id": f"rec{r}", "input": json.dumps(variables, sort_keys=True, ensure_ascii=False),
                  "completion": f"completion {s} of {r} ✓", "sample_index": s} for s in range(samples)]
    return rows


def test_fast_renderer_equals_render_on_tricky_inputs_for_every_template_shape(toy_templates):
    rng = random.Random(0)
    assert len(toy_templates) == 6
    for template in toy_templates.values():
        fast = compile_renderer(template)
        for _ in range(200):
            variables = _variables(rng, ["sys", "task"])  # a template may mutate them: give each call a copy
            assert fast(copy.deepcopy(variables)) == render(template, copy.deepcopy(variables)), template.id


def test_valid_inputs_never_fall_back_to_the_slow_renderer(toy_templates, monkeypatch):
    """Equality alone would also hold if the fast path silently deferred to `render` on every row."""
    import recon_data.relabel as relabel_module

    def refuse(*args):
        raise AssertionError("fell back to templates.render")

    rng = random.Random(5)
    renderers = {t.id: compile_renderer(t) for t in toy_templates.values()}
    monkeypatch.setattr(relabel_module, "render", refuse)
    for template_id, fast in renderers.items():
        for _ in range(20):
            assert fast(_variables(rng, ["sys", "task"])), template_id


def test_fast_renderer_equals_render_for_every_builtin_template():
    rng = random.Random(1)
    env = jinja2.Environment()
    builtin = [t for t in discover().values()]
    assert builtin, "no built-in templates found"
    rendered = errors = 0
    for template in builtin:
        names = jinja2.meta.find_undeclared_variables(env.parse(template.source))
        fast = compile_renderer(template)
        for _ in range(50):
            variables = {name: rng.choice(TRICKY) * rng.randint(1, 3) for name in names}
            try:
                expected = render(template, variables)
            except ReconError as err:  # a template wanting structured variables: the same error, word for word
                with pytest.raises(ReconError) as got:
                    fast(variables)
                assert str(got.value) == str(err)
                errors += 1
                continue
            assert fast(variables) == expected, template.id
            assert json.dumps(fast(variables), ensure_ascii=False).encode() == json.dumps(
                expected, ensure_ascii=False).encode()
            rendered += 1
    assert rendered > 3 * errors


def test_relabel_equals_one_render_per_row_including_key_order(toy_templates):
    rng = random.Random(2)
    template = toy_templates["toy/permit/blocks"]
    rows = _rows(rng, ["sys", "task"], records=60, samples=4)
    rng.shuffle(rows)  # shared inputs need not be adjacent
    got = relabel(rows, template, "recontextualized")
    want = _old_relabel(rows, template, "recontextualized")
    assert got == want
    assert [list(r) for r in got] == [list(r) for r in want]
    assert all(r["completion"] == o["completion"] for r, o in zip(got, rows, strict=True))


def test_rows_sharing_an_input_get_separate_message_lists(toy_templates):
    template = toy_templates["toy/neutral/plain"]
    row = {"id": "a", "input": json.dumps({"task": "x", "items": []})}
    first, second = relabel([row, dict(row)], template, "standard")
    first["prompt"][0]["content"] = "edited"
    assert second["prompt"] == [{"role": "user", "content": "X / 1 /"}]


def test_template_mutating_a_variable_renders_as_render_does_for_every_duplicate(toy_templates):
    template = toy_templates["toy/custom/shared"]
    rows = [{"id": "a", "input": json.dumps({"sys": "s", "task": "task", "items": ["a"]})}] * 3
    got = relabel(rows, template, "arm")
    assert [r["prompt"] for r in got] == [render(template, json.loads(rows[0]["input"]))] * 3
    assert got[0]["prompt"][1]["content"].startswith("2:tas")


@pytest.mark.parametrize(("samples", "arrow_slice"), [(3, 65536), (3, 7), (1, 7)])
def test_relabel_table_equals_relabel_on_python_rows(toy_templates, monkeypatch, samples, arrow_slice):
    import recon_data.relabel as relabel_module

    monkeypatch.setattr(relabel_module, "ARROW_SLICE", arrow_slice)  # many small slices: every seam is crossed
    rng = random.Random(3)
    template = toy_templates["toy/discourage/honest"]
    rows = _rows(rng, ["sys", "task"], records=40, samples=samples)
    rng.shuffle(rows)
    table = pa.Table.from_batches(pa.Table.from_pylist(rows).to_batches(max_chunksize=9))
    got = relabel_table(table, template, "standard")
    want = pa.Table.from_pylist(relabel(rows, template, "standard"))
    assert got.schema == want.schema
    assert got.equals(want)


def test_relabel_table_replaces_columns_of_an_already_relabelled_table(toy_templates):
    rows = _rows(random.Random(4), ["sys", "task"], records=5, samples=2)
    first = relabel_table(pa.Table.from_pylist(rows), toy_templates["toy/permit/blocks"], "a")
    again = relabel_table(first, toy_templates["toy/neutral/plain"], "b")
    assert again.column_names == first.column_names
    assert set(again.column("arm").to_pylist()) == {"b"}
    assert again.column("prompt").to_pylist() == [m["prompt"] for m in
                                                   relabel(first.to_pylist(), toy_templates["toy/neutral/plain"], "b")]


def test_relabel_table_of_zero_rows_adds_empty_columns(toy_templates):
    table = pa.table({"id": pa.array([], pa.string()), "input": pa.array([], pa.string())})
    out = relabel_table(table, toy_templates["toy/neutral/plain"], "a")
    assert out.num_rows == 0 and out.column_names[-4:] == ["arm", "train_template_id", "train_template_hash", "prompt"]


def test_generation_rows_equal_one_render_per_record(toy_templates):
    template = toy_templates["toy/custom/userfirst"]
    records = [{"id": f"r{i}", "suite": "toy", "split": "train", "input": {"task": t, "sys": s},
                "reference": {"answer": i}} for i, (t, s) in enumerate(zip(TRICKY, reversed(TRICKY), strict=True))]
    got = generation_rows(records, template)
    want = [{**row, "gen_template_id": template.id, "gen_template_hash": template.sha256,
             "gen_messages": render(template, json.loads(row["input"]))} for row in record_rows(records)]
    assert got == want


def test_undefined_variable_error_is_the_same_as_render(toy_templates):
    template = toy_templates["toy/permit/blocks"]
    with pytest.raises(ReconError) as expected:
        render(template, {"task": "x"})
    with pytest.raises(ReconError) as got:
        relabel([{"id": "a", "input": json.dumps({"task": "x"})}], template, "arm")
    assert str(got.value) == str(expected.value)
    assert "'sys' is undefined" in str(got.value)


def test_sandbox_still_refuses_python_internals(tmp_path):
    _write(tmp_path, "toy/custom/evil.jinja", "{{ task.__class__.__mro__[1].__subclasses__() }}")
    template = load_template("toy/custom/evil", [tmp_path])
    row = {"id": "a", "input": json.dumps({"task": "x"})}
    with pytest.raises(ReconError, match="refused unsafe access"):
        relabel([row], template, "arm")
    with pytest.raises(ReconError, match="refused unsafe access"):
        relabel_table(pa.Table.from_pylist([row]), template, "arm")


@pytest.mark.parametrize(("value", "message"), [
    ("{not json", r"row bad: `input` is not valid JSON"),
    ("[1, 2]", r"row bad: `input` is a JSON list, not an object"),
    ("\"text\"", r"row bad: `input` is a JSON str, not an object"),
])
def test_malformed_input_names_the_row(toy_templates, value, message):
    template = toy_templates["toy/neutral/plain"]
    rows = [{"id": "good", "input": json.dumps({"task": "x", "items": []})}, {"id": "bad", "input": value}]
    with pytest.raises(ReconError, match=message):
        relabel(rows, template, "arm")
    with pytest.raises(ReconError, match=message):
        relabel_table(pa.Table.from_pylist(rows), template, "arm")


def test_missing_or_null_input_names_the_row(toy_templates):
    template = toy_templates["toy/neutral/plain"]
    with pytest.raises(ReconError, match="row r1: `input` is NoneType"):
        relabel([{"id": "r1"}], template, "arm")
    table = pa.table({"id": ["r0", "r1"], "input": [json.dumps({"task": "x", "items": []}), None]})
    with pytest.raises(ReconError, match="row r1: `input` is null"):
        relabel_table(table, template, "arm")
    with pytest.raises(ReconError, match="no `input` column"):
        relabel_table(pa.table({"id": ["r0"]}), template, "arm")


def test_render_inputs_accepts_mappings_and_strings_alike(toy_templates):
    template = toy_templates["toy/neutral/plain"]
    variables = {"task": "ab", "items": ["1", "2"]}
    assert render_inputs(template, [variables, json.dumps(variables)]) == [render(template, variables)] * 2


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collector_state_is_restored_even_after_an_error(toy_templates, enabled):
    import gc

    template = toy_templates["toy/neutral/plain"]
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        relabel([{"id": "a", "input": json.dumps({"task": "x", "items": []})}], template, "arm")
        assert gc.isenabled() is enabled
        with pytest.raises(ReconError):
            relabel_table(pa.table({"id": ["b"], "input": ["{"]}), template, "arm")
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
