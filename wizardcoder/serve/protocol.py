"""The OpenAI wire format: request bodies checked field by field into an `ApiRequest`, and the JSON objects sent back.

Every check raises `ApiError` (status + OpenAI's error body), so a bad request is answered 400 alone and never
reaches the engine. Checks follow the OpenAI API: `n` >= 1, `max_tokens` >= 1, `temperature` in [0, 2], `top_p` in
(0, 1], at most 4 stop strings, a seed that is a 64-bit integer, `model` the name this server serves (404
`model_not_found` otherwise), prompt tokens + `max_tokens` within the context (400 `context_length_exceeded`).
Extensions beyond OpenAI's fields: `top_k` in [-1, vocabulary size] (0 or -1: off), and a missing `model` meaning
the served one. Every number is bounded here, so nothing out of range reaches the engine's tensors.

Two phases, so that the event loop never does work proportional to a prompt's size before the cheap checks:
`parse_request` checks the fields, the number of samples and each prompt's length in characters (a prompt of more
characters than `max_len` tokens can hold is refused without tokenizing it; `Limits.max_token_chars`); the handler
then checks the queue, and `tokenize` (run in a worker thread) encodes the text and checks the context in tokens.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..data.templates import Template

MAX_STOP = 4  # OpenAI's limit on stop strings
SEED_RANGE = (-(2**63), 2**63 - 1)


class ApiError(Exception):
    """An answer instead of a completion: an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What the server accepts, fixed at start."""

    model_name: str
    vocab_size: int  # ids a prompt may contain: [0, vocab_size)
    max_len: int  # prompt + completion tokens per sequence
    max_n: int
    max_new_tokens: int  # new tokens of a request that gives no max_tokens (capped by the room left)
    template: Template
    encode_batch: Any  # list[str] -> list[list[int]]; called off the event loop (it may take seconds)
    max_token_chars: int = 256  # the most characters one token can stand for (a prompt longer than max_len of them
    #                             cannot fit; byte-level BPE: the longest token's UTF-8 bytes bound its characters)
    max_prompts: int | None = None  # prompts one request may send (the queue's samples: more could never be queued)


_job_ids = itertools.count()


@dataclass
class ApiRequest:
    """One HTTP request's work: `n` samples of each prompt, and the queue its outputs arrive on.

    `events` receives, from the engine thread: `ACCEPTED` once the engine took every prompt, then lists of
    `(prompt_index, RequestOutput)`, or one `ApiError` (after which nothing else arrives)."""

    kind: str  # "completion" | "chat"
    prompts: list[list[int]]  # token ids, one list per prompt
    params: Any  # wizardcoder.engine.SamplingParams
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    id: str = field(default_factory=lambda: f"{next(_job_ids)}-{uuid.uuid4().hex[:12]}")
    created: int = field(default_factory=lambda: int(time.time()))
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    finished: bool = False  # every sample answered (set by the handler)

    @property
    def n_samples(self) -> int:
        return len(self.prompts) * self.params.n


ACCEPTED = "accepted"


@dataclass
class Draft:
    """A checked request whose prompts are not tokenized yet (`tokenize` turns it into an ApiRequest)."""

    kind: str
    prompts: list  # str (to encode) or list[int] (token ids, already checked)
    param: str  # the field the prompts came from ("prompt" or "messages"), for error messages
    max_tokens: int | None
    settings: dict  # n, temperature, top_p, top_k, stop, seed
    stream: bool
    include_usage: bool

    @property
    def n_samples(self) -> int:
        return len(self.prompts) * self.settings["n"]


# ------------------------------------------------------------------------------------------------ field checks
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int(body: dict, name: str, default, lo: int, hi: int | None = None):
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise ApiError(400, f"'{name}' must be an integer, got {_short(v)}.", param=name)
    if v < lo or (hi is not None and v > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ApiError(400, f"'{name}' must be {limit}, got {v}.", param=name)
    return v


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v) or v > hi or v < lo or (lo_open and v == lo):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ApiError(400, f"'{name}' must be a number in {interval}, got {_short(v)}.", param=name)
    return float(v)


def _unicode(text: str, where: str, param: str) -> str:
    """`text` if it is valid Unicode: JSON's escapes can spell a lone UTF-16 surrogate ("\\ud800"), which no
    tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"{where} holds a lone UTF-16 surrogate ({text[e.start]!r} at character {e.start}); "
                       "send valid Unicode text.", param=param) from None
    return text


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings, "
                       f"got {_short(v)}.", param="stop")
    return [_unicode(s, f"stop string {i}", "stop") for i, s in enumerate(stops)]


