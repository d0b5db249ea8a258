"""LLM-as-judge: render a rubric template per row, sample a judge model, parse a 0-10 score.

The rubric is an ordinary template (`templates/judge/rubric/<name>.jinja`, or any file path) rendered in
the sandbox with these variables: `prompt` (the last user message the policy saw), `completion`,
`reference` and `input` (the record's JSON fields as dicts), and each reference field at top level
unless it collides with those names. The judge is sampled through `recon_data.sample.sample_rows`
(greedy, n=1), so any backend works and judgements are cached like samples.

Parsing never raises: a reply with no usable score gives score None and `detail.reason`. This module
must not decide what a score means for filtering or training; it only produces the number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ReconError

VERSION = "1"
DEFAULT_TEMPLATE = "judge/rubric/default"
PARSE_WINDOW = 50_000  # only the reply's tail is read: verdicts come last, and it bounds the work
OUTPUT_KEPT = 2_000  # characters of the judge's reply kept in detail

# A number not glued to a word or another number ("0-10" gives 0 and 10, not -10; "gpt4", "7th" and
# "1.2.3" give nothing). Every optional piece below starts with `\s*` and then needs a literal, so a long
# run of spaces cannot be split several ways: matching stays linear (no possessive quantifiers before 3.11).
_NUM = r"(?<![\w.])([-\u2212]?\d+(?:\.\d+)?)(?![\w.]\d)(?![^\W\d])"
_DENOM = r"(?:\s*(?:/|out\s+of|of)\s*(\d+(?:\.\d+)?))?"
_LABELLED = re.compile(
    r"\b(?:score|rating|grade|mark)\b(?:\s*\([^)\n]{0,20}\))?(?:\s*(?:is|was|of|=|:|-|\u2014|\u2013))?"
    r"(?:\s*(?:would\s+)?be\b)?\s*[*_`'\"\[]*" + _NUM + r"[*_`'\"\]]*" + _DENOM,
    re.IGNORECASE,
)
_OUT_OF = re.compile(_NUM + r"\s*(?:/\s*(10)\b|out\s+of\s+(\d+(?:\.\d+)?))", re.IGNORECASE)
_BOLD = re.compile(r"\*\*\s*" + _NUM + r"\s*(?:/\s*10\s*)?\*\*")
_ANY = re.compile(_NUM)
_RANGE = re.compile(_NUM + r"\s*(?:-|\u2013|\u2014|to)\s*" + _NUM, re.IGNORECASE)  # "0-10", "1 to 10"
_DECLINED = re.compile(
    r"\b(?:score|rating|grade)\b\s*(?:[:=-]\s*)?[*_`'\"]*(?:n/?a|none|null|unknown|undefined)\b",
    re.IGNORECASE,
)
_JSON = re.compile(r"\{[^{}]{0,2000}\}")
_JSON_KEYS = ("score", "rating", "grade")


class ParsedScore(NamedTuple):
    """score in [low, high] or None; `method` says which rule matched; `reason` says why None."""

    score: float | None
    method: str | None
    reason: str | None


def _number(text: str) -> float | None:
    try:
        value = float(text.replace("\u2212", "-"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _scaled(value: float, denom: str | None, high: float) -> tuple[float | None, str | None]:
    """'8/10' -> 8; '4/5' -> 8 (rescaled to the scale); a zero or unreadable denominator is no score."""
    if denom is None:
        return value, None
    d = _number(denom)
    if d is None or d <= 0:
        return None, f"unusable denominator in {value:g}/{denom}"
    if d == high:
        return value, None  # the range check below reports '11/10'
    if not 0 <= value <= d:
        return None, f"score {value:g}/{denom} outside its scale"
    return value * high / d, None


def _from_json(text: str) -> tuple[float | None, str | None, bool]:
    """(value, denominator, found) from the last JSON object that has a score key."""
    for match in reversed(list(_JSON.finditer(text))):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        for key, value in obj.items():
            if not isinstance(key, str) or key.strip().lower() not in _JSON_KEYS:
                continue
            if isinstance(value, bool):
                return None, None, True
            if isinstance(value, (int, float)):
                try:
                    number = float(value)
                except OverflowError:  # a JSON integer too big for a float
                    return None, None, True
                return (number if math.isfinite(number) else None), None, True
            if isinstance(value, str):
                m = _OUT_OF.search(value) or _ANY.search(value)
                if m:
                    denom = (m.group(2) or m.group(3)) if m.re is _OUT_OF else None
                    return _number(m.group(1)), denom, True
            return None, None, True
    return None, None, False


def _reversed_matches(pattern: re.Pattern, text: str):
    return reversed(list(pattern.finditer(text)))


def parse_score(text: Any, *, low: float = 0.0, high: float = 10.0) -> ParsedScore:
    """Read a judge's score from free text. Rules, first that applies wins (last match within a rule):

    a JSON object with a score/rating/grade key; 'Score: 7' / 'rating of 8/10' / 'Final grade - **6**'
    ('Score: N/A' with no labelled number is a refusal); '7/10' or '6.5 out of 10'; a bolded number
    '**8**'; otherwise the last number in the text that is not part of a range like '0-10'.
    A fraction with another denominator is rescaled ('4/5' -> 8). Out-of-range values are not clamped:
    they give None, like unparseable replies.
    """
    if text is None:
        return ParsedScore(None, None, "no judge output")
    if not isinstance(text, str):
        return ParsedScore(None, None, f"judge output is {type(text).__name__}, not text")
    if not text.strip():
        return ParsedScore(None, None, "empty judge output")
    tail = text[-PARSE_WINDOW:]

    value, denom, found = _from_json(tail)
    method = "json"
    if found and value is None:
        return ParsedScore(None, method, "JSON score is not a finite number")
    if not found:
        no_ranges = _RANGE.sub(lambda m: " " * len(m.group(0)), tail)  # a scale is not a score
        rules = (("label", _LABELLED, tail), ("fraction", _OUT_OF, tail), ("bold", _BOLD, tail),
                 ("last_number", _ANY, no_ranges))
        last = None
        for method, pattern, where in rules:  # noqa: B007 - `method` names the rule that matched
            if method == "fraction" and _DECLINED.search(tail):
                return ParsedScore(None, "label", "the judge declined to score (score: n/a)")
            last = next(_reversed_matches(pattern, where), None)
            if last is not None:
                break
        if last is None:
            return ParsedScore(None, None, "no number in judge output")
        value = _number(last.group(1))
        denom = next((g for g in last.groups()[1:] if g), None)
    if value is None:
        return ParsedScore(None, method, "score is not a finite number")
    scaled, problem = _scaled(value, denom, high)
    if scaled is None:
        return ParsedScore(None, method, problem)
    if not low <= scaled <= high:
        return ParsedScore(None, method, f"score {scaled:g} outside [{low:g}, {high:g}]")
    return ParsedScore(float(scaled), method, None)


# ---------------------------------------------------------------- rendering


def _json_field(value: Any, column: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except ValueError:
            raise ReconError(f"'{column}' is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ReconError(f"'{column}' must be a JSON object, got {type(parsed).__name__}")
        return parsed
    raise ReconError(f"'{column}' must be a JSON object string, got {type(value).__name__}")


def last_user_message(messages: Any) -> str:
    """The task as the policy saw it: the content of the last user turn ('' when there is none)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        return ""
    for m in reversed(messages):
        if isinstance(m, Mapping) and m.get("role") == "user":
            return "" if m.get("content") is None else str(m["content"])
    return ""


