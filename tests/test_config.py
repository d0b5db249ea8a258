"""Pipeline config validation: one line naming the file, the key path and what is expected."""

from __future__ import annotations

import pytest

from recon_data.config import load_pipeline
from recon_data.errors import ConfigError

VALID = """
name: toy
suite: {name: eval_gaming, limit: 4}
arms:
  standard: {generate: a/discourage/x, train: a/discourage/x}
scorers:
  - {name: proxy, type: rule, params: {metric: keyword_count}}
"""


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_valid_pipeline_gets_defaults(tmp_path):
    cfg = load_pipeline(_write(tmp_path, VALID))
    assert cfg.sampler.backend == "transformers" and cfg.sampler.n == 4
    assert cfg.train.lora.r == 16 and cfg.rounds == 1 and cfg.seeds == [0]


def test_missing_key_names_file_and_path(tmp_path):
    path = _write(tmp_path, VALID.replace("name: toy\n", ""))
    with pytest.raises(ConfigError) as e:
        load_pipeline(path)
    assert str(e.value) == f"{path}: name: is required"
    assert e.value.exit_code == 2


def test_wrong_type_shows_expected_and_got(tmp_path):
    path = _write(tmp_path, VALID + "sampler: {n: lots}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: sampler.n: must be a valid integer.*\(got \"lots\"\)"):
        load_pipeline(path)


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    path = _write(tmp_path, VALID + "train: {epoch: 2}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: train.epoch: is not a known key"):
        load_pipeline(path)


def test_list_positions_appear_in_the_path(tmp_path):
    path = _write(tmp_path, VALID.replace("type: rule", "type: oracle"))
    with pytest.raises(ConfigError, match=r"scorers\[0\].type: must be 'code_tests', 'rule'"):
        load_pipeline(path)


def test_broken_yaml_points_at_line(tmp_path):
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2:1: invalid YAML"):
        load_pipeline(path)


@pytest.mark.parametrize("text, message", [
    ("", "expected a mapping"),
    ("- a\n- b\n", "expected a mapping"),
    (VALID.replace("{name: eval_gaming, limit: 4}", "{limit: 4}"), "give exactly one of 'name'"),
    (VALID + "rounds: 0\n", "rounds: must be greater than or equal to 1"),
])
def test_semantic_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_write(tmp_path, text))


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_pipeline(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_pipeline(bad)


def test_duplicate_keys_are_refused_not_silently_overwritten(tmp_path):
    with pytest.raises(ConfigError, match=r"p.yaml:\d+:1: invalid YAML: duplicate key 'rounds'"):
        load_pipeline(_write(tmp_path, VALID + "rounds: 1\nrounds: 5\n"))
