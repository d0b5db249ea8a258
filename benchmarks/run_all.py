"""Run every `benchmarks/bench_*.py`, each in its own subprocess, print one table and write RESULTS.md.

Each benchmark module exposes `run(quick: bool) -> list[dict]` (rows: benchmark, recon, baseline, unit,
ratio, target, optionally ok). A module that fails or times out is reported with the tail of its output
and the others still run. RESULTS.md records the machine (CPU, cores, RAM, load, library versions) next
to the numbers, because the numbers mean little without it.
Usage: .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--timeout S] [--out PATH]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIELDS = ("benchmark", "recon", "baseline", "unit", "ratio", "target")
PACKAGES = ("torch", "transformers", "pyarrow", "duckdb", "polars", "jinja2")

CHILD = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
module = importlib.import_module(sys.argv[2])
rows = module.run(sys.argv[3] == "quick")
json.dump(rows, open(sys.argv[4], "w"), default=str)
"""


def discover(only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        wanted = {o if o.startswith("bench_") else f"bench_{o}" for o in only}
        unknown = wanted - set(names)
        if unknown:
            sys.exit(f"unknown benchmark(s) {sorted(unknown)}; present: {', '.join(names) or 'none'}")
        names = [n for n in names if n in wanted]
    return names


def run_one(name: str, quick: bool, timeout: float) -> tuple[list[dict], str | None, float]:
    """Rows of one benchmark module, or the reason it gave none; its output streams to stderr as it comes."""
    with tempfile.TemporaryDirectory(prefix="recon-bench-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-c", CHILD, str(HERE), name, "quick" if quick else "full", str(out)]
        t0 = time.perf_counter()
        env = {**os.environ, "TMPDIR": tmp}  # what a killed benchmark leaves in temp dirs goes with `tmp`
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True, env=env)
        timed_out = threading.Event()

        def kill() -> None:  # the whole session: a benchmark's own subprocesses would hold the pipe open
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        tail: collections.deque[str] = collections.deque(maxlen=25)
        try:
            for line in proc.stdout:
                tail.append(line.rstrip())
                print(f"  {name}: {line.rstrip()}", file=sys.stderr, flush=True)
            proc.wait()
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
        if timed_out.is_set():
            return [], f"timed out after {timeout:.0f} s", seconds
        if proc.returncode != 0:
            return [], f"exit status {proc.returncode}:\n" + "\n".join(tail), seconds
        try:
            rows = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return [], f"no result rows ({err})", seconds
    bad = [r for r in rows if not isinstance(r, dict) or any(f not in r for f in FIELDS)]
    if not isinstance(rows, list) or bad:
        return [], f"run() must return a list of dicts with keys {FIELDS}; got {str(bad or rows)[:300]}", seconds
    return rows, None, seconds


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    info: dict[str, str] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or platform.machine()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info["cores"] = f"{os.cpu_count()} ({usable} usable by this process)"
    try:
        kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")))
        info["ram"] = f"{kib / 1024**2:.1f} GiB"
    except (OSError, StopIteration):
        info["ram"] = "?"
    info["os"] = platform.platform()
    info["python"] = platform.python_version()
    for package in PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["git"] = _git_revision()
    return info


def _git_revision() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{sha}{' (uncommitted changes)' if dirty else ''}" if sha else "?"


def _show(x: object) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)):
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x).replace("|", "/")


def _met(row: dict) -> str:
    return {True: "yes", False: "**no**"}.get(row.get("ok"), "")


def table(results: list[tuple[str, dict]]) -> list[str]:
    lines = ["| module | benchmark | recon | baseline | unit | ratio | target | met |",
             "|---|---|---:|---:|---|---:|---|---|"]
    for module, r in results:
        lines.append(f"| {module.removeprefix('bench_')} | {_show(r['benchmark'])} | {_show(r['recon'])} | "
                     f"{_show(r['baseline'])} | {_show(r['unit'])} | {_show(r['ratio'])} | {_show(r['target'])} | "
                     f"{_met(r)} |")
    return lines


def write_results(path: Path, info: dict, meta: dict, results: list[tuple[str, dict]], failures: dict) -> None:
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/run_all.py` (`make bench`). `recon` is this project's code path, `baseline` "
             "the bare library doing the same work in the same run; `ratio` = recon / baseline.", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in {**meta, **info}.items()]
    lines += ["", *table(results), ""]
    if failures:
        lines += ["## Benchmarks that did not run to the end", ""]
        for name, why in failures.items():
            lines += [f"### {name}", "", "```", why, "```", ""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; each benchmark well under a minute")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default 600/3600)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the results")
    args = parser.parse_args()
    timeout = args.timeout or (600 if args.quick else 3600)
    names = discover(args.only)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    info = machine()
    results: list[tuple[str, dict]] = []
    failures: dict[str, str] = {}
    durations = {}
    for name in names:
        print(f"== {name} ({'quick' if args.quick else 'full'})", file=sys.stderr, flush=True)
        rows, error, seconds = run_one(name, args.quick, timeout)
        durations[name] = seconds
        results += [(name, r) for r in rows]
        if error:
            failures[name] = error
            print(f"!! {name} failed: {error.splitlines()[0]}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "mode": ("quick" if args.quick else "full") + (f", only {', '.join(names)}" if args.only else ""),
        "clock": os.environ.get("BENCH_CLOCK", "wall"),
        "load average (1 min) before / after": f"{load_before[0]:.2f} / {load_after[0]:.2f}",
        "seconds per module": ", ".join(f"{n.removeprefix('bench_')} {s:.0f}" for n, s in durations.items()),
    }
    print("\n".join(table(results)))
    for name, why in failures.items():
        print(f"\nFAILED {name}: {why}")
    write_results(args.out, info, meta, results, failures)
    print(f"\nwrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
