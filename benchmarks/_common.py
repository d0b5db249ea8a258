"""Helpers shared by the benchmark scripts: timing, result rows, the `name | recon | raw | ratio` printout.

A benchmark module exposes `run(quick: bool) -> list[dict]` with rows {"benchmark", "recon", "baseline",
"unit", "ratio", "target"} (optionally "ok": whether the target is met) and calls `main(run)` when run
as a script. This module must not know about any particular benchmark.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Wall-clock by default. BENCH_CLOCK=cpu times CPU seconds of this process (all its threads) instead: steadier
# on a machine shared with other jobs, but blind to time spent waiting on the disk (fsync) or on other processes.
CLOCK = os.environ.get("BENCH_CLOCK", "wall")
_timer = time.process_time if CLOCK == "cpu" else time.perf_counter


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest of `repeat` runs in seconds (the least disturbed by a busy machine)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = _timer()
        fn()
        best = min(best, _timer() - t0)
    return best


def best_time_pair(fn_a: Callable[[], object], fn_b: Callable[[], object], repeat: int = 5) -> tuple[float, float]:
    """Fastest of `repeat` runs of each, alternating a, b, a, b: a warm-up effect or a burst of load from
    another job then hits both sides instead of whichever ran first (fair ratios for ~10 ms operations)."""
    best_a = best_b = float("inf")
    for _ in range(repeat):
        for fn, which in ((fn_a, "a"), (fn_b, "b")):
            gc.collect()
            t0 = _timer()
            fn()
            elapsed = _timer() - t0
            if which == "a":
                best_a = min(best_a, elapsed)
            else:
                best_b = min(best_b, elapsed)
    return best_a, best_b


def result(benchmark: str, recon: float, baseline: float | None, unit: str, target: str,
           ok: bool | None = None, ratio: float | None = None) -> dict:
    """One result row; `ratio` defaults to recon / baseline."""
    if ratio is None and baseline:
        ratio = recon / baseline
    return {"benchmark": benchmark, "recon": _round(recon), "baseline": _round(baseline), "unit": unit,
            "ratio": None if ratio is None else round(ratio, 3), "target": target, "ok": ok}


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return round(x, 3) if abs(x) < 100 else round(x)


def show(x: object) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) or isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def print_rows(rows: list[dict]) -> None:
    print("name | recon value | raw-library value | ratio | target")
    for r in rows:
        verdict = {True: " ok", False: " MISSED", None: ""}[r.get("ok")]
        print(f"{r['benchmark']} | {show(r['recon'])} {r['unit']} | {show(r['baseline'])} {r['unit']} | "
              f"{show(r['ratio'])} | {r['target']}{verdict}", flush=True)


def main(run: Callable[[bool], list[dict]]) -> None:
    print_rows(run("--quick" in sys.argv[1:]))