def _unsupported(body: dict, kind: str) -> None:
    """Fields that would change the answer in ways this server does not implement: refuse rather than ignore."""
    off = {"echo": (None, False), "logprobs": (None, False, 0), "top_logprobs": (None, 0), "suffix": (None, ""),
           "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
           "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none")}
    for name, allowed in off.items():
        if name in body and body[name] not in allowed:
            raise ApiError(400, f"'{name}' is not supported by this server; leave it out.", param=name)
    if body.get("best_of") not in (None, body.get("n", 1)):
        raise ApiError(400, "'best_of' is not supported by this server; use 'n'.", param="best_of")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ApiError(400, "'response_format' other than {'type': 'text'} is not supported.", param="response_format")


def check_model(body: dict, limits: Limits) -> None:
    name = body.get("model")
    if name is not None and name != limits.model_name:
        raise ApiError(404, f"The model `{name}` does not exist; this server serves `{limits.model_name}`.",
                       param="model", code="model_not_found")


# ------------------------------------------------------------------------------------------------ prompts
def _too_long(what: str, chars: int, limits: Limits, param: str) -> ApiError:
    return ApiError(400, f"{what} has {chars} characters, more than this model's maximum context length of "
                    f"{limits.max_len} tokens can hold; shorten it.", param=param, code="context_length_exceeded")


def _prompts(body: dict, limits: Limits) -> list:
    """`prompt`: a string, a list of strings, a list of token ids, or a list of lists of token ids (as OpenAI).
    Strings stay text (checked for length in characters, tokenized later); token ids are checked here."""
    p = body.get("prompt")
    what = "'prompt' must be a non-empty string, a list of them, a list of token ids, or a list of such lists"
    if isinstance(p, str):
        prompts = [p]
    elif isinstance(p, list) and p and _is_int(p[0]):
        prompts = [p]  # token ids (each checked below)
    elif isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p[:1]):
        prompts = p  # strings or lists of token ids (each checked below)
    else:
        raise ApiError(400, f"{what}, got {_short(p)}.", param="prompt")
    if limits.max_prompts is not None and len(prompts) > limits.max_prompts:  # before a pass over each of them
        raise ApiError(400, f"this request sends {len(prompts)} prompts; the server holds at most "
                       f"{limits.max_prompts} samples at a time, so send fewer prompts.", param="prompt")
    for i, x in enumerate(prompts):
        if not (isinstance(x, str) or isinstance(x, list) and all(_is_int(t) for t in x)):
            raise ApiError(400, f"{what}; prompt {i} is {_short(x)}.", param="prompt")
        if not x:
            raise ApiError(400, f"prompt {i} is empty; send at least one token of prompt.", param="prompt")
        if isinstance(x, str):
            if len(x) > limits.max_len * limits.max_token_chars:
                raise _too_long(f"prompt {i}", len(x), limits, "prompt")
            _unicode(x, f"prompt {i}", "prompt")
        else:
            if len(x) >= limits.max_len:  # no room left for one new token
                raise ApiError(400, f"prompt {i} has {len(x)} tokens; this model's maximum context length is "
                               f"{limits.max_len} tokens.", param="prompt", code="context_length_exceeded")
            bad = next((t for t in x if not 0 <= t < limits.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"prompt {i}: token id {bad} is outside the vocabulary [0, {limits.vocab_size}).",
                               param="prompt")
    return prompts


def render_chat(messages, template: Template) -> str:
    """The prompt for a chat, in `template` (WizardCoder's Alpaca format by default): each user turn is one
    instruction; an earlier assistant turn follows its instruction's `### Response:` as the model would have written
    it; system (or developer) messages are put before the first instruction, separated by a blank line."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"'messages' must be a non-empty list of message objects, got {_short(messages)}.",
                       param="messages")
    system, turns = [], []  # turns: [user, assistant | None]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content', got {_short(m)}.",
                           param=f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported.", param=f"messages[{i}]")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string, got {_short(content)}.",
                           param=f"messages[{i}].content")
        _unicode(content, f"messages[{i}].content", f"messages[{i}].content")
        if role in ("system", "developer"):
            if turns:
                raise ApiError(400, f"messages[{i}]: a {role} message must come before the conversation.",
                               param=f"messages[{i}].role")
            system.append(content)
        elif role == "user":
            if turns and turns[-1][1] is None:
                turns[-1][0] += "\n\n" + content  # two user messages in a row: one instruction
            else:
                turns.append([content, None])
        elif role == "assistant":
            if not turns or turns[-1][1] is not None:
                raise ApiError(400, f"messages[{i}]: an assistant message must follow a user message.",
                               param=f"messages[{i}].role")
            turns[-1][1] = content
        else:
            raise ApiError(400, f"messages[{i}].role {role!r} is unknown; use system, user or assistant.",
                           param=f"messages[{i}].role")
    if not turns or turns[-1][1] is not None:
        raise ApiError(400, "the last message must be from the user.", param="messages")
    if system:
        turns[0][0] = "\n\n".join(system + [turns[0][0]])
    return "".join(template.prompt(u) + (a + "\n\n" if a is not None else "") for u, a in turns)


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


# ------------------------------------------------------------------------------------------------ requests
def parse_request(body: Any, kind: str, limits: Limits) -> Draft:
    """Check one request body ("completion" or "chat") without tokenizing it; raises ApiError. Cheap: no work
    here grows with a prompt's size beyond one pass over its characters."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object.")
    check_model(body, limits)
    _unsupported(body, kind)
    if kind == "chat":
        prompt = render_chat(body.get("messages"), limits.template)
        if len(prompt) > limits.max_len * limits.max_token_chars:
            raise _too_long("the conversation (in the template)", len(prompt), limits, "messages")
        prompts, param = [prompt], "messages"
        tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    else:
        prompts, param, tokens_field = _prompts(body, limits), "prompt", "max_tokens"
    settings = {"n": _int(body, "n", 1, 1, limits.max_n),
                "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
                "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                "top_k": max(_int(body, "top_k", 0, -1, limits.vocab_size), 0),
                "seed": _int(body, "seed", None, *SEED_RANGE),
                "stop": _stop(body)}
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, got {_short(stream)}.", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not (isinstance(opts, dict) and isinstance(opts.get("include_usage", False), bool)):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}.",
                       param="stream_options")
    max_tokens = _int(body, tokens_field, None, 1)  # bounded by the context check once the prompts are tokenized
    return Draft(kind, prompts, param, max_tokens, settings, stream,
                 include_usage=bool(opts and opts.get("include_usage")))


