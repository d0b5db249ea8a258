"""Run untrusted candidate code in a separate, limited process and bring back plain return values.

Why this shape: a reward that the scored program can forge is exactly the failure recon-data studies.
So the child never decides anything. It evaluates `candidate(...)` call expressions and sends back the
return values as tagged plain data (None/bool/int/float/str/bytes/list/tuple/dict/set/frozenset);
the trusted caller (`code_tests.py`) compares them with expected values the child never sees.
Exit status, stdout and stderr of the child are ignored; a missing or malformed result is a failure.

Isolation, best available (probed once per process, see `isolation()`):
- `namespaces` (root): `unshare --net --mount --pid --ipc --uts --fork --kill-child`; the harness mounts a
  fresh /proc, empty tmpfs over private host dirs (repo, home, /work, store, ...; the interpreter prefix
  is re-bound read-only), a private size-limited tmpfs on /tmp, /var/tmp, /dev/shm; the worker drops to
  uid `nobody`, sets PR_SET_NO_NEW_PRIVS and rlimits (CPU, address space, file size, open files,
  processes). No network (empty net namespace), nothing it leaves running survives its pid namespace.
- `userns` (unprivileged with user namespaces): the same without the uid drop.
- `basic-nobody` (root without namespace support, e.g. a container without CAP_SYS_ADMIN): `basic` plus
  the drop to `nobody`, so RLIMIT_NPROC binds and root-owned files stay read-only.
- `basic`: rlimits, a scrubbed env, a fresh temp dir as cwd/HOME/TMPDIR, process-group kill. No network
  or filesystem isolation, and processes that call setsid() escape the kill; `require="namespaces"`
  (code_tests `isolation: namespaces`) makes missing namespace support an error instead.

This module must not interpret tests or scores; it only runs calls. The child gets a minimal env
(nothing from ours) and only the stdlib (`python -S -s`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ReconError

HARNESS = Path(__file__).with_name("_harness.py")
NOBODY = 65534
NEVER_HIDE = {
    "/",
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/var",
}
DEFAULT_HIDE = ("/root", "/home", "/work", "/srv", "/mnt", "/media", "/run", "/opt")
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
UNSHARE = ["--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox run (one completion, all its calls)."""

    wall_s: float = 30.0  # cap for the whole run; the effective limit is min(this, load + per call * n + 2)
    per_call_s: float = 3.0
    load_s: float = 5.0
    cpu_s: float = 30.0
    memory_mb: int = 1024  # RLIMIT_AS per process
    nproc: int = 64  # RLIMIT_NPROC (counts the sandbox uid's processes and threads)
    fsize_mb: int = 16
    nofile: int = 64
    tmpfs_mb: int = 64
    output_mb: int = 16  # bytes read back from the result channel


@dataclass
class CallOutcome:
    """One call's result: `ok` with a plain `value`, or an `error` string (exception, timeout...)."""

    ok: bool
    value: Any = None
    error: str | None = None


@dataclass
class SandboxResult:
    calls: list[CallOutcome | None]  # None: no result came back for that call (a failure)
    isolation: str
    load_error: str | None = None
    setup_error: str | None = None
    timed_out: bool = False
    truncated: bool = False
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Job:
    code: str
    entry_point: str
    calls: list[str]


_MODE_LOCK = threading.Lock()
_MODE: str | None = None


def interpreter() -> tuple[str, list[str]]:
    """The base interpreter (no venv: the sandbox offers the stdlib only) and the dirs it needs."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    keep = {os.path.realpath(sys.base_prefix), os.path.dirname(exe)}
    return exe, sorted(keep)


def default_hide_paths(extra: Sequence[str | Path] = ()) -> list[str]:
    """Host dirs the child must not read: private dirs, this repo, home, cwd, plus `extra` (the store)."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [*DEFAULT_HIDE, repo, Path.home(), Path.cwd(), *extra]
    out = set()
    for c in candidates:
        p = os.path.realpath(str(c))
        if p not in NEVER_HIDE and os.path.isdir(p):
            out.add(p)
    return sorted(out)


