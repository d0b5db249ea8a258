"""The openai backend against a real HTTP server on 127.0.0.1: request fields, retries, timeouts,
failures never cached, and the API key never written anywhere."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recon_data.backends.openai import public_url, retry_delay
from recon_data.errors import ConfigError, ReconError
from recon_data.sample import SamplingParams, sample_rows_with_stats

KEY = "sk-test-3f9a7c1e5b2d4f60a8e1c9d7"


class Server:
    """A chat-completions server; `rule(body, nth_request_for_this_prompt)` picks each answer."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.per_prompt: Counter = Counter()
        self.lock = threading.Lock()
        self.rule = lambda body, nth: ("ok",)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    server.per_prompt[prompt] += 1
                    nth = server.per_prompt[prompt]
                action = server.rule(body, nth)
                if action[0] == "sleep":
                    time.sleep(action[1])
                    action = ("ok",)
                if action[0] == "status":
                    payload = json.dumps(
                        {"error": {"message": action[2] if len(action) > 2 else "boom"}}
                    ).encode()
                    self.send_response(action[1])
                    for k, v in (action[3] if len(action) > 3 else {}).items():
                        self.send_header(k, v)
                elif action[0] == "raw":
                    payload = action[1]
                    self.send_response(200)
                else:
                    choices = [
                        {
                            "index": i,
                            "finish_reason": "stop" if i % 2 == 0 else "length",
                            "message": {"role": "assistant", "content": f"{prompt}|seed={body['seed']}|{i}"},
                        }
                        for i in reversed(range(body["n"]))
                    ]  # out of order on purpose
                    payload = json.dumps(
                        {
                            "choices": choices,
                            "usage": {"prompt_tokens": 7, "completion_tokens": 3 * body["n"]},
                        }
                    ).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client may have timed out and hung up
                    self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture()
def key_env(monkeypatch):
    monkeypatch.setenv("RECON_TEST_API_KEY", KEY)
    return "RECON_TEST_API_KEY"


def rows(*prompts: str) -> list[dict]:
    return [
        {"id": p, "gen_messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": p}]}
        for p in prompts
    ]


def sample(server, prompts, cache_dir=None, n=2, **opts):
    options = {"base_url": server.url, "model": "served-model", "backoff": 0.01, **opts}
    return sample_rows_with_stats(
        rows(*prompts),
        model="ignored",
        backend="openai",
        params=SamplingParams(n=n, temperature=0.7, top_p=0.9, max_new_tokens=11, seed=4),
        cache_dir=cache_dir,
        options=options,
        progress=False,
    )


