"""Hostile user templates: payloads that reach for Python internals must be refused by the sandbox with one
clear line and nothing written; payloads that burn CPU or memory must hit a limit, not hang or crash.

The children run under RLIMIT_CPU / RLIMIT_AS so that a template which is *not* stopped by recon gets
killed by the kernel (the test then fails naming the payload) instead of taking the machine down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recon_data.store import Store

from ._util import assert_clean_failure, describe, recon, tiny_pipeline, write_yaml

pytestmark = pytest.mark.reliability

CPU_LIMIT_S = 10  # a legitimate template renders in milliseconds
MEMORY_LIMIT = 2 << 30

# payloads that try to escape the sandbox; what leaks if one succeeds would show in stdout
ESCAPES = {
    "class-mro-subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "attr-filter": "{{ task|attr('__class__')|attr('__mro__') }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "cycler-init-globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner-globals": "{{ joiner.__init__.__globals__ }}",
    "namespace-globals": "{{ namespace.__init__.__globals__ }}",
    "self-context": "{{ self._TemplateReference__context }}",
    "format-attribute": "{{ '{0.__class__.__init__.__globals__}'.format(task) }}",
    "format-filter": "{{ '%s'|format(task.__class__) }}",
    "format-map": "{{ '{0.__class__}'.format_map({'0': task}) }}",
    "dunder-method": "{{ task.__len__() }}",
    "getattr-string": "{{ task['__class__'] }}",
    "set-mro": "{% set c = task.__class__ %}{{ c }}",
    "import-statement": "{% import 'os' as os %}{{ os }}",
    "include-file": "{% include '/etc/passwd' %}",
}

# payloads that burn resources inside an otherwise legal template
BOMBS = {
    "huge-range": "{% for i in range(10**10) %}x{% endfor %}",
    "nested-loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "big-power": "{{ 10 ** (10 ** 9) }}",
    "string-multiply": "{{ task * 10**10 }}",
    "list-multiply": "{{ (range(100000)|list) * 100000 }}",
}

LEAKS = ("<class", "uid=", "root:", "__builtins__", "function ", "module '", "os.popen")


def _tpl(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "tpl" / "custom" / "custom" / "evil.jinja"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{% block system %}sys{% endblock %}{% block user %}" + source + "{% endblock %}")
    return tmp_path / "tpl"


def _render(tmp_path: Path, source: str):
    return recon(
        "templates",
        "render",
        "custom/custom/evil",
        "--templates",
        _tpl(tmp_path, source),
        "--record",
        '{"task": "t"}',
        cpu_seconds=CPU_LIMIT_S,
        memory_bytes=MEMORY_LIMIT,
        timeout=300,
    )


@pytest.mark.parametrize("payload", list(ESCAPES))
def test_template_reaching_python_internals_is_refused_with_one_line(payload, tmp_path):
    done = _render(tmp_path, ESCAPES[payload])
    assert_clean_failure(done, code=1, contains=["custom/custom/evil"])
    for leak in LEAKS:
        assert leak not in done.stdout, f"{payload} leaked {leak!r}:\n{describe(done)}"
    assert "user:" not in done.stdout, "a refused template still printed messages"


@pytest.mark.parametrize("payload", list(BOMBS))
def test_template_burning_cpu_or_memory_hits_a_limit_with_one_line(payload, tmp_path):
    done = _render(tmp_path, BOMBS[payload])
    assert done.returncode >= 0, (
        f"{payload}: the render was killed by the kernel (signal {-done.returncode}) after "
        f"{CPU_LIMIT_S} CPU-s / {MEMORY_LIMIT >> 30} GiB: recon sets no limit of its own"
    )
    assert_clean_failure(done, code=1, contains=["custom/custom/evil"])


def test_hostile_template_in_a_pipeline_is_refused_and_nothing_is_written(tiny_model_dir, tmp_path):
    tpl = _tpl(tmp_path, ESCAPES["cycler-init-globals"])
    cfg = tiny_pipeline(
        tiny_model_dir,
        name="evil",
        rounds=1,
        eval=None,
        templates_dirs=[str(tpl)],
        arms={"a": {"generate": "custom/custom/evil", "train": "eval_gaming/neutral/plain"}},
    )
    pipeline = write_yaml(tmp_path / "evil.yaml", cfg)
    store = tmp_path / "store"
    done = recon("run", pipeline, "--store", store, "--no-progress", cpu_seconds=120, timeout=600)
    assert_clean_failure(done, code=1, contains=["custom/custom/evil"], sole_line=False)
    for leak in LEAKS:
        assert leak not in done.stdout + done.stderr
    assert Store(store).names() == []
    assert not (store / "cache" / "samples.sqlite").exists() or "0 generated" in done.stderr
    assert not list(store.rglob("*.parquet")), "a refused template still produced data"
