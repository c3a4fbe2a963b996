"""`wizardcoder serve` as a real server on 127.0.0.1 (a subprocess), spoken to with a real HTTP client."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": REPO, "WC_TEST_KEY": "sekret"}
    proc = subprocess.Popen([sys.executable, "-m", "wizardcoder", "serve", "--model", "tiny", "--port", str(port),
                             "--model-name", "tiny-starcoder", "--api-key-env", "WC_TEST_KEY"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read())
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(10)


def call(base, path, body=None, key="sekret"):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_auth(server):
    status, body = call(server, "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny-starcoder"
    status, body = call(server, "/v1/models", key="wrong")
    assert status == 401 and "API key" in body["error"]["message"]


def test_completions_greedy_is_deterministic_and_counts_tokens(server):
    body = {"model": "tiny-starcoder", "prompt": ["def add(a, b):", "import os\n"], "max_tokens": 8, "temperature": 0}
    s1, a = call(server, "/v1/completions", body)
    s2, b = call(server, "/v1/completions", body)
    assert s1 == s2 == 200
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert len(a["choices"]) == 2 and a["usage"]["prompt_tokens"] > 0
    assert a["usage"]["completion_tokens"] <= 16


def test_chat_n_samples(server):
    body = {"messages": [{"role": "user", "content": "Write a function."}], "n": 3, "max_tokens": 6, "temperature": 1.0, "seed": 1}
    status, r = call(server, "/v1/chat/completions", body)
    assert status == 200 and len(r["choices"]) == 3 and r["choices"][0]["message"]["role"] == "assistant"


def test_bad_requests(server):
    assert call(server, "/v1/completions", {"prompt": 5})[0] == 400
    status, r = call(server, "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]})
    assert status == 400 and "unknown message role" in r["error"]["message"]
    status, r = call(server, "/v1/completions", {"prompt": "x", "top_p": 0})
    assert status == 400 and "top_p" in r["error"]["message"]


def test_concurrent_requests_and_the_evol_client(server, monkeypatch):
    """The project's own OpenAI-compatible client (used by `evolve`) against the project's own server."""
    from wizardcoder.evol.client import LLMClient, LLMConfig

    monkeypatch.setenv("WC_TEST_KEY", "sekret")

    async def go():
        cfg = LLMConfig(base_url=server + "/v1", model="tiny-starcoder", api_key_env="WC_TEST_KEY", max_tokens=5, concurrency=8)
        async with LLMClient(cfg) as client:
            assert await client.check() == ["tiny-starcoder"]
            return await asyncio.gather(*(client.generate(f"Task {i}: write code.") for i in range(8)))

    outs = asyncio.run(go())
    assert len(outs) == 8 and all(o.completion_tokens >= 0 and isinstance(o.text, str) for o in outs)


def test_render_chat_template():
    from wizardcoder.serve import ALPACA_HEADER, render_chat

    p = render_chat([{"role": "user", "content": "Sort a list."}])
    assert p == ALPACA_HEADER + "\n\n### Instruction:\nSort a list.\n\n### Response:"
    with pytest.raises(ValueError, match="last message must be from the user"):
        render_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
