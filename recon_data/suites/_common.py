"""Helpers shared by the built-in suites: record construction, split assignment, seeded RNGs.

Everything here is deterministic: a record's split depends only on its id, and every RNG is seeded
from a string, so the same seed gives byte-identical tables on every machine and Python version
(string seeds do not depend on PYTHONHASHSEED). Must not import any suite module.
"""

from __future__ import annotations

import hashlib
import random

EVAL_PERCENT = 22  # share of records in the eval split, by hash of id


def split_for(record_id: str) -> str:
    """`eval` for about EVAL_PERCENT % of ids, chosen by hash so it never moves with the seed."""
    bucket = int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:4], "big") % 100
    return "eval" if bucket < EVAL_PERCENT else "train"


def make_record(suite: str, record_id: str, inputs: dict, reference: dict) -> dict:
    """One record in the Python shape every suite returns (input/reference stay dicts here)."""
    return {
        "id": record_id,
        "suite": suite,
        "split": split_for(record_id),
        "input": inputs,
        "reference": reference,
    }


def seeded(seed: int, *parts: object) -> random.Random:
    """An RNG private to (seed, parts), so adding a record never reshuffles the others."""
    return random.Random(":".join(str(p) for p in (seed, *parts)))
