"""Sampling throughput of recon vs the raw libraries, and the cached re-run speed-up.

Same prompts and params on both sides (SmolLM2-135M embedded; --quick: 8 prompts x 4 samples x 48 tokens):
- transformers: `sample_rows(backend="transformers")` vs a plain batched `model.generate` loop (tokens/s);
- vllm (only where vllm imports, e.g. `.venv-vllm/bin/python benchmarks/bench_sample.py`): recon's vllm
  backend vs plain `LLM.generate` on the same engine (tokens/s);
- cache: a cached re-run vs the first run (seconds; target >= 100x faster).
Prints `name | recon | baseline | ratio`; `run(quick)` returns the rows for benchmarks/run_all.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_data.backends import derive_seed  # noqa: E402
from recon_data.models import resolve_model  # noqa: E402
from recon_data.sample import SamplingParams, sample_rows_with_stats  # noqa: E402

TOPICS = [
    "the sea",
    "a library",
    "winter",
    "trains",
    "honesty",
    "a garden",
    "the moon",
    "coffee",
    "bridges",
    "rain",
    "chess",
    "mountains",
    "music",
    "bread",
    "clocks",
    "birds",
]


def prompt_rows(k: int) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "gen_messages": [
                {"role": "user", "content": f"Write one sentence about {TOPICS[i % len(TOPICS)]} (#{i})."}
            ],
        }
        for i in range(k)
    ]


def load_plain(path: Path):
    """A plain transformers model + tokenizer, loaded the way a user would."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok


def plain_transformers(
    model, tok, rows: list[dict], params: SamplingParams, batch_size: int, seeds: list[int]
) -> tuple[int, float, list[str]]:
    """What a user writes by hand: chat template, left padding, batched generate with one seed per batch.

    Returns (new tokens, seconds, completions). Given recon's per-chunk seeds it must reproduce recon's
    completions exactly, so the two sides do identical work and the ratio measures recon's overhead only.
    """
    import torch

    eos = tok.eos_token_id
    start = time.perf_counter()
    tokens, texts_out = 0, []
    for b, i in enumerate(range(0, len(rows), batch_size)):
        texts = [
            tok.apply_chat_template(r["gen_messages"], tokenize=False, add_generation_prompt=True)
            for r in rows[i : i + batch_size]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seeds[b])
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                max_new_tokens=params.max_new_tokens,
                num_return_sequences=params.n,
                pad_token_id=tok.pad_token_id,
            )
        for ids in out[:, enc["input_ids"].shape[1] :].tolist():
            body = ids[: ids.index(eos)] if eos in ids else ids
            tokens += len(body) + 1 if eos in ids else len(ids)
            texts_out.append(tok.decode(body, skip_special_tokens=True))
    return tokens, time.perf_counter() - start, texts_out


def chunk_seeds(sample_rows: list[dict], params: SamplingParams, batch_size: int) -> list[int]:
    """recon's documented chunk seed: derive_seed(seed, "chunk", *sample keys of the chunk's prompts)."""
    keys = [r["sample_key"] for r in sample_rows]
    per_chunk = batch_size * params.n
    return [
        derive_seed(params.seed, "chunk", *keys[i : i + per_chunk], bits=63)
        for i in range(0, len(keys), per_chunk)
    ]


def bench_transformers(rows, params, batch_size, repeats) -> dict:
    model, tok = load_plain(resolve_model("embedded").path)
    warm = SamplingParams(n=params.n, max_new_tokens=4)  # warm both sides on the real batch shape
    warm_rows, _ = sample_rows_with_stats(
        rows[:batch_size],
        model="embedded",
        params=warm,
        cache_dir=None,
        batch_size=batch_size,
        progress=False,
    )
    plain_transformers(
        model, tok, rows[:batch_size], warm, batch_size, chunk_seeds(warm_rows, warm, batch_size)
    )
    recon_rates, base_rates, same = [], [], True
    for _ in range(repeats):  # interleaved, best of each: fairer on a shared machine
        out, st = sample_rows_with_stats(
            rows, model="embedded", params=params, cache_dir=None, batch_size=batch_size, progress=False
        )
        recon_rates.append(st.completion_tokens / st.seconds)
        tokens, seconds, texts = plain_transformers(
            model, tok, rows, params, batch_size, chunk_seeds(out, params, batch_size)
        )
        base_rates.append(tokens / seconds)
        same = same and texts == [r["completion"] for r in out]
    return _rates_result("transformers", "plain generate", recon_rates, base_rates, same)


