"""Publish a store version to the Hugging Face Hub as a dataset repo (or write exactly that folder).

The published folder is `README.md` (the card from cards.py) plus the version's Parquet parts, copied
byte for byte as `data/train-0000i-of-0000N.parquet` (one Hub split, `train`, in store row order; the
store's `split` column stays a column, so the Hub copy equals the store version row for row and every
shard's sha256 equals the one in the manifest). `plan_folder` lists those files once; a dry run writes
them to a folder, a real publish uploads the same list, so the dry run is exactly what would be sent.

Uploads go through `huggingface_hub.HfApi` against `$HF_ENDPOINT` (default the Hub). The token comes
from the caller or the standard HF places (`HF_TOKEN`, `hf auth login`) and is never written, printed or
recorded. Before committing, the remote file list is compared with the local files (sha256 for LFS/Xet
files, git blob sha1 for regular ones): an unchanged version sends no commit ("up to date"); stale
shards of an earlier publish under `data/` are deleted in the same commit. Each publish is recorded in
`<store>/publish/<name>@<version>.json` (the version folder itself is immutable), one entry per
endpoint + repo id, with the Hub commit sha.

This module must not modify store versions or keep any credential.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .cards import HUB_DATA_DIR, render_card, shard_paths
from .errors import ReconError
from .store import Store

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class PlannedFile:
    """One file of the folder to publish: bytes in memory (the card) or a store file (a shard)."""

    path_in_repo: str
    sha256: str
    size: int
    content: bytes | None = None
    source: Path | None = None

    def read(self) -> bytes:
        return self.content if self.content is not None else Path(self.source).read_bytes()

    def git_sha1(self) -> str:
        """The git blob id the Hub reports for a regular (non-LFS) file."""
        h = hashlib.sha1(b"blob %d\0" % self.size)
        if self.content is not None:
            h.update(self.content)
        else:
            with open(self.source, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def plan_folder(store: Store, ref: str, *, license: str | None = None,
                template_dirs: Sequence[Path | str] = ()) -> list[PlannedFile]:
    """README.md + shards; each store file is re-hashed against the manifest so nothing corrupt is sent."""
    vref = store.resolve(ref)
    manifest = store.manifest(str(vref))
    plan = []
    files = manifest["files"]
    for path_in_repo, f in zip(shard_paths(len(files)), files, strict=True):
        src = vref.path / f["path"]
        if not src.is_file():
            raise ReconError(f"{vref}: file {f['path']} is missing; run `recon datasets verify`")
        digest = _sha256_file(src)
        if digest != f.get("sha256"):
            raise ReconError(f"{vref}: {f['path']} does not match its manifest checksum; "
                             "run `recon datasets verify` before publishing")
        plan.append(PlannedFile(path_in_repo, digest, src.stat().st_size, source=src))
    card = render_card(store, str(vref), license=license, template_dirs=template_dirs).encode("utf-8")
    return [PlannedFile("README.md", hashlib.sha256(card).hexdigest(), len(card), content=card), *plan]


def write_folder(plan: list[PlannedFile], out_dir: Path) -> Path:
    """Write the planned folder; it appears complete or not at all (temp sibling + rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not _is_replaceable(out_dir):
        raise ReconError(f"--dry-run folder {out_dir} exists and holds other files; pass an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        for f in plan:
            dest = tmp / f.path_in_repo
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.content is not None:
                dest.write_bytes(f.content)
            else:
                shutil.copyfile(f.source, dest)
        if out_dir.exists():
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            os.rename(old, out_dir)
        raise ReconError(f"cannot write dry-run folder {out_dir}: {err.strerror or err}") from None
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _is_replaceable(folder: Path) -> bool:
    """An empty folder, or one that only holds a previous dry run (README.md + data/*.parquet)."""
    if not folder.is_dir():
        return False
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        shard = rel.startswith(HUB_DATA_DIR + "/") and rel.endswith(".parquet")
        if not (shard or rel in ("README.md", HUB_DATA_DIR)):
            return False
    return True


# ---- publish records (local sidecar) ------------------------------------------------------------------
def record_path(store: Store, ref: str) -> Path:
    vref = store.resolve(ref)
    return store.root / "publish" / f"{vref.name}@{vref.version}.json"


def read_records(store: Store, ref: str) -> list[dict]:
    """Past publishes of this version (one per endpoint + repo id); [] when never published."""
    path = record_path(store, ref)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReconError(f"publish record {path} is corrupt; delete it and publish again") from None
    return list(data.get("publishes", [])) if isinstance(data, dict) else []


def _write_record(store: Store, ref: str, entry: dict) -> Path:
    path = record_path(store, ref)
    key = (entry["endpoint"], entry["repo_id"])
    previous = [r for r in read_records(store, ref) if (r.get("endpoint"), r.get("repo_id")) == key]
    if previous and previous[0].get("revision") == entry["revision"]:  # nothing new: keep when it was sent
        entry = {**entry, "published_at": previous[0].get("published_at", entry["published_at"])}
    records = [r for r in read_records(store, ref) if (r.get("endpoint"), r.get("repo_id")) != key]
    records.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"ref": str(store.resolve(ref)), "publishes": records}, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def _public_endpoint(endpoint: str) -> str:
    """The endpoint without any user:password part, fit to be recorded."""
    parts = urlsplit(endpoint)
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path.rstrip("/"),
                       "", "")) if parts.hostname else endpoint.rstrip("/")


