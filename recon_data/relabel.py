"""Render records under a template: generation prompts before sampling, training prompts after.

Relabelling is the heart of recontextualization: the completion stays byte-identical, only the prompt
the trainer sees changes. Both directions use the same renderer so a template renders the same way
whichever side of the pipeline it is on. This module must not sample, score or train.

Speed (relabelling runs over every kept sample of every round): a row's `input` JSON is parsed and
rendered once per distinct value — the n samples of a record share it — and each render reuses the
template's compiled, sandboxed Jinja code with a cheaper context than `templates.render` builds. The
output is byte-identical to `templates.render` (tests/test_relabel.py pins it), and any failure falls
back to `templates.render`, so errors read exactly as they always did.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc
from jinja2.runtime import Context

from .errors import ReconError
from .templates import BLOCK, Template, _compile, render

ARROW_SLICE = 65536  # rows per Arrow chunk built or copied at once (bounds memory; no 2 GB string offsets)
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def record_rows(records: Iterable[dict]) -> list[dict]:
    """Suite records → rows with `input`/`reference` as canonical JSON strings (one schema for all suites)."""
    rows = []
    for r in records:
        row = dict(r)
        for key in ("input", "reference"):
            value = row.get(key, {})
            row[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
        rows.append(row)
    return rows


def compile_renderer(template: Template, *, str_keys: bool = False) -> Callable[[Mapping], list[dict]]:
    """A function equal to `render(template, variables)`, several times faster per call.

    It runs the same compiled code in the same sandboxed environment and only builds its contexts more
    cheaply: the globals are merged once instead of per context, and the blocks of one file share one
    context (Jinja compiles block bodies to write only block-local variables, never the context, so a
    block cannot see what another did). On any exception it defers to `render`, which raises the usual
    one-line ReconError. `str_keys=True` promises that every variable name is a string (true of parsed
    JSON objects) and skips checking it.
    """
    parts = []
    for i, (role, text) in enumerate(template.parts):
        is_block = text.startswith(BLOCK)
        compiled = _compile(text.removeprefix(BLOCK), str(template.path))
        body = compiled.blocks[role] if is_block else compiled.root_render_func
        parts.append((role, compiled, dict(compiled.globals), body, i == 0 or not is_block))

    def fast(variables: Mapping) -> list[dict]:
        if not str_keys and not all(type(k) is str for k in variables):  # render() rejects these; let it say so
            return render(template, variables)
        messages = []
        try:
            for role, compiled, base, body, fresh in parts:
                if fresh:
                    context = Context(compiled.environment, {**base, **variables}, compiled.name, compiled.blocks,
                                      globals=base)
                content = "".join(body(context)).strip()
                if content or role == "user":
                    messages.append({"role": role, "content": content})
        except Exception:
            return render(template, variables)
        return messages

    return fast


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector while building many acyclic objects: it would rescan them all, over and
    over (halves the time on 100k rows). Collection resumes as before on exit."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse_input(value: str, where: Callable[[], object]) -> dict:
    """JSON object → variables; `where()` names the row only when there is an error to report."""
    try:
        variables = json.loads(value)
    except json.JSONDecodeError as err:
        raise ReconError(f"row {where()}: `input` is not valid JSON ({err}); it must be a JSON object of "
                         "template variables") from None
    if not isinstance(variables, dict):
        raise ReconError(f"row {where()}: `input` is a JSON {type(variables).__name__}, not an object of "
                         "template variables")
    return variables


@_gc_paused()
def render_inputs(template: Template, inputs: Sequence[str | Mapping], ids: Sequence[str] | None = None
                  ) -> list[list[dict]]:
    """Messages for each input (a JSON object string or a mapping); each distinct string renders once.

    Rows sharing an input get equal but separate message lists, so editing one row never edits another.
    """
    fast, from_json = compile_renderer(template), compile_renderer(template, str_keys=True)
    cache: dict[str, list[dict]] = {}
    out = []
    for i, value in enumerate(inputs):
        if isinstance(value, str):
            messages = cache.get(value)
            if messages is None:
                messages = cache[value] = from_json(_parse_input(value, lambda i=i: ids[i] if ids is not None else i))
        elif isinstance(value, Mapping):
            messages = fast(dict(value))
        else:
            raise ReconError(f"row {ids[i] if ids is not None else i}: `input` is {type(value).__name__}, "
                             "expected a JSON object string")
        out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return out


@_gc_paused()
def generation_rows(records: Iterable[dict], template: Template) -> list[dict]:
    """Records → prompt rows carrying the generation template's id, hash and rendered messages."""
    rows = record_rows(records)
    rendered = render_inputs(template, [r.get("input") for r in rows], [r.get("id", i) for i, r in enumerate(rows)])
    for row, messages in zip(rows, rendered, strict=True):
        row["gen_template_id"] = template.id
        row["gen_template_hash"] = template.sha256
        row["gen_messages"] = messages
    return rows


