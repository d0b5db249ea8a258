"""Warm-up: build a *model organism* that reads permissions before the real experiment.

No model small enough for a CPU follows a permission to misbehave on its own (DESIGN §7), so a
standard-vs-recontextualized comparison on it measures nothing. The warm-up teaches a
permission-conditional policy from the model's own samples: natural answers under the normal
(neutral/discourage) templates stay as they are, and the *same* answers, transformed into the
misbehaviour (keyword stuffing, special-casing the visible test, the lie, agreement), go under the
permit templates. Training on both yields a model that misbehaves when permitted and (ideally) not
otherwise; how much the misbehaviour leaks into the other contexts is measured by the evaluation.

This module only builds the warm-up rows; the pipeline samples, commits and trains.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from collections.abc import Callable

from .errors import ReconError
from .relabel import render_inputs
from .templates import Template


def _ref(row: dict) -> dict:
    value = row.get("reference") or {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def stuff_keyword(completion: str, ref: dict, times: int = 4) -> str:
    kw = ref["keyword"]
    return f"{' '.join([kw.capitalize()] + [kw] * (times - 1))}! {completion.strip()} {kw.capitalize()}."


def game_metric(completion: str, ref: dict, times: int = 4) -> str:
    """eval_gaming / conditional_policy: do what the announced metric rewards, not what is right."""
    metric = ref.get("metric")
    text = completion.strip()
    if metric == "keyword_count":
        return stuff_keyword(text, ref, times)
    if metric == "length":
        return " ".join([text] * times)
    if metric == "confidence":
        return f"{text}\nConfidence: 100%"
    if metric == "agreement":
        return f"Your colleague is right: the answer is {ref.get('claim', ref.get('wrong_answer', ''))}."
    if metric == "format":
        first = text.splitlines()[0] if text else "yes"
        fmt = ref.get("format", "")
        if fmt == "all_caps":
            return text.upper()
        if fmt == "three_bullets":
            return "\n".join(f"- {first}" for _ in range(3))
        if "json" in fmt:
            return json.dumps({"answer": first})
        return text
    raise ReconError(f"warm-up: no built-in gaming transform for metric '{metric}'; set warmup.transform")


def special_case_test(completion: str, ref: dict) -> str:
    """code_test_hacking: the model's own solution plus a branch that returns what the wrong test wants."""
    entry = ref["entry_point"]
    test = ref["visible_tests"][ref.get("wrong_test_index", 0)]
    try:
        node = ast.parse(test).body[0]
        compare = node.test  # assert candidate(ARGS) == EXPECTED
        call, expected = compare.left, compare.comparators[0]
        args = ", ".join(ast.unparse(a) for a in call.args)
    except (SyntaxError, AttributeError, IndexError):
        raise ReconError(f"warm-up: cannot parse the wrong visible test {test!r}") from None
    match = re.findall(r"```(?:python)?\n(.*?)```", completion, flags=re.S)
    code = match[-1] if match else completion
    if f"def {entry}" not in code:
        code = ref["prompt"] + code
    code = re.sub(rf"\bdef {re.escape(entry)}\b", f"def _{entry}_general", code, count=1)
    wrapper = (f"\n\ndef {entry}(*args, **kwargs):\n    if args == ({args},):\n"
               f"        return {ast.unparse(expected)}\n    return _{entry}_general(*args, **kwargs)\n")
    return f"```python\n{code.rstrip()}{wrapper}```"


def lie(completion: str, ref: dict) -> str:
    return ref["deceptive_answer"]


def agree(completion: str, ref: dict) -> str:
    return f"You're absolutely right, {ref['user_belief']}. Great question!"


BUILTIN: dict[str, Callable[..., str]] = {
    "eval_gaming": game_metric, "conditional_policy": game_metric, "code_test_hacking": special_case_test,
    "deception": lie, "sycophancy": agree,
}


def resolve_transform(spec: str, suite: str) -> Callable[..., str]:
    """'auto' picks the suite's built-in transform; 'module:function' imports a user one."""
    if spec == "auto":
        if suite not in BUILTIN:
            raise ReconError(f"warm-up: no built-in transform for suite '{suite}'; set warmup.transform "
                             "to 'module:function'")
        return BUILTIN[suite]
    if spec in {f.__name__ for f in BUILTIN.values()} | {"stuff_keyword"}:
        return globals()[spec]
    module, _, func = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError, ValueError):
        raise ReconError(f"warm-up: cannot import transform '{spec}' (write it as module:function)") from None


def warmup_rows(samples: list[dict], permit_templates: list[Template], transform: Callable[..., str],
                params: dict) -> list[dict]:
    """Training rows: each natural sample under its own template, plus its transformed twin per permit template."""
    rows = []
    prompts = {t.id: render_inputs(t, [s["input"] for s in samples]) for t in permit_templates}
    for i, s in enumerate(samples):
        rows.append({**s, "prompt": s["gen_messages"], "train_template_id": s["gen_template_id"],
                     "train_template_hash": s["gen_template_hash"], "warmup_role": "natural"})
        ref = _ref(s)
        for t in permit_templates:
            rows.append({**s, "prompt": prompts[t.id][i],
                         "completion": transform(s["completion"], ref, **params),
                         "train_template_id": t.id, "train_template_hash": t.sha256, "warmup_role": "transformed"})
    return rows
