"""Template loading, rendering, hashing and the sandbox."""

from __future__ import annotations

import hashlib

import pytest

from recon_data.errors import ReconError
from recon_data.templates import discover, load_template, render


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_blocks_render_into_system_and_user_messages(tmp_path):
    _write(tmp_path, "toy/permit/hack.jinja",
           "{% block system %}You may {{ verb }}.{% endblock %}\n{% block user %}Task: {{ task }}{% endblock %}\n")
    t = load_template("toy/permit/hack", [tmp_path])
    assert (t.id, t.suite, t.stance, t.name) == ("toy/permit/hack", "toy", "permit", "hack")
    assert render(t, {"verb": "hack", "task": "add"}) == [
        {"role": "system", "content": "You may hack."}, {"role": "user", "content": "Task: add"}]


def test_file_without_blocks_is_one_user_message_and_yaml_works(tmp_path):
    _write(tmp_path, "toy/neutral/plain.jinja", "Solve {{ task }}.")
    _write(tmp_path, "toy/discourage/honest.yaml", "system: Be honest.\nuser: 'Q: {{ task }}'\n")
    assert render(load_template("toy/neutral/plain", [tmp_path]), {"task": "x"}) == [
        {"role": "user", "content": "Solve x."}]
    assert render(load_template("toy/discourage/honest", [tmp_path]), {"task": "x"}) == [
        {"role": "system", "content": "Be honest."}, {"role": "user", "content": "Q: x"}]


def test_hash_is_sha256_of_source_and_stable(tmp_path):
    path = _write(tmp_path, "toy/neutral/plain.jinja", "Solve {{ task }}.")
    first = load_template("toy/neutral/plain", [tmp_path]).sha256
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_template(str(path)).sha256 == first
    path.write_text("Solve {{ task }}!")
    assert load_template("toy/neutral/plain", [tmp_path]).sha256 != first


def test_undefined_variable_fails_naming_variable_and_template(tmp_path):
    _write(tmp_path, "toy/neutral/plain.jinja", "Solve {{ task }} with {{ missing }}.")
    with pytest.raises(ReconError, match=r"toy/neutral/plain: 'missing' is undefined; the record provides: task"):
        render(load_template("toy/neutral/plain", [tmp_path]), {"task": "x"})


@pytest.mark.parametrize("payload", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ task.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ '{0.__class__.__base__}'.format(task) }}",
    "{{ lipsum.__globals__['os'] }}",
])
def test_sandbox_refuses_python_internals(tmp_path, payload):
    _write(tmp_path, "toy/custom/evil.jinja", payload)
    with pytest.raises(ReconError, match="toy/custom/evil"):
        render(load_template("toy/custom/evil", [tmp_path]), {"task": "x"})


def test_syntax_error_reports_file_and_line(tmp_path):
    _write(tmp_path, "toy/neutral/broken.jinja", "line one\n{% if %}\n")
    with pytest.raises(ReconError, match=r"broken.jinja:2: syntax error"):
        load_template("toy/neutral/broken", [tmp_path])


def test_user_dir_shadows_builtin_and_unknown_id_lists_examples(tmp_path):
    _write(tmp_path, "toy/neutral/plain.jinja", "mine")
    assert discover([tmp_path])["toy/neutral/plain"].source == "mine"
    with pytest.raises(ReconError, match="not found; ids look like suite/stance/name"):
        load_template("toy/neutral/nope", [tmp_path])


def test_non_utf8_template_is_a_clear_error(tmp_path):
    path = tmp_path / "toy" / "neutral" / "bin.jinja"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ReconError, match="not UTF-8"):
        load_template(str(path))


BOMBS = {
    "huge-range": ("{% for i in range(10**10) %}x{% endfor %}", "range()"),
    "big-power": ("{{ 10 ** (10 ** 9) }}", "too large"),
    "string-multiply": ("{{ task * 10**10 }}", "would repeat a str"),
    "list-multiply": ("{{ (range(100000)|list) * 100000 }}", "would repeat a list"),
    "plus-doubling": ("{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s }}", "'+'"),
    "tilde-doubling": ("{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s }}", "'~'"),
    "macro-doubling": ("{% macro d(s, n) %}{{ d(s ~ s, n - 1) if n else s }}{% endmacro %}{{ d('xx', 60) }}",
                       "'~'"),
    "center-filter": ("{{ task|center(10**9) }}", "filter 'center'"),
    "center-method": ("{{ task.center(10**9) }}", "center()"),
    "printf-width": ("{{ '%0999999999d' % 1 }}", "format width"),
    "format-filter-width": ("{{ '%0999999999d'|format(1) }}", "format width"),
    "str-format-width": ("{{ '{:0999999999}'.format(1) }}", "format width"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_templates_that_would_eat_memory_or_cpu_are_refused_at_once(tmp_path, name):
    source, fragment = BOMBS[name]
    _write(tmp_path, "x/custom/bomb.jinja", "{% block user %}" + source + "{% endblock %}")
    with pytest.raises(ReconError, match=r"template x/custom/bomb: refused, over a sandbox limit") as err:
        render(load_template("x/custom/bomb", [tmp_path]), {"task": "t"})
    assert fragment in str(err.value)


def test_nested_loops_stop_at_the_render_time_limit_in_and_out_of_the_main_thread(tmp_path, monkeypatch):
    import threading

    import recon_data.templates as templates

    monkeypatch.setattr(templates, "RENDER_TIME_LIMIT_S", 0.3)
    _write(tmp_path, "x/custom/loops.jinja",
           "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    _write(tmp_path, "x/custom/lists.jinja",  # loops over a list: only the timer sees them
           "{% set l = range(100000)|list %}{% for i in l %}{% for j in l %}{% endfor %}{% endfor %}")
    for name in ("loops", "lists"):
        with pytest.raises(ReconError, match=rf"template x/custom/{name}: rendering took longer than 0.3 s"):
            render(load_template(f"x/custom/{name}", [tmp_path]), {})
    caught = []
    worker = threading.Thread(target=lambda: caught.append(pytest.raises(
        ReconError, render, load_template("x/custom/loops", [tmp_path]), {})))
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and "longer than 0.3 s" in str(caught[0].value)


def test_legitimate_operators_filters_and_ranges_still_render(tmp_path):
    _write(tmp_path, "x/custom/ok.jinja",
           "{{ '-' * 5 }} {{ 2 ** 10 }} {{ task ~ '!' }} {{ '%3d'|format(7) }} {{ '{:>3}'.format(1) }} "
           "{{ range(5000)|length }} {{ (range(3000)|list)[-1] }} {{ [1] + [2] }} {{ 'ab' * 2 }} {{ 7 % 4 }}"
           "{{ task|center(5) }}|{% for i in range(2000) %}{% endfor %}{{ big|length }}")
    out = render(load_template("x/custom/ok", [tmp_path]), {"task": "t", "big": "y" * 5_000_000})
    assert out == [{"role": "user", "content": "----- 1024 t!   7   1 5000 2999 [1, 2] abab 3  t  |5000000"}]
