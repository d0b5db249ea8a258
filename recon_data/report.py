"""Turn a run's metrics table into a report: plots of each metric by round per arm, tables, arm differences.

Input is the `<run>-metrics` dataset the pipeline commits (one row per run × round × seed × arm × suite ×
eval template × metric; round 0 is the base model, repeated for every arm). Seeds are the unit of
replication: a cell's mean is the mean over seeds and its 95% CI a t-interval over the per-seed values;
with a single seed the row's own interval (over samples) is shown instead. The arm comparison at the last
round uses the per-seed differences, paired by seed. This module reads the store and writes files; it
must not sample, train or recompute metrics from samples.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .errors import ReconError
from .store import NAME_RE, Store

REQUIRED = ("round", "seed", "arm", "suite", "eval_template", "metric", "value")
BASELINE_ARM = "standard"
CELL = ("suite", "eval_template", "metric")


# ---- loading ---------------------------------------------------------------------------------------
def load_metrics(store: Store, run: str) -> list[dict]:
    """The rows of the latest `<run>-metrics` version; a missing dataset names the ones that exist."""
    name = f"{run}-metrics"
    if not NAME_RE.match(name):  # a run name is a dataset-name prefix: no paths, no '@'
        raise ReconError(f"invalid run name '{run}': use letters, digits, '.', '_' or '-'")
    if not store.versions(name):
        names = store.names()
        ours = [n for n in names if n.startswith(f"{run}-")]
        shown = ", ".join((ours or names)[:20]) or "none"
        more = f" (+{len(ours or names) - 20} more)" if len(ours or names) > 20 else ""
        raise ReconError(f"run '{run}' has no metrics dataset '{name}' in store {getattr(store, 'url', store.root)} "
                         f"(datasets: {shown}{more}); finish the run with `recon run` first")
    table = store.read(name)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ReconError(f"{name}: not a metrics table, column(s) {', '.join(missing)} missing "
                         f"(has: {', '.join(table.column_names)})")
    return table.to_pylist()


# ---- statistics ------------------------------------------------------------------------------------
def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over replicates (seeds); NaN bounds when fewer than two."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _per_seed(rows: Iterable[dict]) -> dict[tuple, dict[int, dict]]:
    """(suite, template, metric, arm, round) -> seed -> row; a repeated key is a malformed table."""
    cells: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        try:
            key = (*(str(row[c]) for c in CELL), str(row["arm"]), int(row["round"]))
            seed = int(row["seed"])
        except (KeyError, TypeError, ValueError) as err:
            raise ReconError(f"metrics row has a missing or non-integer field ({type(err).__name__}: {err}): "
                             f"{ {k: row.get(k) for k in REQUIRED} }") from None
        if seed in cells[key]:
            raise ReconError(f"metrics table has two rows for seed {seed} of {key}; each (arm, round, seed, "
                             "suite, eval_template, metric) must appear once")
        cells[key][seed] = row
    return cells


def summarize(rows: Iterable[dict]) -> list[dict]:
    """One dict per (suite, eval_template, metric, arm, round): mean over seeds, 95% CI, seeds used.

    With two or more seeds the CI is a t-interval over the per-seed values; with one it is that row's
    own interval (`ci_source` says which). Rows whose value is null or NaN are left out.
    """
    out = []
    for key, by_seed in sorted(_per_seed(rows).items()):
        seeds = sorted(s for s, r in by_seed.items() if _finite(r["value"]))
        values = [float(by_seed[s]["value"]) for s in seeds]
        if not values:
            continue
        if len(values) >= 2:
            mean, lo, hi = t_interval(values)
            source = "t over seeds"
        else:
            row = by_seed[seeds[0]]
            mean = values[0]
            lo = float(row["ci_low"]) if _finite(row.get("ci_low")) else math.nan
            hi = float(row["ci_high"]) if _finite(row.get("ci_high")) else math.nan
            source = "row's own CI (one seed)"
        out.append({**dict(zip((*CELL, "arm", "round"), key, strict=True)), "mean": mean, "ci_low": lo,
                    "ci_high": hi, "n_seeds": len(values), "seeds": seeds, "values": values, "ci_source": source})
    return out


def differences(rows: Iterable[dict], baseline: str = BASELINE_ARM) -> list[dict]:
    """Each other arm minus the baseline arm at the last round both reached, paired by seed.

    The CI is a t-interval over the per-seed differences; with one shared seed the two rows' own
    half-widths are combined as for independent estimates.
    """
    cells = _per_seed(rows)
    by_metric: dict[tuple, dict[str, dict[int, dict[int, dict]]]] = defaultdict(lambda: defaultdict(dict))
    for (suite, template, metric, arm, rnd), by_seed in cells.items():
        by_metric[(suite, template, metric)][arm][rnd] = by_seed
    out = []
    for cell, arms in sorted(by_metric.items()):
        if baseline not in arms:
            continue
        for arm in sorted(a for a in arms if a != baseline):
            common_rounds = set(arms[arm]) & set(arms[baseline])
            if not common_rounds:
                continue
            rnd = max(common_rounds)
            a, b = arms[arm][rnd], arms[baseline][rnd]
            seeds = sorted(s for s in set(a) & set(b) if _finite(a[s]["value"]) and _finite(b[s]["value"]))
            if not seeds:
                continue
            diffs = [float(a[s]["value"]) - float(b[s]["value"]) for s in seeds]
            if len(diffs) >= 2:
                mean, lo, hi = t_interval(diffs)
                source = "t over per-seed differences"
            else:
                mean = diffs[0]
                half = math.sqrt(_half(a[seeds[0]]) ** 2 + _half(b[seeds[0]]) ** 2)
                lo, hi = mean - half, mean + half
                source = "rows' own CIs (one seed)"
            out.append({**dict(zip(CELL, cell, strict=True)), "arm": arm, "baseline": baseline, "round": rnd,
                        "difference": mean, "ci_low": lo, "ci_high": hi, "n_seeds": len(diffs), "seeds": seeds,
                        "ci_source": source, "verdict": verdict(lo, hi)})
    return out


def arm_order(arm: str) -> tuple[bool, str]:
    """The baseline arm first, then the others by name (tables, legends)."""
    return arm != BASELINE_ARM, arm


def _half(row: dict) -> float:
    lo, hi = row.get("ci_low"), row.get("ci_high")
    return (float(hi) - float(lo)) / 2 if _finite(lo) and _finite(hi) else math.nan


def verdict(lo: float, hi: float) -> str:
    """The plain-words reading of a difference's 95% CI."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no confidence interval (needs two seeds, or per-row CIs)"
    if lo <= 0 <= hi:
        return "difference not distinguishable from 0 at 95%"
    return f"difference distinguishable from 0 at 95% ({'above' if lo > 0 else 'below'} 0)"


