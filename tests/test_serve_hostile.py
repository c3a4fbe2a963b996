"""`wizardcoder serve` against hostile clients: a request whose numbers overflow the engine's tensors, an error inside
the engine, megabytes of prompt, JSON nested 100k deep or holding a lone surrogate, clients that send their headers
one byte at a time. Each is answered (or closed) alone; the other requests and /health carry on.

A real server on 127.0.0.1 in each case: a `wizardcoder serve` subprocess, or (where the test must hold the tokenizer
still, or make the engine fail) the same aiohttp app and engine thread in this process on a real socket."""
import asyncio
import json
import socket
import threading
import time
import urllib.request

import aiohttp
import pytest

from _serve import post, save_tiny_checkpoint, serve

MAX_LEN, MAX_N, MAX_QUEUED = 128, 4, 32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = save_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny-hostile"))
    with serve("--model", ckpt, "--max-len", str(MAX_LEN), "--max-slots", "8", "--max-n", str(MAX_N),
               "--max-queued-samples", str(MAX_QUEUED), "--header-timeout", "1") as (base, proc):
        yield base, proc


def test_numbers_beyond_what_the_engine_holds_are_refused_alone(server):
    """top_k = 2**63 passed the checks and overflowed the engine's int64 row settings, failing every request in
    flight with 500; each out-of-range number is now a 400 naming its field, and the requests sent with it succeed."""
    base, _ = server
    bad = [({"prompt": "x", "top_k": 9223372036854775808}, "top_k"),
           ({"prompt": "x", "top_k": 49154}, "top_k"),  # more than the vocabulary
           ({"prompt": "x", "top_k": -2}, "top_k"),
           ({"prompt": "x", "seed": 2**64}, "seed"),
           ({"prompt": "x", "n": 2**70}, "n"),
           ({"prompt": "x", "max_tokens": 2**70}, "context_length_exceeded"),
           ({"prompt": "x", "temperature": 3.5}, "temperature")]
    good = [{"prompt": f"def f{i}(x):", "max_tokens": 8, "n": 2, "temperature": 0.8, "top_k": 40, "seed": i,
             "stream": i % 2 == 0} for i in range(4)]

    async def go():
        async with aiohttp.ClientSession() as s:
            async def one(body):
                async with s.post(f"{base}/v1/completions", json=body) as r:
                    return r.status, await r.read()
            return await asyncio.gather(*(one(b) for b in good[:2] + [b for b, _ in bad] + good[2:]))

    answers = asyncio.run(go())
    for (body, name), (status, raw) in zip(bad, answers[2:-2]):
        err = json.loads(raw)["error"]
        assert status == 400 and name in (err["param"], err["code"]), (body, status, raw)
    for body, (status, raw) in zip(good, answers[:2] + answers[-2:]):
        assert status == 200, raw
        if body["stream"]:
            assert raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw
        else:
            assert len(json.loads(raw)["choices"]) == 2


@pytest.mark.parametrize("raw, what", [
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"prompt": "def f():\\ud800", "max_tokens": 2}', "lone UTF-16 surrogate"),
    (b'{"prompt": ["ok", "\\udfff"], "max_tokens": 2}', "prompt 1 holds a lone UTF-16 surrogate"),
    (b'{"prompt": "x", "stop": ["\\ud83d"], "max_tokens": 2}', "stop string 0"),
])
def test_json_that_python_parses_but_no_tokenizer_can_take_is_a_400(server, raw, what):
    base, _ = server
    status, body = post(base, "/v1/completions", raw)
    assert status == 400 and what in body["error"]["message"], body
    chat = b'{"messages": [{"role": "user", "content": "\\ud800"}]}'
    status, body = post(base, "/v1/chat/completions", chat)
    assert status == 400 and body["error"]["param"] == "messages[0].content", body
    assert post(base, "/v1/completions", {"prompt": "x = \U0001F600", "max_tokens": 2})[0] == 200  # a real pair


def test_a_client_sending_its_headers_slowly_is_closed(server):
    """Three sockets that send a header byte every 0.2 s (a slowloris): each is closed once --header-timeout (1 s
    here) has passed, while /health keeps answering."""
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    closed_after = [None] * len(socks)
    t0 = time.monotonic()
    try:
        for s in socks:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            s.settimeout(0.05)
        for byte in (b"X-Slow-Header: " + b"a" * 200):  # 40 s of headers at this pace, if never closed
            for k, s in enumerate(socks):
                if closed_after[k] is not None:
                    continue
                try:
                    s.sendall(bytes([byte]))
                    if s.recv(1024) == b"":
                        closed_after[k] = time.monotonic() - t0
                except socket.timeout:
                    pass
                except OSError:  # reset or broken pipe: closed by the server
                    closed_after[k] = time.monotonic() - t0
            if all(c is not None for c in closed_after):
                break
            time.sleep(0.2)
        assert all(c is not None for c in closed_after), "the server kept a slow client's connection open"
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            assert r.status == 200
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------------------------- in-process server
@pytest.fixture(scope="module")
def tiny():
    from wizardcoder import StarCoder, Tokenizer

    tok = Tokenizer.bundled()
    return StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size).eval(), tok