def tokenize(draft: Draft, limits: Limits, sampling_params_cls) -> ApiRequest:
    """Encode the draft's text prompts (one batch call: work proportional to their size, so the server runs this
    in a worker thread), check prompt + max_tokens against the context, and make the ApiRequest; raises ApiError."""
    texts = [i for i, p in enumerate(draft.prompts) if isinstance(p, str)]
    prompts = list(draft.prompts)
    for i, ids in zip(texts, limits.encode_batch([prompts[i] for i in texts]) if texts else []):
        if not ids:
            raise ApiError(400, f"prompt {i} is empty; send at least one token of prompt.", param="prompt")
        prompts[i] = ids
    longest = max(len(p) for p in prompts)
    room = limits.max_len - longest
    max_tokens = draft.max_tokens
    if max_tokens is None:
        max_tokens = max(1, min(limits.max_new_tokens, room))
    if longest + max_tokens > limits.max_len:
        raise ApiError(400, f"This model's maximum context length is {limits.max_len} tokens, however you requested "
                       f"{longest + max_tokens} tokens ({longest} in the {draft.param}, {max_tokens} for the "
                       f"completion). Please reduce the length of the {draft.param} or the completion.",
                       param=draft.param, code="context_length_exceeded")
    try:
        params = sampling_params_cls(max_new_tokens=max_tokens, **draft.settings)
    except ValueError as e:  # ConfigError is a ValueError: the engine's own range checks
        raise ApiError(400, str(e)) from None
    return ApiRequest(kind=draft.kind, prompts=prompts, params=params, stream=draft.stream,
               include_usage=draft.include_usage)


# ------------------------------------------------------------------------------------------------ responses
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _head(job: ApiRequest, model: str, object_: str) -> dict:
    prefix = "chatcmpl" if job.kind == "chat" else "cmpl"
    return {"id": f"{prefix}-{job.id}", "object": object_, "created": job.created, "model": model}


def choice(job: ApiRequest, index: int, text: str, finish_reason: str | None) -> dict:
    if job.kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def response(job: ApiRequest, model: str, choices: list[dict], use: dict) -> dict:
    obj = "chat.completion" if job.kind == "chat" else "text_completion"
    return {**_head(job, model, obj), "choices": choices, "usage": use}


def chunk(job: ApiRequest, model: str, choices: list[dict], use: dict | None = None) -> dict:
    """One server-sent event's object; `choices` from `delta_choice`. With include_usage every chunk carries
    `usage: null` and the last one (empty choices) the totals, as OpenAI sends them."""
    obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
    c = {**_head(job, model, obj), "choices": choices}
    if job.include_usage:
        c["usage"] = use
    return c


def delta_choice(job: ApiRequest, index: int, text: str | None, finish_reason: str | None, first: bool = False) -> dict:
    if job.kind == "chat":
        delta: dict = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


class DeltaText:
    """The part of a sample's growing text that is safe to send. Held back until it is final: everything from a
    stop string on (the engine checks stop strings every few steps, so its running text may already contain one),
    the last len(longest stop) - 1 characters (a stop string may be completing), and a trailing U+FFFD (a character
    whose bytes are not all generated yet)."""

    def __init__(self, stop: list[str]):
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = 0  # characters already sent

    def advance(self, text: str, finished: bool) -> str:
        if finished:
            safe = len(text)
        else:
            cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
            safe = cut if cut >= 0 else len(text) - self.hold
            while safe > 0 and text[safe - 1] == "\ufffd":
                safe -= 1
        if safe <= self.sent:
            return ""
        out, self.sent = text[self.sent:safe], safe
        return out
