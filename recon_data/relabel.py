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

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from jinja2.runtime import Context

from .errors import ReconError
from .templates import BLOCK, Template, _compile, render

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


def compile_renderer(template: Template) -> Callable[[Mapping], list[dict]]:
    """A function equal to `render(template, variables)`, several times faster per call.

    It runs the same compiled code in the same sandboxed environment; it only skips rebuilding the
    globals mapping for every context (the bulk of `render`'s time). On any exception it defers to
    `render`, which raises the usual one-line ReconError.
    """
    parts = []
    for role, text in template.parts:
        is_block = text.startswith(BLOCK)
        compiled = _compile(text.removeprefix(BLOCK), str(template.path))
        body = compiled.blocks[role] if is_block else compiled.root_render_func
        parts.append((role, compiled, dict(compiled.globals), body))

    def fast(variables: Mapping) -> list[dict]:
        if not all(type(k) is str for k in variables):  # render() rejects these; let it say so
            return render(template, variables)
        messages = []
        try:
            for role, compiled, base, body in parts:
                context = Context(compiled.environment, {**base, **variables}, compiled.name, compiled.blocks,
                                  globals=base)
                content = "".join(body(context)).strip()
                if content or role == "user":
                    messages.append({"role": role, "content": content})
        except Exception:
            return render(template, variables)
        return messages

    return fast


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


def render_inputs(template: Template, inputs: Sequence[str | Mapping], ids: Sequence[str] | None = None
                  ) -> list[list[dict]]:
    """Messages for each input (a JSON object string or a mapping); each distinct string renders once.

    Rows sharing an input get equal but separate message lists, so editing one row never edits another.
    """
    fast = compile_renderer(template)
    cache: dict[str, list[dict]] = {}
    out = []
    for i, value in enumerate(inputs):
        if isinstance(value, str):
            messages = cache.get(value)
            if messages is None:
                messages = cache[value] = fast(_parse_input(value, lambda i=i: ids[i] if ids is not None else i))
        elif isinstance(value, Mapping):
            messages = fast(dict(value))
        else:
            raise ReconError(f"row {ids[i] if ids is not None else i}: `input` is {type(value).__name__}, "
                             "expected a JSON object string")
        out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return out


def generation_rows(records: Iterable[dict], template: Template) -> list[dict]:
    """Records → prompt rows carrying the generation template's id, hash and rendered messages."""
    rows = record_rows(records)
    rendered = render_inputs(template, [r.get("input") for r in rows], [r.get("id", i) for i, r in enumerate(rows)])
    for row, messages in zip(rows, rendered, strict=True):
        row["gen_template_id"] = template.id
        row["gen_template_hash"] = template.sha256
        row["gen_messages"] = messages
    return rows


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
    fast = compile_renderer(template)
    messages = [
        fast(_parse_input(value, lambda k=k: row_name(pc.index(encoded.indices, k).as_py())))
        for k, value in enumerate(encoded.dictionary.to_pylist())
    ]
    prompt = pa.array(messages, type=MESSAGES_TYPE).take(encoded.indices)
    n = table.num_rows
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
