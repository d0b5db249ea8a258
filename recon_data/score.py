"""Scorer registry: run the configured scorers over sample rows and add their columns.

Each scorer config is {"name", "type", "params"}; types map to modules in `recon_data.scorers` whose
`score(rows, *, name, **params)` returns one {score, label?, detail?} per row. This module adds, per
scorer, `score.<name>` (float or null), `label.<name>`, `detail.<name>` (JSON) and `scorer_version.<name>`.
It validates every config before running any scorer, imports scorer modules lazily (judge and
lie_detector pull in heavy dependencies), and must not implement scoring logic itself.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ReconError

# type -> (module, score function, version function or None)
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "code_tests": ("recon_data.scorers.code_tests", "score", None),
    "rule": ("recon_data.scorers.rules", "score", "version"),
    "python": ("recon_data.scorers.rules", "score_python", "python_version"),
    "judge": ("recon_data.scorers.judge", "score", None),
    "lie_detector": ("recon_data.scorers.lie_detector", "score", None),
}
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _validate(scorers: list[dict]) -> list[tuple[str, str, dict]]:
    if not isinstance(scorers, (list, tuple)):
        raise ReconError("scorers must be a list of {name, type, params} mappings")
    seen: set[str] = set()
    out = []
    for i, cfg in enumerate(scorers):
        if hasattr(cfg, "model_dump"):  # a pydantic ScorerConfig from config.py
            cfg = cfg.model_dump()
        if not isinstance(cfg, dict):
            raise ReconError(
                f"scorer #{i + 1} must be a mapping with name, type, params; got {type(cfg).__name__}"
            )
        name, kind, params = cfg.get("name"), cfg.get("type"), cfg.get("params") or {}
        unknown = set(cfg) - {"name", "type", "params"}
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ReconError(
                f"scorer #{i + 1}: name {name!r} must match [A-Za-z][A-Za-z0-9_]* (it becomes a "
                "column suffix)"
            )
        if unknown:
            raise ReconError(f"scorer '{name}': unknown keys {sorted(unknown)} (put options under params)")
        if name in seen:
            raise ReconError(f"scorer '{name}' is configured twice: scorer names must be unique")
        if kind not in REGISTRY:
            raise ReconError(f"scorer '{name}': unknown type {kind!r}; use one of {', '.join(REGISTRY)}")
        if not isinstance(params, dict):
            raise ReconError(f"scorer '{name}': params must be a mapping")
        seen.add(name)
        out.append((name, kind, dict(params)))
    return out


def _load(name: str, kind: str) -> tuple[Callable, Any, Callable | None]:
    mod_name, fn_name, ver_name = REGISTRY[kind]
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ReconError(
            f"scorer '{name}': type {kind!r} is unavailable ({exc}); install its dependencies"
        ) from None
    return (
        getattr(module, fn_name),
        getattr(module, "VERSION", "0"),
        getattr(module, ver_name) if ver_name else None,
    )


def _as_score(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, int, float)):
        value = float(value)
        return None if math.isnan(value) else value
    raise ReconError(f"scorer '{name}' returned a non-numeric score {value!r}")


def score_rows(rows: list[dict], scorers: list[dict], *, store_root: Path | None = None) -> list[dict]:
    """Return copies of `rows` with each scorer's columns added (see module doc)."""
    configs = _validate(scorers)
    loaded = [(name, kind, params, *_load(name, kind)) for name, kind, params in configs]
    out = [dict(r) for r in rows]
    for name, kind, params, fn, module_version, version_fn in loaded:
        call_params = dict(params)
        if kind == "code_tests" and store_root is not None:  # the program must not read the store
            call_params["hide_paths"] = [*(call_params.get("hide_paths") or []), str(store_root)]
        try:
            results = fn(out, name=name, **call_params)
        except ReconError as exc:
            msg = str(exc)
            raise (exc if name in msg else ReconError(f"scorer '{name}': {msg}")) from None
        except TypeError as exc:
            if (
                exc.__traceback__ is not None and exc.__traceback__.tb_next is None
            ):  # failed binding the params
                raise ReconError(f"scorer '{name}' ({kind}): bad params {sorted(params)}: {exc}") from None
            raise
        if not isinstance(results, list) or len(results) != len(out):
            raise ReconError(
                f"scorer '{name}' ({kind}) returned {len(results) if isinstance(results, list) else '?'}"
                f" results for {len(out)} rows"
            )
        version = str(version_fn(**params)) if version_fn else str(module_version)
        for row, res in zip(out, results, strict=True):
            if not isinstance(res, dict):
                res = {"score": res}
            detail = res.get("detail")
            label = res.get("label")
            row[f"score.{name}"] = _as_score(res.get("score"), name)
            row[f"label.{name}"] = None if label is None else str(label)
            row[f"detail.{name}"] = (
                None if detail is None else json.dumps(_nan_to_none(detail), sort_keys=True, default=str)
            )
            row[f"scorer_version.{name}"] = version
    return out


def _nan_to_none(obj: Any) -> Any:
    """Strict JSON for DuckDB's json functions: NaN/inf become null."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