def _app(tiny, encode_batch=None, max_queued=MAX_QUEUED):
    from wizardcoder.data.templates import ALPACA
    from wizardcoder.engine import Engine, SamplingParams
    from wizardcoder.serve import max_token_chars
    from wizardcoder.serve.app import build_app
    from wizardcoder.serve.protocol import Limits
    from wizardcoder.serve.worker import EngineWorker

    model, tok = tiny
    limits = Limits(model_name="tiny", vocab_size=tok.vocab_size, max_len=MAX_LEN, max_n=MAX_N,
                    max_new_tokens=8, template=ALPACA, encode_batch=encode_batch or tok.encode_batch,
                    max_token_chars=max_token_chars(tok), max_prompts=max_queued)
    worker = EngineWorker(Engine(model, tok, max_slots=8, max_len=MAX_LEN), max_queued)
    return build_app(worker, limits, SamplingParams)


async def _on_localhost(app, body):
    """Run `app` on a real socket on 127.0.0.1 for `body(session, base)`."""
    from aiohttp import web

    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as s:
            return await body(s, base)
    finally:
        await runner.cleanup()


def test_huge_prompts_are_refused_before_tokenizing(tiny):
    """A 7 MB prompt and 1.5M one-character prompts were tokenized on the event loop (6 s during which /health and
    every client waited) before the size and queue checks: both are now refused first, the tokenizer never called."""
    calls = []

    def encode_batch(texts):
        calls.append(sum(map(len, texts)))
        return tiny[1].encode_batch(texts)

    async def body(s, base):
        out = []
        for req in ({"prompt": "a" * 7_000_000}, {"prompt": ["a"] * 1_500_000},
                    {"messages": [{"role": "user", "content": "b" * 7_000_000}]}):
            route = "chat/completions" if "messages" in req else "completions"
            async with s.post(f"{base}/v1/{route}", json=req) as r:
                out.append((r.status, (await r.json())["error"]))
        async with s.post(f"{base}/v1/completions", json={"prompt": "def f():", "max_tokens": 2}) as r:
            out.append((r.status, None))
        return out

    (s1, e1), (s2, e2), (s3, e3), (s4, _) = asyncio.run(_on_localhost(_app(tiny, encode_batch), body))
    assert s1 == 400 and e1["code"] == "context_length_exceeded" and "7000000 characters" in e1["message"], e1
    assert s2 == 400 and e2["param"] == "prompt" and "sends 1500000 prompts" in e2["message"], e2
    assert s3 == 400 and e3["code"] == "context_length_exceeded", e3
    assert s4 == 200 and calls == [len("def f():")]  # only the good request was tokenized


def test_tokenizing_runs_off_the_event_loop(tiny):
    """While a request's prompt is being tokenized, /health is answered: the tokenizer is held until /health has
    answered. Had it run on the event loop (client and server share it here), nothing could answer until the
    tokenizer gave up waiting, and it would report that it was never released."""
    started, health_answered, released = threading.Event(), threading.Event(), []

    def encode_batch(texts):
        started.set()
        released.append(health_answered.wait(20))
        return tiny[1].encode_batch(texts)

    async def body(s, base):
        async def completion():
            async with s.post(f"{base}/v1/completions", json={"prompt": "def f():", "max_tokens": 2}) as r:
                return r.status
        task = asyncio.ensure_future(completion())
        while not started.is_set():
            await asyncio.sleep(0.01)
        async with s.get(f"{base}/health") as r:
            health = r.status
        health_answered.set()
        return health, await task

    assert asyncio.run(_on_localhost(_app(tiny, encode_batch), body)) == (200, 200)
    assert released == [True]