# ---- plots -----------------------------------------------------------------------------------------
def _slug(*parts: str) -> str:
    text = "__".join(parts)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:150] or "metric"


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder and rename, so no reader sees half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise ReconError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def plot(summary: list[dict], cell: tuple[str, str, str], path: Path) -> Path:
    """One PNG: the metric by round, one line per arm, error bars = the 95% CIs from `summarize`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite, template, metric = cell
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    try:
        mine = [s for s in summary if (s["suite"], s["eval_template"], s["metric"]) == cell]
        arms = sorted({s["arm"] for s in mine}, key=arm_order)
        for i, arm in enumerate(arms):
            points = sorted((s for s in mine if s["arm"] == arm), key=lambda s: s["round"])
            x = [p["round"] + (i - (len(arms) - 1) / 2) * 0.04 for p in points]  # dodge overlapping bars
            y = [p["mean"] for p in points]
            err = [[_nan0(p["mean"] - p["ci_low"]) for p in points], [_nan0(p["ci_high"] - p["mean"]) for p in points]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=arm)
        rounds = sorted({s["round"] for s in mine})
        ax.set_xticks(rounds)
        ax.set_xlabel("round (0 = base model)")
        ax.set_ylabel(metric)
        seeds = max(s["n_seeds"] for s in mine)
        how = f"mean over {seeds} seeds, 95% t-CI" if seeds > 1 else "one seed, 95% CI over samples"
        ax.set_title(f"{suite} · {template}\n{metric} ({how})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(title="arm")
        fig.tight_layout()
        _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def _nan0(x: float) -> float:
    """An error-bar length: NaN → 0, and never negative (a Wilson bound can miss p=0 by 1e-17)."""
    return max(0.0, x) if math.isfinite(x) else 0.0


# ---- the report ------------------------------------------------------------------------------------
def fmt_number(x: float) -> str:
    """Numbers as the report prints them (4 significant digits; a dash for NaN)."""
    if not _finite(x):
        return "–"
    return "0" if abs(x) < 1e-12 else f"{x:.4g}"  # float noise such as 5.6e-17 reads as 0


def _ci(lo: float, hi: float) -> str:
    return f"[{fmt_number(lo)}, {fmt_number(hi)}]" if _finite(lo) and _finite(hi) else "–"


def _header(run: str, rows: list[dict], manifest: dict) -> dict:
    pipeline = manifest.get("pipeline") or {}
    arms = pipeline.get("arms") or {}
    base = sorted({(str(r.get("model_id")), str(r.get("model_revision"))) for r in rows if int(r["round"]) == 0})
    last = max(int(r["round"]) for r in rows)
    trained = sorted({(str(r["arm"]), str(r.get("model_id"))) for r in rows if int(r["round"]) == last and last > 0})
    return {
        "run": run, "description": pipeline.get("description") or "", "created_at": manifest.get("created_at", "?"),
        "dataset": f"{manifest.get('name', run + '-metrics')}@{manifest.get('version', '?')}",
        "rows": len(rows), "model_spec": pipeline.get("model", "?"), "base_models": base,
        "trained": trained, "last_round": last, "seeds": sorted({int(r["seed"]) for r in rows}),
        "arms": {a: (v.get("generate", "?"), v.get("train", "?")) for a, v in arms.items()},
        "suite": pipeline.get("suite") or {},
    }


def _cells(summary: list[dict], metrics: list[str] | None) -> list[tuple[str, str, str]]:
    cells = sorted({(s["suite"], s["eval_template"], s["metric"]) for s in summary})
    if metrics:
        cells = [c for c in cells if any(c[2] == m or c[2].startswith(m) for m in metrics)]
    return cells


def _markdown(head: dict, cells: list, images: dict, summary: list[dict], diffs: list[dict]) -> str:
    lines = [f"# Report: {head['run']}", ""]
    if head["description"]:
        lines += [head["description"].strip(), ""]
    suite = head["suite"]
    lines += [
        f"- metrics: `{head['dataset']}` ({head['rows']} rows), created {head['created_at']}",
        f"- suite: `{suite.get('name') or suite.get('path') or '?'}`; seeds {head['seeds']}; "
        f"rounds 0–{head['last_round']} (round 0 = base model)",
        f"- base model: `{head['model_spec']}` → " + ", ".join(f"`{m}` ({r})" for m, r in head["base_models"]),
    ]
    by_arm: dict[str, list[str]] = defaultdict(list)
    for arm, model in head["trained"]:
        by_arm[arm].append(model)
    for arm in sorted(by_arm, key=arm_order):
        models = by_arm[arm]
        more = f" (+{len(models) - 6} more)" if len(models) > 6 else ""
        lines.append(f"- {arm} models at round {head['last_round']}: " + ", ".join(f"`{m}`" for m in models[:6]) + more)
    if head["arms"]:
        lines += ["", "| arm | generation template | training template |", "|---|---|---|"]
        for arm in sorted(head["arms"], key=arm_order):
            generate, train = head["arms"][arm]
            lines.append(f"| {arm} | `{generate}` | `{train}` |")
    lines += ["", "Means are over seeds; 95% CIs are t-intervals over the per-seed values (with one seed: the "
              "row's own interval over samples).", ""]
    for cell in cells:
        suite_name, template, metric = cell
        lines += [f"## {metric} — {suite_name} · {template}", "", f"![{metric}]({images[cell]})", "",
                  "| arm | round | mean | 95% CI | seeds |", "|---|---:|---:|---|---:|"]
        for s in sorted(summary, key=lambda s: (arm_order(s["arm"]), s["round"])):
            if (s["suite"], s["eval_template"], s["metric"]) == cell:
                lines.append(f"| {s['arm']} | {s['round']} | {fmt_number(s['mean'])} "
                             f"| {_ci(s['ci_low'], s['ci_high'])} | {s['n_seeds']} |")
        for d in diffs:
            if (d["suite"], d["eval_template"], d["metric"]) == cell:
                lines += ["", f"**Round {d['round']}: {d['arm']} − {d['baseline']} = {fmt_number(d['difference'])} "
                          f"{_ci(d['ci_low'], d['ci_high'])}** over {d['n_seeds']} seed(s) ({d['ci_source']}): "
                          f"{d['verdict']}."]
        lines.append("")
    return "\n".join(lines)


def _html(markdown: str) -> str:
    """A small self-contained HTML rendering of the report's markdown (headings, lists, tables, images)."""
    body, table = [], []

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def flush() -> None:
        if table:
            head, *rest = [[c.strip() for c in r.strip("|").split("|")] for r in table if not set(r) <= set("|-: ")]
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest) + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if m := re.match(r"!\[(.*)\]\((.*)\)$", line):
            body.append(f'<p><img src="{html.escape(m[2])}" alt="{html.escape(m[1])}"></p>')
        elif line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}ul{margin:.2em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>recon report</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def _summary_csv(summary: list[dict]) -> str:
    buf = io.StringIO()
    fields = [*CELL, "arm", "round", "mean", "ci_low", "ci_high", "n_seeds", "ci_source"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary)
    return buf.getvalue()


def write_report(store: Store, run: str, out_dir: Path | None = None, fmt: str = "md",
                 metrics: list[str] | None = None) -> Path:
    """Write the report (see `write_report_files`); return the path of report.md."""
    return write_report_files(store, run, out_dir, fmt, metrics)[0]


def write_report_files(store: Store, run: str, out_dir: Path | None = None, fmt: str = "md",
                       metrics: list[str] | None = None) -> list[Path]:
    """Write report.md (+ report.html when fmt='html'), one PNG per metric and summary.csv; return their paths.

    Default folder: `<store>/runs/<run>/report/`. `metrics` keeps only metrics whose name equals or starts
    with one of the given strings. Every file is written whole or not at all; report.md comes last.
    """
    if fmt not in ("md", "html"):
        raise ReconError(f"unknown report format '{fmt}'; use md or html")
    rows = load_metrics(store, run)
    manifest = store.manifest(f"{run}-metrics")
    summary = summarize(rows)
    cells = _cells(summary, metrics)
    if not cells:
        known = sorted({s["metric"] for s in summary})
        raise ReconError(f"no metric of run '{run}' matches {metrics}; metrics: {', '.join(known) or 'none'}")
    out_dir = Path(out_dir) if out_dir is not None else store.root / "runs" / run / "report"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReconError(f"cannot create report folder {out_dir}: {err.strerror}") from None
    images: dict[tuple, str] = {}
    for cell in cells:
        name = _slug(*cell) + ".png"
        while name in images.values():  # two cells whose names slug alike
            name = name.removesuffix(".png") + "_.png"
        images[cell] = name
        plot(summary, cell, out_dir / name)
    diffs = differences(rows)
    text = _markdown(_header(run, rows, manifest), cells, images, summary, diffs)
    _atomic_write(out_dir / "summary.csv", lambda p: p.write_text(_summary_csv(summary), encoding="utf-8"))
    if fmt == "html":
        _atomic_write(out_dir / "report.html", lambda p: p.write_text(_html(text), encoding="utf-8"))
    report = out_dir / "report.md"
    _atomic_write(report, lambda p: p.write_text(text, encoding="utf-8"))
    extra = [out_dir / "report.html"] if fmt == "html" else []
    return [report, *extra, *(out_dir / name for name in images.values()), out_dir / "summary.csv"]


# ---- the README block ------------------------------------------------------------------------------
WARMUP_ARMS = {"warmup-before": "base model", "warmup-after": "organism (after warm-up)"}


def readme_markers(run: str) -> tuple[str, str]:
    return f"<!-- recon report {run}: begin -->", f"<!-- recon report {run}: end -->"


def _num(x: float) -> str:
    return "–" if not _finite(x) else "0" if abs(x) < 5e-4 else f"{x:.3g}".replace("-", "−")


def _with_ci(mean: float, lo: float, hi: float) -> str:
    return f"{_num(mean)} [{_num(lo)}, {_num(hi)}]" if _finite(lo) and _finite(hi) else _num(mean)


def _timing_line(store: Store, run: str) -> str:
    """The measured wall time of the latest uninterrupted run (runs.jsonl, written by the pipeline)."""
    import json

    path = store.root / "runs" / run / "runs.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    whole = [r for r in records if r.get("skipped_steps") == 0]
    if whole:
        r = whole[-1]
        return (f"An uninterrupted run (started {r['started_at']}) took **{r['seconds'] / 60:.1f} min** wall on "
                f"{r.get('cpu_count', '?')} cores.")
    if records:
        r = records[-1]
        return (f"No uninterrupted run is recorded; the last run took {r['seconds'] / 60:.1f} min on "
                f"{r.get('cpu_count', '?')} cores and found {r['skipped_steps']} step(s) already done.")
    return "No run timing is recorded in this store."


def _hack_rule_text(rule: dict | None) -> str:
    if not rule:
        return ""
    col = f"`{rule.get('column')}`"
    if rule.get("equals") is not None:
        return f"{col} = {rule['equals']}"
    parts = [f"{col} ≥ {rule['min']:g}" if rule.get("min") is not None else "",
             f"{col} ≤ {rule['max']:g}" if rule.get("max") is not None else ""]
    return " and ".join(p for p in parts if p)


def readme_block(store: Store, run: str, plot_dir: Path | None = None) -> tuple[str, list[Path]]:
    """The headline results of a run as markdown for a README: per-arm table at the primary eval template,
    the last-round differences from `standard`, the warm-up check, and the measured wall time. With
    `plot_dir` (the README's folder) the headline metric's plot is written to `docs/<run>_<metric>.png`
    there and linked; returns the markdown and the files written."""
    rows = load_metrics(store, run)
    manifest = store.manifest(f"{run}-metrics")
    pipeline = manifest.get("pipeline") or {}
    ev = pipeline.get("eval") or {}
    summary = summarize(rows)
    templates = list(dict.fromkeys(s["eval_template"] for s in summary))
    primary = (ev.get("templates") or templates)[0]
    mine = [s for s in summary if s["eval_template"] == primary and s["arm"] not in WARMUP_ARMS]
    if not mine:
        raise ReconError(f"run '{run}' has no metrics for its eval template '{primary}'")
    metrics = sorted({s["metric"] for s in mine if s["metric"] == "hack_rate" or s["metric"].startswith("mean score.")},
                     key=lambda m: (m != "hack_rate", m))
    arms = sorted({s["arm"] for s in mine}, key=arm_order)
    seeds = max(s["n_seeds"] for s in mine)
    samples = [int(r["n"]) for r in rows if r["eval_template"] == primary and r["metric"] == metrics[0]
               and r.get("n") is not None]
    per_seed = max(samples) if samples else None
    n = int(ev.get("n") or 1)
    written: list[Path] = []
    if plot_dir is not None:
        suite = next(s["suite"] for s in mine if s["metric"] == metrics[0])
        image = Path("docs") / f"{run}_{_slug(metrics[0])}.png"
        (plot_dir / image.parent).mkdir(parents=True, exist_ok=True)
        trained = [s for s in summary if s["arm"] not in WARMUP_ARMS]
        written.append(plot(trained, (suite, primary, metrics[0]), plot_dir / image))
    lines = [
        f"Generated by `recon report {run} --readme` from `{manifest.get('name')}@{manifest.get('version')}` "
        f"(created {str(manifest.get('created_at', '?'))[:10]}). {_timing_line(store, run)}",
        "",
        f"- Eval: {per_seed // n if per_seed else '?'} held-out prompts × {n} samples per seed under "
        f"`{primary}`; {seeds} seed(s).",
        "- Means over seeds, with 95% t-intervals over the per-seed values; round 0 is the starting model.",
    ]
    if rule := _hack_rule_text(ev.get("hack")):
        lines.append(f"- hack rate: the share of samples with {rule}.")
    lines += ["", "| arm | round | " + " | ".join(m.removeprefix("mean ") for m in metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    cell = {(s["arm"], s["round"], s["metric"]): s for s in mine}
    for arm in arms:
        for rnd in sorted({s["round"] for s in mine if s["arm"] == arm}):
            values = [cell.get((arm, rnd, m)) for m in metrics]
            lines.append(f"| {arm} | {rnd} | " + " | ".join(
                _with_ci(v["mean"], v["ci_low"], v["ci_high"]) if v else "–" for v in values) + " |")
    diffs = [d for d in differences(rows) if d["eval_template"] == primary and d["metric"] in metrics
             and d["arm"] not in WARMUP_ARMS]
    if diffs:
        lines += ["", f"Differences at the last round ({', '.join(sorted({d['arm'] for d in diffs}))} − "
                  f"{BASELINE_ARM}, paired by seed):"]
        for d in sorted(diffs, key=lambda d: (d["arm"], metrics.index(d["metric"]))):
            lines.append(f"- {d['metric'].removeprefix('mean ')} at round {d['round']}: "
                         f"**{_with_ci(d['difference'], d['ci_low'], d['ci_high'])}**, {d['verdict']}.")
    warm = [s for s in summary if s["arm"] in WARMUP_ARMS and s["metric"] == "hack_rate"]
    if warm:
        warmup = pipeline.get("warmup") or {}
        listed = [*(ev.get("templates") or []), *(warmup.get("normal") or []), *(warmup.get("permit") or [])]
        order = [t for t in dict.fromkeys([*listed, *templates]) if any(s["eval_template"] == t for s in warm)]
        lines += ["", "Warm-up check (hack rate, one seed, 95% Wilson interval over samples):", "",
                  "| model | " + " | ".join(f"`{t}`" for t in order) + " |", "|---|" + "---|" * len(order)]
        for arm in ("warmup-before", "warmup-after"):
            got = {s["eval_template"]: s for s in warm if s["arm"] == arm}
            if got:
                lines.append(f"| {WARMUP_ARMS[arm]} | " + " | ".join(
                    _with_ci(got[t]["mean"], got[t]["ci_low"], got[t]["ci_high"]) if t in got else "–"
                    for t in order) + " |")
    if written:
        lines += ["", f"![{metrics[0]} by round]({image.as_posix()})"]
    return "\n".join(lines), written


def check_readme(readme: Path, run: str) -> tuple[str, int, int]:
    """The README's text and where the run's block starts and ends; a one-line error if it has none."""
    begin, end = readme_markers(run)
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReconError(f"cannot read {readme}: {getattr(err, 'strerror', None) or err}") from None
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ReconError(f"{readme} has no results block for run '{run}': add the lines '{begin}' and '{end}' "
                         "where the results should go")
    return text, start, stop


def update_readme(store: Store, run: str, readme: Path) -> list[Path]:
    """Replace the block between the run's markers in `readme` with `readme_block`, and write its plot to
    `docs/<run>_<metric>.png` beside the README. Nothing is written when the markers are missing."""
    readme = Path(readme)
    text, start, stop = check_readme(readme, run)
    begin = readme_markers(run)[0]
    block, written = readme_block(store, run, readme.parent)
    new = text[: start + len(begin)] + "\n" + block + "\n" + text[stop:]
    _atomic_write(readme, lambda p: p.write_text(new, encoding="utf-8"))
    return [readme, *written]
