"""`wizardcoder serve`: an OpenAI-compatible HTTP server over a StarCoder checkpoint.

Routes: `GET /v1/models`, `POST /v1/completions` (prompt: a string or a list of strings; n, max_tokens, temperature,
top_p, top_k, stop, seed), `POST /v1/chat/completions` (messages rendered with WizardCoder's Alpaca template:
system text first, then each user turn as an instruction), `GET /health`.

Requests are batched: a single worker takes every request waiting in the queue whose sampling settings match the
first one's, runs them as one batch through the sampler (left-padded prefill, KV-cache decode), and answers each.
Generation runs in a worker thread so the event loop keeps accepting connections.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from .errors import UserError

ALPACA_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def render_chat(messages: list[dict]) -> str:
    """WizardCoder's prompt for a chat: the Alpaca header (or the system message), then `### Instruction:` with the
    user turns and `### Response:` with the assistant turns, ending with an open response."""
    system = ALPACA_HEADER
    parts = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError("every message needs a string 'content'")
        if role == "system":
            system = content
        elif role == "user":
            parts.append(f"### Instruction:\n{content}\n\n### Response:")
        elif role == "assistant":
            parts.append(f"{content}\n\n")
        else:
            raise ValueError(f"unknown message role {role!r}; use system, user or assistant")
    if not parts or not parts[-1].endswith("### Response:"):
        raise ValueError("the last message must be from the user")
    return system + "\n\n" + "".join(parts)


@dataclass
class _Request:
    prompts: list[str]
    key: tuple  # sampling settings; only requests with equal keys share a batch
    params: object
    future: asyncio.Future
    created: float = field(default_factory=time.time)


class Engine:
    """Owns the model and the batching queue."""

    def __init__(self, model, tokenizer, model_name: str, max_batch: int = 32):
        self.model, self.tokenizer, self.model_name, self.max_batch = model, tokenizer, model_name, max_batch
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task = None

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self):
        if self._task:
            self._task.cancel()

    async def submit(self, prompts: list[str], params) -> list[list[str]]:
        fut = asyncio.get_running_loop().create_future()
        key = (params.n, params.temperature, params.top_p, params.top_k, params.max_new_tokens, tuple(params.stop), params.seed)
        await self.queue.put(_Request(prompts, key, params, fut))
        return await fut

    async def _worker(self):
        from .sampling import generate

        loop = asyncio.get_running_loop()
        held: list[_Request] = []
        while True:
            first = held.pop(0) if held else await self.queue.get()
            batch, rows = [first], len(first.prompts) * first.params.n
            while not self.queue.empty():
                held.append(self.queue.get_nowait())
            for r in list(held):  # take matching requests while the batch has room
                if r.key == first.key and rows + len(r.prompts) * r.params.n <= self.max_batch:
                    batch.append(r)
                    held.remove(r)
                    rows += len(r.prompts) * r.params.n
            prompts = [p for r in batch for p in r.prompts]
            try:
                outs = await loop.run_in_executor(
                    None, lambda: generate(self.model, self.tokenizer, prompts, first.params, batch_size=self.max_batch)
                )
            except Exception as e:  # answer every waiting request with the error; keep serving
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            i = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(outs[i : i + len(r.prompts)])
                i += len(r.prompts)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _sampling_params(body: dict):
    from .sampling import SamplingParams

    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    return SamplingParams(
        n=int(body.get("n", 1)),
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        top_k=int(body.get("top_k", 0) or 0),
        max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
        stop=list(stop),
        seed=body.get("seed"),
    )


def build_app(engine: Engine, api_key: str | None = None) -> web.Application:
    tok = engine.tokenizer

    @web.middleware
    async def auth(request, handler):
        if api_key and request.path.startswith("/v1/") and request.headers.get("Authorization") != f"Bearer {api_key}":
            return _error(401, "missing or wrong API key (send Authorization: Bearer <key>)", "authentication_error")
        return await handler(request)

    async def read_body(request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text=json.dumps({"error": {"message": "request body is not valid JSON", "type": "invalid_request_error", "code": 400}}), content_type="application/json")
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": {"message": "request body must be a JSON object", "type": "invalid_request_error", "code": 400}}), content_type="application/json")
        return body

    def usage(prompts, outs):
        p = sum(len(ids) for ids in tok.encode_batch(prompts))
        c = sum(len(ids) for o in outs for ids in tok.encode_batch(o))
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def models(_request):
        return web.json_response({"object": "list", "data": [{"id": engine.model_name, "object": "model", "owned_by": "wizardcoder"}]})

    async def completions(request):
        body = await read_body(request)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            return _error(400, "'prompt' must be a string or a non-empty list of strings")
        try:
            params = _sampling_params(body)
            outs = await engine.submit(prompts, params)
        except (ValueError, TypeError) as e:
            return _error(400, str(e))
        choices = [{"index": i * params.n + j, "text": t, "finish_reason": "stop", "logprobs": None}
                   for i, o in enumerate(outs) for j, t in enumerate(o)]
        return web.json_response({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                                  "model": engine.model_name, "choices": choices, "usage": usage(prompts, outs)})

    async def chat(request):
        body = await read_body(request)
        try:
            prompt = render_chat(body.get("messages") or [])
            params = _sampling_params(body)
            outs = await engine.submit([prompt], params)
        except (ValueError, TypeError) as e:
            return _error(400, str(e))
        choices = [{"index": j, "message": {"role": "assistant", "content": t.strip()}, "finish_reason": "stop"}
                   for j, t in enumerate(outs[0])]
        return web.json_response({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                                  "model": engine.model_name, "choices": choices, "usage": usage([prompt], outs)})

    async def health(_request):
        return web.json_response({"status": "ok", "queued": engine.queue.qsize()})

    app = web.Application(middlewares=[auth], client_max_size=16 * 2**20)
    app.add_routes([web.get("/v1/models", models), web.post("/v1/completions", completions),
                    web.post("/v1/chat/completions", chat), web.get("/health", health)])

    async def on_startup(_app):
        engine.start()

    async def on_cleanup(_app):
        await engine.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder or hub id (its tokenizer is loaded from the same place "
                   "unless --tokenizer is given), or 'tiny' for a random tiny model with the bundled tokenizer")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, file or hub id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the id /v1/models reports and responses carry (default: --model)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--max-batch", type=int, default=32, help="rows per generation batch")
    p.add_argument("--api-key-env", default=None, help="name of an environment variable holding the key clients must send")


def load_engine(args) -> Engine:
    import os

    import torch

    from .model import StarCoder
    from .tokenizer import Tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model == "tiny":
        tok = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else Tokenizer.bundled()
        model = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size, device=device, dtype=dtype)
    else:
        model = StarCoder.from_pretrained(args.model, dtype=dtype, device=device)
        try:
            tok = Tokenizer.from_pretrained(args.tokenizer or args.model)
        except UserError:
            if args.tokenizer:
                raise
            raise UserError(f"{args.model}: no tokenizer beside the checkpoint; pass --tokenizer.") from None
        if tok.vocab_size > model.config.vocab_size:
            raise UserError(f"--tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size}; use the checkpoint's tokenizer.")
    if args.api_key_env and not os.environ.get(args.api_key_env):
        raise UserError(f"--api-key-env {args.api_key_env}: that environment variable is not set.")
    return Engine(model.eval(), tok, args.model_name or args.model, max_batch=args.max_batch)


def run(args: argparse.Namespace) -> int:
    import os

    engine = load_engine(args)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    print(f"serving {engine.model_name} on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(build_app(engine, key), host=args.host, port=args.port, print=None)
    return 0
