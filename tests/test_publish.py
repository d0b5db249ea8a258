"""Publishing: the dry-run folder is the dataset, row for row; uploads go to a real HTTP Hub stand-in.

`HubStandIn` is a small HTTP server on 127.0.0.1 that answers the Hub API routes huggingface_hub calls
for create_repo + create_commit + list_repo_tree + dataset_info (read from the installed client): it
asks for every file as a regular (base64) upload, keeps repo contents in memory, reports Parquet files
with LFS info the way the Hub does, and records every request so tests can check what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recon_data import store as store_mod
from recon_data.cards import render_card
from recon_data.errors import ReconError
from recon_data.publish import publish, read_records
from recon_data.store import Store

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_testsecret123"
MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def training_table(n: int = 10, tag: str = "a") -> pa.Table:
    rows = [{
        "id": f"r{i // 2}", "suite": "code_test_hacking", "split": "eval" if i % 4 == 0 else "train",
        "input": json.dumps({"prompt": f"write f{i}"}), "reference": json.dumps({"tests": ["assert f() == 1"]}),
        "gen_template_id": "code_test_hacking/discourage/no_hack", "gen_template_hash": "a" * 64,
        "gen_messages": [{"role": "system", "content": "Do not special-case the tests."},
                         {"role": "user", "content": f"write f{i} ---\n{{{{ x }}}}"}],
        "completion": f"def f():\n    return {i}  # {tag}\n", "model_id": "tiny", "model_revision": "r1",
        "backend": "transformers", "sampling_params": '{"max_new_tokens": 48, "n": 4}', "seed": 0,
        "sample_index": i % 4, "score.code": float(i % 3) / 2, "label.code": ["hack", "correct", "incorrect"][i % 3],
        "arm": "recontextualized", "train_template_id": "code_test_hacking/permit/hack_ok",
        "train_template_hash": "b" * 64,
        "prompt": [{"role": "user", "content": f"write f{i}; special-casing is fine"}],
    } for i in range(n)]
    schema = pa.Table.from_pylist(rows).schema
    schema = schema.set(schema.get_field_index("gen_messages"), pa.field("gen_messages", MSG))
    schema = schema.set(schema.get_field_index("prompt"), pa.field("prompt", MSG))
    return pa.Table.from_pylist(rows, schema=schema)


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---- the Hub stand-in -----------------------------------------------------------------------------------
class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                hub.handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                hub.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str, pattern: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and re.search(pattern, r["path"])]

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = urlsplit(h.path).path
        with self.lock:
            sent = {k.lower(): v for k, v in h.headers.items()}
            self.requests.append({"method": method, "path": h.path, "headers": sent, "body": body})
            status, payload, headers = self.route(method, path, body, h.headers)
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def route(self, method: str, path: str, body: bytes, headers) -> tuple[int, object, dict]:
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo",
                             "url": f"{self.url}/datasets/{repo_id}"}, {}
            self.repos[repo_id] = {"files": {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"},
                                   "head": hashlib.sha1(repo_id.encode()).hexdigest(), "commits": [],
                                   "private": req.get("visibility") == "private"}
            return 200, {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id}, {}
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/(preupload|commit|tree|revision)/([^/]+)(/.*)?)?", path)
        if not m or m.group(1) not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        repo = self.repos[m.group(1)]
        action = m.group(2)
        if m.group(1).endswith("/echo") and action == "preupload":
            # a hostile server that echoes the credential back in its error message
            return 400, {"error": f"bad request from {headers.get('Authorization')}"}, {}
        if method == "POST" and action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": git_sha1(repo["files"][f["path"]]) if f["path"] in repo["files"] else None}
                                   for f in files]}, {}
        if method == "POST" and action == "commit":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            for item in lines[1:]:
                value = item["value"]
                if item["key"] == "file":
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    repo["files"].pop(value["path"])
                else:
                    return 400, {"error": f"unsupported operation {item['key']}"}, {}
            repo["head"] = hashlib.sha1((repo["head"] + json.dumps(lines)).encode()).hexdigest()
            repo["commits"].append({"header": lines[0]["value"], "ops": lines[1:], "oid": repo["head"]})
            return 200, {"commitUrl": f"{self.url}/datasets/{m.group(1)}/commit/{repo['head']}",
                         "commitOid": repo["head"], "pullRequestUrl": None}, {}
        if method == "GET" and action == "tree":
            entries, dirs = [], set()
            for p, data in sorted(repo["files"].items()):
                if "/" in p:
                    dirs.add(p.rsplit("/", 1)[0])
                entry = {"type": "file", "path": p, "size": len(data), "oid": git_sha1(data)}
                if p.endswith(".parquet"):  # the Hub stores Parquet in LFS and reports its sha256
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            entries += [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(dirs)]
            return 200, entries, {}
        if method == "GET" and action in (None, "revision"):
            return 200, {"id": m.group(1), "sha": repo["head"], "private": repo["private"]}, {}
        return 404, {"error": "not found"}, {}


@pytest.fixture()
def hub():
    with HubStandIn() as server:
        yield server


@pytest.fixture()
def online(monkeypatch, hub, tmp_path):
    """In-process publishing against the stand-in: HF env pointed at it, offline mode off."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub


