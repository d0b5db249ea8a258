"""Helpers for the reliability suite: run the real `recon` CLI in a subprocess and inspect a store on disk.

Everything here observes from the outside (exit codes, stderr lines, files under the store root) so the
tests exercise exactly what a user gets; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml

from recon_data.store import MANIFEST, VERSION_RE, Store

RECON = [sys.executable, "-m", "recon_data.cli"]
# A realistic terminal width: error lines that rich wraps at 80 columns would break "one line" output.
ENV = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "80",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def tiny_pipeline(model: Path, name: str = "rel", rounds: int = 2, **overrides) -> dict:
    """tests/test_pipeline.py's tiny config (2 arms), with a max_length every tiny-model prompt fits in."""
    cfg = {
        "name": name,
        "model": str(model),
        "suite": {"name": "eval_gaming", "where": {"metric": "keyword_count"}, "limit": 4},
        "sampler": {"n": 2, "max_new_tokens": 8, "batch_size": 4},
        "arms": {
            "standard": {
                "generate": "eval_gaming/discourage/honest_answer",
                "train": "eval_gaming/discourage/honest_answer",
            },
            "recontextualized": {
                "generate": "eval_gaming/discourage/honest_answer",
                "train": "eval_gaming/permit/exploit_grader",
            },
        },
        "scorers": [
            {"name": "proxy", "type": "rule"},
            {"name": "true", "type": "rule", "params": {"metric": "reference_match"}},
        ],
        "filters": [{"type": "best_of_n", "column": "score.proxy", "k": 1}],
        "train": {
            "lora": {"r": 4, "alpha": 8},
            "epochs": 1,
            "batch_size": 4,
            "max_length": 512,
            "learning_rate": 1e-3,
        },
        "rounds": rounds,
        "seeds": [0],
        "eval": {
            "templates": ["eval_gaming/neutral/plain"],
            "limit": 2,
            "n": 1,
            "hack": {"column": "score.proxy", "min": 3},
        },
    }
    cfg.update(overrides)
    return cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def limits(cpu_seconds: int | None = None, memory_bytes: int | None = None) -> Callable[[], None]:
    """A preexec_fn capping the child's CPU time and address space: a runaway child dies, not the host."""

    def apply() -> None:
        if cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return apply


