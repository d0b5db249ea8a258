"""The `transformers` sampling backend: batched HF `generate` in this process (CPU float32 by default).

One chunk = one `generate` call over all its prompts with `num_return_sequences=n`, left padding,
the model's chat template (`add_generation_prompt=True`), and the global torch RNG seeded with the
chunk seed right before the call. Same chunk + same seed => same tokens, whether or not the run was
resumed. On out-of-memory the chunk is split in halves (each half seeded from the chunk seed and its
position) down to one prompt; results after a split differ from an unsplit run, so a split is reported.
Before generating, every prompt is checked against the model's context (prompt tokens + max_new_tokens);
a prompt that cannot fit raises `PromptTooLong` (a ReconError carrying the prompt's index in the chunk,
so the caller can name the record) instead of allocating a multi-gigabyte attention mask. A prompt whose
character count alone proves it too long is refused without tokenizing it.
This module must not cache, write files, or change global torch settings other than the RNG seed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ReconError
from ..models import resolve_model
from . import Backend, Completion, Prompt, check_options, derive_seed

if TYPE_CHECKING:
    from ..sample import SamplingParams

OPTIONS = {
    "dtype": "torch dtype name, default float32 (bfloat16 halves memory, changes outputs)",
    "device": "torch device, default cpu",
}
_DTYPES = ("float32", "bfloat16", "float16")
_LOADED: dict[tuple, tuple[Any, Any]] = {}  # one model kept per process: repeated calls skip the load


def _load_model(path: str, dtype: str, device: str) -> tuple[Any, Any]:
    key = (path, dtype, device)
    if key not in _LOADED:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _LOADED.clear()
        tok = AutoTokenizer.from_pretrained(path)
        if not getattr(tok, "chat_template", None):
            raise ReconError(
                f"model {path} has no chat template in its tokenizer: use an instruct/chat model "
                "or add `chat_template` to its tokenizer_config.json"
            )
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
        model.eval()
        _LOADED[key] = (model, tok)
    return _LOADED[key]


class PromptTooLong(ReconError):
    """A prompt that cannot fit the model's context; `index` is its position in the chunk's prompts."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def context_limit(model: Any, tok: Any) -> int | None:
    """The model's context in tokens: config.max_position_embeddings, else a sane model_max_length."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    m = getattr(tok, "model_max_length", None)
    return m if isinstance(m, int) and 0 < m < 10_000_000 else None  # transformers' "unset" is ~1e30


def max_token_chars(tok: Any) -> int:
    """Most characters one token can cover (its vocabulary string is at least as long), so a text of
    L characters has at least L / max_token_chars tokens: a bound that needs no tokenizing."""
    key = id(tok)
    if _TOKEN_CHARS.get(key, (None,))[0] is not tok:
        _TOKEN_CHARS.clear()
        _TOKEN_CHARS[key] = (tok, max((len(t) for t in tok.get_vocab()), default=1) or 1)
    return _TOKEN_CHARS[key][1]


_TOKEN_CHARS: dict[int, tuple[Any, int]] = {}  # the loaded tokenizer's bound, computed once


def check_prompt_fits(texts: Sequence[str], max_new_tokens: int, limit: int | None, model_id: str, *,
                      lengths: Sequence[int] | None = None, chars_per_token: int = 1) -> None:
    """Raise PromptTooLong for the first prompt that cannot fit `limit` with `max_new_tokens` new tokens.

    Without `lengths` (token counts) only the bound len(text) / chars_per_token is applied, so a
    5 MB prompt is refused before it is tokenized."""
    if limit is None:
        return
    if max_new_tokens >= limit:
        raise ReconError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {limit}-token "
                         f"context of {model_id}: lower max_new_tokens")
    room = limit - max_new_tokens
    for i, text in enumerate(texts):
        if lengths is not None:
            n, how = int(lengths[i]), ""
        else:
            n, how = -(-len(text) // max(1, chars_per_token)), "at least "
        if n > room:
            raise PromptTooLong(
                f"prompt of {len(text):,} characters has {how}{n:,} tokens; with max_new_tokens="
                f"{max_new_tokens} it cannot fit the {limit:,}-token context of {model_id}: shorten the "
                "record fields the template renders, or the template",
                i,
            )


def _eos_ids(model: Any, tok: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def is_oom(exc: BaseException) -> bool:
    """CPU and CUDA out-of-memory errors look different; treat them alike."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def split_on_oom(
    run: Callable[[Sequence[Prompt], int], list[list[Completion]]],
    prompts: Sequence[Prompt],
    seed: int,
    params: SamplingParams,
    on_split: Callable[[int], None] = lambda size: None,
) -> list[list[Completion]]:
    """Run `run(prompts, seed)`; on OOM retry each half with a seed derived from (seed, half), recursively."""
    try:
        return run(prompts, seed)
    except Exception as exc:  # noqa: BLE001 - filtered by is_oom below
        if not is_oom(exc):
            raise
        if len(prompts) <= 1:
            raise ReconError(
                f"out of memory generating {params.n} samples x {params.max_new_tokens} new tokens for a "
                "single prompt: lower n or max_new_tokens, shorten the prompt, use dtype=bfloat16, "
                "or a smaller model"
            ) from None
    half = (len(prompts) + 1) // 2
    on_split(half)
    return [
        *split_on_oom(run, prompts[:half], derive_seed(seed, "oom", 0), params, on_split),
        *split_on_oom(run, prompts[half:], derive_seed(seed, "oom", 1), params, on_split),
    ]


