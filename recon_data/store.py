"""The versioned dataset store: immutable Parquet versions with a manifest, queryable with DuckDB.

Layout under the store root:
    datasets/<name>/v<N>/part-00000.parquet ... manifest.json

A version is written into a hidden temp folder next to the versions and appears by one atomic
`rename`, so readers never see half a version; a version is never modified afterwards. The manifest
records schema, rows, sha256 per file, created_at, parents, the pipeline config, the models and
templates that produced the rows, and per-stage stats. This module must not know about pipeline
stages: it stores tables and their provenance, nothing else.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import ReconError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^v(\d+)$")
PART_ROWS = 1_000_000
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: int
    path: Path

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name' -> (name, None) meaning latest; 'name@3' -> (name, 3)."""
    name, _, ver = str(ref).partition("@")
    if not NAME_RE.match(name):
        raise ReconError(f"invalid dataset name '{name}': use letters, digits, '.', '_' or '-'")
    if not ver:
        return name, None
    if not ver.lstrip("v").isdigit():
        raise ReconError(f"invalid version in '{ref}': write name@N with N a number")
    return name, int(ver.lstrip("v"))


def default_store_root() -> Path:
    return Path(os.environ.get("RECON_STORE") or "recon-store")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _batches(data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        yield from data.to_batches(max_chunksize=65536)
    elif isinstance(data, pa.RecordBatch):
        yield data
    else:
        yield from data


class Store:
    """A store rooted at a local directory (created on first commit)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_root()

    # ---- paths -------------------------------------------------------------------------------
    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / name

    def names(self) -> list[str]:
        base = self.root / "datasets"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and NAME_RE.match(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        d = self.dataset_dir(name)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := VERSION_RE.match(p.name)) and p.is_dir())

    def resolve(self, ref: str) -> VersionRef:
        """Find a version; a missing one fails with the versions that do exist."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ReconError(f"dataset '{name}' not found in store {self.root} (datasets: {known})")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ReconError(f"dataset '{name}' has no version {version} (versions: {versions})")
        return VersionRef(name, version, self.dataset_dir(name) / f"v{version}")

    def version_dir(self, ref: str) -> Path:
        return self.resolve(ref).path

    # ---- reading ------------------------------------------------------------------------------
    def manifest(self, ref: str) -> dict:
        vref = self.resolve(ref)
        path = vref.path / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReconError(f"{vref}: manifest.json is missing ({path}); run `recon datasets verify`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReconError(f"{vref}: manifest.json is corrupt ({err}); the version cannot be trusted") from None
        if not isinstance(manifest, dict) or "files" not in manifest:
            raise ReconError(f"{vref}: manifest.json has no file list; the version cannot be trusted")
        return manifest

    def files(self, ref: str) -> list[Path]:
        vref = self.resolve(ref)
        return [vref.path / f["path"] for f in self.manifest(ref)["files"]]

    def read(self, ref: str, columns: list[str] | None = None) -> pa.Table:
        """The whole version as one Arrow table (schema from the manifest's files)."""
        files = self.files(ref)
        try:
            tables = [pq.read_table(f, columns=columns) for f in files]
        except (OSError, pa.ArrowInvalid) as err:
            raise ReconError(f"{self.resolve(ref)}: cannot read Parquet ({err}); run `recon datasets verify`") from None
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def iter_batches(self, ref: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        for f in self.files(ref):
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size)

    def to_hf(self, ref: str):
        """The version as a `datasets.Dataset` (memory-mapped from the Parquet parts)."""
        import datasets

        files = [str(f) for f in self.files(ref)]
        return datasets.Dataset.from_parquet(files, cache_dir=str(self.root / "cache" / "hf"))

    def to_polars(self, ref: str):
        import polars as pl

        return pl.read_parquet([str(f) for f in self.files(ref)])

    # ---- writing ------------------------------------------------------------------------------
    @contextmanager
    def _lock(self, name: str):
        d = self.dataset_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def commit(
        self,
        name: str,
        data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch],
        *,
        parents: Iterable[str] = (),
        pipeline: dict | None = None,
        models: Iterable[dict] = (),
        templates: dict[str, str] | None = None,
        stats: dict | list | None = None,
        extra: dict | None = None,
    ) -> VersionRef:
        """Write a new version; it becomes visible only when complete (atomic rename)."""
        parse_ref(name)
        d = self.dataset_dir(name)
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
        except OSError as err:
            raise ReconError(f"cannot write to store {self.root}: {err.strerror}") from None
        try:
            files, schema, rows = self._write_parts(tmp, _batches(data))
            if rows == 0:
                raise ReconError(f"nothing to commit to '{name}': the data has 0 rows")
            manifest = {
                "name": name,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "rows": rows,
                "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
                "files": files,
                "parents": list(parents),
                "pipeline": pipeline,
                "models": list(models),
                "templates": dict(templates or {}),
                "stats": stats,
                "extra": extra or {},
                "recon_data_version": __version__,
            }
            with self._lock(name):
                version = (self.versions(name) or [0])[-1] + 1
                manifest["version"] = version
                mpath = tmp / MANIFEST
                with open(mpath, "w") as f:
                    json.dump(manifest, f, indent=2, sort_keys=True, default=str)
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(tmp)
                final = d / f"v{version}"
                os.rename(tmp, final)
                _fsync_dir(d)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ReconError(f"commit of '{name}' failed, nothing was published: {err.strerror or err}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return VersionRef(name, version, final)

    def _write_parts(self, tmp: Path, batches: Iterator[pa.RecordBatch]) -> tuple[list[dict], pa.Schema, int]:
        files: list[dict] = []
        writer: pq.ParquetWriter | None = None
        schema: pa.Schema | None = None
        part_rows = total = 0
        path: Path | None = None

        def close() -> None:
            nonlocal writer
            if writer is not None:
                writer.close()
                with open(path, "rb+") as fh:
                    os.fsync(fh.fileno())
                files.append({"path": path.name, "rows": part_rows, "bytes": path.stat().st_size,
                              "sha256": _sha256(path)})
                writer = None

        for batch in batches:
            if schema is None:
                schema = batch.schema
            elif not batch.schema.equals(schema):
                try:
                    batch = pa.Table.from_batches([batch]).cast(schema).to_batches()[0]
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, IndexError):
                    raise ReconError(f"batch schema {batch.schema} differs from the first batch's {schema}") from None
            if writer is None:
                path = tmp / f"part-{len(files):05d}.parquet"
                writer = pq.ParquetWriter(path, schema, compression="zstd")
                part_rows = 0
            if batch.num_rows:
                writer.write_batch(batch)
            part_rows += batch.num_rows
            total += batch.num_rows
            if part_rows >= PART_ROWS:
                close()
        close()
        return files, schema or pa.schema([]), total

    # ---- integrity ----------------------------------------------------------------------------
    def verify(self, name: str | None = None) -> list[str]:
        """Re-hash every file of every version (or of one dataset); return the problems found."""
        problems: list[str] = []
        names = [parse_ref(name)[0]] if name else self.names()
        if name and not self.versions(names[0]):
            raise ReconError(f"dataset '{name}' not found in store {self.root}")
        for n in names:
            for v in self.versions(n):
                ref = f"{n}@{v}"
                try:
                    manifest = self.manifest(ref)
                except ReconError as err:
                    problems.append(str(err))
                    continue
                listed = set()
                for f in manifest["files"]:
                    path = self.dataset_dir(n) / f"v{v}" / f["path"]
                    listed.add(f["path"])
                    if not path.is_file():
                        problems.append(f"{ref}: missing file {f['path']}")
                    elif _sha256(path) != f["sha256"]:
                        problems.append(f"{ref}: checksum mismatch in {f['path']} (file changed or corrupt)")
                extra = {p.name for p in (self.dataset_dir(n) / f"v{v}").iterdir()} - listed - {MANIFEST}
                problems += [f"{ref}: unexpected file {e}" for e in sorted(extra)]
        return problems

    # ---- SQL ----------------------------------------------------------------------------------
    def connect(self):
        """A DuckDB connection with a view per dataset (latest) and per version ("name@N")."""
        import duckdb

        con = duckdb.connect()
        for name in self.names():
            for v in self.versions(name):
                files = [str(f) for f in self.files(f"{name}@{v}")]
                quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f'CREATE VIEW "{name}@{v}" AS SELECT * FROM read_parquet([{quoted}])')
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "{name}@{self.versions(name)[-1]}"')
        return con

    def sql(self, query: str) -> pa.Table:
        import duckdb

        con = self.connect()
        try:
            rel = con.sql(query)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            raise ReconError(f"SQL error: {first} (datasets: {', '.join(self.names()) or 'none'})") from None
        finally:
            con.close()

    def diff(self, a: str, b: str) -> dict:
        """Schema and row-level differences between two versions (rows compared as whole values)."""
        ta, tb = self.resolve(a), self.resolve(b)
        ma, mb = self.manifest(str(ta)), self.manifest(str(tb))
        sa = {c["name"]: c["type"] for c in ma["schema"]}
        sb = {c["name"]: c["type"] for c in mb["schema"]}
        out = {
            "a": str(ta), "b": str(tb), "rows_a": ma["rows"], "rows_b": mb["rows"],
            "columns_only_in_a": sorted(set(sa) - set(sb)), "columns_only_in_b": sorted(set(sb) - set(sa)),
            "type_changes": {c: [sa[c], sb[c]] for c in sorted(set(sa) & set(sb)) if sa[c] != sb[c]},
        }
        common = [c for c in sa if c in sb and sa[c] == sb[c]]
        if common:
            cols = ", ".join(f'"{c}"' for c in common)
            con = self.connect()
            try:
                query = 'SELECT count(*) FROM (SELECT {c} FROM "{x}" EXCEPT ALL SELECT {c} FROM "{y}")'
                only_a = con.execute(query.format(c=cols, x=ta, y=tb)).fetchall()[0][0]
                only_b = con.execute(query.format(c=cols, x=tb, y=ta)).fetchall()[0][0]
            finally:
                con.close()
            out.update({"compared_columns": len(common), "rows_only_in_a": only_a, "rows_only_in_b": only_b})
        return out