def recon(
    *args: str | Path, cpu_seconds: int | None = None, memory_bytes: int | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run `recon ARGS...` to completion and capture its output (text, undecodable bytes replaced)."""
    return subprocess.run(
        [*RECON, *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        preexec_fn=limits(cpu_seconds, memory_bytes) if cpu_seconds or memory_bytes else None,
    )


def describe(proc: subprocess.CompletedProcess, tail: int = 3000) -> str:
    out, err = proc.stdout[-tail:], proc.stderr[-tail:]
    return f"exit {proc.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_clean_failure(
    proc: subprocess.CompletedProcess,
    *,
    code: int | None = None,
    contains: Sequence[str] = (),
    sole_line: bool = True,
) -> str:
    """Exit != 0 (or exactly `code`), no traceback, exactly one `error:` line naming every `contains` string.

    `sole_line`: stderr holds nothing but that line (commands that fail before doing any work).
    Returns the error line.
    """
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, "a traceback reached the user:\n" + describe(proc)
    if code is None:
        assert proc.returncode not in (0, None) and proc.returncode > 0, describe(proc)
    else:
        assert proc.returncode == code, describe(proc)
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, "expected exactly one 'error:' line on stderr\n" + describe(proc)
    if sole_line:
        others = [line for line in proc.stderr.splitlines() if line.strip() and line not in errors]
        assert not others, "expected the error line alone on stderr\n" + describe(proc)
    line = errors[0]
    for text in contains:
        assert text.lower() in line.lower(), f"error line does not name {text!r}: {line}"
    return line


# ---- store inspection -----------------------------------------------------------------------------
def canonical_rows(table: pa.Table) -> list[str]:
    """Rows as sorted canonical JSON: order-independent, exact comparison of every value."""
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


_REF_VERSION = re.compile(r"@\d+")


def _unversioned(text: str) -> str:
    return _REF_VERSION.sub("@N", text)


def normalized_manifest(manifest: dict) -> dict:
    """A manifest minus what legitimately differs between two runs of the same pipeline: the commit time,
    the version number, and version numbers inside references (a recommitted identical version)."""
    kept = {k: v for k, v in manifest.items() if k not in {"created_at", "version"}}
    return json.loads(_unversioned(json.dumps(kept, sort_keys=True, default=str)))


@dataclass
class Snapshot:
    """What a run left in a store, normalized for comparison across stores."""

    datasets: dict[str, tuple[list[str], dict]] = field(default_factory=dict)  # name -> (rows, manifest)
    models: dict[str, set[str]] = field(default_factory=dict)  # "arm-s0-r1" -> revisions of its folders
    duplicate_versions: dict[str, list[int]] = field(default_factory=dict)
    divergent: list[str] = field(default_factory=list)  # "name@v": an older version with other content


def snapshot(root: Path, run: str) -> Snapshot:
    store = Store(root)
    snap = Snapshot()
    for name in store.names():
        versions = store.versions(name)
        rows = [_unversioned(r) for r in canonical_rows(store.read(name))]
        snap.datasets[name] = (rows, normalized_manifest(store.manifest(name)))
        if len(versions) > 1:
            snap.duplicate_versions[name] = versions
            for v in versions[:-1]:  # an extra version should only ever repeat the same content
                older = [_unversioned(r) for r in canonical_rows(store.read(f"{name}@{v}"))]
                if older != rows:
                    snap.divergent.append(f"{name}@{v}")
    models = root / "runs" / run / "models"
    for folder in sorted(models.iterdir()) if models.is_dir() else []:
        meta = folder / "recon_model.json"
        if meta.is_file():
            prefix = folder.name.rsplit("-", 1)[0]
            snap.models.setdefault(prefix, set()).add(json.loads(meta.read_text())["revision"])
    return snap


def half_written(root: Path) -> list[str]:
    """Anything that looks published but is incomplete: a version dir without a manifest, a model folder
    (not a .tmp/.old sibling) without recon_model.json, or one whose weights do not match its revision."""
    from recon_data.train import weights_revision

    problems = []
    base = root / "datasets"
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        for v in sorted(d.iterdir()):
            if VERSION_RE.match(v.name) and not (v / MANIFEST).is_file():
                problems.append(f"{v}: version dir without {MANIFEST}")
    for models in (root / "runs").glob("*/models"):
        for folder in sorted(models.iterdir()):
            if folder.name.endswith((".tmp", ".old")):
                continue
            meta = folder / "recon_model.json"
            if not meta.is_file():
                problems.append(f"{folder}: model folder without recon_model.json")
            elif json.loads(meta.read_text())["revision"] != weights_revision(folder):
                problems.append(f"{folder}: weights do not match the revision in recon_model.json")
    return problems


def stale_temp_dirs(root: Path) -> list[Path]:
    return sorted((root / "datasets").glob("*/.tmp-*"))


def cache_entries(root: Path) -> int:
    """Samples in the store's sampling cache (0 when the cache was never created)."""
    from recon_data.sample_cache import CACHE_FILE, SampleCache

    if not (root / "cache" / CACHE_FILE).is_file():
        return 0
    with SampleCache(root / "cache") as cache:
        return cache.entries()


GENERATED = re.compile(r"recon sample: sampled \d+ rows from \d+ prompts: (\d+) generated, (\d+) cached")


def generated_counts(stderr: str) -> list[tuple[int, int]]:
    """(generated, cached) of every sampling call a `recon run` reported."""
    return [(int(g), int(c)) for g, c in GENERATED.findall(stderr)]


# ---- a process whose stderr is timestamped line by line ---------------------------------------------
class Watched:
    """`recon ...` started in the background; stderr lines are collected with their arrival times."""

    def __init__(self, *args: str | Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*RECON, *map(str, args)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float = 300) -> float | None:
        """When a stderr line containing `pattern` arrived (monotonic); None if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if pattern in line:
                    return t
            if self.proc.poll() is not None:
                self._reader.join(5)
                return next((t for t, line in self.lines if pattern in line), None)
            time.sleep(0.02)
        raise TimeoutError(f"no stderr line with {pattern!r} within {timeout} s")

    def finish(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def last_step_line(self) -> str:
        """The last line the pipeline printed (not a progress bar): roughly where the process was."""
        for _, line in reversed(self.lines):
            text = line.strip()
            if text and "%|" not in text and "it/s" not in text and "Loading weights" not in text:
                return text[:100]
        return "(before the first line)"
