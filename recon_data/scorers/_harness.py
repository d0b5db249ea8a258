"""Child-side harness of the code sandbox: the only code that runs next to untrusted candidate code.

Run as `python -I -S _harness.py` by `sandbox.py`, never imported. It reads one job (JSON) from stdin,
optionally hides the host filesystem (namespace mode: fresh /proc, empty tmpfs over private dirs,
private writable /tmp), forks a worker that drops privileges, applies rlimits, loads the candidate
code and evaluates each `candidate(...)` call expression, streaming one JSON line per call (the
*return value* as tagged plain data) to the result fd.

It must not decide whether a test passes: it never sees expected values. Everything it writes is
treated as untrusted data by the parent; a candidate that tampers with this harness can only lose
results (missing results count as failures). Stdlib only: the recon_data package is not importable here.
"""

import json
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS = 38


class _Timeout(BaseException):
    pass


class _Unencodable(Exception):
    pass


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True), ctypes


def _mount(libc, ctypes, source, target, fstype, flags, data):
    res = libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def setup_namespace(job):
    """Fresh /proc, empty tmpfs over private dirs (re-binding the interpreter prefix), private /tmp."""
    libc, ctypes = _libc()
    _mount(libc, ctypes, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV, None)
    keep = [os.path.realpath(p) for p in job["keep_paths"]]
    keep_fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep if os.path.isdir(p)}
    hidden = []
    for path in sorted(job["hide_paths"], key=len):
        if any(_under(path, h) for h in hidden) or not os.path.isdir(path) or os.path.islink(path):
            continue
        _mount(libc, ctypes, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        hidden.append(path)
        for kept, fd in keep_fds.items():
            if _under(kept, path):
                os.makedirs(kept, exist_ok=True)
                _mount(libc, ctypes, f"/proc/self/fd/{fd}", kept, None, MS_BIND | MS_REC, None)
                _mount(libc, ctypes, None, kept, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, None)
    for fd in keep_fds.values():
        os.close(fd)
    size = int(job["limits"]["tmpfs_mb"])
    for path in job["private_tmp"]:
        if os.path.isdir(path) and not os.path.islink(path):
            _mount(
                libc,
                ctypes,
                "tmpfs",
                path,
                "tmpfs",
                MS_NOSUID | MS_NODEV,
                f"size={size}m,nr_inodes=4096,mode=1777",
            )
    os.chdir("/tmp")


def drop_privileges(job):
    uid = int(job["uid"])
    if os.getuid() == 0 and uid != 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid:
            raise OSError("privilege drop failed")
    try:
        libc, _ = _libc()
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except OSError:
        pass


def apply_limits(limits):
    mb = 1024 * 1024
    cpu = max(1, int(limits["cpu_s"] + 0.999))
    for res, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, int(limits["memory_mb"]) * mb),
        (resource.RLIMIT_FSIZE, int(limits["fsize_mb"]) * mb),
        (resource.RLIMIT_NOFILE, int(limits["nofile"])),
        (resource.RLIMIT_NPROC, int(limits["nproc"])),
        (resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            if res != resource.RLIMIT_NPROC:  # NPROC may be above the hard limit when unprivileged
                raise


def encode(value, budget, depth=0):
    """Plain data only, by exact type (no subclasses, no user __eq__/__repr__ is ever called)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > 50:
        raise _Unencodable("return value too large or too deeply nested")
    t = type(value)
    if value is None or t is bool or t is int or t is float or t is str:
        if t is str:
            budget[0] -= len(value) // 64
        return value
    if t is list:
        return [encode(v, budget, depth + 1) for v in value]
    if t is tuple:
        return {"t": [encode(v, budget, depth + 1) for v in value]}
    if t is set:
        return {"s": [encode(v, budget, depth + 1) for v in value]}
    if t is frozenset:
        return {"f": [encode(v, budget, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, budget, depth + 1), encode(v, budget, depth + 1)] for k, v in value.items()]}
    if t is bytes:
        budget[0] -= len(value) // 32
        return {"b": value.hex()}
    raise _Unencodable(f"unsupported return type {t.__name__!r} (only plain data is accepted)")


def worker(job, rfd):
    write, dumps, setitimer, real = os.write, json.dumps, signal.setitimer, signal.ITIMER_REAL

    def send(obj):
        try:  # noqa: SIM105 - contextlib is one more module a candidate could patch
            write(rfd, (dumps(obj) + "\n").encode("utf-8", "surrogatepass"))
        except Exception:  # noqa: BLE001 - a candidate that broke the channel only loses its results
            pass

    def on_alarm(signum, frame):
        raise _Timeout()

    try:
        drop_privileges(job)
        apply_limits(job["limits"])
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        os.closerange(3, rfd)
        os.closerange(rfd + 1, 1 << 16)
    except Exception as exc:  # noqa: BLE001
        send({"k": "setup", "err": f"{type(exc).__name__}: {exc}"})
        return
    signal.signal(signal.SIGALRM, on_alarm)
    per_call = float(job["limits"]["per_call_s"])
    namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        setitimer(real, float(job["limits"]["load_s"]))
        exec(compile(job["code"], "<candidate>", "exec"), namespace)  # noqa: S102 - sandboxed on purpose
        setitimer(real, 0)
        fn = namespace.get(job["entry_point"])
        if not callable(fn):
            raise NameError(f"the code does not define a function {job['entry_point']!r}")
    except _Timeout:
        send({"k": "load", "err": "TimeoutError: loading the code took too long"})
        return
    except BaseException as exc:  # noqa: BLE001 - SystemExit from the candidate included
        setitimer(real, 0)
        send({"k": "load", "err": f"{type(exc).__name__}: {str(exc)[:300]}"})
        return
    send({"k": "load", "ok": True})
    namespace["candidate"] = fn
    for i, src in enumerate(job["calls"]):
        try:
            setitimer(real, per_call)
            value = eval(src, namespace)  # noqa: S307 - sandboxed on purpose
            out = {"k": "call", "i": i, "v": encode(value, [200_000])}
            setitimer(real, 0)
        except _Timeout:
            out = {"k": "call", "i": i, "err": f"TimeoutError: call exceeded {per_call:g}s"}
        except BaseException as exc:  # noqa: BLE001
            setitimer(real, 0)
            out = {"k": "call", "i": i, "err": f"{type(exc).__name__}: {str(exc)[:200]}"}
        send(out)
    send({"k": "done"})


def main():
    job = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
    rfd = int(job["result_fd"])
    if job["mode"] == "ns":
        try:
            setup_namespace(job)
        except Exception as exc:  # noqa: BLE001
            os.write(rfd, (json.dumps({"k": "setup", "err": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
            os._exit(3)
        pid = os.fork()
        if pid == 0:
            try:
                worker(job, rfd)
            finally:
                os._exit(0)
        os.close(rfd)
        os.waitpid(pid, 0)
        os._exit(0)  # as pid 1 of the namespace: exiting kills every process the candidate left behind
    worker(job, rfd)
    os._exit(0)


if __name__ == "__main__":
    main()
