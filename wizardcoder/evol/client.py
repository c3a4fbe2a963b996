"""The LLM client for any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp, `wizardcoder serve`), built on
the official `openai` client.

`openai.AsyncOpenAI` sends the requests and owns the retries: 408, 409, 429, 5xx, timeouts and dropped connections,
with exponential backoff and jitter, honouring a server's Retry-After. What is ours:
- an HTTP 200 whose body is unusable (cut off, dropped mid-transfer, an HTML page from a proxy, no choices[0]) is
  retried too, within the same budget (`max_retries`) and schedule: a response hook reads the body and, when it is
  unusable, raises a transport error that openai retries;
- the two API styles, `/chat/completions` (one user message) and `/completions` (prompt), and a clear error when the
  server answers in the other one;
- counting: requests, retries, malformed answers and the tokens the server reports in `usage`;
- one-sentence errors: a wrong key (401/403), an unreachable endpoint, a request the server refuses, retries spent.
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import os
from typing import Literal
from urllib.parse import urlsplit

import httpx2  # openai's HTTP layer: its transport errors are what openai retries
import openai

from ..errors import ConfigError, UserError


class LLMError(UserError):
    """The endpoint answered in a way we cannot use (bad request, unknown model, malformed body, retries spent)."""


class LLMAuthError(LLMError):
    """HTTP 401/403: the API key is missing or wrong."""


class LLMUnreachableError(LLMError):
    """No HTTP answer at all: connection refused, DNS failure, timeouts on every try."""


@dataclasses.dataclass
class LLMConfig:
    """Where and how to ask. Retries follow openai's schedule (exponential backoff with jitter; a server's
    Retry-After wins). The paper's evolution sampled with T=1, top_p=0.9 and up to 2048 tokens."""

    base_url: str | None = dataclasses.field(default=None, metadata={"key": "llm_base_url", "help": (
        "API root, e.g. http://127.0.0.1:8000/v1 (`wizardcoder serve`); a bare host gets /v1")})
    model: str | None = dataclasses.field(default=None, metadata={"key": "llm_model", "help": (
        "model name sent with each request")})
    api_key_env: str | None = dataclasses.field(default="OPENAI_API_KEY", metadata={"key": "llm_api_key_env", "help": (
        "environment variable holding the API key (unset or empty: none sent)")})
    style: Literal["chat", "completion"] = dataclasses.field(default="chat", metadata={"key": "llm_style", "help": (
        "/chat/completions (one user message) or /completions")})
    prompt_format: str = "{prompt}"  # completion style only: text around the prompt, with a {prompt} field
    concurrency: int = 16  # requests in flight at most
    max_retries: int = 8  # retries per request on 429/5xx, timeouts, dropped connections and malformed answers
    timeout_s: float = dataclasses.field(default=300.0, metadata={"key": "timeout", "help": (
        "seconds one request may take to connect, send and read")})
    temperature: float = 1.0  # sampling temperature of evolutions and answers
    top_p: float = 0.9  # nucleus sampling
    max_tokens: int = dataclasses.field(default=2048, metadata={"key": "llm_max_tokens", "help": (
        "most tokens per answer (sent as OpenAI's max_tokens)")})
    extra_body: dict = dataclasses.field(default_factory=dict, init=False)  # more JSON fields (Python API only)

    def __post_init__(self):
        if self.style not in ("chat", "completion"):
            raise ConfigError(f"--llm-style {self.style!r}: use 'chat' or 'completion'.")
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"--llm-base-url {self.base_url!r}: give an http(s) URL such as "
                                  "http://127.0.0.1:8000/v1.")
            url = self.base_url.rstrip("/")
            self.base_url = url + "/v1" if parts.path in ("", "/") else url
        for flag, value, ok, want in (
            ("--concurrency", self.concurrency, self.concurrency >= 1, "at least 1"),
            ("--max-retries", self.max_retries, self.max_retries >= 0, "0 or more"),
            ("--timeout", self.timeout_s, self.timeout_s > 0, "more than 0 seconds"),
            ("--temperature", self.temperature, self.temperature >= 0, "0 or more"),
            ("--top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("--llm-max-tokens", self.max_tokens, self.max_tokens >= 1, "at least 1"),
        ):
            if not ok or value != value or value in (float("inf"), float("-inf")):  # NaN and inf fail too
                raise ConfigError(f"{flag} {value}: must be {want}.")
        if "{prompt}" not in self.prompt_format:
            raise ConfigError(f"--prompt-format {self.prompt_format!r}: must contain the {{prompt}} field.")

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None


@dataclasses.dataclass
class Reply:
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

    def add(self, c: Reply) -> Reply:
        self.requests += 1
        self.retries += c.retries
        self.malformed += c.malformed
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        return c

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


class _Malformed(httpx2.TransportError):
    """An HTTP 200 whose body is not a usable answer: a transport error to openai, so it retries it like a dropped
    connection."""


@dataclasses.dataclass
class _Tries:
    """One `complete` call's HTTP tries, counted by the client's hooks (a context variable finds the call)."""

    sent: int = 0
    malformed: int = 0


_TRIES: contextvars.ContextVar[_Tries | None] = contextvars.ContextVar("llm_tries", default=None)


def _count(value) -> int:
    """A token count from `usage`, 0 when absent or not a number."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def parse_answer(raw: bytes, style: str, base_url: str) -> Reply:
    """The answer in a 200 response's body. A body that is not JSON (cut off, an HTML error page from a proxy) or
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
    chat = style == "chat"
    if ("message" not in choice and "text" in choice) if chat else ("text" not in choice and "message" in choice):
        other = "completion" if chat else "chat"
        raise LLMError(f"{base_url} answers in {other} style (choices[0].{'text' if chat else 'message'}); "
                       f"pass --llm-style {other}.")
    text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
    if text is not None and not isinstance(text, str):
        raise _Malformed(f"choices[0].{'message.content' if chat else 'text'} that is not a string: {snippet!r}")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Reply(text=text or "", finish_reason=choice.get("finish_reason"),
                      prompt_tokens=_count(usage.get("prompt_tokens")),
                      completion_tokens=_count(usage.get("completion_tokens")))


class LLMClient:
    """Use as `async with LLMClient(cfg) as llm: c = await llm.complete(prompt)`."""

    def __init__(self, cfg: LLMConfig):
        if not cfg.base_url or not cfg.model:
            raise ConfigError("the LLM client needs --llm-base-url and --llm-model.")
        self.cfg = cfg
        self.usage = Usage()
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._openai: openai.AsyncOpenAI | None = None
        self._headers: dict = {}

    async def __aenter__(self) -> "LLMClient":
        http = openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency),
            event_hooks={"request": [self._on_request], "response": [self._on_response]})
        key = self.cfg.api_key
        # no key: no Authorization header at all (an explicit omission, request by request; openai insists on it)
        self._headers = {} if key else {"Authorization": openai.Omit()}
        self._openai = openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=key or "none",
                                          max_retries=self.cfg.max_retries, timeout=self.cfg.timeout_s,
                                          http_client=http)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._openai.close()

    # -- the hooks: every HTTP try of a `complete` call passes through them
    async def _on_request(self, request) -> None:
        tries = _TRIES.get()
        if tries is not None:
            tries.sent += 1

    async def _on_response(self, response) -> None:
        """A 200 answer to a completion request whose body is unusable becomes a _Malformed, which openai retries."""
        tries = _TRIES.get()
        if tries is None or response.status_code != 200:
            return
        try:
            parse_answer(await response.aread(), self.cfg.style, self.cfg.base_url)
        except (_Malformed, httpx2.TransportError) as e:
            why = str(e) if isinstance(e, _Malformed) else f"a body cut off in transfer ({e})"
            tries.malformed += 1
            await response.aclose()
            raise _Malformed(f"HTTP 200 with {why}", request=response.request) from None

    async def check(self) -> list[str]:
        """One GET /models, without retries: fail fast on an unreachable endpoint or a wrong key. Returns the model
        ids the server lists ([] when it has no /models route)."""
        client = self._openai.with_options(max_retries=0, timeout=min(30.0, self.cfg.timeout_s))
        try:
            raw = await client.models.with_raw_response.list(extra_headers=self._headers)
            body = json.loads(raw.http_response.content)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise self._auth_error(e) from None
        except openai.APIConnectionError as e:
            why = e.__cause__ or e
            raise LLMUnreachableError(
                f"cannot reach the LLM endpoint {self.cfg.base_url} ({type(why).__name__}: {why}); check "
                "--llm-base-url and that the server is running (e.g. `wizardcoder serve`)."
            ) from None
        except (openai.APIStatusError, ValueError):
            return []
        data = body.get("data") if isinstance(body, dict) else None
        return [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    def _auth_error(self, e: openai.APIStatusError) -> LLMAuthError:
        env = self.cfg.api_key_env
        where = (f"${env} is not set" if env and not os.environ.get(env) else f"check the key in ${env}") if env else \
            "no API key is sent (set --llm-api-key-env)"
        return LLMAuthError(f"{self.cfg.base_url} refused the API key (HTTP {e.status_code}: {_message(e)}); "
                            f"{where}.")

    async def complete(self, prompt: str, *, temperature: float | None = None,
                       max_tokens: int | None = None) -> Reply:
        """One completion for `prompt` (chat: one user message). Transient failures are retried; raises
        LLMAuthError, LLMUnreachableError or LLMError otherwise."""
        cfg = self.cfg
        args = dict(model=cfg.model, temperature=cfg.temperature if temperature is None else temperature,
                    top_p=cfg.top_p, max_tokens=cfg.max_tokens if max_tokens is None else max_tokens, n=1,
                    extra_body=cfg.extra_body or None, extra_headers=self._headers)
        tries = _Tries()
        token = _TRIES.set(tries)
        try:
            async with self._sem:
                if cfg.style == "chat":
                    raw = await self._openai.chat.completions.with_raw_response.create(
                        messages=[{"role": "user", "content": prompt}], **args)
                else:
                    raw = await self._openai.completions.with_raw_response.create(
                        prompt=cfg.prompt_format.replace("{prompt}", prompt), **args)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise self._auth_error(e) from None
        except openai.APIStatusError as e:
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise self._gave_up(tries, f"HTTP {e.status_code}: {_message(e)}", LLMError) from None
            hint = " (check --llm-base-url and --llm-style)" if e.status_code == 404 else ""
            raise LLMError(f"{e.request.url} answered HTTP {e.status_code}: {_message(e)}{hint}.") from None
        except openai.APIConnectionError as e:
            if isinstance(e.__cause__, _Malformed):
                raise self._gave_up(tries, str(e.__cause__) + "; the server keeps sending unusable answers, check it "
                                    "(or a proxy in front of it)", LLMError) from None
            why = e.__cause__ or e
            raise self._gave_up(tries, f"{type(why).__name__}: {why}" if str(why) else type(why).__name__,
                                LLMUnreachableError) from None
        finally:
            _TRIES.reset(token)
        c = parse_answer(raw.http_response.content, cfg.style, cfg.base_url)
        c.retries, c.malformed = tries.sent - 1, tries.malformed
        self.usage.add(c)
        return c

    def _gave_up(self, tries: _Tries, last: str, cls: type[LLMError]) -> LLMError:
        route = "chat/completions" if self.cfg.style == "chat" else "completions"
        return cls(f"{self.cfg.base_url}/{route}: gave up after {tries.sent} tries ({last}); what was finished is "
                   "saved, run the same command again to resume.")


def _message(e: openai.APIStatusError) -> str:
    """The server's own words in an error answer (openai hands over OpenAI's `error` object as the body)."""
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(body)[:200] if body is not None else e.response.text[:200]