def test_an_error_inside_the_engine_fails_only_the_request_that_caused_it(tiny):
    """A request the engine cannot run (top_k = 2**63, sent past the HTTP checks straight to the engine thread)
    makes engine.step() raise. Only that request is answered 500 engine_error: a request already generating goes
    on, and a request admitted in the same failing step is retried and completes, each with exactly the tokens it
    gets from the engine run alone."""
    from wizardcoder.engine import Engine, SamplingParams
    from wizardcoder.serve.protocol import ACCEPTED, ApiError, ApiRequest
    from wizardcoder.serve.worker import EngineWorker

    model, tok = tiny
    running = SamplingParams(n=2, temperature=1.0, top_k=50, max_new_tokens=60, seed=1)
    joining = SamplingParams(n=3, temperature=0.7, max_new_tokens=10, seed=2)
    prompts = [tok.encode("def running(x):"), tok.encode("class Joining:")]
    alone = Engine(model, tok, max_slots=8, max_len=MAX_LEN).generate(prompts, [running, joining])
    expected = [[c.token_ids for c in per] for per in alone]
    worker = EngineWorker(Engine(model, tok, max_slots=8, max_len=MAX_LEN, sync_every=1), max_queued_samples=16)

    async def collect(job):
        assert await asyncio.wait_for(job.events.get(), 60) is ACCEPTED
        finals = {}
        while len(finals) < job.params.n:
            for _, out in await asyncio.wait_for(job.events.get(), 60):
                if out.finished:
                    finals[out.index] = list(out.token_ids)
        job.finished = True
        worker.release(job)
        return [finals[i] for i in range(job.params.n)]

    async def go():
        first = ApiRequest("completion", [prompts[0]], running, stream=True)
        worker.submit(first)
        assert await asyncio.wait_for(first.events.get(), 60) is ACCEPTED
        partial = await asyncio.wait_for(first.events.get(), 60)  # it is generating now
        assert not all(out.finished for _, out in partial)
        bad = ApiRequest("completion", [tok.encode("x = 1")], SamplingParams(n=2, temperature=1.0, top_k=2**63,
                                                                         max_new_tokens=8))
        joiner = ApiRequest("completion", [prompts[1]], joining)
        worker.submit(bad)
        worker.submit(joiner)
        rest = asyncio.ensure_future(collect(joiner))
        events = [await asyncio.wait_for(bad.events.get(), 60)]
        while not isinstance(events[-1], ApiError):
            events.append(await asyncio.wait_for(bad.events.get(), 60))
        worker.release(bad)
        finals = {out.index: list(out.token_ids) for _, out in partial if out.finished}
        while len(finals) < running.n:
            for _, out in await asyncio.wait_for(first.events.get(), 60):
                if out.finished:
                    finals[out.index] = list(out.token_ids)
        first.finished = True
        worker.release(first)
        return events[-1], [finals[i] for i in range(running.n)], await rest

    worker.start()
    try:
        error, first_tokens, joiner_tokens = asyncio.run(go())
    finally:
        worker.stop()
    assert error.status == 500 and error.code == "engine_error" and "for this request" in error.message, error
    assert first_tokens == expected[0] and joiner_tokens == expected[1]
    assert worker.failure is None and worker.queued_samples == 0 and not worker.engine.has_unfinished()


def test_the_engine_thread_makes_the_engines_cuda_device_current(monkeypatch):
    """--device cuda:1 loaded the model on device 1 but the engine thread launched on device 0 (CUDA's current
    device is per thread). No GPU here: the thread is checked to call torch.cuda.set_device with the engine's
    device before it touches the engine, from the engine thread itself."""
    import torch

    from wizardcoder.serve.worker import EngineWorker

    calls = []
    def set_device(d):  # torch.cuda.set_device takes an index or a device
        calls.append((torch.device("cuda", d) if isinstance(d, int) else torch.device(d),
                      threading.current_thread().name))

    monkeypatch.setattr(torch.cuda, "set_device", set_device)

    class CudaEngine:  # just what the thread asks of an idle engine
        device = torch.device("cuda", 1)

        def has_unfinished(self):
            calls.append(("has_unfinished", threading.current_thread().name))
            return False

    worker = EngineWorker(CudaEngine(), max_queued_samples=4)
    worker.start()
    for _ in range(200):
        if len(calls) >= 2:
            break
        time.sleep(0.01)
    worker.stop()
    assert calls[0] == (torch.device("cuda", 1), "wizardcoder-engine"), calls
    assert calls[1] == ("has_unfinished", "wizardcoder-engine")


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() < 2, reason="needs two CUDA devices")
def test_serve_on_the_second_gpu_runs_there(tmp_path):
    """The whole server on cuda:1: the engine thread launches its decode steps (and CUDA graphs) there."""
    ckpt = save_tiny_checkpoint(str(tmp_path / "tiny-gpu1"))
    with serve("--model", ckpt, "--device", "cuda:1", "--max-len", "64") as (base, _):
        status, body = post(base, "/v1/completions", {"prompt": "def f():", "max_tokens": 4, "temperature": 0})
    assert status == 200 and len(body["choices"]) == 1
