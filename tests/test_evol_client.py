"""The LLM client against a real aiohttp server on 127.0.0.1 (tests/openai_stub.py) that sends unusable HTTP 200
answers: each is retried with backoff and counted, evolve makes progress when one answer in five is malformed, and
when retries run out the message says what the server sent."""
import asyncio
import collections
import json
import re

import pytest

pytest.importorskip("openai")  # the evolve client is built on it (a GPU machine may not have it)

from openai_stub import MALFORMED, StubLLM, default_answer
from wizardcoder.evol import EvolConfig, LLMClient, LLMConfig, evolve
from wizardcoder.evol.client import LLMError


def cfg(stub, **kw):
    return LLMConfig(base_url=stub.base_url, model="stub-model", api_key_env=None, **kw)


def complete(config, prompt="hello"):
    async def go():
        async with LLMClient(config) as c:
            out = await c.complete(prompt)
            return out, c.usage
    return asyncio.run(go())


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_200_is_retried_and_counted(kind):
    with StubLLM(faults=[kind, kind]) as stub:
        out, usage = complete(cfg(stub))
        statuses = [st for _, _, st in stub.requests]
    assert statuses == [f"malformed:{kind}"] * 2 + [200]
    assert out.text == default_answer("answer", "hello") and out.retries == 2 and out.malformed == 2
    assert (usage.requests, usage.retries, usage.malformed) == (1, 2, 2)


@pytest.mark.parametrize("kind, says", [("truncated", r"a body that is not valid JSON \(cut off\?\): 48 bytes"),
                                        ("html", "an HTML page: 50 bytes starting '<html>"),
                                        ("schema", "a JSON body without choices"),
                                        ("dropped", "a body cut off in transfer")])
def test_when_retries_run_out_the_message_says_what_came_back(kind, says):
    with StubLLM(faults=[kind] * 3) as stub:
        with pytest.raises(LLMError) as e:
            complete(cfg(stub, max_retries=2))
        assert len(stub.requests) == 3
    msg = str(e.value)
    assert re.search(rf"gave up after 3 tries \(HTTP 200 with {says}", msg), msg
    assert "keeps sending unusable answers" in msg and "run the same command again to resume" in msg
    assert "--llm-style" not in msg  # the old, misleading hint


@pytest.mark.parametrize("style, other, field", [("chat", "completion", "text"), ("completion", "chat", "message")])
def test_an_answer_in_the_other_style_fails_at_once_naming_the_flag(style, other, field):
    with StubLLM(answer_style=other) as stub:
        with pytest.raises(LLMError, match=rf"answers in {other} style \(choices\[0\]\.{field}\); pass --llm-style {other}"):
            complete(cfg(stub, style=style))
        assert len(stub.requests) == 1  # not retried: it would never change


def test_evolve_completes_when_one_answer_in_five_is_malformed(tmp_path):
    seeds = [{"id": f"s{i}", "instruction": f"Write a function that returns {i} squared.", "output": f"{i * i}"}
             for i in range(12)]
    with StubLLM() as stub:
        clean = evolve(seeds, str(tmp_path / "clean"), cfg(stub, concurrency=4), EvolConfig(rounds=2))
    with StubLLM(malformed_every=5) as stub:
        summary = evolve(seeds, str(tmp_path / "faulty"), cfg(stub, concurrency=4), EvolConfig(rounds=2))
        statuses = collections.Counter(st for _, _, st in stub.requests)
    n_bad = sum(n for st, n in statuses.items() if str(st).startswith("malformed:"))
    assert n_bad >= 10 and {f"malformed:{k}" for k in MALFORMED} <= set(statuses)
    assert summary["complete"] and summary["total"]["malformed"] == summary["total"]["retries"] == n_bad
    assert summary["total"]["requests"] == statuses[200] == clean["total"]["requests"]
    assert (tmp_path / "clean" / "merged.jsonl").read_bytes() == (tmp_path / "faulty" / "merged.jsonl").read_bytes()
    md = (tmp_path / "faulty" / "summary.md").read_text()
    assert f"{n_bad} retried ({n_bad} of them after a malformed answer)" in md
    journal = [json.loads(line) for r in (1, 2) for line in open(tmp_path / "faulty" / f"round_{r}.jsonl")]
    assert sum(rec["usage"]["malformed"] for rec in journal) == n_bad
