"""The aiohttp application: routes, authentication, errors as OpenAI error JSON, and server-sent events.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`, `POST /v1/chat/completions`, `GET /health`.
A handler checks its request (protocol.parse_request: fields, counts and sizes, no tokenizing), checks the queue has
room (worker.check_room), tokenizes it in a worker thread (protocol.tokenize), hands the job to the engine thread
(worker.submit), and waits on the job's event queue: for the final outputs (a JSON answer) or for every new piece of
text (`stream: true`: `data: {chunk}` events and a closing `data: [DONE]`, as the OpenAI API sends them).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback

from aiohttp import web

from .protocol import (ACCEPTED, ApiError, DeltaText, ApiRequest, Limits, choice, chunk, delta_choice, parse_request,
                       response, tokenize, usage)
from .worker import EngineWorker


def _error_response(e: ApiError) -> web.Response:
    return web.json_response(e.body(), status=e.status, headers=e.headers)


def build_app(worker: EngineWorker, limits: Limits, sampling_params_cls, *, api_key: str | None = None,
              request_timeout_s: float = 600.0, max_body_bytes: int = 8 * 2**20) -> web.Application:
    model = limits.model_name

    @web.middleware
    async def errors(request, handler):
        """Every answer is JSON: our ApiErrors, aiohttp's own (404 route, 405 method, 413 body) and crashes."""
        if api_key and request.path.startswith("/v1/") and \
                request.headers.get("Authorization") != f"Bearer {api_key}":
            return _error_response(ApiError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                                            type="authentication_error", code="invalid_api_key"))
        try:
            return await handler(request)
        except ApiError as e:
            return _error_response(e)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error_response(ApiError(e.status, f"{e.reason}: {request.method} {request.path}"))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            return _error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    async def read_body(request) -> object:
        try:
            return await request.json(loads=lambda s: json.loads(s, parse_constant=_reject_constant))
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the request body is larger than {max_body_bytes // 2**20} MiB.") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e}).") from None
        except RecursionError:  # Python's parser recurses once per level of nesting
            raise ApiError(400, "the request body is nested too deeply to parse; a request is a flat JSON "
                           "object.") from None

    async def next_event(job: ApiRequest):
        try:
            item = await asyncio.wait_for(job.events.get(), request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no output for {request_timeout_s:g} s; the server is overloaded, retry later.",
                           type="server_error", code="timeout") from None
        if isinstance(item, ApiError):
            raise item
        return item

    async def handle(request, kind: str):
        draft = parse_request(await read_body(request), kind, limits)
        worker.check_room(draft.n_samples)  # 429 / 400 / 503 before any work that grows with the prompts
        # Tokenizing takes time proportional to the text (seconds for megabytes): off the event loop.
        job = await asyncio.get_running_loop().run_in_executor(None, tokenize, draft, limits, sampling_params_cls)
        worker.submit(job)
        try:
            if await next_event(job) is not ACCEPTED:
                raise RuntimeError("the engine answered before accepting the job")
            if job.stream:
                return await stream(request, job)
            finals = [[None] * job.params.n for _ in job.prompts]
            left = job.n_samples
            while left:
                for i, out in await next_event(job):
                    finals[i][out.index] = out
                    left -= 1
            job.finished = True
            outs = [o for per_prompt in finals for o in per_prompt]  # OpenAI's order: prompt-major, then sample
            choices = [choice(job, k, o.text, o.finish_reason) for k, o in enumerate(outs)]
            use = usage(sum(len(p) for p in job.prompts), sum(len(o.token_ids) for o in outs))
            return web.json_response(response(job, model, choices, use))
        finally:
            worker.release(job)

    async def stream(request, job: ApiRequest) -> web.StreamResponse:
        n = job.params.n
        deltas = {(i, j): DeltaText(job.params.stop) for i in range(len(job.prompts)) for j in range(n)}
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj) -> None:
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        if job.kind == "chat":  # OpenAI opens each chat choice with the role
            await send(chunk(job, model, [delta_choice(job, k, "", None, first=True) for k in range(job.n_samples)]))
        left, completion_tokens = job.n_samples, 0
        try:
            while left:
                choices = []
                for i, out in await next_event(job):
                    text = deltas[i, out.index].advance(out.text, out.finished)
                    if text or out.finished:
                        choices.append(delta_choice(job, i * n + out.index, text, out.finish_reason))
                    if out.finished:
                        left -= 1
                        completion_tokens += len(out.token_ids)
                if choices:
                    await send(chunk(job, model, choices))
            job.finished = True
            if job.include_usage:
                await send(chunk(job, model, [], usage(sum(len(p) for p in job.prompts), completion_tokens)))
        except ApiError as e:  # headers are sent: the error goes in the stream, as OpenAI does
            await send(e.body())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def completions(request):
        return await handle(request, "completion")

    async def chat(request):
        return await handle(request, "chat")

    card = {"id": model, "object": "model", "created": int(time.time()), "owned_by": "wizardcoder"}

    async def models(_request):
        return web.json_response({"object": "list", "data": [card]})

    async def model_card(request):
        if request.match_info["id"] != model:
            raise ApiError(404, f"The model `{request.match_info['id']}` does not exist; this server serves "
                           f"`{model}`.", param="model", code="model_not_found")
        return web.json_response(card)

    async def health(_request):
        if worker.failure:
            raise ApiError(503, f"the engine stopped: {worker.failure}", type="server_error")
        return web.json_response({"status": "ok", "queued_samples": worker.queued_samples})

    app = web.Application(middlewares=[errors], client_max_size=max_body_bytes)
    app.add_routes([web.get("/v1/models", models), web.get("/v1/models/{id}", model_card),
                    web.post("/v1/completions", completions), web.post("/v1/chat/completions", chat),
                    web.get("/health", health)])

    async def on_startup(_app):
        worker.start()

    async def on_cleanup(_app):
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def _reject_constant(name: str):
    """JSON has no NaN or Infinity; Python's parser would accept them."""
    raise ValueError(f"{name} is not a JSON number")