def decode(obj: Any, depth: int = 0) -> Any:
    """Turn the child's tagged JSON back into plain Python values; anything else is ValueError."""
    if depth > 60:
        raise ValueError("value nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is int or t is float or t is str:
        return obj
    if t is list:
        return [decode(v, depth + 1) for v in obj]
    if t is dict and len(obj) == 1:
        ((tag, payload),) = obj.items()
        if tag == "b" and type(payload) is str:
            return bytes.fromhex(payload)
        if type(payload) is not list:
            raise ValueError("malformed value")
        items = [decode(v, depth + 1) for v in payload]
        try:
            if tag == "t":
                return tuple(items)
            if tag == "s":
                return set(items)
            if tag == "f":
                return frozenset(items)
            if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in items):
                return {k: v for k, v in items}
        except TypeError as exc:  # unhashable element
            raise ValueError(f"malformed value: {exc}") from None
    raise ValueError("malformed value")


def _command(mode: str) -> tuple[list[str], str, int]:
    """(argv prefix, harness mode, uid) for an isolation mode."""
    unshare = shutil.which("unshare")
    if mode == "namespaces" and unshare:
        return [unshare, *UNSHARE], "ns", NOBODY
    if mode == "userns" and unshare:
        return [unshare, "--map-root-user", *UNSHARE], "ns", 0
    if mode == "basic-nobody":
        return [], "basic", NOBODY
    return [], "basic", 0


