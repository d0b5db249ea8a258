"""The `openai` sampling backend: any OpenAI-compatible `/chat/completions` server (vLLM serve, TGI,
llama.cpp server, hosted APIs), over stdlib HTTP so it needs no extra package.

Options: `base_url` (required, e.g. http://127.0.0.1:8000/v1), `model` (served model name, default the
`model` argument), `api_key_env` (NAME of the env var holding the key, default OPENAI_API_KEY; when that
default is unset no Authorization header is sent), `concurrency` (parallel requests, default 8),
`max_retries` (default 4), `timeout` (seconds per request, default 120), `backoff` (first retry delay,
default 1 s, doubled per retry, with jitter; a Retry-After header wins), `n_per_request` (choices asked
per request, default n; servers that cap `n` need 1), `revision` (model revision to record),
`extra_body` (dict merged into every request, e.g. {"top_k": 20}).

Each prompt is one chunk (cached as soon as its n samples are in). Retries cover 408/409/429/5xx,
connection errors and timeouts; other HTTP errors fail at once. A prompt whose retries run out raises
ReconError; `sample_rows` lets the other prompts finish and cache, then reports. Failed requests are
never cached. The key is read from the environment for each request and is never put in a row, cache
key, log line or error message (server error bodies are scrubbed of it).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ReconError
from . import Backend, Completion, Prompt, check_options, derive_seed

if TYPE_CHECKING:
    from ..sample import SamplingParams

OPTIONS = {
    "base_url": "server URL ending in /v1 (required)",
    "model": "served model name",
    "api_key_env": "name of the env var holding the API key",
    "concurrency": "parallel requests, default 8",
    "max_retries": "retries per request, default 4",
    "timeout": "seconds per request, default 120",
    "backoff": "first retry delay in seconds, default 1",
    "max_backoff": "longest wait between retries, default 60",
    "n_per_request": "choices per request, default n",
    "revision": "model revision to record",
    "extra_body": "dict merged into each request body",
}
RETRY_STATUS = {408, 409, 429} | set(range(500, 600))
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_jitter = random.Random()


def public_url(url: str) -> str:
    """The URL without user:password@ or a query string, safe to hash, record and print."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text