# ---- upload --------------------------------------------------------------------------------------------
def _scrub(text: str, token: str | None) -> str:
    text = " ".join(str(text).split())
    return text.replace(token, "***") if token else text


def _remote_files(api, repo_id: str) -> dict:
    """path -> RepoFile on the main branch; {} for a repo without commits."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        return {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)
                if hasattr(f, "blob_id")}
    except (RevisionNotFoundError, EntryNotFoundError):
        return {}


def _unchanged(f: PlannedFile, remote) -> bool:
    if remote is None:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        return sha == f.sha256
    return remote.blob_id == f.git_sha1()


def publish(store: Store, ref: str, repo_id: str, *, private: bool = False, dry_run_dir: Path | str | None = None,
            token: str | None = None, license: str | None = None,
            template_dirs: Sequence[Path | str] = ()) -> dict:
    """Build the folder for `ref`; write it to `dry_run_dir`, or upload it to the dataset repo `repo_id`.

    Returns {ref, repo_id, status ('dry-run' | 'published' | 'up to date'), revision, url, files, ...}.
    `private` only applies when the repo is created by this call.
    """
    if not REPO_ID_RE.match(repo_id or "") or ".." in repo_id or repo_id.endswith((".", "-")):
        raise ReconError(f"invalid --repo-id '{repo_id}': write ORG/NAME (letters, digits, '.', '_', '-')")
    vref = store.resolve(ref)
    plan = plan_folder(store, str(vref), license=license, template_dirs=template_dirs)
    files = [{"path": f.path_in_repo, "bytes": f.size, "sha256": f.sha256} for f in plan]
    result = {"ref": str(vref), "repo_id": repo_id, "files": files}
    if dry_run_dir is not None:
        folder = write_folder(plan, Path(dry_run_dir))
        return {**result, "status": "dry-run", "folder": str(folder), "revision": None, "url": None}

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.is_offline_mode():
        raise ReconError("HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it to publish, "
                         "or use --dry-run DIR to write the folder")
    token = token or get_token()
    if not token:
        raise ReconError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` "
                         "(the token is read, never stored)")
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        remote = _remote_files(api, repo_id)
        changed = [f for f in plan if not _unchanged(f, remote.get(f.path_in_repo))]
        planned = {f.path_in_repo for f in plan}
        stale = sorted(p for p in remote if p.startswith(HUB_DATA_DIR + "/") and p not in planned)
        if not changed and not stale:
            status, revision = "up to date", api.dataset_info(repo_id, revision="main").sha
        else:
            ops = [CommitOperationDelete(path_in_repo=p) for p in stale]
            ops += [CommitOperationAdd(path_in_repo=f.path_in_repo,
                                       path_or_fileobj=f.content if f.content is not None else str(f.source))
                    for f in changed]
            info = api.create_commit(
                repo_id, repo_type="dataset", operations=ops, commit_message=f"recon publish {vref}",
                commit_description=f"Store version {vref}: {len(changed)} file(s) added or updated, "
                                   f"{len(stale)} stale file(s) removed.")
            status, revision = "published", info.oid
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as err:
        said = _scrub(str(err) or type(err).__name__, token)[:400]
        raise ReconError(f"publishing {vref} to {repo_id} at {_public_endpoint(endpoint)} failed: {said}") from None
    url = f"{endpoint}/datasets/{repo_id}"
    entry = {
        "repo_id": repo_id, "endpoint": _public_endpoint(endpoint), "revision": revision, "url": _public_endpoint(url),
        "files": {f["path"]: f["sha256"] for f in files}, "private_requested": private,
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record = _write_record(store, str(vref), entry)
    return {**result, "status": status, "revision": revision, "url": entry["url"], "record": str(record),
            "uploaded": [f.path_in_repo for f in changed], "deleted": stale}
