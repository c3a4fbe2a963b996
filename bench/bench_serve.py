"""The server's cost over its engine: the same seeded workload through `wizardcoder serve` (HTTP, one engine thread,
JSON or server-sent events) and through `Engine.generate` in one process, same weights, same slots, same run.

    PYTHONPATH=. python -m bench.bench_serve            # 64 requests x n=4 x 32 tokens
    PYTHONPATH=. python -m bench.bench_serve --quick    # a smoke run
    PYTHONPATH=. python -m bench.bench_serve --huge-prompts   # /health while huge requests are handled

Every request has its own seed, so both sides generate exactly the same tokens (the engine's samples do not depend
on what shares the batch); the token totals are checked equal before any time is reported. The server is a
subprocess on 127.0.0.1 and all requests are sent at once (aiohttp), so its figure includes request parsing,
tokenizing, the hand-over between the event loop and the engine thread, and the answers. The peer drives the engine
from a thread too: torch's CPU thread pool belongs to the calling thread, and on a shared, oversubscribed CPU the
main thread's pool ran the same work 4-5x slower than a fresh thread's, which would flatter the server. Ratio = ours
(server) time over the peer's (engine alone): the price of serving.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from bench.common import REPO, print_table, stamp

SHAPE = dict(n_positions=1024, n_embd=256, n_layer=4, n_head=8)  # CPU proxy; the vocabulary is the tokenizer's


def _prompts(k: int) -> list[str]:
    return [f"# task {i}: write a function that returns the {i}-th prime number\ndef prime_{i}(n):\n" for i in range(k)]


async def _send_all(base: str, model: str, prompts, n: int, new: int, stream: bool) -> int:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one(i, p):
            body = {"model": model, "prompt": p, "n": n, "max_tokens": new, "temperature": 0.8, "top_p": 0.95,
                    "seed": i, "stream": stream, "stream_options": {"include_usage": True} if stream else None}
            async with s.post(f"{base}/v1/completions", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                if not stream:
                    return (await r.json())["usage"]["completion_tokens"]
                import json

                tokens = None
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
                return tokens

        return sum(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def run(quick: bool = False) -> list[dict]:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from _serve import serve  # the tests' helper: start, wait for /health, stop

    from wizardcoder import StarCoder, Tokenizer
    from wizardcoder.engine import Engine, SamplingParams

    k, n, new, slots = (8, 2, 8, 8) if quick else (64, 4, 32, 64)
    tok = Tokenizer.bundled()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "bench-serve")
        model = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size, **SHAPE).eval()
        model.save_pretrained(ckpt)
        tok.save(ckpt)
        prompts = _prompts(k)
        params = [SamplingParams(n=n, temperature=0.8, top_p=0.95, max_new_tokens=new, seed=i) for i in range(k)]
        engine = Engine(model, tok, max_slots=slots, max_len=SHAPE["n_positions"])
        timed: dict = {}

        def drive():  # from a thread, as the server does: torch's CPU thread pool is per calling thread
            engine.generate(prompts[:2], params[:2])  # warm-up
            t0 = time.perf_counter()
            timed["outs"] = engine.generate(prompts, params)
            timed["s"] = time.perf_counter() - t0

        thread = threading.Thread(target=drive)
        thread.start()
        thread.join()
        outs, t_engine = timed["outs"], timed["s"]
        tokens = sum(len(c.token_ids) for per_prompt in outs for c in per_prompt)
        with serve("--model", ckpt, "--max-slots", str(slots), "--max-queued-samples", str(max(1024, k * n)),
                   "--max-n", str(n)) as (base, _):
            asyncio.run(_send_all(base, "bench-serve", prompts[:2], n, new, False))  # warm-up
            for stream in (False, True):
                t0 = time.perf_counter()
                served = asyncio.run(_send_all(base, "bench-serve", prompts, n, new, stream))
                t_serve = time.perf_counter() - t0
                if served != tokens:
                    raise RuntimeError(f"the server generated {served} tokens, the engine {tokens}: not the same work")
                case = f"{k} req x n={n} x {new} tok" + (", stream" if stream else "")
                rows.append({**stamp(), "bench": "serve", "case": case, "tokens": tokens,
                             "ours_s": t_serve, "ours_tok_s": tokens / t_serve, "peer": "Engine.generate in-process",
                             "peer_s": t_engine, "peer_tok_s": tokens / t_engine, "ours/peer": t_serve / t_engine})
    return rows


def _timed_health(base: str) -> float:
    t0 = time.perf_counter()
    urllib.request.urlopen(base + "/health", timeout=600).read()
    return time.perf_counter() - t0


def huge_prompts() -> list[dict]:
    """How long /health waits while the server handles a huge request (a 7 MB prompt, 1.5M one-character prompts,
    a 250k-character prompt that fits the character bound and is tokenized), against /health on the idle server
    (the peer). `serve --model tiny`: 1024 positions, so prompts over 262,144 characters are refused untokenized."""
    import json

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from _serve import serve

    cases = [("7 MB prompt", {"prompt": "a b " * 1_750_000, "max_tokens": 4}),
             ("1.5M one-char prompts", {"prompt": ["a"] * 1_500_000, "max_tokens": 1}),
             ("250k-char prompt, tokenized", {"prompt": "a b " * 62_500, "max_tokens": 4})]
    rows = []
    with serve("--model", "tiny") as (base, _):
        idle = min(_timed_health(base) for _ in range(5))
        for case, body in cases:
            data, answer = json.dumps(body).encode(), {}

            def send():
                t0 = time.perf_counter()
                req = urllib.request.Request(base + "/v1/completions", data=data,
                                             headers={"Content-Type": "application/json"})
                try:
                    answer["status"] = urllib.request.urlopen(req, timeout=600).status
                except urllib.error.HTTPError as e:
                    answer["status"] = e.code
                answer["s"] = time.perf_counter() - t0

            thread = threading.Thread(target=send)
            thread.start()
            time.sleep(0.3)  # the body is sent and being handled
            busy = _timed_health(base)
            thread.join()
            rows.append({**stamp(), "bench": "serve", "case": f"/health during a {case} (answered "
                         f"{answer['status']} in {answer['s']:.2f} s)", "ours_s": busy, "peer": "/health idle",
                         "peer_s": idle, "ours/peer": busy / idle})
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--huge-prompts", action="store_true", help="/health latency while huge requests are handled")
    args = ap.parse_args()
    print_table(huge_prompts() if args.huge_prompts else run(quick=args.quick))