def _env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def _run(job: Job, mode: str, limits: Limits, hide_paths: Sequence[str]) -> SandboxResult:
    prefix, harness_mode, uid = _command(mode)
    exe, keep = interpreter()
    flags = ["-S", "-s", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])
    workdir = tempfile.mkdtemp(prefix="recon-sbx-") if harness_mode == "basic" else None
    if workdir and uid:
        os.chown(workdir, uid, uid)
    home = workdir or "/tmp"
    wall = min(limits.wall_s, 2.0 + limits.load_s + limits.per_call_s * len(job.calls))
    rfd, wfd = os.pipe()
    payload = {
        "mode": harness_mode,
        "uid": uid,
        "result_fd": wfd,
        "code": job.code,
        "entry_point": job.entry_point,
        "calls": list(job.calls),
        "limits": asdict(limits),
        "hide_paths": list(hide_paths),
        "keep_paths": keep,
        "private_tmp": list(PRIVATE_TMP),
    }
    data = json.dumps(payload).encode("utf-8", "surrogatepass")
    result = SandboxResult(calls=[None] * len(job.calls), isolation=mode)
    start = time.monotonic()
    buf = bytearray()
    try:
        proc = subprocess.Popen(
            [*prefix, exe, *flags, str(HARNESS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(wfd,),
            env=_env(home),
            cwd=workdir or "/",
            start_new_session=True,
        )
    except OSError as exc:
        os.close(rfd)
        os.close(wfd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise ReconError(f"code sandbox: cannot start {exe}: {exc}") from None
    os.close(wfd)
    try:
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        limit = limits.output_mb * 1024 * 1024
        deadline = start + wall
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            ready, _, _ = select.select([rfd], [], [], remaining)
            if not ready:
                result.timed_out = True
                break
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            buf += chunk
            if len(buf) > limit:
                result.truncated = True
                break
    finally:
        _terminate(proc, namespaced=bool(prefix))
        os.close(rfd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result.wall_s = time.monotonic() - start
    _parse(bytes(buf[: limits.output_mb * 1024 * 1024]), result)
    if result.timed_out:
        result.notes.append(f"wall-time limit {wall:g}s reached")
    return result


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _terminate(proc: subprocess.Popen, *, namespaced: bool) -> None:
    """Return only when nothing the program started is left running.

    With namespaces, `unshare` exits only after the namespace's init (the harness supervisor) has exited,
    and the kernel kills and reaps every process of a pid namespace before its init finishes exiting.
    So: kill the init, then wait for `unshare`. Killing `unshare` first would return too early.
    """
    if namespaced:
        try:
            proc.wait(timeout=0.05)
            return
        except subprocess.TimeoutExpired:
            pass
        children = _children(proc.pid)
        for child in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        if children:
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _parse(raw: bytes, result: SandboxResult) -> None:
    """Read the child's lines as untrusted data; the first well-formed record per call index wins."""
    n = len(result.calls)
    for line in raw.split(b"\n"):
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(msg) is not dict:
            continue
        kind, err = msg.get("k"), msg.get("err")
        if kind == "setup" and result.setup_error is None:
            result.setup_error = str(err)[:300]
        elif kind == "load" and err is not None and result.load_error is None:
            result.load_error = str(err)[:300]
        elif kind == "call":
            i = msg.get("i")
            if type(i) is not int or not 0 <= i < n or result.calls[i] is not None:
                continue
            if err is not None:
                result.calls[i] = CallOutcome(False, error=str(err)[:300])
                continue
            try:
                result.calls[i] = CallOutcome(True, value=decode(msg.get("v")))
            except (ValueError, RecursionError) as exc:
                result.calls[i] = CallOutcome(False, error=f"bad return value: {exc}")


def _probe(mode: str) -> bool:
    # imports after the privilege drop prove the stdlib is readable by the sandbox uid
    code = "import os, math, collections\ndef f(x):\n    return (x + 1, os.getcwd())\n"
    job = Job(code, "f", ["candidate(1)"])
    try:
        res = _run(job, mode, replace(Limits(), wall_s=10.0), default_hide_paths())
    except ReconError:
        return False
    first = res.calls[0]
    return bool(first and first.ok and first.value and first.value[0] == 2 and not res.setup_error)


def isolation() -> str:
    """The strongest isolation that works here (cached): `namespaces`, `userns`, `basic-nobody`, `basic`.

    `RECON_SANDBOX_ISOLATION` forces one (e.g. `basic` on hosts where probing is undesirable).
    """
    global _MODE
    with _MODE_LOCK:
        if _MODE is None:
            forced = os.environ.get("RECON_SANDBOX_ISOLATION", "").strip()
            if forced:
                if forced not in {"namespaces", "userns", "basic-nobody", "basic"}:
                    raise ReconError(
                        f"RECON_SANDBOX_ISOLATION={forced!r} is not one of namespaces, userns, "
                        "basic-nobody, basic"
                    )
                _MODE = forced
            else:
                order = ["namespaces", "userns", "basic-nobody"] if os.geteuid() == 0 else ["userns"]
                _MODE = next((m for m in order if _probe(m)), "basic")
        return _MODE


def run_calls(
    code: str,
    entry_point: str,
    calls: Sequence[str],
    *,
    limits: Limits = Limits(),
    hide_paths: Sequence[str | Path] = (),
    require: str | None = None,
) -> SandboxResult:
    """Run `code`, then evaluate each call expression (with `candidate` bound to `entry_point`)."""
    return run_many(
        [Job(code, entry_point, list(calls))], limits=limits, hide_paths=hide_paths, require=require
    )[0]


def run_many(
    jobs: Sequence[Job],
    *,
    limits: Limits = Limits(),
    hide_paths: Sequence[str | Path] = (),
    workers: int | None = None,
    require: str | None = None,
) -> list[SandboxResult]:
    """Run jobs concurrently (one sandbox process per job, up to `workers`, default os.cpu_count())."""
    mode = isolation()
    if require == "namespaces" and mode not in {"namespaces", "userns"}:
        raise ReconError(
            "code sandbox: namespace isolation was required but is unavailable here (unshare failed); "
            "run as root or enable user namespaces, or set isolation: auto"
        )
    hide = default_hide_paths(hide_paths)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if workers == 1:
        return [_run(j, mode, limits, hide) for j in jobs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recon-sbx") as pool:
        return list(pool.map(lambda j: _run(j, mode, limits, hide), jobs))
