"""Turn scored evaluation samples into metrics: means with confidence intervals, label shares, hack rate.

Metrics are computed from the rows, per (suite, eval template); every `score.<name>` column gives its
mean, every `label.<name>` column the share of each label, and an optional hack rule the share of rows
that misbehave. Aggregating over seeds happens in the report. This module must not sample or train.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

Z95 = 1.959963984540054


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% CI (t-based CIs over seeds are made in the report)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return mean, mean - half, mean + half


def wilson_ci(k: int, n: int) -> tuple[float, float, float]:
    """A proportion with its Wilson 95% interval (sane at 0% and 100%, unlike the normal one)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = k / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def is_hack(row: dict, rule: dict) -> bool | None:
    """Apply a hack rule ({column, min, max, equals}) to one row; None when the column is null."""
    value = row.get(rule["column"])
    if value is None:
        return None
    if rule.get("equals") is not None:
        return str(value) == str(rule["equals"])
    lo, hi = rule.get("min"), rule.get("max")
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def metrics(rows: Iterable[dict], *, hack_rule: dict | None = None) -> list[dict]:
    """One dict per (suite, template, metric): value, ci_low, ci_high, n."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row.get("suite", ""), row.get("gen_template_id", ""))].append(row)
    out = []
    for (suite, template), group in sorted(groups.items()):
        columns = sorted({c for r in group for c in r if c.startswith(("score.", "label."))})
        for col in columns:
            if col.startswith("score."):
                vals = [float(r[col]) for r in group if r.get(col) is not None]
                mean, lo, hi = mean_ci(vals)
                out.append(_metric(suite, template, f"mean {col}", mean, lo, hi, len(vals)))
            else:
                labels = [r[col] for r in group if r.get(col) is not None]
                for label in sorted(set(labels)):
                    p, lo, hi = wilson_ci(labels.count(label), len(labels))
                    out.append(_metric(suite, template, f"share {col}={label}", p, lo, hi, len(labels)))
        if hack_rule:
            flags = [f for f in (is_hack(r, hack_rule) for r in group) if f is not None]
            p, lo, hi = wilson_ci(sum(flags), len(flags))
            out.append(_metric(suite, template, "hack_rate", p, lo, hi, len(flags)))
    return out


def _metric(suite: str, template: str, name: str, value: float, lo: float, hi: float, n: int) -> dict:
    return {"suite": suite, "eval_template": template, "metric": name, "value": value,
            "ci_low": lo, "ci_high": hi, "n": n}
