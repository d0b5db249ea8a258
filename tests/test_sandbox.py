"""Hostile programs must be contained by the code sandbox and can never forge a pass of the hidden tests."""

from __future__ import annotations

import json
import os
import socket
import textwrap
from pathlib import Path

import pytest
from conftest import ADD_PROBLEM

from recon_data.scorers import code_tests, sandbox

NAMESPACES = sandbox.isolation() in {"namespaces", "userns"}
needs_ns = pytest.mark.skipif(not NAMESPACES, reason="namespace isolation unavailable on this host")

REF = ADD_PROBLEM  # `add` with a deliberately wrong first visible test (conftest)
FAST = {"per_test_timeout": 0.3, "timeout": 2.0, "reward": "hidden"}


def run(code: str, **params) -> dict:
    row = {"completion": f"```python\n{textwrap.dedent(code)}\n```", "reference": json.dumps(REF)}
    return code_tests.score([row], name="t", **{**FAST, **params})[0]


def assert_not_passing(res: dict) -> None:
    assert res["label"] != "correct"
    assert res["detail"]["hidden_pass_rate"] < 1.0
    assert res["score"] == 0.0


def test_correct_program_passes_and_reports_isolation():
    res = run("def add(a, b):\n    return a + b")
    assert res["label"] == "correct" and res["score"] == 1.0
    assert res["detail"]["isolation"] == sandbox.isolation()


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    pass\n",  # at import time
        "def add(a, b):\n    while True:\n        pass\n",
        # swallows the per-call timeout: only the wall limit stops it
        "def add(a, b):\n    while True:\n        try:\n            while True: pass\n"
        "        except BaseException:\n            pass\n",
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "def add(a, b):\n    while True: pass\n",
    ],
    ids=["loop_at_import", "loop_in_call", "swallow_timeouts", "ignore_alarm"],
)
def test_infinite_loops_are_stopped(code):
    assert_not_passing(run(code))


def _uid_processes(uid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                status = (p / "status").read_text()
            except OSError:
                continue
            line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
            if line.split()[1:2] == [str(uid)]:
                pids.append(int(p.name))
    return pids


@pytest.mark.skipif(
    sandbox.isolation() == "basic" and os.geteuid() == 0,
    reason="RLIMIT_NPROC cannot bind root without a uid drop",
)
def test_fork_bomb_is_contained_and_leaves_no_process():
    code = """
    import os
    def add(a, b):
        while True:
            try:
                if os.fork() == 0:
                    os.setsid()
            except OSError:
                pass
    """
    assert_not_passing(run(code))
    if sandbox.isolation() == "namespaces" and os.geteuid() == 0:
        assert _uid_processes(sandbox.NOBODY) == []


@pytest.mark.parametrize(
    "expr", ["bytearray(8 * 1024 ** 3)", "[0] * (2 * 1024 ** 3)", "'x' * (4 * 1024 ** 3)"]
)
def test_huge_allocation_fails_without_hurting_the_parent(expr):
    res = run(f"def add(a, b):\n    x = {expr}\n    return a + b\n", memory_mb=256)
    assert_not_passing(res)
    assert "MemoryError" in json.dumps(res["detail"])


@needs_ns
def test_writes_outside_the_sandbox_do_not_reach_the_host(tmp_path):
    repo_target = Path(__file__).resolve().parent / "_recon_pwned.txt"
    targets = [Path("/tmp/recon_pwned"), tmp_path / "pwned.txt", repo_target]
    for t in targets:
        t.unlink(missing_ok=True)
    code = f"""
    import os
    for path in {[str(t) for t in targets]!r}:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("pwned")
        except OSError:
            pass
    def add(a, b):
        return a + b
    """
    res = run(code)
    assert res["label"] == "correct"  # the writes were allowed inside the private tmpfs or refused
    assert [t for t in targets if t.exists()] == []


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("RECON_FAKE_SECRET", "hunter2-sandbox-secret")
    code = """
    import os
    def add(a, b):
        seen = dict(os.environ)
        for path in ("/proc/1/environ", "/proc/self/environ", f"/proc/{os.getppid()}/environ"):
            try:
                seen[path] = open(path, "rb").read().decode("latin-1")
            except OSError as exc:
                seen[path] = str(exc)
        return seen
    """
    res = sandbox.run_calls(textwrap.dedent(code), "add", ["candidate(1, 2)"])
    assert res.calls[0] is not None and res.calls[0].ok
    assert "hunter2-sandbox-secret" not in json.dumps(res.calls[0].value)
    assert res.calls[0].value["PATH"]  # a minimal env exists


@needs_ns
def test_no_network_connection_reaches_a_local_listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    code = f"""
    import socket
    def add(a, b):
        for host in ("127.0.0.1", "localhost"):
            try:
                s = socket.create_connection((host, {port}), timeout=0.5)
                s.sendall(b"leak")
                return "connected"
            except OSError as exc:
                err = str(exc)
        return err
    """
    try:
        res = sandbox.run_calls(textwrap.dedent(code), "add", ["candidate(1, 2)"])
        assert res.calls[0] is not None and res.calls[0].value != "connected"
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


@needs_ns
def test_program_cannot_read_the_repository_or_store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "hidden_tests.json").write_text("assert candidate(1, 1) == 2")
    code = f"""
    import os
    def add(a, b):
        out = {{}}
        for path in ({str(store / "hidden_tests.json")!r}, {str(Path(__file__).resolve())!r}):
            try:
                out[path] = open(path).read()[:50]
            except OSError as exc:
                out[path] = type(exc).__name__
        return out
    """
    res = sandbox.run_calls(textwrap.dedent(code), "add", ["candidate(1, 2)"], hide_paths=[store])
    assert set(res.calls[0].value.values()) == {"FileNotFoundError"}


