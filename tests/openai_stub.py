"""A scripted OpenAI-compatible server for tests: a real aiohttp server on 127.0.0.1.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models. Answers are pure functions of the prompt
(so a run's output does not depend on request order), unless a test passes `responder(kind, prompt)` to script them.
`kind` is "evolve" (the prompt asks to increase the difficulty), "equal" (the equality check) or "answer".

Fault injection: `faults` is a list consumed one per completion request, in arrival order: an int status (429, 500,
...), (status, retry_after_header), or the name of a malformed HTTP 200 answer (MALFORMED: a body cut off mid-JSON,
an HTML page, JSON without choices, a connection dropped mid-body). `malformed_every=N` makes every N-th completion
request (N, 2N, ...) a malformed 200 answer, cycling through MALFORMED; those requests are recorded with the status
"malformed:<kind>". `api_key` makes every route demand `Authorization: Bearer <key>` (401 otherwise, with OpenAI's
error body); `authorization` collects the Authorization headers seen. `delay` sleeps before each answer.
`answer_style` ("chat" or "completion") shapes every answer that way whatever the route, as a server of the other
style would.

    with StubLLM() as stub:
        base_url = stub.base_url     # http://127.0.0.1:<port>/v1
        ...
        stub.requests                # [(route, json body, status)] in arrival order

Run alone: python tests/openai_stub.py --port 8001
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import socket
import threading

from aiohttp import web

EVOLVE_MARK = "increase the difficulty of the given programming test question"
EQUAL_MARK = "do you think they are equal to each other"


def prompt_kind(prompt: str) -> str:
    if EVOLVE_MARK in prompt:
        return "evolve"
    if EQUAL_MARK in prompt:
        return "equal"
    return "answer"


def question_of(prompt: str) -> str:
    """The question inside an evolution prompt (both built-in templates)."""
    rest = prompt.split("\n\n", 2)[2]
    if rest.startswith("#Given Test#\n"):
        rest = rest[len("#Given Test#\n") :].split("\n\n#Rewritten Test#\n")[0]
    return rest


def digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


MALFORMED = ("truncated", "html", "schema", "dropped")


def default_answer(kind: str, prompt: str) -> str:
    if kind == "evolve":
        return f"{question_of(prompt)}\nAlso handle the case tagged {digest(prompt)} efficiently."
    if kind == "equal":
        return "Not Equal"
    return f"def solve(data):\n    # solution {digest(prompt)}\n    return sorted(data)\n"


class StubLLM:
    def __init__(self, responder=None, faults=None, api_key: str | None = None, delay: float = 0.0,
                 models=("stub-model",), malformed_every: int = 0, answer_style: str | None = None):
        self.responder = responder
        self.faults = collections.deque(faults or [])
        self.malformed_every = malformed_every
        self.answer_style = answer_style  # "chat" / "completion": answer in that shape whatever the route
        self._n_completion = 0
        self.api_key = api_key
        self.delay = delay
        self.models = list(models)
        self.requests: list[tuple[str, dict, int]] = []
        self.authorization: set[str | None] = set()  # the Authorization headers seen (None: a request without one)
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self.port = None

    # -- handlers
    def _authorized(self, request) -> bool:
        self.authorization.add(request.headers.get("Authorization"))
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _unauthorized():
        return web.json_response({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                            "code": "invalid_api_key"}}, status=401)

    async def models_handler(self, request):
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def completion_handler(self, request):
        route = request.path
        body = await request.json()
        if not self._authorized(request):
            with self._lock:
                self.requests.append((route, body, 401))
            return self._unauthorized()
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
            self._n_completion += 1
            if fault is None and self.malformed_every and self._n_completion % self.malformed_every == 0:
                fault = MALFORMED[(self._n_completion // self.malformed_every - 1) % len(MALFORMED)]
        if isinstance(fault, str):
            with self._lock:
                self.requests.append((route, body, f"malformed:{fault}"))
            return await self._malformed(request, fault)
        if fault is not None:
            status, retry_after = (fault, None) if isinstance(fault, int) else fault
            with self._lock:
                self.requests.append((route, body, status))
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return web.json_response({"error": {"message": f"injected {status}"}}, status=status, headers=headers)
        chat = route.endswith("chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        kind = prompt_kind(prompt)
        out = self.responder(kind, prompt) if self.responder else None
        if out is None:
            out = default_answer(kind, prompt)
        text, finish = (out["text"], out.get("finish_reason", "stop")) if isinstance(out, dict) else (out, "stop")
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.requests.append((route, body, 200))
        choice = {"index": 0, "finish_reason": finish}
        if self.answer_style is not None:
            chat = self.answer_style == "chat"
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return web.json_response({"id": "cmpl-" + digest(prompt), "object": "chat.completion" if chat else
                                  "text_completion", "model": body.get("model"), "choices": [choice], "usage": usage})

    @staticmethod
    async def _malformed(request, kind: str):
        """An HTTP 200 whose body no client can use."""
        good = b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hi"}}]}'
        if kind == "truncated":  # a complete HTTP response holding half a JSON document
            return web.Response(body=good[: len(good) // 2], content_type="application/json")
        if kind == "html":  # what a proxy in front of the server sends
            return web.Response(text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
        if kind == "schema":
            return web.json_response({"object": "error", "detail": "overloaded"})
        if kind == "dropped":  # headers promise the whole body, the connection closes halfway through it
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = len(good)
            await resp.prepare(request)
            await resp.write(good[: len(good) // 2])
            request.transport.close()
            return resp
        raise ValueError(f"unknown malformed kind {kind!r}")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models_handler)
        app.router.add_post("/v1/chat/completions", self.completion_handler)
        app.router.add_post("/v1/completions", self.completion_handler)
        return app

    # -- lifecycle: the server runs on its own event loop in a daemon thread
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0) -> "StubLLM":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> "StubLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for assertions
    def prompts(self, kind: str | None = None, status: int = 200) -> list[str]:
        out = []
        for route, body, st in list(self.requests):
            if st != status:
                continue
            p = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
            if kind is None or prompt_kind(p) == kind:
                out.append(p)
        return out


if __name__ == "__main__":
    import argparse
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args()
    with StubLLM(api_key=a.api_key, delay=a.delay).start(a.port) as s:
        print(f"serving {s.base_url}", flush=True)
        while True:
            time.sleep(3600)