def _rates_result(engine: str, plain: str, recon_rates: list[float], base_rates: list[float], same: bool) -> dict:
    """Best tokens/s of each side (interleaved repeats) as a result row; says whether the texts matched."""
    print(
        f"sample {engine}: recon and {plain} produced {'identical' if same else 'DIFFERENT'} "
        "completions from the same seeds"
    )
    recon, base = max(recon_rates), max(base_rates)
    return {
        "benchmark": f"sample {engine} tokens/s",
        "recon": recon,
        "baseline": base,
        "unit": "tok/s",
        "ratio": recon / base,
        "target": 0.95,
    }


def bench_cache(rows, params, batch_size) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        _, first = sample_rows_with_stats(
            rows,
            model="embedded",
            params=params,
            cache_dir=Path(cache),
            batch_size=batch_size,
            progress=False,
        )
        _, again = sample_rows_with_stats(
            rows,
            model="embedded",
            params=params,
            cache_dir=Path(cache),
            batch_size=batch_size,
            progress=False,
        )
        assert again.generated == 0 and again.cached == first.generated
    return {
        "benchmark": "sample cached re-run speed-up",
        "recon": again.seconds,
        "baseline": first.seconds,
        "unit": "s",
        "ratio": first.seconds / again.seconds,
        "target": 100.0,
    }


def bench_vllm(rows, params, repeats) -> dict | None:
    if importlib.util.find_spec("vllm") is None:
        return None
    from vllm import SamplingParams as VSamplingParams

    from recon_data.backends.vllm import get_engine

    llm = get_engine("embedded")  # the engine recon's backend uses too: start-up is not timed
    tok = llm.get_tokenizer()
    prompts = [
        {
            "prompt_token_ids": tok(
                tok.apply_chat_template(r["gen_messages"], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False,
            )["input_ids"]
        }
        for r in rows
    ]
    llm.generate(prompts, VSamplingParams(n=params.n, max_tokens=4), use_tqdm=False)  # warm-up
    recon_rates, base_rates, same = [], [], True
    for _ in range(repeats):
        out, st = sample_rows_with_stats(
            rows, model="embedded", backend="vllm", params=params, cache_dir=None, progress=False
        )
        recon_rates.append(st.completion_tokens / st.seconds)
        # plain LLM.generate with recon's documented per-prompt seeds, so both sides do identical work
        seeds = [derive_seed(params.seed, "prompt", r["sample_key"]) for r in out if r["sample_index"] == 0]
        sps = [
            VSamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=sd,
            )
            for sd in seeds
        ]
        start = time.perf_counter()
        outs = llm.generate(prompts, sps, use_tqdm=False)
        seconds = time.perf_counter() - start
        base_rates.append(sum(len(o.token_ids) for r in outs for o in r.outputs) / seconds)
        texts = [o.text for r in outs for o in sorted(r.outputs, key=lambda o: o.index)]
        same = same and texts == [r["completion"] for r in out]
    return _rates_result("vllm", "plain LLM.generate", recon_rates, base_rates, same)


def run(quick: bool) -> list[dict]:
    rows = prompt_rows(8 if quick else 32)
    params = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=48, seed=0)
    out = [bench_transformers(rows, params, 4, 1 if quick else 3), bench_cache(rows, params, 4)]
    v = bench_vllm(rows, params, 1 if quick else 3)
    if v is None:
        print("sample vllm tokens/s | skipped (vllm not importable; run with .venv-vllm/bin/python)")
    else:
        out.append(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts, one repeat")
    args = parser.parse_args()
    for r in run(args.quick):
        print(
            f"{r['benchmark']} | {r['recon']:.4g} {r['unit']} | {r['baseline']:.4g} {r['unit']} | "
            f"{r['ratio']:.3g} (target >= {r['target']:g})"
        )


if __name__ == "__main__":  # vLLM starts worker processes: keep this guard
    main()
