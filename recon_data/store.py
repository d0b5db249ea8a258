"""The versioned dataset store: immutable Parquet versions with a manifest, queryable with DuckDB.

Layout under the store root (a local directory or any fsspec URL such as `s3://bucket/prefix`):
    datasets/<name>/v<N>/part-00000.parquet ... manifest.json

Local stores: a version is written into a hidden temp folder next to the versions and appears by one
atomic `rename` (version number chosen under an `fcntl` lock), so readers never see half a version.

Object stores (no atomic rename): the writer first claims `v<N>/_CLAIM` with a conditional create
(S3 `PutObject If-None-Match: *`; a losing writer gets 412 and tries N+1), uploads the Parquet parts
under `v<N>/`, and publishes by writing `v<N>/manifest.json` last, also conditionally. Readers list
a version only when its manifest exists, and S3 is read-after-write consistent, so a listed version's
parts are complete. A writer killed midway leaves a claimed number with no manifest: invisible, never
reused, a gap in the numbering. On filesystems without conditional writes the create is
check-then-write (safe for one writer at a time). Side files (sampling cache, runs) of a remote store
live in a local working directory, `Store.root` (see `workdir_for`).

A version is never modified afterwards. The manifest records schema, rows, sha256 per file,
created_at, parents, the pipeline config, the models and templates that produced the rows, and
per-stage stats; never storage credentials. This module must not know about pipeline stages: it
stores tables and their provenance, nothing else.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import ReconError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^v(\d+)$")
PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a manifest may name files only inside its version
URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
MANGLED_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")  # Path("s3://b") == Path("s3:/b")
PART_ROWS = 1_000_000
MANIFEST = "manifest.json"
CLAIM = "_CLAIM"
MAX_CLAIM_TRIES = 1000


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: int
    path: Path  # a URL string for a remote store

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


def is_remote_url(root: str | Path) -> bool:
    """True for `scheme://...` other than `file://` (also for a URL squashed by `Path`)."""
    s = str(root)
    m = URL_RE.match(s) or MANGLED_URL_RE.match(s)
    return bool(m) and m.group(1).lower() not in ("file", "local")


def workdir_for(url: str) -> Path:
    """Local working dir of a remote store: $RECON_WORKDIR, else ./recon-work/<sha256(url)[:16]>."""
    if os.environ.get("RECON_WORKDIR"):
        return Path(os.environ["RECON_WORKDIR"])
    return Path("recon-work") / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def _storage_options_from_env() -> dict:
    raw = os.environ.get("RECON_STORAGE_OPTIONS")
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ReconError(f"RECON_STORAGE_OPTIONS is not valid JSON ({err.msg}); set it to a JSON object") from None
    if not isinstance(opts, dict):
        raise ReconError("RECON_STORAGE_OPTIONS must be a JSON object of fsspec storage options")
    return opts


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(dataset_dir: Path) -> None:
    """Delete temp folders of commits whose writer process is gone (killed mid-write on this machine).

    A temp folder is named `.tmp-<pid>-<uuid>`; one whose pid is alive may be another writer's work in
    progress and is left alone. Never visible as a version either way; this only reclaims the space.
    """
    for p in dataset_dir.glob(".tmp-*"):
        pid = p.name.split("-")[1] if p.name.count("-") >= 2 else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


class Store:
    """A store rooted at a local directory (created on first commit) or at an fsspec URL.

    `storage_options` (else the JSON object in $RECON_STORAGE_OPTIONS) go to fsspec for remote URLs,
    e.g. {"endpoint_url": ...}; credentials come from the usual env vars (AWS_ACCESS_KEY_ID, ...).
    `root` is always a local Path: the store itself when local, the working dir when remote.
    """

    def __init__(self, root: str | Path | None = None, *, storage_options: dict | None = None,
                 workdir: str | Path | None = None) -> None:
        root = root if root is not None else default_store_root()
        self.fs = None
        self._base = ""
        if is_remote_url(root):
            url = MANGLED_URL_RE.sub(r"\1://", str(root)).rstrip("/")
            opts = storage_options if storage_options is not None else _storage_options_from_env()
            try:
                import fsspec

                try:  # cached listings go stale under concurrent writers: never use them
                    self.fs, self._base = fsspec.core.url_to_fs(url, **{"use_listings_cache": False, **opts})
                except TypeError:
                    self.fs, self._base = fsspec.core.url_to_fs(url, **opts)
            except ImportError as err:
                raise ReconError(f"store {url} needs fsspec and the driver for its scheme ({err.name} is "
                                 "missing): install it with `.venv/bin/pip install -e '.[s3]'`") from None
            except (ValueError, TypeError) as err:
                raise ReconError(f"cannot open store {url}: {err}; check the URL and storage options") from None
            self._base = self._base.rstrip("/")
            self.url = url
            self.root = Path(workdir) if workdir is not None else workdir_for(url)
        else:
            s = str(root)
            self.root = Path(s[len("file://"):]) if s.startswith("file://") else Path(root)
            self.url = str(self.root)
        self.damaged: list[str] = []  # versions the last `connect()` skipped, "name@N (why)"

    @property
    def is_remote(self) -> bool:
        return self.fs is not None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ---- paths -------------------------------------------------------------------------------
    def _rpath(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts)

    def _url(self, rpath: str) -> str:
        return self.fs.unstrip_protocol(rpath)

    def dataset_dir(self, name: str) -> Path:
        """The dataset's folder (a URL string for a remote store)."""
        if self.is_remote:
            return self._url(self._rpath("datasets", name))
        return self.root / "datasets" / name

    def _remote_find(self, rpath: str) -> list[str]:
        """Every object under `rpath`, relative to it, listed fresh (no listing cache)."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(rpath)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise ReconError(f"cannot list store {self.url}: {err}") from None
        prefix = rpath.rstrip("/") + "/"
        return [p[len(prefix):] for p in found if p.startswith(prefix)]

    def _committed(self, rel_paths: Iterable[str], depth: int) -> dict[str, list[int]]:
        """{name: versions} from paths `[<name>/]v<N>/manifest.json` (only published versions)."""
        out: dict[str, set[int]] = {}
        for rel in rel_paths:
            parts = rel.split("/")
            if len(parts) != depth or parts[-1] != MANIFEST or not (m := VERSION_RE.match(parts[-2])):
                continue
            name = parts[0] if depth == 3 else ""
            if depth == 3 and not NAME_RE.match(name):
                continue
            out.setdefault(name, set()).add(int(m.group(1)))
        return {n: sorted(v) for n, v in out.items()}

    def names(self) -> list[str]:
        if self.is_remote:
            return sorted(self._committed(self._remote_find(self._rpath("datasets")), 3))
        base = self.root / "datasets"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and NAME_RE.match(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        if self.is_remote:
            return self._committed(self._remote_find(self._rpath("datasets", name)), 2).get("", [])
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
            raise ReconError(f"dataset '{name}' not found in store {self.url} (datasets: {known})")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ReconError(f"dataset '{name}' has no version {version} (versions: {versions})")
        if self.is_remote:
            return VersionRef(name, version, self._url(self._rpath("datasets", name, f"v{version}")))
        return VersionRef(name, version, self.dataset_dir(name) / f"v{version}")

    def version_dir(self, ref: str) -> Path:
        return self.resolve(ref).path

    # ---- reading ------------------------------------------------------------------------------
    def _read_manifest_text(self, vref: VersionRef) -> str:
        if self.is_remote:
            path = self._rpath("datasets", vref.name, f"v{vref.version}", MANIFEST)
            try:
                return self.fs.cat_file(path).decode("utf-8")
            except FileNotFoundError:
                raise ReconError(f"{vref}: manifest.json is missing ({self._url(path)}); "
                                 "run `recon datasets verify`") from None
        path = vref.path / MANIFEST
        try:
            return path.read_text()
        except FileNotFoundError:
            raise ReconError(f"{vref}: manifest.json is missing ({path}); run `recon datasets verify`") from None

    def manifest(self, ref: str) -> dict:
        vref = self.resolve(ref)
        try:
            manifest = json.loads(self._read_manifest_text(vref))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReconError(f"{vref}: manifest.json is corrupt ({err}); the version cannot be trusted") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise ReconError(f"{vref}: manifest.json has no file list; the version cannot be trusted")
        for f in manifest["files"]:
            if not isinstance(f, dict) or not PART_RE.match(str(f.get("path", ""))):
                raise ReconError(f"{vref}: manifest.json lists a bad file entry {str(f)[:80]!r}; "
                                 "the version cannot be trusted")
        return manifest

    def files(self, ref: str) -> list[Path]:
        """The version's Parquet parts: local Paths, or URL strings for a remote store."""
        vref = self.resolve(ref)
        names = [f["path"] for f in self.manifest(ref)["files"]]
        if self.is_remote:
            return [f"{vref.path}/{n}" for n in names]
        return [vref.path / n for n in names]

    def _fs_paths(self, ref: str) -> list[str]:
        """Remote parts as paths inside `self.fs` (no protocol), for pyarrow."""
        vref = self.resolve(ref)
        return [self._rpath("datasets", vref.name, f"v{vref.version}", f["path"])
                for f in self.manifest(ref)["files"]]

    def _entries(self, ref: str) -> tuple[VersionRef, list[tuple[dict, str]]]:
        """(version, [(manifest file entry, where pyarrow reads it: local path or path inside self.fs)])."""
        vref = self.resolve(ref)
        entries = self.manifest(str(vref))["files"]
        if self.is_remote:
            where = [self._rpath("datasets", vref.name, f"v{vref.version}", f["path"]) for f in entries]
        else:
            where = [str(vref.path / f["path"]) for f in entries]
        return vref, list(zip(entries, where, strict=True))

    def _part_bytes(self, vref: VersionRef, entry: dict, where: str, check: bool) -> bytes:
        """One part's bytes, sha256-checked against the manifest (hashing costs ~5% of parsing them)."""
        try:
            data = self.fs.cat_file(where) if self.is_remote else Path(where).read_bytes()
        except FileNotFoundError:
            raise ReconError(f"{vref}: cannot read Parquet {entry['path']} (missing file); "
                             "run `recon datasets verify`") from None
        except OSError as err:
            raise ReconError(f"{vref}: cannot read Parquet {entry['path']} ({err.strerror or err}); "
                             "run `recon datasets verify`") from None
        if check and entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ReconError(f"{vref}: checksum mismatch in {entry['path']} (file changed or corrupt); "
                             "run `recon datasets verify`")
        return data

    def _check_local(self, ref: str) -> list[Path]:
        """Re-hash a local version's parts before a reader that takes paths (polars, datasets) opens them."""
        vref, entries = self._entries(ref)
        for entry, where in entries:
            if entry.get("sha256"):
                try:
                    digest = _sha256(Path(where))
                except FileNotFoundError:
                    raise ReconError(f"{vref}: missing file {entry['path']}; run `recon datasets verify`") from None
                if digest != entry["sha256"]:
                    raise ReconError(f"{vref}: checksum mismatch in {entry['path']} (file changed or corrupt); "
                                     "run `recon datasets verify`")
        return [Path(where) for _, where in entries]

    def read(self, ref: str, columns: list[str] | None = None, *, check: bool = True) -> pa.Table:
        """The whole version as one Arrow table; each part is read once into memory, its sha256 checked
        against the manifest (`check=False` skips that) and parsed from the same bytes."""
        vref, entries = self._entries(ref)
        tables = []
        for entry, where in entries:
            data = self._part_bytes(vref, entry, where, check)
            try:
                tables.append(pq.read_table(pa.BufferReader(data), columns=columns))
            except (OSError, pa.ArrowInvalid) as err:
                raise ReconError(f"{vref}: cannot read Parquet {entry['path']} ({err}); "
                                 "run `recon datasets verify`") from None
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def iter_batches(self, ref: str, batch_size: int = 65536, *, check: bool = True) -> Iterator[pa.RecordBatch]:
        """Stream a version; with `check` every part is re-hashed before its first batch is yielded."""
        if self.is_remote:
            vref, entries = self._entries(ref)
            for entry, where in entries:
                data = self._part_bytes(vref, entry, where, check)
                yield from pq.ParquetFile(pa.BufferReader(data)).iter_batches(batch_size=batch_size)
            return
        files = self._check_local(ref) if check else self.files(ref)
        for f in files:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size)

    def local_files(self, ref: str) -> list[Path]:
        """Local Paths of the version's parts; a remote store downloads them (sha256-checked) into
        `<root>/cache/parts/`, once, so tools that need local files (datasets, memory maps) can use them."""
        if not self.is_remote:
            return self.files(ref)
        vref = self.resolve(ref)
        cache = self.root / "cache" / "parts"
        cache.mkdir(parents=True, exist_ok=True)
        out = []
        for f, rpath in zip(self.manifest(ref)["files"], self._fs_paths(ref), strict=True):
            local = cache / f"{f['sha256']}.parquet"
            if not local.is_file():
                tmp = cache / f".tmp-{uuid.uuid4().hex}"
                try:
                    self.fs.get_file(rpath, str(tmp))
                    if _sha256(tmp) != f["sha256"]:
                        raise ReconError(f"{vref}: checksum mismatch in {f['path']} (file changed or corrupt); "
                                         "run `recon datasets verify`")
                    os.replace(tmp, local)
                except FileNotFoundError:
                    raise ReconError(f"{vref}: missing file {f['path']}; run `recon datasets verify`") from None
                finally:
                    tmp.unlink(missing_ok=True)
            out.append(local)
        return out

    def to_hf(self, ref: str, *, check: bool = True):
        """The version as a `datasets.Dataset` (memory-mapped from the Parquet parts, sha256-checked)."""
        import datasets

        local = self._check_local(ref) if check and not self.is_remote else self.local_files(ref)
        files = [str(f) for f in local]
        return datasets.Dataset.from_parquet(files, cache_dir=str(self.root / "cache" / "hf"))

    def to_polars(self, ref: str, *, check: bool = True):
        import polars as pl

        if self.is_remote:
            return pl.from_arrow(self.read(ref, check=check))
        files = self._check_local(ref) if check else self.files(ref)
        return pl.read_parquet([str(f) for f in files])

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
        """Write a new version; it becomes visible only when complete (rename, or manifest written last)."""
        parse_ref(name)
        manifest = {
            "name": name,
            "parents": list(parents),
            "pipeline": pipeline,
            "models": list(models),
            "templates": dict(templates or {}),
            "stats": stats,
            "extra": extra or {},
            "recon_data_version": __version__,
        }
        if self.is_remote:
            return self._commit_remote(name, data, manifest)
        d = self.dataset_dir(name)
        try:
            d.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(d)
            tmp = d / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
            tmp.mkdir()
        except OSError as err:
            raise ReconError(f"cannot write to store {self.root}: {err.strerror}") from None
        try:
            files, schema, rows = self._write_parts(tmp, _batches(data))
            if rows == 0:
                raise ReconError(f"nothing to commit to '{name}': the data has 0 rows")
            manifest.update(_describe(files, schema, rows))
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

    def _claim(self, name: str) -> int:
        """Take the next free version number with a conditional create of `v<N>/_CLAIM`."""
        taken = [int(m.group(1)) for rel in self._remote_find(self._rpath("datasets", name))
                 if (m := VERSION_RE.match(rel.split("/")[0]))]
        version = max(taken, default=0) + 1
        body = json.dumps({"claimed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "host": socket.gethostname(), "pid": os.getpid()}).encode()
        for _ in range(MAX_CLAIM_TRIES):
            try:
                self.fs.pipe_file(self._rpath("datasets", name, f"v{version}", CLAIM), body, mode="create")
                return version
            except FileExistsError:
                version += 1
        raise ReconError(f"could not claim a version of '{name}' in {self.url} after {MAX_CLAIM_TRIES} tries")

    def _commit_remote(self, name: str, data, manifest: dict) -> VersionRef:
        uploaded: list[str] = []
        claim = None
        tmp = self.root / "tmp" / uuid.uuid4().hex
        try:
            version = self._claim(name)
            vdir = self._rpath("datasets", name, f"v{version}")
            claim = posixpath.join(vdir, CLAIM)
            tmp.mkdir(parents=True)

            def upload(part: Path) -> None:
                target = posixpath.join(vdir, part.name)
                uploaded.append(target)
                self.fs.put_file(str(part), target)
                part.unlink()

            files, schema, rows = self._write_parts(tmp, _batches(data), on_part=upload)
            if rows == 0:
                raise ReconError(f"nothing to commit to '{name}': the data has 0 rows")
            manifest.update(_describe(files, schema, rows), version=version)
            body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
            try:
                self.fs.pipe_file(posixpath.join(vdir, MANIFEST), body, mode="create")
            except FileExistsError:
                uploaded.clear()  # someone else's version now: touch nothing
                claim = None
                raise ReconError(f"{name}@{version} was published by another writer while this one held its "
                                 f"claim: {self.url} does not support conditional writes; use one writer") from None
            except OSError:
                if not self._landed(posixpath.join(vdir, MANIFEST), body):  # a lost reply, not a lost write?
                    raise
        except BaseException as err:
            for path in [*uploaded, *([claim] if claim else [])]:  # parts first, the claim last
                with suppress(OSError):
                    self.fs.rm_file(path)
            if isinstance(err, OSError):
                raise ReconError(f"commit of '{name}' to {self.url} failed, nothing was published: "
                                 f"{err.strerror or err}") from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.fs.invalidate_cache(self._rpath("datasets", name))
        return VersionRef(name, version, self._url(vdir))

    def _landed(self, rpath: str, body: bytes) -> bool:
        with suppress(OSError):
            self.fs.invalidate_cache(rpath)
            return self.fs.cat_file(rpath) == body
        return False

    def _write_parts(self, tmp: Path, batches: Iterator[pa.RecordBatch],
                     on_part: Callable[[Path], None] | None = None) -> tuple[list[dict], pa.Schema, int]:
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
                if on_part is not None:
                    on_part(path)

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
    def _remote_sha256(self, rpath: str) -> str | None:
        h = hashlib.sha256()
        try:
            with self.fs.open(rpath, "rb", block_size=1 << 22) as f:
                while block := f.read(1 << 22):
                    h.update(block)
        except FileNotFoundError:
            return None
        return h.hexdigest()

    def verify(self, name: str | None = None) -> list[str]:
        """Re-hash every file of every version (or of one dataset); return the problems found.

        Remote stores are re-hashed by streaming each part; a claimed version with no manifest
        (a killed writer) is invisible and not a problem."""
        problems: list[str] = []
        names = [parse_ref(name)[0]] if name else self.names()
        if name and not self.versions(names[0]):
            raise ReconError(f"dataset '{name}' not found in store {self.url}")
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
                    listed.add(f["path"])
                    if self.is_remote:
                        digest = self._remote_sha256(self._rpath("datasets", n, f"v{v}", f["path"]))
                    else:
                        path = self.dataset_dir(n) / f"v{v}" / f["path"]
                        digest = _sha256(path) if path.is_file() else None
                    if digest is None:
                        problems.append(f"{ref}: missing file {f['path']}")
                    elif digest != f["sha256"]:
                        problems.append(f"{ref}: checksum mismatch in {f['path']} (file changed or corrupt)")
                if self.is_remote:
                    present = set(self._remote_find(self._rpath("datasets", n, f"v{v}"))) - {CLAIM}
                else:
                    present = {p.name for p in (self.dataset_dir(n) / f"v{v}").iterdir()}
                problems += [f"{ref}: unexpected file {e}" for e in sorted(present - listed - {MANIFEST})]
        return problems

    # ---- SQL ----------------------------------------------------------------------------------
    def connect(self):
        """A DuckDB connection with a view per dataset (latest) and per version ("name@N").

        A version whose view cannot be created (corrupt manifest, truncated part) is skipped and
        recorded in `self.damaged` ("name@N (why)"), so one damaged version does not stop queries of
        the others; if it is the latest, the plain "name" view is absent too (never silently older data).
        Remote stores: the fsspec filesystem is registered with DuckDB, which then reads the
        Parquet parts in place (ranged reads, no download, no httpfs extension needed)."""
        import duckdb

        con = self.register_duckdb(duckdb.connect())
        self.damaged = []
        for name in self.names():
            versions = self.versions(name)
            made = set()
            for v in versions:
                try:
                    files = [str(f) for f in self.files(f"{name}@{v}")]
                    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                    con.execute(f'CREATE VIEW "{name}@{v}" AS SELECT * FROM read_parquet([{quoted}])')
                    made.add(v)
                except (ReconError, duckdb.Error) as err:
                    why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    self.damaged.append(f"{name}@{v} ({why[:160]})")
            if versions and versions[-1] in made:
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "{name}@{versions[-1]}"')
        return con

    def register_duckdb(self, con):
        """Let a DuckDB connection read this store's `files()` URLs (no-op for a local store)."""
        if self.is_remote:
            con.register_filesystem(self.fs)
        return con

    def sql(self, query: str) -> pa.Table:
        import duckdb

        con = None
        try:
            con = self.connect()
            rel = con.sql(query)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            damaged = (f"; skipped damaged versions: {'; '.join(self.damaged)}; run `recon datasets verify`"
                       if self.damaged else "")
            raise ReconError(f"SQL error: {first} (datasets: {', '.join(self.names()) or 'none'}){damaged}") from None
        finally:
            if con is not None:
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


def _describe(files: list[dict], schema: pa.Schema, rows: int) -> dict:
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "files": files,
    }
