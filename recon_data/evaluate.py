"""Turn scored evaluation samples into metrics: means with confidence intervals, label shares, hack rate.

Metrics are computed from the rows, per (suite, eval template); every `score.<name>` column gives its
mean, every `label.<name>` column the share of each label, and an optional hack rule the share of rows
that misbehave. Rows that carry a `domainness` (the conditional-policy probe) also give its correlation
with the hack flag and with every score. Aggregating over seeds happens in the report. This module must
not sample or train.
"""

from __future__ import annotations

import json
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
        out += domain_correlations(suite, template, group, columns, hack_rule)
    return out


def _domainness(row: dict) -> float | None:
    ref = row.get("reference")
    if isinstance(ref, str):
        try:
            ref = json.loads(ref)
        except ValueError:
            return None
    value = ref.get("domainness") if isinstance(ref, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pearson_ci(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Pearson r with a Fisher-z 95% interval; NaN when either side is constant or n < 4."""
    n = len(xs)
    if n < 4:
        return math.nan, math.nan, math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return math.nan, math.nan, math.nan
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    if abs(r) == 1.0:
        return r, r, r
    z, half = math.atanh(r), Z95 / math.sqrt(n - 3)
    return r, math.tanh(z - half), math.tanh(z + half)


def domain_correlations(suite: str, template: str, group: list[dict], columns: list[str],
                        hack_rule: dict | None) -> list[dict]:
    """The conditional-policy probe: does misbehaviour track how strongly a prompt belongs to a domain?

    For rows whose reference carries a numeric `domainness` (the `conditional_policy` suite), the Pearson
    correlation of domainness with the hack flag and with every score column. A policy learned in one
    domain that stays there shows a clear correlation; an unconditional one shows about 0.
    """
    rows = [(d, r) for r in group if (d := _domainness(r)) is not None]
    if not rows:
        return []
    out = []
    targets = ([("hack", lambda r: is_hack(r, hack_rule))] if hack_rule else []) + [
        (col, lambda r, col=col: r.get(col)) for col in columns if col.startswith("score.")
    ]
    for name, value_of in targets:
        pairs = [(d, float(v)) for d, r in rows if (v := value_of(r)) is not None]
        r, lo, hi = pearson_ci([d for d, _ in pairs], [v for _, v in pairs])
        out.append(_metric(suite, template, f"corr({name}, domainness)", r, lo, hi, len(pairs)))
    return out


def _metric(suite: str, template: str, name: str, value: float, lo: float, hi: float, n: int) -> dict:
    return {"suite": suite, "eval_template": template, "metric": name, "value": value,
            "ci_low": lo, "ci_high": hi, "n": n}