def rubric_variables(row: Mapping) -> dict:
    """What a rubric template can use (see module doc)."""
    reference = _json_field(row.get("reference"), "reference")
    variables = {k: v for k, v in reference.items() if isinstance(k, str)}
    variables.update(
        prompt=last_user_message(row.get("gen_messages")),
        completion="" if row.get("completion") is None else str(row["completion"]),
        reference=reference,
        input=_json_field(row.get("input"), "input"),
    )
    return variables


def render_rubric(template, row: Mapping) -> list[dict]:
    """Judge messages for one row; ReconError when the row lacks what the rubric uses."""
    from ..templates import render

    return render(template, rubric_variables(row))


# ---------------------------------------------------------------- scoring


def score(
    rows: list[dict],
    *,
    name: str,
    model: str = "embedded",
    backend: str = "transformers",
    template: str = DEFAULT_TEMPLATE,
    template_dirs: Sequence[str | Path] = (),
    max_new_tokens: int = 256,
    cache_dir: str | Path | None = None,
    batch_size: int = 4,
    options: dict | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Judge every row greedily (temperature 0, n=1); see module doc for the template variables.

    A row whose rubric cannot be rendered, or whose reply has no usable score, gets score None and a
    reason; if no row can be rendered at all the rubric and the data do not fit, which is an error.
    """
    from ..sample import SamplingParams, sample_rows
    from ..templates import load_template

    tmpl = load_template(template, template_dirs)
    results: list[dict] = [{} for _ in rows]
    judge_rows: list[dict] = []
    first_error = None
    for i, row in enumerate(rows):
        try:
            messages = render_rubric(tmpl, row)
        except ReconError as err:
            first_error = first_error or f"row {row.get('id', i)!r}: {err}"
            results[i] = {"score": None, "detail": {"reason": f"rubric not rendered: {err}",
                                                    "template": tmpl.id}}
            continue
        judge_rows.append({"judge_messages": messages, "_judge_row": i})
    if rows and not judge_rows:
        raise ReconError(f"judge '{name}': rubric {tmpl.id} fits no row ({first_error}); "
                         "use a rubric whose variables the rows provide")
    if not judge_rows:
        return []
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)
    judged = sample_rows(
        judge_rows, model=model, backend=backend, params=params,
        cache_dir=Path(cache_dir) if cache_dir is not None else None, batch_size=batch_size,
        options=options, progress=progress, messages_key="judge_messages",
    )
    for out in judged:
        parsed = parse_score(out["completion"])
        detail = {
            "judge_output": (out["completion"] or "")[:OUTPUT_KEPT], "parsed_by": parsed.method,
            "judge_model": f"{out['model_id']}@{out['model_revision']}", "template": tmpl.id,
            "template_sha256": tmpl.sha256, "finish_reason": out.get("finish_reason"),
        }
        if parsed.reason:
            detail["reason"] = parsed.reason
        results[out["_judge_row"]] = {"score": parsed.score, "detail": detail}
    return results