def render_chat(tok: Any, messages: list[dict[str, str]], where: object) -> str:
    """The model's chat template with the generation prompt; template failures are the user's to fix."""
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - jinja errors raised by the model's own template
        roles = [m["role"] for m in messages]
        raise ReconError(
            f"the chat template of {where} rejected messages with roles {roles}: {exc}"
        ) from None


def load(model: str, options: dict, batch_size: int) -> Backend:
    check_options("transformers", options, OPTIONS)
    dtype = str(options.get("dtype", "float32"))
    device = str(options.get("device", "cpu"))
    if dtype not in _DTYPES:
        raise ConfigError(f"transformers backend: dtype '{dtype}' is not one of {', '.join(_DTYPES)}")
    # resolving is cheap; weights load on the first chunk, so a fully cached run never loads them
    ref = resolve_model(model)

    def run(prompts: Sequence[Prompt], seed: int, params: SamplingParams) -> list[list[Completion]]:
        import torch

        hf_model, tok = _load_model(str(ref.path), dtype, device)
        eos_ids = _eos_ids(hf_model, tok)

        texts = [render_chat(tok, p.messages, ref.path) for p in prompts]
        limit = context_limit(hf_model, tok)
        check_prompt_fits(texts, params.max_new_tokens, limit, ref.model_id,  # before tokenizing
                          chars_per_token=max_token_chars(tok))
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        check_prompt_fits(texts, params.max_new_tokens, limit, ref.model_id,
                          lengths=enc["attention_mask"].sum(dim=1).tolist())
        greedy = params.temperature == 0  # all n samples are the same sequence: generate it once
        per_prompt = 1 if greedy else params.n
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "num_return_sequences": per_prompt,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": sorted(eos_ids),
            "top_k": 0,  # only temperature/top_p shape sampling, as in the vllm and openai backends
        }
        if not greedy:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = hf_model.generate(**enc, **kwargs)
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        results: list[list[Completion]] = []
        for i, plen in enumerate(prompt_lens):
            samples = []
            for ids in new_tokens[i * per_prompt : (i + 1) * per_prompt] * (params.n // per_prompt):
                stop = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                body = ids if stop is None else ids[:stop]
                samples.append(
                    Completion(
                        text=tok.decode(body, skip_special_tokens=True),
                        prompt_tokens=int(plen),
                        completion_tokens=len(ids) if stop is None else stop + 1,
                        finish_reason="length" if stop is None else "stop",
                    )
                )
            results.append(samples)
        return results

    def generate(
        prompts: Sequence[Prompt], params: SamplingParams, chunk_seed: int
    ) -> list[list[Completion]]:
        def warn(size: int) -> None:
            print(
                f"recon sample: out of memory, retrying with {size} prompts per batch "
                "(outputs of split chunks differ from unsplit ones)",
                file=sys.stderr,
            )

        return split_on_oom(lambda ps, s: run(ps, s, params), prompts, chunk_seed, params, warn)

    return Backend(
        name="transformers",
        model_id=ref.model_id,
        model_revision=ref.revision,
        identity={"name": "transformers", "dtype": dtype},
        chunk_size=batch_size,
        generate=generate,
    )
