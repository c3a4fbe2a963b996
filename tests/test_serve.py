"""`wizardcoder serve` as a real subprocess on 127.0.0.1: every bad request answered 400/404 alone while good ones in
the same burst succeed, a burst of hundreds answered or refused with 429 under bounded memory, authentication, clients
that go away, start-up errors in one sentence; and the pieces (chat rendering, streamed text hold-back) directly."""
import asyncio
import json
import socket
import subprocess
import urllib.request

import aiohttp
import pytest

from _serve import post, save_tiny_checkpoint, serve, vm_kib
from _util import PYTHON, REPO, free_port, repo_env

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_LEN, MAX_N, MAX_QUEUED = 128, 4, 32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = save_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny-srv"))
    with serve("--model", ckpt, "--max-len", str(MAX_LEN), "--max-slots", "8", "--max-n", str(MAX_N),
               "--max-queued-samples", str(MAX_QUEUED), "--api-key-env", "WC_TEST_KEY",
               env={"WC_TEST_KEY": KEY}) as (base, proc):
        yield base, proc


def test_models_and_api_key(server):
    base, _ = server
    status, body = post(base, "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = post(base, "/v1/completions", {"prompt": "x", "max_tokens": 1}, key="wrong")
    assert status == 401
    status, body = post(base, "/v1/completions", {"model": "tiny-srv", "prompt": "x", "max_tokens": 1}, key=KEY)
    assert status == 200 and body["model"] == "tiny-srv"


BAD = [  # (route, body, status, the field the error names or its code)
    ("completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("completions", {"prompt": "x", "temperature": "nan"}, 400, "temperature"),
    ("completions", b'{"prompt": "x", "temperature": NaN}', 400, None),
    ("completions", {"prompt": "x", "seed": "abc"}, 400, "seed"),
    ("chat/completions", {"messages": ["hello"]}, 400, "messages[0]"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     400, "messages"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("completions", {"prompt": ""}, 400, "prompt"),
    ("completions", {"prompt": []}, 400, "prompt"),
    ("completions", {"prompt": 5}, 400, "prompt"),
    ("completions", {"prompt": [10, 99999999]}, 400, "prompt"),
    ("completions", {"prompt": "word " * 200, "max_tokens": 4}, 400, "context_length_exceeded"),
    ("completions", {"prompt": "word " * 100, "max_tokens": 100}, 400, "context_length_exceeded"),
    ("completions", {"prompt": "x", "n": MAX_N + 1}, 400, "n"),
    ("completions", {"prompt": "x", "n": 0}, 400, "n"),
    ("completions", {"prompt": ["x"] * 9, "n": MAX_N, "max_tokens": 1}, 400, "n"),  # 36 samples: over the queue
    ("completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("completions", {"prompt": "x", "logprobs": 3}, 400, "logprobs"),
    ("completions", {"prompt": "x", "model": "gpt-4"}, 404, "model_not_found"),
    ("completions", b"{", 400, None),
    ("completions", b"[1, 2]", 400, None),
]


async def _send(session, base, route, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(f"{base}/v1/{route}", data=data, headers={**AUTH, "Content-Type": "application/json"}) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def test_each_bad_request_fails_alone_while_good_ones_in_the_same_burst_succeed(server):
    base, _ = server
    good = [("completions", {"prompt": f"def f{i}(x):", "max_tokens": 6, "n": 2, "temperature": 0.7, "seed": i})
            for i in range(4)]
    good += [("chat/completions", {"messages": [{"role": "user", "content": "Add two numbers."}], "max_tokens": 5}),
             ("completions", {"prompt": [[10, 11, 12], "x = "], "max_tokens": 3, "temperature": 0})]

    async def go():
        async with aiohttp.ClientSession() as s:
            reqs = [_send(s, base, route, body) for route, body, *_ in BAD + good]
            return await asyncio.gather(*reqs)

    answers = asyncio.run(go())
    for (route, body, status, name), (got, ctype, raw) in zip(BAD, answers[: len(BAD)]):
        assert got == status and ctype.startswith("application/json"), (body, got, raw)
        err = json.loads(raw)["error"]
        assert err["message"].endswith(".") and err["type"] == "invalid_request_error", err
        if name is not None:
            assert name in (err["param"], err["code"]), (body, err)
    for (route, body), (got, _, raw) in zip(good, answers[len(BAD):]):
        assert got == 200, raw
        r = json.loads(raw)
        expected = len(body["prompt"]) if isinstance(body.get("prompt"), list) else 1
        assert len(r["choices"]) == expected * body.get("n", 1)
        assert r["usage"]["completion_tokens"] <= body["max_tokens"] * len(r["choices"])


def test_a_burst_is_answered_or_refused_and_memory_stays_bounded(server):
    """300 requests at once against a queue of 32 samples: each is answered (200) or refused (429 with Retry-After,
    503), never dropped; the server's resident memory barely moves, and a second burst does not grow it."""
    base, proc = server

    async def burst(k):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def one(i):
                body = {"prompt": f"# task {k}.{i}\n", "max_tokens": 4, "n": 2, "temperature": 1.0, "seed": i,
                        "stream": i % 3 == 0}
                async with s.post(f"{base}/v1/completions", json=body, headers=AUTH) as r:
                    raw = await r.read()
                    return r.status, r.headers.get("Retry-After"), raw
            return await asyncio.gather(*(one(i) for i in range(300)))

    post(base, "/v1/completions", {"prompt": "warm up", "max_tokens": 4}, key=KEY)
    rss0 = vm_kib(proc.pid, "VmRSS")
    for k in range(2):
        answers = asyncio.run(burst(k))
        statuses = [s for s, _, _ in answers]
        assert set(statuses) <= {200, 429, 503}, set(statuses)
        assert statuses.count(200) >= MAX_QUEUED // 2 and statuses.count(429) > 0, statuses
        for status, retry_after, raw in answers:
            if status == 429:
                assert retry_after == "1" and json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
            elif status == 200 and raw.startswith(b"data: "):
                assert raw.rstrip().endswith(b"data: [DONE]")
            else:
                assert len(json.loads(raw)["choices"]) == 2
        if k == 0:
            rss1 = vm_kib(proc.pid, "VmRSS")
    rss2 = vm_kib(proc.pid, "VmRSS")
    assert rss1 - rss0 < 64 * 1024 and rss2 - rss1 < 16 * 1024, (rss0, rss1, rss2)
    with urllib.request.urlopen(base + "/health") as r:
        assert json.loads(r.read())["queued_samples"] == 0


def test_a_client_that_goes_away_frees_its_place(server):
    base, _ = server

    async def go():
        async with aiohttp.ClientSession() as s:
            body = {"prompt": "def long(x):", "max_tokens": 100, "n": MAX_N, "temperature": 1.0, "stream": True}
            async with s.post(f"{base}/v1/completions", json=body, headers=AUTH) as r:
                assert r.status == 200
                assert (await r.content.readline()).startswith(b"data: ")
            # closed after the first event; the server aborts the job and frees its samples
            for _ in range(100):
                async with s.get(f"{base}/health") as h:
                    if (await h.json())["queued_samples"] == 0:
                        return True
                await asyncio.sleep(0.1)
            return False

    assert asyncio.run(go())


# ------------------------------------------------------------------------------------------- start-up errors
def test_port_taken_is_one_sentence_and_exit_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([PYTHON, "-m", "wizardcoder", "serve", "--model", "tiny", "--port", str(port)], cwd=REPO,
                           env=repo_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: --port {port} on 127.0.0.1 is already in use; stop the program listening "
                                "there or pick another --port.")


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_at_start(tmp_path):
    from wizardcoder.errors import UserError
    from wizardcoder.serve import Config, load_model

    ckpt = save_tiny_checkpoint(str(tmp_path / "small"), vocab_size=1000)  # the bundled tokenizer has 49153 tokens
    with pytest.raises(UserError, match=r"has 49153 tokens but the model's vocabulary has 1000; serve the checkpoint"):
        load_model(Config(model=ckpt))


def test_max_new_tokens_is_one_flag_with_one_default_in_serve_generate_and_evaluate():
    """serve's default completion length is the same setting as generate's and evaluate's: one key, one flag, one
    default (the request's OpenAI field stays `max_tokens`)."""
    from wizardcoder import settings
    from wizardcoder.eval.cli import Config as EvaluateConfig
    from wizardcoder.generate import Config as GenerateConfig
    from wizardcoder.serve import Config as ServeConfig

    found = {cls.__module__: settings.settings(cls)["max_new_tokens"] for cls in (ServeConfig, GenerateConfig,
                                                                                  EvaluateConfig)}
    assert {(s.flags, s.default) for s in found.values()} == {(("--max-new-tokens",), 512)}
    assert settings.parse(ServeConfig, ["--model", "tiny", "--max-new-tokens", "7"]).max_new_tokens == 7


@pytest.mark.parametrize("flags, message", [
    (["--max-n", "0"], "--max-n must be at least 1"),
    (["--dtype", "float8"], "--dtype 'float8' is not a dtype"),
    (["--max-n", "64", "--max-queued-samples", "8"], "--max-n (64) is larger than --max-queued-samples (8)"),
    (["--max-len", "1"], "--max-len must be at least 2"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--device", "banana"], "--device 'banana' is not a device"),
    (["--template", "nope"], "unknown template 'nope'"),
    (["--api-key-env", "WC_UNSET_VAR"], "--api-key-env WC_UNSET_VAR: that environment variable is not set"),
])
def test_bad_flags_are_one_sentence(flags, message, capsys):
    from wizardcoder.cli import main

    assert main(["serve", "--model", "tiny", "--port", str(free_port()), *flags]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


# ------------------------------------------------------------------------------------------- the pieces
def test_the_engine_thread_fails_a_request_the_engine_refuses_alone():
    """A job the engine's own check refuses (a prompt over its max_len, sent past the HTTP checks) is answered 400
    while the job queued before it completes, and both give their place in the queue back."""
    from wizardcoder import StarCoder, Tokenizer
    from wizardcoder.engine import Engine, SamplingParams
    from wizardcoder.serve.protocol import ACCEPTED, ApiError, ApiRequest
    from wizardcoder.serve.worker import EngineWorker

    tok = Tokenizer.bundled()
    model = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size).eval()
    worker = EngineWorker(Engine(model, tok, max_slots=4, max_len=32), max_queued_samples=8)

    async def go():
        good = ApiRequest("completion", [tok.encode("def f():")],
                          SamplingParams(n=2, temperature=1.0, max_new_tokens=4))
        bad = ApiRequest("completion", [tok.encode("x = 1"), [5] * 40], SamplingParams(max_new_tokens=4))  # 40 + 4 > 32
        worker.submit(good)
        worker.submit(bad)
        assert worker.queued_samples == 4
        refused = await asyncio.wait_for(bad.events.get(), 60)
        assert isinstance(refused, ApiError) and refused.status == 400 and "32 tokens" in refused.message
        assert await asyncio.wait_for(good.events.get(), 60) is ACCEPTED
        outs = []
        while len(outs) < 2:
            outs += await asyncio.wait_for(good.events.get(), 60)
        assert sorted(o.index for _, o in outs) == [0, 1]
        assert all(o.finished and (o.finish_reason == "length") == (len(o.token_ids) == 4) for _, o in outs)
        good.finished = True
        worker.release(good)
        worker.release(bad)
        assert worker.queued_samples == 0

    worker.start()
    try:
        asyncio.run(go())
    finally:
        worker.stop()
    assert not worker.engine.has_unfinished()


def test_chat_rendering_uses_the_alpaca_template():
    from wizardcoder.data.templates import ALPACA
    from wizardcoder.serve.protocol import ApiError, render_chat

    assert render_chat([{"role": "user", "content": "Sort a list."}], ALPACA) == ALPACA.prompt("Sort a list.")
    parts = [{"type": "text", "text": "Sort "}, {"type": "text", "text": "a list."}]
    assert render_chat([{"role": "user", "content": parts}], ALPACA) == ALPACA.prompt("Sort a list.")
    assert render_chat([{"role": "system", "content": "Use Python."}, {"role": "user", "content": "Sort."}],
                       ALPACA) == ALPACA.prompt("Use Python.\n\nSort.")
    convo = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    assert render_chat(convo, ALPACA) == ALPACA.prompt("A") + "B\n\n" + ALPACA.prompt("C")
    for bad in (["hello"], [], None, [{"role": "user", "content": 3}], [{"role": "assistant", "content": "x"}],
                [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]):
        with pytest.raises(ApiError) as e:
            render_chat(bad, ALPACA)
        assert e.value.status == 400


def test_streamed_text_never_sends_what_a_stop_string_will_cut():
    from wizardcoder.serve.protocol import DeltaText

    final = "def f():\n    return 1"  # the engine cut it before "\nEND"
    growing = ["def", "def f():\n", "def f():\n    return 1\n", "def f():\n    return 1\nEN",
               "def f():\n    return 1\nEND\n"]
    d = DeltaText(["\nEND"])
    sent = [d.advance(t, False) for t in growing] + [d.advance(final, True)]
    assert "".join(sent) == final and sent[0] == ""  # 3 characters held back: "\nEN" may be coming
    assert all(final.startswith("".join(sent[:i])) for i in range(len(sent)))  # never anything to take back
    d = DeltaText([])
    assert d.advance("ab\ufffd", False) == "ab" and d.advance("abé", True) == "é"  # a character still being generated
