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
