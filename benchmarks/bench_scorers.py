"""Benchmark: lie-detector activation extraction (recon) vs a plain transformers loop (baseline).

Both read the middle layer's hidden state at the last real token of the same chats on the embedded
SmolLM2-135M. recon sorts by length, stops after the probed layer and skips the LM head; the baseline
runs the full CausalLM with output_hidden_states in input order. Prints `name | recon | raw | ratio`.
"""

from __future__ import annotations

import argparse
import random
import time


def _chats(n: int) -> list[tuple[list[dict], str]]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(["parcel", "invoice", "server", "paid", "shipped", "late"])
                         for _ in range(rng.randint(3, 40)))
        out.append(([{"role": "system", "content": f"Facts {i}: {words}."},
                     {"role": "user", "content": "Was it delivered?"}], f"Yes, {words}."))
    return out


def _baseline(path: str, chats, layer: int, batch_size: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok.padding_side = "right"
    convos = [[*m, {"role": "assistant", "content": r}] for m, r in chats]
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convos]
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            hs = model(**enc, output_hidden_states=True).hidden_states[layer]
            last = enc["attention_mask"].sum(-1) - 1
            out.append(hs[torch.arange(hs.shape[0]), last])
    return torch.cat(out).numpy()


def run(quick: bool) -> list[dict]:
    import numpy as np

    from recon_data.models import resolve_model
    from recon_data.scorers.lie_detector import extract_activations

    n = 32 if quick else 256
    chats = _chats(n)
    ref = resolve_model("embedded")
    extract_activations("embedded", chats[:2], layer=15)  # load once, outside the timing
    t = time.perf_counter()
    ours = extract_activations("embedded", chats, layer=15, batch_size=8)
    recon_s = time.perf_counter() - t
    _baseline(str(ref.path), chats[:2], 15, 8)
    t = time.perf_counter()
    raw = _baseline(str(ref.path), chats, 15, 8)
    raw_s = time.perf_counter() - t
    assert np.allclose(ours, raw, atol=1e-3), "recon and baseline activations differ"
    recon_rate, raw_rate = n / recon_s, n / raw_s
    return [{"benchmark": "lie_detector activations (embedded, layer 15)", "recon": round(recon_rate, 2),
             "baseline": round(raw_rate, 2), "unit": "chats/s", "ratio": round(recon_rate / raw_rate, 2),
             "target": ">= 1.0"}]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    for row in run(parser.parse_args().quick):
        print(f"{row['benchmark']} | {row['recon']} | {row['baseline']} {row['unit']} | {row['ratio']}")