def test_rows_carry_server_completions_in_index_order_and_requests_carry_the_sampling_fields(server, key_env):
    out, stats = sample(server, ["a", "b", "c"], api_key_env=key_env, concurrency=3, revision="2024-01")
    assert [(r["id"], r["sample_index"]) for r in out] == [(p, i) for p in "abc" for i in range(2)]
    seeds = {}
    for r in out:
        prompt, seed, index = r["completion"].split("|")
        assert (prompt, index) == (r["id"], str(r["sample_index"]))
        seeds[prompt] = seed
        assert r["finish_reason"] == ("stop" if r["sample_index"] == 0 else "length")
        assert (r["backend"], r["model_id"], r["model_revision"]) == ("openai", "served-model", "2024-01")
        assert (
            r["prompt_tokens"] == 7 and r["completion_tokens"] is None
        )  # usage is per request, not per choice
    assert len(set(seeds.values())) == 3  # each prompt has its own seed
    assert len(server.requests) == 3 and stats.generated == 6
    for req in server.requests:
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == f"Bearer {KEY}"
        body = req["body"]
        assert (body["model"], body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == (
            "served-model",
            2,
            0.7,
            0.9,
            11,
        )
        assert isinstance(body["seed"], int)
        assert body["messages"][0] == {"role": "system", "content": "sys"}


def test_without_a_key_no_authorization_header_is_sent(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sample(server, ["a"])
    assert "Authorization" not in server.requests[0]["headers"]


def test_a_500_is_retried_and_the_row_is_correct(server):
    server.rule = lambda body, nth: ("status", 500, "overloaded") if nth == 1 else ("ok",)
    out, stats = sample(server, ["a"], max_retries=2)
    assert len(server.requests) == 2
    assert [r["completion"].split("|")[2] for r in out] == ["0", "1"] and stats.generated == 2
    assert server.requests[0]["body"] == server.requests[1]["body"]  # same seed on retry


def test_429_with_retry_after_is_retried(server):
    server.rule = lambda body, nth: ("status", 429, "slow down", {"Retry-After": "0"}) if nth < 3 else ("ok",)
    out, _ = sample(server, ["a"], max_retries=3)
    assert len(server.requests) == 3 and len(out) == 2


def test_retry_delay_honours_retry_after_and_caps_backoff():
    assert retry_delay(0, "3", 1.0, 60) == 3.0
    assert retry_delay(0, "600", 1.0, 60) == 60
    assert 0 <= retry_delay(0, formatdate(time.time() + 5, usegmt=True), 1.0, 60) <= 5
    for attempt in range(4):
        assert 2**attempt <= retry_delay(attempt, None, 1.0, 60) <= 1.5 * 2**attempt
    assert retry_delay(10, None, 1.0, 30) == 30


def test_a_timed_out_prompt_raises_after_retries_others_are_cached_and_a_rerun_asks_only_for_it(
    server, tmp_path
):
    server.rule = lambda body, nth: ("sleep", 1.0) if body["messages"][-1]["content"] == "slow" else ("ok",)
    with pytest.raises(ReconError) as err:
        sample(
            server, ["a", "slow", "b"], cache_dir=tmp_path / "c", timeout=0.2, max_retries=1, concurrency=3
        )
    message = str(err.value)
    assert "1 of 3 prompt chunks failed" in message and "timeout=0.2 s after 2 attempts" in message
    assert "the 4 samples that succeeded are cached" in message
    assert server.per_prompt["slow"] == 2

    server.rule = lambda body, nth: ("ok",)
    before = len(server.requests)
    out, stats = sample(server, ["a", "slow", "b"], cache_dir=tmp_path / "c", timeout=5)
    assert [r["body"]["messages"][-1]["content"] for r in server.requests[before:]] == ["slow"]
    assert (stats.cached, stats.generated) == (4, 2) and len(out) == 6


def test_client_errors_fail_at_once_and_the_key_echoed_by_the_server_is_scrubbed(server, key_env, tmp_path):
    server.rule = lambda body, nth: ("status", 401, f"bad key Bearer {KEY}")
    with pytest.raises(ReconError) as err:
        sample(server, ["a"], cache_dir=tmp_path / "c", api_key_env=key_env, max_retries=3)
    assert len(server.requests) == 1
    assert "HTTP 401" in str(err.value) and f"env var {key_env}" in str(err.value)
    assert KEY not in str(err.value) and "***" in str(err.value)
    assert _files_containing(tmp_path, KEY) == []


def test_connection_refused_is_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ReconError, match="connection failed.*after 2 attempts"):
        sample_rows_with_stats(
            rows("a"),
            model="m",
            backend="openai",
            params=SamplingParams(n=1),
            cache_dir=tmp_path,
            progress=False,
            options={"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 1, "backoff": 0},
        )


@pytest.mark.parametrize(
    "answer, fragment",
    [
        (("raw", b"<html>oops</html>"), "non-JSON"),
        (("raw", b'{"choices": []}'), "returned 0 choices"),
        (("raw", b'{"choices": [{"message": {"content": 5}}]}'), "without message.content"),
    ],
)
def test_malformed_server_answers_are_recon_errors_and_are_not_cached(server, tmp_path, answer, fragment):
    server.rule = lambda body, nth: answer
    with pytest.raises(ReconError, match=fragment):
        sample(server, ["a"], cache_dir=tmp_path)
    from recon_data.sample_cache import SampleCache

    with SampleCache(tmp_path) as cache:
        assert cache.entries() == 0


def test_n_per_request_splits_n_into_requests_with_distinct_seeds(server):
    out, _ = sample(server, ["a"], n=3, n_per_request=1)
    assert [r["body"]["n"] for r in server.requests] == [1, 1, 1]
    assert len({r["body"]["seed"] for r in server.requests}) == 3
    assert [r["completion_tokens"] for r in out] == [3, 3, 3]  # exact with one choice per request


def test_bad_options_are_config_errors_that_never_echo_a_key(server, monkeypatch):
    with pytest.raises(ConfigError, match="base_url"):
        sample_rows_with_stats(
            rows("a"),
            model="m",
            backend="openai",
            params=SamplingParams(),
            cache_dir=None,
            progress=False,
            options={},
        )
    with pytest.raises(ConfigError) as err:
        sample(server, ["a"], api_key_env=KEY)  # the key itself instead of the variable's name
    assert KEY not in str(err.value) and "NAME of an environment variable" in str(err.value)
    monkeypatch.delenv("RECON_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match="RECON_UNSET_VAR.*not set"):
        sample(server, ["a"], api_key_env="RECON_UNSET_VAR")
    with pytest.raises(ConfigError, match="api_key"):
        sample(server, ["a"], api_key=KEY)
    assert all(KEY not in str(v) for v in [err.value])
    with pytest.raises(ConfigError, match="concurrency"):
        sample(server, ["a"], concurrency=0)


def test_public_url_drops_credentials_and_query():
    assert public_url("https://user:pw@api.example.com:8443/v1/?key=abc") == "https://api.example.com:8443/v1"


def _files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_the_key_is_sent_but_never_written_to_rows_cache_or_output(server, key_env, tmp_path):
    from recon_data.cli_sample import app

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in rows("a", "b")))
    out = tmp_path / "samples.parquet"
    res = CliRunner().invoke(
        app,
        [
            "sample",
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--backend",
            "openai",
            "--model",
            "served",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--option",
            f"base_url={server.url}",
            "--option",
            f"api_key_env={key_env}",
            "--n",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert out.exists() and (tmp_path / "cache" / "samples.sqlite").exists()
    assert _files_containing(tmp_path, KEY) == []
    assert KEY not in res.output
