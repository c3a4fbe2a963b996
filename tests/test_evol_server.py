"""Evolution against a real HTTP server on 127.0.0.1 (tests/openai_stub.py): what each request carries, every
elimination rule on a crafted answer, retries on 429/5xx, wrong keys, unreachable endpoints, both API styles and
token accounting."""
import collections
import json
import os
import socket
import threading
import time

import pytest

pytest.importorskip("openai")  # the evolve client is built on it (a GPU machine may not have it)

from openai_stub import StubLLM, default_answer, prompt_kind, question_of
from wizardcoder.evol import (CODE_METHODS, EvolConfig, LLMAuthError, LLMClient, LLMConfig, LLMUnreachableError,
                              RuleConfig, evolve)

CHI2_DF4_P001 = 18.467


def llm(stub, **kw):
    kw.setdefault("api_key_env", None)
    return LLMConfig(base_url=stub.base_url, model="stub-model", **kw)


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def seeds(n, text="Write a function that returns the {i}-th triangular number."):
    return [{"id": f"s{i}", "instruction": text.format(i=i), "output": f"def t(n): return n*(n+1)//2  # {i}"}
            for i in range(n)]


def test_each_request_carries_one_method_uniformly(tmp_path):
    n = 600
    with StubLLM() as stub:
        evolve(seeds(n), str(tmp_path), llm(stub, concurrency=32), EvolConfig(rounds=1, seed=3,
                                                                              equality_check=False))
        evo = stub.prompts("evolve")
    assert len(evo) == n
    counts = collections.Counter()
    for p in evo:
        present = [name for name, text in CODE_METHODS.items() if text in p]
        assert len(present) == 1, p
        counts[present[0]] += 1
    e = n / 5
    assert sum((c - e) ** 2 / e for c in counts.values()) < CHI2_DF4_P001, counts
    # the journal names the method the request carried
    by_q = {question_of(p): p for p in evo}
    for rec in read(tmp_path / "round_1.jsonl"):
        seed_text = seeds(n)[int(rec["root_id"][1:])]["instruction"]
        assert CODE_METHODS[rec["method"]] in by_q[seed_text]


CRAFTED = {  # tag -> (kind to script, scripted text, rule it must trigger)
    "TAGEQUAL": ("equal", "Equal", "equal"),
    "TAGSORRY": ("answer", "I'm sorry, but I can't help with that.", "sorry"),
    "TAGSTOP": ("answer", "It is what it is, and that is all.", "stopwords"),
    "TAGCOPY": ("evolve", "#Rewritten Prompt#:\nSort the list.", "copied"),
    "TAGEMPTY": ("evolve", "   ", "empty"),
    "TAGLONG": ("evolve", "Sort the list. " * 100, "too_long"),
    "TAGTRUNC": ("answer", {"text": "def f(xs):\n    return sor", "finish_reason": "length"}, "too_long"),
    "TAGSAME": ("evolve", None, "equal"),  # echoes its parent word for word: equal without asking
}


def test_each_elimination_rule_fires_and_the_parent_returns_to_the_pool(tmp_path):
    fired = collections.Counter()
    lock = threading.Lock()

    def responder(kind, prompt):
        for tag, (k, text, _) in CRAFTED.items():
            if tag in prompt and kind == k:
                with lock:  # only the first attempt of each lineage is sabotaged
                    fired[tag] += 1
                    if fired[tag] > 1:
                        return None
                return question_of(prompt) if tag == "TAGSAME" else text
        return None

    tags = list(CRAFTED) + ["TAGOK"]
    seed = [{"id": t, "instruction": f"Sort the list of integers ({t}) in ascending order.", "output": "sorted(x)"}
            for t in tags]
    with StubLLM(responder=responder) as stub:
        summary = evolve(seed, str(tmp_path), llm(stub), EvolConfig(rounds=2, rules=RuleConfig(
            max_instruction_chars=1000)))
        evo_prompts = stub.prompts("evolve")
    r1 = {r["root_id"]: r for r in read(tmp_path / "round_1.jsonl")}
    r2 = {r["root_id"]: r for r in read(tmp_path / "round_2.jsonl")}
    for tag, (_, _, rule) in CRAFTED.items():
        assert r1[tag]["status"] == "eliminated" and r1[tag]["rule"] == rule, (tag, r1[tag])
        # back in the pool: round 2 evolves the seed again, and that evolution survives
        assert r2[tag]["parent_id"] == tag and r2[tag]["status"] == "accepted"
        seed_text = next(s["instruction"] for s in seed if s["id"] == tag)
        assert sum(question_of(p) == seed_text for p in evo_prompts) == 2
    assert r1["TAGOK"]["status"] == "accepted" and r2["TAGOK"]["parent_id"] == "TAGOK.r1"
    rules = collections.Counter(rule for _, _, rule in CRAFTED.values())
    assert summary["rounds"][0]["eliminated"] == {**{k: 0 for k in summary["rounds"][0]["eliminated"]}, **rules}
    merged = read(tmp_path / "merged.jsonl")
    ids = [r["id"] for r in merged]
    assert ids == tags + ["TAGOK.r1"] + [f"{t}.r2" for t in tags]  # seed order, round by round
    for r in merged:
        if r["round"]:
            assert r["model"] == "stub-model" and r["method"] in CODE_METHODS and r["parent_id"]


