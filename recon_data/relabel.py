"""Render records under a template: generation prompts before sampling, training prompts after.

Relabelling is the heart of recontextualization: the completion stays byte-identical, only the prompt
the trainer sees changes. Both directions use the same renderer so a template renders the same way
whichever side of the pipeline it is on. This module must not sample, score or train.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .templates import Template, render


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


def _variables(row: dict) -> dict:
    value = row["input"]
    return json.loads(value) if isinstance(value, str) else dict(value)


def generation_rows(records: Iterable[dict], template: Template) -> list[dict]:
    """Records → prompt rows carrying the generation template's id, hash and rendered messages."""
    out = []
    for row in record_rows(records):
        row["gen_template_id"] = template.id
        row["gen_template_hash"] = template.sha256
        row["gen_messages"] = render(template, _variables(row))
        out.append(row)
    return out


def relabel(rows: Iterable[dict], template: Template, arm: str) -> list[dict]:
    """Put each completion under the training template; the generation prompt is kept beside it."""
    out = []
    for row in rows:
        new = dict(row)
        new["arm"] = arm
        new["train_template_id"] = template.id
        new["train_template_hash"] = template.sha256
        new["prompt"] = render(template, _variables(row))
        out.append(new)
    return out
