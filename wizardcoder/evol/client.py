"""An async client for any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp, `wizardcoder serve`).

It speaks the two standard routes, `POST {base}/chat/completions` (messages) and `POST {base}/completions` (prompt),
bounds the requests in flight with a semaphore, retries 429, 5xx, timeouts, dropped connections and HTTP 200 answers
whose body is unusable (cut off, an HTML page, no choices[0]) with exponential backoff and full jitter (a server's
Retry-After wins when it is given), fails at once with a clear error on 401/403 (wrong key), on 4xx it cannot fix and
on answers in the other API style, and counts requests, retries, malformed answers and the tokens the server reports
in `usage`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import os
import random
import time
from typing import Literal
from urllib.parse import urlsplit

import aiohttp

from ..errors import ConfigError, UserError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMError(UserError):
    """The endpoint answered in a way we cannot use (bad request, unknown model, malformed body, retries spent)."""


class LLMAuthError(LLMError):
    """HTTP 401/403: the API key is missing or wrong."""


class LLMUnreachableError(LLMError):
    """No HTTP answer at all: connection refused, DNS failure, timeouts on every try."""


@dataclasses.dataclass
class LLMConfig:
    """Where and how to ask. A server's Retry-After wins over the backoff (capped at backoff_max_s); the n-th retry
    otherwise waits uniform(0, min(backoff_max_s, backoff_s * 2**n)) seconds. The paper's evolution sampled with
    T=1, top_p=0.9 and up to 2048 tokens."""

    base_url: str  # API root, e.g. http://127.0.0.1:8000/v1 (`wizardcoder serve`); a bare host gets /v1
    model: str  # model name sent with each request
    api_key_env: str | None = "OPENAI_API_KEY"  # environment variable holding the API key (unset or empty: none sent)
    style: Literal["chat", "completion"] = "chat"  # /chat/completions (one user message) or /completions
    prompt_format: str = "{prompt}"  # completion style only: text around the prompt, with a {prompt} field
    concurrency: int = 16  # requests in flight at most
    max_retries: int = 8  # retries per request on 429/5xx, timeouts, dropped connections and malformed answers
    backoff_s: float = 1.0  # first retry's backoff scale in seconds (doubles per retry, full jitter)
    backoff_max_s: float = 60.0  # longest wait between two tries, in seconds
    timeout_s: float = 300.0  # wall-clock seconds per request
    temperature: float = 1.0  # sampling temperature of evolutions and answers
    top_p: float = 0.9  # nucleus sampling
    max_tokens: int = 2048  # most tokens per answer (sent as OpenAI's max_tokens)
    extra_body: dict = dataclasses.field(default_factory=dict)  # more JSON fields for every request

    def __post_init__(self):
        if self.style not in ("chat", "completion"):
            raise ConfigError(f"--llm-style {self.style!r}: use 'chat' or 'completion'.")
        parts = urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--llm-base-url {self.base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1.")
        url = self.base_url.rstrip("/")
        self.base_url = url + "/v1" if parts.path in ("", "/") else url
        for flag, value, ok, want in (
            ("--concurrency", self.concurrency, self.concurrency >= 1, "at least 1"),
            ("--max-retries", self.max_retries, self.max_retries >= 0, "0 or more"),
            ("--backoff-s", self.backoff_s, self.backoff_s >= 0, "0 or more seconds"),
            ("--backoff-max-s", self.backoff_max_s, self.backoff_max_s >= 0, "0 or more seconds"),
            ("--timeout", self.timeout_s, self.timeout_s > 0, "more than 0 seconds"),
            ("--temperature", self.temperature, self.temperature >= 0, "0 or more"),
            ("--top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("--max-new-tokens", self.max_tokens, self.max_tokens >= 1, "at least 1"),
        ):
            if not ok or value != value or value in (float("inf"), float("-inf")):  # NaN and inf fail too
                raise ConfigError(f"{flag} {value}: must be {want}.")
        if "{prompt}" not in self.prompt_format:
            raise ConfigError(f"--prompt-format {self.prompt_format!r}: must contain the {{prompt}} field.")

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None


@dataclasses.dataclass
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0  # tries before the one that succeeded
    malformed: int = 0  # of those, HTTP 200 answers whose body could not be used (cut off, HTML, wrong schema)


@dataclasses.dataclass
class Usage:
    """What a run (or one evolution attempt) cost: requests that succeeded, the retries behind them, and the tokens
    the server reported."""

    requests: int = 0
    retries: int = 0
    malformed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, c: Completion) -> Completion:
        self.requests += 1
        self.retries += c.retries
        self.malformed += c.malformed
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        return c

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


class _Malformed(Exception):
    """An HTTP 200 whose body is not a usable answer; retried like a 5xx."""


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _server_message(body) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
    return str(body)[:200]


class LLMClient:
    """Use as `async with LLMClient(cfg) as llm: c = await llm.generate(prompt)`."""

    def __init__(self, cfg: LLMConfig, rng: random.Random | None = None):
        self.cfg = cfg
        self.usage = Usage()
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "LLMClient":
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.cfg.concurrency),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    def _url(self, route: str) -> str:
        return f"{self.cfg.base_url}/{route}"

    async def check(self) -> list[str]:
        """One GET /models, without retries: fail fast on an unreachable endpoint or a wrong key. Returns the model
        ids the server lists ([] when it has no /models route)."""
        url = self._url("models")
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=min(30.0, self.cfg.timeout_s))) as r:
                if r.status in (401, 403):
                    raise self._auth_error(r.status, await self._json(r))
                if r.status != 200:
                    return []
                body = await self._json(r)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as e:
            raise LLMUnreachableError(
                f"cannot reach the LLM endpoint {self.cfg.base_url} ({type(e).__name__}: {e}); check --llm-base-url "
                "and that the server is running (e.g. `wizardcoder serve`)."
            ) from None
        data = body.get("data") if isinstance(body, dict) else None
        return [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    def _auth_error(self, status: int, body) -> LLMAuthError:
        env = self.cfg.api_key_env
        where = (f"${env} is not set" if env and not os.environ.get(env) else f"check the key in ${env}") if env else \
            "no API key is sent (set --llm-api-key-env)"
        return LLMAuthError(f"{self.cfg.base_url} refused the API key (HTTP {status}: {_server_message(body)}); "
                            f"{where}.")

    @staticmethod
    async def _json(resp):
        try:
            return await resp.json(content_type=None)
        except (ValueError, aiohttp.ContentTypeError):
            return {"error": (await resp.text())[:200]}

    def _body(self, prompt: str, temperature, max_tokens) -> tuple[str, dict]:
        body = {
            "model": self.cfg.model,
            "temperature": self.cfg.temperature if temperature is None else temperature,
            "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.max_tokens if max_tokens is None else max_tokens,
            "n": 1,
            **self.cfg.extra_body,
        }
        if self.cfg.style == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            return "chat/completions", body
        body["prompt"] = self.cfg.prompt_format.replace("{prompt}", prompt)
        return "completions", body

    def _parse(self, raw: bytes) -> Completion:
        """The answer of a 200 response. A body that is cut off, not JSON (an HTML error page from a proxy) or
        without a usable choices[0] raises _Malformed (retried); an answer in the other API style raises LLMError."""
        snippet = raw[:120].decode("utf-8", "replace").replace("\n", " ")
        try:
            body = json.loads(raw)
        except ValueError:
            what = "an HTML page" if raw.lstrip()[:1] == b"<" else "a body that is not valid JSON (cut off?)"
            raise _Malformed(f"{what}: {len(raw)} bytes starting {snippet!r}") from None
        choice = body.get("choices") if isinstance(body, dict) else None
        choice = choice[0] if isinstance(choice, list) and choice and isinstance(choice[0], dict) else None
        if choice is None:
            raise _Malformed(f"a JSON body without choices[0]: {snippet!r}")
        chat = self.cfg.style == "chat"
        if ("message" not in choice and "text" in choice) if chat else ("text" not in choice and "message" in choice):
            other = "completion" if chat else "chat"
            raise LLMError(f"{self.cfg.base_url} answers in {other} style (choices[0].{'text' if chat else 'message'}); "
                           f"pass --llm-style {other}.")
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        if text is not None and not isinstance(text, str):
            raise _Malformed(f"choices[0].{'message.content' if chat else 'text'} that is not a string: {snippet!r}")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return Completion(text=text or "", finish_reason=choice.get("finish_reason"),
                          prompt_tokens=_count(usage.get("prompt_tokens")),
                          completion_tokens=_count(usage.get("completion_tokens")))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.backoff_max_s)
        return self._rng.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt))

    async def generate(self, prompt: str, *, temperature: float | None = None,
                       max_tokens: int | None = None) -> Completion:
        """One completion for `prompt` (chat: one user message). Retries transient failures; raises LLMAuthError,
        LLMUnreachableError or LLMError otherwise."""
        route, body = self._body(prompt, temperature, max_tokens)
        url = self._url(route)
        last, malformed, unreachable = "", 0, False
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                async with self._sem, self._session.post(url, json=body) as r:
                    if r.status == 200:
                        try:
                            c = self._parse(await r.read())
                        except (_Malformed, aiohttp.ClientPayloadError) as e:
                            why = str(e) if isinstance(e, _Malformed) else f"a body cut off in transfer ({e})"
                            last, malformed, unreachable = f"HTTP 200 with {why}", malformed + 1, False
                        else:
                            c.retries, c.malformed = attempt, malformed
                            self.usage.add(c)
                            return c
                    else:
                        payload = await self._json(r)
                        if r.status in (401, 403):
                            raise self._auth_error(r.status, payload)
                        if r.status not in RETRY_STATUS and r.status < 500:
                            hint = " (check --llm-base-url and --llm-style)" if r.status == 404 else ""
                            raise LLMError(f"{url} answered HTTP {r.status}: {_server_message(payload)}{hint}.")
                        retry_after = _retry_after(r.headers)
                        last, unreachable = f"HTTP {r.status}: {_server_message(payload)}", False
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                unreachable = True
            if attempt < self.cfg.max_retries:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        cls = LLMUnreachableError if unreachable else LLMError
        if last.startswith("HTTP 200"):
            last += "; the server keeps sending unusable answers, check it (or a proxy in front of it)"
        raise cls(f"{url}: gave up after {self.cfg.max_retries + 1} tries ({last}); what was finished is saved, "
                  "run the same command again to resume.")


def _count(value) -> int:
    """A token count from `usage`, 0 when absent or not a number."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