def test_429_and_5xx_are_retried_and_the_result_is_unchanged(tmp_path):
    faults = [(429, "0"), 500, 503, 429, 502, (429, "0")]
    with StubLLM() as stub:
        evolve(seeds(8), str(tmp_path / "clean"), llm(stub, concurrency=4), EvolConfig(rounds=2))
    with StubLLM(faults=faults) as stub:
        summary = evolve(seeds(8), str(tmp_path / "faulty"), llm(stub, concurrency=4), EvolConfig(rounds=2))
        statuses = collections.Counter(st for _, _, st in stub.requests)
    assert statuses[429] == 3 and statuses[500] + statuses[502] + statuses[503] == 3
    assert summary["complete"] and summary["total"]["retries"] == len(faults)
    assert (tmp_path / "clean" / "merged.jsonl").read_bytes() == (tmp_path / "faulty" / "merged.jsonl").read_bytes()


def test_retry_after_is_honoured():
    import asyncio

    async def go(stub):
        async with LLMClient(llm(stub)) as c:
            t0 = time.perf_counter()
            out = await c.complete("hello")
            return out, time.perf_counter() - t0

    with StubLLM(faults=[(429, "0.6")]) as stub:
        out, dt = asyncio.run(go(stub))
    assert out.retries == 1 and out.text == default_answer("answer", "hello")
    assert dt >= 0.6


def test_a_request_over_the_timeout_is_retried_then_named():
    import asyncio

    async def go(stub):
        # 0.5 s: time enough to connect on a loaded machine (a loopback connect starved past 0.2 s under the full
        # suite read as ConnectTimeout), still well under the reply's delay
        async with LLMClient(llm(stub, timeout_s=0.5, max_retries=1)) as c:
            await c.complete("hello")

    with StubLLM(delay=2.0) as stub:
        t0 = time.perf_counter()
        with pytest.raises(LLMUnreachableError, match=r"gave up after 2 tries \(ReadTimeout.*run the same command again"):
            asyncio.run(go(stub))
        assert time.perf_counter() - t0 < 3


def test_retries_run_out_with_a_clear_error(tmp_path):
    with StubLLM(faults=[500] * 50) as stub:
        with pytest.raises(Exception, match=r"gave up after 3 tries \(HTTP 500.*run the same command again"):
            evolve(seeds(1), str(tmp_path), llm(stub, max_retries=2), EvolConfig(rounds=1))
    assert json.loads((tmp_path / "summary.json").read_text())["complete"] is False


def test_wrong_api_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_TEST_KEY", "wrong")
    with StubLLM(api_key="right") as stub:
        with pytest.raises(LLMAuthError, match=r"refused the API key \(HTTP 401: Incorrect API key.*EVOL_TEST_KEY"):
            evolve(seeds(2), str(tmp_path / "a"), llm(stub, api_key_env="EVOL_TEST_KEY"), EvolConfig(rounds=1))
        assert stub.prompts() == []  # failed at the preflight, before any completion
        monkeypatch.setenv("EVOL_TEST_KEY", "right")
        s = evolve(seeds(2), str(tmp_path / "a"), llm(stub, api_key_env="EVOL_TEST_KEY"), EvolConfig(rounds=1))
    assert s["complete"] and s["total"]["accepted"] == 2


def test_a_key_is_sent_only_when_its_variable_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "not-ours")  # the client must not fall back to it
    monkeypatch.delenv("EVOL_TEST_KEY", raising=False)
    with StubLLM() as stub:
        evolve(seeds(1), str(tmp_path / "none"), llm(stub, api_key_env="EVOL_TEST_KEY"), EvolConfig(rounds=1))
        evolve(seeds(1), str(tmp_path / "off"), llm(stub, api_key_env=None), EvolConfig(rounds=1))
        assert stub.authorization == {None}
        monkeypatch.setenv("EVOL_TEST_KEY", "k1")
        evolve(seeds(1), str(tmp_path / "k1"), llm(stub, api_key_env="EVOL_TEST_KEY"), EvolConfig(rounds=1))
        assert stub.authorization == {None, "Bearer k1"}