def retry_delay(attempt: int, retry_after: str | None, backoff: float, max_backoff: float) -> float:
    """Seconds to wait before retry `attempt` (0-based): Retry-After if the server sent one, else
    exponential backoff with up to 50% jitter; both capped at `max_backoff`."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), max_backoff)
        except ValueError:
            when = email.utils.parsedate_to_datetime(retry_after) if retry_after.strip() else None
            if when is not None:
                return min(max(when.timestamp() - time.time(), 0.0), max_backoff)
    delay = backoff * (2**attempt)
    return min(delay + _jitter.uniform(0, delay / 2), max_backoff)


def _number(options: dict, name: str, default: float, *, minimum: float, integer: bool = False) -> Any:
    value = options.get(name, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ConfigError(f"openai backend: option {name} must be a number >= {minimum} (got {value!r})")
    return int(value) if integer else float(value)


def load(model: str, options: dict, batch_size: int) -> Backend:  # noqa: ARG001 - one prompt per chunk
    check_options("openai", options, OPTIONS)
    base_url = options.get("base_url")
    if not isinstance(base_url, str) or urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(
            "openai backend needs option base_url, an http(s) URL such as "
            "http://127.0.0.1:8000/v1 (--option base_url=...)"
        )
    served = str(options.get("model") or model)
    key_env = options.get("api_key_env", "OPENAI_API_KEY")
    if not isinstance(key_env, str) or not _ENV_NAME.match(key_env):
        raise ConfigError(
            "openai backend: api_key_env must be the NAME of an environment variable holding "
            "the key (e.g. OPENAI_API_KEY), never the key itself"
        )
    if "api_key_env" in options and not os.environ.get(key_env):
        raise ConfigError(f"openai backend: environment variable {key_env} (api_key_env) is not set or empty")
    extra_body = options.get("extra_body") or {}
    if not isinstance(extra_body, dict):
        raise ConfigError("openai backend: extra_body must be a JSON object")
    concurrency = _number(options, "concurrency", 8, minimum=1, integer=True)
    max_retries = _number(options, "max_retries", 4, minimum=0, integer=True)
    timeout = _number(options, "timeout", 120.0, minimum=0.001)
    backoff = _number(options, "backoff", 1.0, minimum=0)
    max_backoff = _number(options, "max_backoff", 60.0, minimum=0)
    n_per_request = options.get("n_per_request")
    if n_per_request is not None:
        n_per_request = _number(options, "n_per_request", 1, minimum=1, integer=True)
    endpoint = base_url.rstrip("/") + "/chat/completions"
    shown = public_url(endpoint)

    def post(body: dict) -> dict:
        """One request with retries; returns the parsed JSON response."""
        secret = os.environ.get(key_env) or None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        data = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(max_retries + 1):
            retry_after = None
            try:
                request = urllib.request.Request(endpoint, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    raw = resp.read()
                try:
                    answer = json.loads(raw)
                except ValueError:
                    raise ReconError(
                        f"openai backend: {shown} answered non-JSON: "
                        f"{scrub(raw[:200].decode('utf-8', 'replace'), secret)!r}"
                    ) from None
                return answer
            except urllib.error.HTTPError as exc:
                detail = scrub(exc.read()[:300].decode("utf-8", "replace"), secret)
                last = f"HTTP {exc.code} {detail!r}"
                if exc.code not in RETRY_STATUS:
                    hint = {
                        401: f"; check the key in env var {key_env}",
                        403: f"; check the key in env var {key_env}",
                        404: "; check base_url (usually ends in /v1) and the model name",
                    }.get(exc.code, "")
                    raise ReconError(f"openai backend: {shown} answered {last}{hint}") from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                    last = f"no answer within timeout={timeout:g} s"
                else:
                    last = f"connection failed ({scrub(str(reason), secret)})"
            if attempt < max_retries:
                time.sleep(retry_delay(attempt, retry_after, backoff, max_backoff))
        raise ReconError(
            f"openai backend: {shown}: {last} after {max_retries + 1} attempts; raise "
            "timeout/max_retries (--option) or check the server"
        )

    def one_prompt(prompt: Prompt, params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        request_no = 0
        while len(out) < params.n:
            want = min(params.n - len(out), n_per_request or params.n)
            body = {
                **extra_body,
                "model": served,
                "messages": prompt.messages,
                "n": want,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_tokens": params.max_new_tokens,
                "seed": prompt.seed if request_no == 0 else derive_seed(prompt.seed, request_no),
            }
            answer = post(body)
            request_no += 1
            choices = answer.get("choices") if isinstance(answer, dict) else None
            if not isinstance(choices, list) or not choices or len(choices) > want:
                raise ReconError(
                    f"openai backend: {shown} returned {len(choices) if isinstance(choices, list) else 'no'}"
                    f" choices for n={want}; set --option n_per_request=1 if it cannot do n"
                )
            usage = answer.get("usage") or {}
            for ch in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
                msg = ch.get("message") if isinstance(ch, dict) else None
                if not isinstance(msg, dict) or not isinstance(msg.get("content") or "", str):
                    raise ReconError(f"openai backend: {shown} returned a choice without message.content")
                out.append(
                    Completion(
                        text=msg.get("content") or "",
                        prompt_tokens=usage.get("prompt_tokens")
                        if isinstance(usage.get("prompt_tokens"), int)
                        else None,
                        # usage counts all choices together: exact per sample only with one choice
                        completion_tokens=(
                            usage.get("completion_tokens")
                            if len(choices) == 1 and isinstance(usage.get("completion_tokens"), int)
                            else None
                        ),
                        finish_reason=str(ch.get("finish_reason") or "unknown"),
                    )
                )
        return out

    def generate(
        prompts: Sequence[Prompt], params: SamplingParams, chunk_seed: int
    ) -> list[list[Completion]]:
        return [one_prompt(p, params) for p in prompts]

    return Backend(
        name="openai",
        model_id=served,
        model_revision=str(options.get("revision", "")),
        identity={"name": "openai", "url": public_url(base_url), "extra_body": extra_body},
        chunk_size=1,
        generate=generate,
        concurrency=concurrency,
    )