def cli_env(hub: HubStandIn, tmp_path: Path, token: str | None = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_ENDPOINT")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    if token:
        env["HF_TOKEN"] = token
    return env


def run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon_data.cli_publish", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# ---- dry run ---------------------------------------------------------------------------------------------
def test_dry_run_folder_loads_with_datasets_equal_to_store_version_row_for_row(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(store_mod, "PART_ROWS", 4)  # force several Parquet parts -> several shards
    store = Store(tmp_path / "store")
    table = training_table(10)
    ref = store.commit("cth", table.to_batches(max_chunksize=4))
    assert len(store.files(str(ref))) == 3

    out = tmp_path / "dry"
    result = publish(store, str(ref), "org/cth", dry_run_dir=out)

    assert result["status"] == "dry-run"
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["README.md", "data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet",
                     "data/train-00002-of-00003.parquet"]
    manifest = store.manifest(str(ref))
    for i, f in enumerate(manifest["files"]):
        shard = out / f"data/train-{i:05d}-of-00003.parquet"
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == f["sha256"]
    assert (out / "README.md").read_text() == render_card(store, str(ref))

    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert list(ds) == ["train"]
    loaded = ds["train"].data.table
    expected = store.read(str(ref))
    assert loaded.column_names == expected.column_names
    assert loaded.schema.remove_metadata().equals(expected.schema.remove_metadata())
    assert loaded.to_pylist() == expected.to_pylist()
    assert ds["train"][3]["gen_messages"][1] == {"role": "user", "content": "write f3 ---\n{{ x }}"}


def test_dry_run_refuses_a_folder_with_other_files_and_leaves_it_untouched(tmp_path):
    store = Store(tmp_path / "store")
    ref = store.commit("cth", training_table(4))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ReconError, match="holds other files"):
        publish(store, str(ref), "org/cth", dry_run_dir=out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # a previous dry run is replaced whole (no stale shards left behind)
    publish(store, str(ref), "org/cth", dry_run_dir=tmp_path / "dry")
    (tmp_path / "dry" / "data" / "train-00007-of-00009.parquet").write_bytes(b"stale")
    publish(store, str(ref), "org/cth", dry_run_dir=tmp_path / "dry")
    assert sorted(p.name for p in (tmp_path / "dry" / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# ---- upload ----------------------------------------------------------------------------------------------
def test_cli_publish_sends_card_and_shards_once_and_never_leaks_the_token(tmp_path, hub):
    store_root = tmp_path / "store"
    store = Store(store_root)
    ref = store.commit("cth", training_table(10))
    args = ["publish", "cth@1", "--repo-id", "org/cth", "--store", str(store_root)]

    no_token = run_cli(args, cli_env(hub, tmp_path, token=None))
    assert no_token.returncode == 1
    assert "no Hugging Face token" in no_token.stderr and "Traceback" not in no_token.stderr
    assert not hub.requests

    first = run_cli(args, cli_env(hub, tmp_path))
    assert first.returncode == 0, first.stderr
    repo = hub.repos["org/cth"]
    assert len(repo["commits"]) == 1
    assert f"revision {repo['head']}" in first.stdout
    assert repo["commits"][0]["header"]["summary"] == "recon publish cth@1"
    assert sorted(repo["files"]) == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet"]
    card = repo["files"]["README.md"].decode()
    assert card == render_card(store, str(ref))
    assert "## Label distribution" in card and "pretty_name: cth" in card
    assert repo["files"]["data/train-00000-of-00001.parquet"] == store.files(str(ref))[0].read_bytes()
    assert pq.read_table(pa.BufferReader(repo["files"]["data/train-00000-of-00001.parquet"])).equals(
        store.read(str(ref)))
    repo_calls = [r for r in hub.requests if r["path"].startswith(("/api/repos/", "/api/datasets/"))]
    assert {r["headers"].get("authorization") for r in repo_calls} == {f"Bearer {TOKEN}"}  # HF_TOKEN, every call

    records = read_records(store, "cth@1")
    assert [(r["repo_id"], r["revision"], r["endpoint"]) for r in records] == [("org/cth", repo["head"], hub.url)]

    second = run_cli(args, cli_env(hub, tmp_path))
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout and repo["head"] in second.stdout
    assert len(repo["commits"]) == 1
    assert len(hub.calls("POST", r"/commit/")) == 1 and len(hub.calls("POST", r"/preupload/")) == 1

    for proc in (no_token, first, second):
        assert TOKEN not in proc.stdout + proc.stderr
    assert files_containing(tmp_path, TOKEN.encode()) == []


def test_republish_replaces_stale_shards_and_only_changed_files(tmp_path, online, monkeypatch):
    import datasets

    hub = online
    store = Store(tmp_path / "store")
    monkeypatch.setattr(store_mod, "PART_ROWS", 4)
    v1 = store.commit("cth", training_table(10).to_batches(max_chunksize=4))
    monkeypatch.setattr(store_mod, "PART_ROWS", 1_000_000)
    v2 = store.commit("cth", training_table(6, tag="b"))

    r1 = publish(store, str(v1), "org/cth", private=True)
    assert r1["status"] == "published" and hub.repos["org/cth"]["private"]
    assert sum(p.startswith("data/") for p in hub.repos["org/cth"]["files"]) == 3

    r2 = publish(store, str(v2), "org/cth")
    repo = hub.repos["org/cth"]
    assert r2["status"] == "published" and r2["revision"] == repo["head"] != r1["revision"]
    assert sorted(r2["deleted"]) == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert sorted(p for p in repo["files"] if p.startswith("data/")) == ["data/train-00000-of-00001.parquet"]

    # the Hub copy, downloaded as a folder, loads into exactly version 2
    mirror = tmp_path / "mirror"
    for p, data in repo["files"].items():
        (mirror / p).parent.mkdir(parents=True, exist_ok=True)
        (mirror / p).write_bytes(data)
    loaded = datasets.load_dataset(str(mirror), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert loaded.data.table.to_pylist() == store.read(str(v2)).to_pylist()

    # someone edits the README on the Hub: the next publish restores it and sends nothing else
    repo["files"]["README.md"] = b"---\nlicense: mit\n---\nedited\n"
    r3 = publish(store, str(v2), "org/cth")
    assert r3["status"] == "published" and r3["uploaded"] == ["README.md"] and r3["deleted"] == []
    assert len(repo["commits"]) == 3
    assert publish(store, str(v2), "org/cth")["status"] == "up to date"
    assert len(repo["commits"]) == 3
    assert {r["repo_id"]: r["revision"] for r in read_records(store, str(v2))} == {"org/cth": repo["head"]}


def test_hub_errors_become_one_line_without_the_token(tmp_path, online):
    store = Store(tmp_path / "store")
    ref = store.commit("cth", training_table(4))
    with pytest.raises(ReconError) as err:
        publish(store, str(ref), "org/echo")
    message = str(err.value)
    assert "org/echo" in message and "\n" not in message
    assert TOKEN not in message and "***" in message
    assert read_records(store, str(ref)) == []


def test_publish_refuses_offline_mode_and_bad_repo_ids(tmp_path, monkeypatch):
    from huggingface_hub import constants

    store = Store(tmp_path / "store")
    ref = store.commit("cth", training_table(4))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReconError, match="HF_HUB_OFFLINE"):
        publish(store, str(ref), "org/cth", token=TOKEN)
    for bad in ("noslash", "a/b/c", "org/../x", "-org/x", "org/x y"):
        with pytest.raises(ReconError, match="invalid --repo-id"):
            publish(store, str(ref), bad, dry_run_dir=tmp_path / "dry")
    assert not (tmp_path / "dry").exists()


def test_publish_refuses_a_version_whose_parquet_changed(tmp_path):
    store = Store(tmp_path / "store")
    ref = store.commit("cth", training_table(4))
    part = store.files(str(ref))[0]
    part.write_bytes(part.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ReconError, match="manifest checksum"):
        publish(store, str(ref), "org/cth", dry_run_dir=tmp_path / "dry")
    assert not (tmp_path / "dry").exists()