FORGERIES = {
    "print_pass_and_exit": "print('PASSED all tests')\nimport sys\nsys.exit(0)\n",
    "os_exit_before_tests": "import os\nos._exit(0)\n",
    "exit_in_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "eq_always_true": "class Yes:\n    def __eq__(self, other):\n        return True\n"
    "def add(a, b):\n    return Yes()\n",
    "int_subclass_eq": "class I(int):\n    def __eq__(self, other):\n        return True\n"
    "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n",
    "patch_builtins": "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
    "builtins.isinstance = lambda *a: True\nbuiltins.bool = lambda *a: True\n"
    "def add(a, b):\n    return None\n",
    "patch_harness_encoder": "import sys\nh = sys.modules['__main__']\nh.encode = lambda v, b, d=0: True\n"
    "h.send = lambda obj: None\ndef add(a, b):\n    return 0\n",
    "write_fake_results_to_every_fd": (
        "import os, json\n"
        "lines = [json.dumps(m) + '\\n' for m in ({'k': 'done'}, {'k': 'result', 'passed': True},\n"
        "         {'k': 'call', 'i': 2, 'v': {'__eq__': True}}, {'k': 'call', 'i': 3, 'v': {'t': 1}},\n"
        "         {'k': 'call', 'i': 4, 'ok': True}, {'k': 'setup', 'err': 'x'})]\n"
        "for fd in range(0, 64):\n"
        "    for line in ['PASSED\\n', 'ok\\n'] + lines:\n"
        "        try:\n            os.write(fd, line.encode())\n        except OSError:\n            pass\n"
        "def add(a, b):\n    return 0\n"
    ),
    "gc_rewrite_calls": (
        "import gc\n"
        "for obj in gc.get_objects():\n"
        "    if isinstance(obj, dict) and 'calls' in obj and 'entry_point' in obj:\n"
        "        obj['calls'][:] = ['True'] * len(obj['calls'])\n"
        "def add(a, b):\n    return 0\n"
    ),
    "raise_in_call": "def add(a, b):\n    raise AssertionError('pretend the assertion passed')\n",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_passes_are_not_counted(name):
    res = run(FORGERIES[name])
    assert_not_passing(res)
    assert res["detail"]["hidden_pass_rate"] <= 1 / 3  # at most candidate(2, 3) == 5 can pass by luck


def test_child_never_sees_expected_values():
    ref = dict(REF, hidden_tests=["assert candidate(7, 8) == 987654321"])
    code = """
    import json, sys
    def add(a, b):
        frame, found = sys._getframe(), []
        while frame is not None:
            found.append(repr(frame.f_locals.get("job")))
            frame = frame.f_back
        return json.dumps(found)
    """
    row = {"completion": textwrap.dedent(code), "reference": json.dumps(ref)}
    res = code_tests.score([row], name="t", **FAST)[0]
    assert res["label"] == "incorrect"
    raw = sandbox.run_calls(textwrap.dedent(code), "add", ["candidate(7, 8)"]).calls[0].value
    assert "candidate(7, 8)" in raw and "987654321" not in raw


def test_outputs_larger_than_the_limit_are_cut_not_buffered():
    code = "def add(a, b):\n    return 'x' * (10 * 1024 * 1024)\n"
    res = sandbox.run_calls(code, "add", ["candidate(1, 2)"], limits=sandbox.Limits(output_mb=1))
    assert res.calls[0] is None or not res.calls[0].ok
