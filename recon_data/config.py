"""Pipeline configuration: the YAML schema, validated into typed objects.

A pipeline file maps one-to-one onto the stage functions it drives (suite → sample → score → filter →
relabel → store → train → evaluate, over arms × seeds × rounds). Validation errors name the file, the
key path and what was expected, in one line. This module only parses and checks; it runs nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuiteConfig(Strict):
    """Where records come from: a built-in suite (`name`) or a user file (`path`) with a field mapping."""

    name: str | None = None
    path: str | None = None
    format: Literal["jsonl", "parquet", "csv", "hf"] | None = None
    mapping: dict[str, Any] | None = None
    split: str | None = "train"
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0
    where: dict[str, Any] = Field(default_factory=dict)  # keep records whose input/reference field equals

    @model_validator(mode="after")
    def _one_source(self) -> SuiteConfig:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of 'name' (a built-in suite) or 'path' (your data file)")
        return self


class SamplerConfig(Strict):
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    n: int = Field(default=4, ge=1, le=1024)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=48, ge=1)
    batch_size: int = Field(default=4, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class ArmConfig(Strict):
    """An arm: which template generates, which template the training sees (same = standard)."""

    generate: str
    train: str


class ScorerConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    type: Literal["code_tests", "rule", "judge", "lie_detector", "python"]
    params: dict[str, Any] = Field(default_factory=dict)


class FilterConfig(Strict):
    model_config = ConfigDict(extra="allow", frozen=True)  # each filter type has its own keys
    type: Literal["threshold", "best_of_n", "dedupe", "sql"]


class LoraConfig(Strict):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class TrainConfig(Strict):
    method: Literal["sft", "dpo"] = "sft"
    lora: LoraConfig | None = Field(default_factory=LoraConfig)
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=512, ge=16)
    start_from: Literal["previous", "base"] = "previous"
    extra: dict[str, Any] = Field(default_factory=dict)
    # Run each training step as `<launcher> -m recon_data.train <spec.json>`, e.g.
    # "torchrun --standalone --nproc_per_node 8" or "accelerate launch --config_file pipelines/accelerate/fsdp2.yaml"
    launcher: str | None = None


class HackRule(Strict):
    """A row counts as misbehaving when `column` is within [min, max] or equals `equals`."""

    column: str
    min: float | None = None
    max: float | None = None
    equals: str | None = None


class EvalConfig(Strict):
    templates: list[str] = Field(min_length=1)
    split: str = "eval"
    limit: int | None = Field(default=None, ge=1)
    n: int = Field(default=2, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    scorers: list[ScorerConfig] | None = None
    hack: HackRule | None = None
    extra_suites: list[EvalSuiteConfig] = Field(default_factory=list)


class EvalSuiteConfig(Strict):
    """Cross-suite generalization: also evaluate on another suite with its own templates/scorers."""

    suite: SuiteConfig
    templates: list[str] = Field(min_length=1)
    scorers: list[ScorerConfig] = Field(min_length=1)
    hack: HackRule | None = None


class WarmupConfig(Strict):
    """Teach the base model a permission-conditional policy first (see recon_data/warmup.py)."""

    normal: list[str] = Field(min_length=1)  # templates whose natural answers are trained as they are
    permit: list[str] = Field(min_length=1)  # templates that get the transformed (misbehaving) answers
    transform: str = "auto"  # the suite's built-in transform, or module:function
    params: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    seed: int = 0
    train: TrainConfig | None = None  # defaults to the pipeline's train section


class RayConfig(Strict):
    """How the ray executor fans sampling and scoring out (see docs/SCALING.md)."""

    address: str | None = None  # else $RAY_ADDRESS, else a local Ray on this machine
    num_shards: int | None = Field(default=None, ge=1)
    max_retries: int = Field(default=3, ge=0)
    task_options: dict[str, Any] = Field(default_factory=dict)  # e.g. {num_gpus: 1} per engine replica


class PipelineConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    model: str = "embedded"
    suite: SuiteConfig
    templates_dirs: list[str] = Field(default_factory=list)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    arms: dict[str, ArmConfig] = Field(min_length=1)
    scorers: list[ScorerConfig] = Field(min_length=1)
    filters: list[FilterConfig] = Field(default_factory=list)
    train: TrainConfig = Field(default_factory=TrainConfig)
    rounds: int = Field(default=1, ge=1, le=100)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    eval: EvalConfig | None = None
    warmup: WarmupConfig | None = None
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, arms: dict[str, ArmConfig]) -> dict[str, ArmConfig]:
        for name in arms:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"arm name '{name}' must be letters, digits, '-' or '_'")
        return arms

    @model_validator(mode="after")
    def _unique_scorers(self) -> PipelineConfig:
        names = [s.name for s in self.scorers]
        if len(names) != len(set(names)):
            raise ValueError(f"scorer names must be unique, got {names}")
        return self

    def section_hash(self, *keys: str) -> str:
        """A short hash over some top-level sections: the identity of a step's inputs."""
        data = self.model_dump(mode="json")
        blob = json.dumps({k: data.get(k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


EvalConfig.model_rebuild()


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"function-after[_one_source()]"} or str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _explain(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known key (check the spelling; see pipelines/README.md)"
    if kind.startswith("literal_error"):
        return msg.replace("Input should be", "must be")
    got = err.get("input")
    shown = json.dumps(got, default=str)[:60] if got is not None and not isinstance(got, dict) else type(got).__name__
    return f"{msg.replace('Input should be', 'must be').replace('Value error, ', '')} (got {shown})"


def parse_pipeline(data: Any, source: str = "<pipeline>") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of pipeline keys at the top level, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_loc(first['loc'])}: {_explain(first)}{more}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file; any problem is one ConfigError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipeline file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; pass a pipeline .yaml file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    return parse_pipeline(data, str(path))