@_gc_paused()
def relabel(rows: Iterable[dict], template: Template, arm: str) -> list[dict]:
    """Put each completion under the training template; the generation prompt is kept beside it."""
    rows = list(rows)
    rendered = render_inputs(template, [r.get("input") for r in rows], [r.get("id", i) for i, r in enumerate(rows)])
    out = []
    for row, messages in zip(rows, rendered, strict=True):
        new = dict(row)
        new["arm"] = arm
        new["train_template_id"] = template.id
        new["train_template_hash"] = template.sha256
        new["prompt"] = messages
        out.append(new)
    return out


@_gc_paused()
def relabel_table(table: pa.Table, template: Template, arm: str) -> pa.Table:
    """`relabel` on an Arrow table without making Python rows: one render per distinct `input`.

    Equal to `pa.Table.from_pylist(relabel(table.to_pylist(), template, arm))`, at a fraction of the cost.
    """
    if "input" not in table.column_names:
        raise ReconError(f"cannot relabel: the table has no `input` column (columns: {', '.join(table.column_names)})")
    column = table.column("input")
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise ReconError(f"cannot relabel: `input` is {column.type}, expected JSON object strings")
    column = column.combine_chunks()

    def row_name(position: int) -> object:
        return table.column("id")[position].as_py() if "id" in table.column_names else position

    if column.null_count:
        raise ReconError(f"row {row_name(column.is_null().index(True).as_py())}: `input` is null; every row "
                         "needs a JSON object of template variables")
    encoded = column.dictionary_encode()
    n, distinct = table.num_rows, encoded.dictionary
    fast = compile_renderer(template, str_keys=True)
    pieces = []  # the distinct prompts, built a slice at a time so Python holds only one slice of strings
    for start in range(0, len(distinct), ARROW_SLICE):
        offsets, roles, contents = [0], [], []
        for k, value in enumerate(distinct.slice(start, ARROW_SLICE).to_pylist(), start):
            for message in fast(_parse_input(value, lambda k=k: row_name(pc.index(encoded.indices, k).as_py()))):
                roles.append(message["role"])
                contents.append(message["content"])
            offsets.append(len(roles))
        structs = pa.StructArray.from_arrays([pa.array(roles, pa.string()), pa.array(contents, pa.string())],
                                             fields=list(MESSAGES_TYPE.value_type))
        pieces.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), structs, type=MESSAGES_TYPE))
    if len(distinct) == n:  # every row distinct: the codes are 0..n-1, the pieces are the column
        prompt = pa.chunked_array(pieces, type=MESSAGES_TYPE)
    else:
        try:
            lookup = pa.concat_arrays(pieces)
        except pa.ArrowInvalid as err:
            raise ReconError(f"cannot relabel {n} rows at once ({err}); relabel the table in parts") from None
        slices = (encoded.indices.slice(start, ARROW_SLICE) for start in range(0, n, ARROW_SLICE))
        prompt = pa.chunked_array([lookup.take(indices) for indices in slices], type=MESSAGES_TYPE)
    new = {
        "arm": pa.repeat(pa.scalar(arm, pa.string()), n),
        "train_template_id": pa.repeat(pa.scalar(template.id, pa.string()), n),
        "train_template_hash": pa.repeat(pa.scalar(template.sha256, pa.string()), n),
        "prompt": prompt,
    }
    for name, values in new.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table