def test_unreachable_endpoint_is_a_clear_error(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    cfg = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=None)
    t0 = time.perf_counter()
    with pytest.raises(LLMUnreachableError, match=rf"cannot reach the LLM endpoint http://127.0.0.1:{port}/v1"):
        evolve(seeds(2), str(tmp_path), cfg, EvolConfig(rounds=1))
    assert time.perf_counter() - t0 < 10


def test_completion_style_and_token_accounting(tmp_path):
    fmt = "### Instruction:\n{prompt}\n\n### Response:"
    with StubLLM() as stub:
        s = evolve(seeds(6), str(tmp_path), llm(stub, style="completion", prompt_format=fmt), EvolConfig(rounds=2))
        reqs = list(stub.requests)
    assert {route for route, _, _ in reqs} == {"/v1/completions"}
    assert all(b["prompt"].startswith("### Instruction:\n") and b["model"] == "stub-model" for _, b, _ in reqs)
    # the stub counts whitespace words; our totals must equal its bookkeeping, recomputed here from the requests
    prompt_tokens = sum(len(b["prompt"].split()) for _, b, _ in reqs)
    completion_tokens = sum(len(default_answer(prompt_kind(b["prompt"]), b["prompt"]).split()) for _, b, _ in reqs)
    assert s["total"]["prompt_tokens"] == prompt_tokens and s["total"]["completion_tokens"] == completion_tokens
    assert s["total"]["requests"] == len(reqs) == 6 * 2 * 3  # evolve + equality check + answer


@pytest.mark.slow
def test_against_wizardcoder_serve(tmp_path):
    """The local option: the project's own OpenAI-compatible server over a tiny random checkpoint, through the
    Python API (chat) and the `wizardcoder evolve` command (completion style). Its answers are random text, so the
    protocol and the bookkeeping are checked: every request answered, token counts the server's, and answers cut at
    --llm-max-tokens reported with finish_reason "length", so the too-long rule fires on them."""
    import subprocess

    from _serve import save_tiny_checkpoint, serve
    from _util import PYTHON, REPO, repo_env

    ckpt = save_tiny_checkpoint(str(tmp_path / "tiny-evol"))
    seed_file = tmp_path / "seed.jsonl"
    seed_file.write_text("".join(json.dumps(r) + "\n" for r in seeds(3)))
    with serve("--model", ckpt, "--max-len", "512") as (base, _):
        cfg = LLMConfig(base_url=base + "/v1", model="tiny-evol", api_key_env=None, style="chat", max_tokens=16,
                        concurrency=2)
        s = evolve(seeds(3), str(tmp_path / "chat"), cfg, EvolConfig(rounds=1, equality_check=False))
        assert s["complete"] and s["total"]["attempted"] == 3 and s["total"]["retries"] == 0
        assert s["total"]["requests"] >= 3 and s["total"]["completion_tokens"] > 0
        rounds = read(tmp_path / "chat" / "round_1.jsonl")
        assert all(r["status"] in ("accepted", "eliminated") for r in rounds) and len(rounds) == 3
        r = subprocess.run([PYTHON, "-m", "wizardcoder", "evolve", "--data", str(seed_file), "--out",
                            str(tmp_path / "cli"), "--rounds", "1", "--no-equality-check", "--no-hygiene",
                            "--no-progress", "--llm-base-url", base + "/v1", "--llm-model", "tiny-evol",
                            "--llm-api-key-env", "", "--llm-style", "completion", "--llm-max-tokens", "16",
                            "--concurrency", "2"], cwd=REPO, env=repo_env(), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert s["complete"] and s["total"]["attempted"] == 3 and s["total"]["completion_tokens"] > 0
    # 16 random tokens never end on their own: each answer is cut at the limit and the too-long rule says so
    r1 = read(tmp_path / "cli" / "round_1.jsonl")
    assert [x.get("rule") for x in r1] == ["too_long"] * 3, r1


def test_more_rounds_extend_a_finished_run(tmp_path):
    with StubLLM() as stub:
        evolve(seeds(10), str(tmp_path / "fresh"), llm(stub), EvolConfig(rounds=3))
        evolve(seeds(10), str(tmp_path / "ext"), llm(stub), EvolConfig(rounds=1))
        n_before = len(stub.prompts("evolve"))
        s = evolve(seeds(10), str(tmp_path / "ext"), llm(stub), EvolConfig(rounds=3))
        assert len(stub.prompts("evolve")) - n_before == 20  # only rounds 2 and 3 were asked for
    assert s["complete"] and [r["attempted"] for r in s["rounds"]] == [10, 10, 10]
    assert (tmp_path / "ext" / "merged.jsonl").read_bytes() == (tmp_path / "fresh" / "merged.jsonl").read_bytes()
