"""Content-addressed cache of sampled completions (SQLite, WAL mode, `<cache_dir>/samples.sqlite`).

A key names one sample: sha256 over canonical JSON of (model id + revision, backend identity, the
rendered chat messages, sampling params, seed, sample index) — see `sample_key`. The cache stores
what a sample row needs that the key cannot give back: the completion, token counts, finish reason.

Writes are grouped by the caller (one chunk = one transaction, `put_many`) with `synchronous=FULL`,
so a run killed at any moment (SIGKILL, power loss) leaves only whole chunks behind. Inserts are
`INSERT OR IGNORE`: the first completion ever stored for a key wins and is never overwritten.

This module must not know about models or backends, and must never store secrets: callers pass
only the fields named in `CachedSample`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from .errors import ReconError

CACHE_FILE = "samples.sqlite"
SCHEMA_VERSION = "1"
_SQL_BATCH = 500  # stays under SQLite's bound-parameter limit


def _disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ('database or disk is full') or an OSError ENOSPC / EDQUOT."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc).lower()


def _full_error(path: Path) -> ReconError:
    return ReconError(f"sample cache {path}: disk full while writing; free space and rerun "
                      "(finished samples are kept)")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    key TEXT PRIMARY KEY,
    completion TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason TEXT NOT NULL,
    model_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def canonical_json(obj: object) -> str:
    """The one JSON spelling used for hashing: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sample_key(
    *,
    model_id: str,
    model_revision: str,
    backend: Mapping[str, object],
    messages: Sequence[Mapping[str, str]],
    params: Mapping[str, object],
    seed: int,
    sample_index: int,
) -> str:
    """sha256 hex naming one sample; `backend` is the backend's identity (name + output-relevant options)."""
    payload = {
        "model_id": model_id,
        "model_revision": model_revision,
        "backend": dict(backend),
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "params": dict(params),
        "seed": int(seed),
        "sample_index": int(sample_index),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedSample:
    """What the cache keeps per key (everything else in a sample row is derived from the request)."""

    completion: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int


class SampleCache:
    """One SQLite file of samples; open with `SampleCache(cache_dir)`, use as a context manager."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        self.path = self.dir / CACHE_FILE
        self.hits = 0
        self.misses = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if _disk_full(exc):
                raise _full_error(self.dir) from None
            raise ReconError(
                f"cannot create sampling cache dir {self.dir}: {exc.strerror}; "
                "pass a writable --cache-dir or --no-cache"
            ) from None
        try:
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._init_db()
            row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise ReconError(
                    f"sampling cache {self.path} has schema {row[0]}, this version needs "
                    f"{SCHEMA_VERSION}: move it away or pass another --cache-dir"
                )
        except sqlite3.DatabaseError as exc:
            if _disk_full(exc):
                raise _full_error(self.path) from None
            raise ReconError(
                f"sampling cache {self.path} is unreadable ({exc}): delete it "
                "(only cached completions are lost) or pass --no-cache"
            ) from None

    def _init_db(self) -> None:
        """WAL mode + schema, retried while another process initialises the same new file.

        Switching the journal mode needs an exclusive lock and SQLite may answer 'database is locked' at
        once instead of waiting (seen with several Ray workers opening one fresh cache together).
        """
        deadline = time.monotonic() + 60.0
        delay = 0.02
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(delay + random.random() * delay)
                delay = min(delay * 2, 0.5)

    def __enter__(self) -> SampleCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedSample]:
        """Look up keys; counts hits and misses (each distinct key once per call)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CachedSample] = {}
        for start in range(0, len(wanted), _SQL_BATCH):
            part = wanted[start : start + _SQL_BATCH]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                "SELECT key, completion, prompt_tokens, completion_tokens, finish_reason "
                f"FROM samples WHERE key IN ({marks})",
                part,
            )
            for key, completion, ptok, ctok, finish in rows:
                found[key] = CachedSample(completion, ptok, ctok, finish)
        self.hits += len(found)
        self.misses += len(wanted) - len(found)
        return found

    def put_many(self, entries: Mapping[str, CachedSample], *, model_id: str, backend: str) -> int:
        """Store one chunk in one durable transaction; existing keys are kept. Returns rows inserted."""
        now = time.time()
        values = [
            (k, s.completion, s.prompt_tokens, s.completion_tokens, s.finish_reason, model_id, backend, now)
            for k, s in entries.items()
        ]
        before = self._db.total_changes
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO samples VALUES (?,?,?,?,?,?,?,?)", values)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may already have rolled back (e.g. on SQLITE_FULL)
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise _full_error(self.path) from None
            raise ReconError(f"sample cache {self.path}: cannot write ({exc}); earlier chunks are kept — "
                             "fix the cause and rerun, or pass --no-cache") from None
        return self._db.total_changes - before

    def entries(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def by_model(self) -> list[tuple[str, str, int]]:
        """(model_id, backend, entries), largest first: what the cache holds."""
        return [
            tuple(r)
            for r in self._db.execute(
                "SELECT model_id, backend, COUNT(*) AS c FROM samples "
                "GROUP BY model_id, backend ORDER BY c DESC"
            )
        ]

    def stats(self) -> CacheStats:
        """Hits/misses of this handle, plus entries and bytes on disk (db + WAL)."""
        size = sum(p.stat().st_size for p in self.dir.glob(CACHE_FILE + "*") if p.is_file())
        return CacheStats(hits=self.hits, misses=self.misses, entries=self.entries(), bytes=size)
