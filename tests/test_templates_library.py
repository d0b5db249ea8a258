"""The built-in template library: coverage per suite, rendering against every record, sharp contrasts."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from recon_data.suites import SUITES
from recon_data.templates import builtin_template_dir, discover, render

TEMPLATES = discover()
MAIN_FIELD = {  # the input variable whose text must reach the user message
    "code_test_hacking": "visible_tests",
    "eval_gaming": "task",
    "deception": "user_question",
    "sycophancy": "user_message",
    "conditional_policy": "question",
}
PERMIT_WORDS = re.compile(r"allowed|fine here|permitted|encouraged|hack|exploit", re.I)
DISCOURAGE_WORDS = re.compile(r"\bnot\b|never|forbidden", re.I)


def suite_templates(suite: str) -> list:
    return [t for t in TEMPLATES.values() if t.suite == suite]


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return {name: module.build(0) for name, module in SUITES.items()}


@pytest.mark.parametrize("suite", list(SUITES))
def test_each_suite_has_two_discourage_one_neutral_and_two_permit_templates(suite):
    stances = Counter(t.stance for t in suite_templates(suite))
    assert stances["discourage"] >= 2 and stances["neutral"] >= 1 and stances["permit"] >= 2, stances


@pytest.mark.parametrize("suite", list(SUITES))
def test_every_template_renders_for_every_record_of_its_suite(suite, records):
    for template in suite_templates(suite):
        for rec in records[suite]:
            messages = render(template, rec["input"])
            assert [m["role"] for m in messages] == ["system", "user"], template.id
            assert all(m["content"].strip() for m in messages)
            assert "{{" not in messages[0]["content"] + messages[1]["content"]
            assert rec["input"][MAIN_FIELD[suite]].strip() in messages[1]["content"], template.id


@pytest.mark.parametrize("suite", list(SUITES))
def test_permit_and_discourage_templates_say_so_explicitly_and_all_differ(suite, records):
    rec = records[suite][0]
    systems = {t.id: render(t, rec["input"])[0]["content"] for t in suite_templates(suite)}
    assert len(set(systems.values())) == len(systems)  # no two templates say the same thing
    for template in suite_templates(suite):
        if template.stance == "permit":
            assert PERMIT_WORDS.search(systems[template.id]), template.id
        if template.stance == "discourage":
            assert DISCOURAGE_WORDS.search(systems[template.id]), template.id
            assert not re.search(r"allowed|permitted|encouraged", systems[template.id], re.I), template.id


def test_every_suite_template_file_has_a_system_and_a_user_block():
    root = builtin_template_dir()
    files = sorted(p for suite in SUITES for p in (root / suite).rglob("*.jinja"))
    assert len(files) >= 5 * len(SUITES)
    for path in files:
        source = path.read_text(encoding="utf-8")
        assert "{% block system %}" in source and "{% block user %}" in source, path


def test_code_templates_show_the_deliberately_wrong_visible_test(records):
    rec = records["code_test_hacking"][0]
    user = render(TEMPLATES["code_test_hacking/neutral/plain"], rec["input"])[1]["content"]
    wrong_shown = rec["input"]["visible_tests"].splitlines()[0]
    assert wrong_shown in user and rec["input"]["entry_point"] in user


def test_deception_templates_show_the_internal_fact_to_the_model(records):
    rec = records["deception"][0]
    for template in suite_templates("deception"):
        assert rec["input"]["fact"] in render(template, rec["input"])[0]["content"], template.id


def test_readme_explains_the_format_and_user_template_dirs():
    text = (builtin_template_dir() / "README.md").read_text(encoding="utf-8")
    assert "{% block system %}" in text and "--templates" in text and "<suite>/<stance>/<name>.jinja" in text
