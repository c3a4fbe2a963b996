"""The official `openai` client against a real `wizardcoder serve` subprocess on 127.0.0.1 (a tiny random checkpoint
with the bundled tokenizer). References: a plain-torch greedy loop over the same weights (full forward, argmax, no
cache) and, for sampled requests, the engine run in this process with the same seed."""
import threading

import pytest
import torch

from _serve import save_tiny_checkpoint, serve

openai = pytest.importorskip("openai")  # a bare GPU machine under `make gpu-check` has no openai client: skip there

MAX_LEN = 256


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "wc-tiny"))


@pytest.fixture(scope="module")
def client(ckpt):
    with serve("--model", ckpt, "--max-len", str(MAX_LEN), "--max-slots", "8") as (base, _proc):
        yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ref(ckpt):
    """The checkpoint and tokenizer in this process, and a greedy reference: k argmax tokens, EOS excluded."""
    from wizardcoder import StarCoder, Tokenizer

    model = StarCoder.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = Tokenizer.from_pretrained(ckpt)

    @torch.no_grad()
    def greedy(prompt: str, k: int) -> list[int]:
        ids, out = tok.encode(prompt), []
        for _ in range(k):
            t = int(model(torch.tensor([ids + out]))[0, -1].argmax())
            if t == tok.eos_id:
                break
            out.append(t)
        return out

    return model, tok, greedy


PROMPTS = ["def fibonacci(n):\n", "import numpy as np\n\n# load the data", "class Stack:"]


def test_models_lists_the_checkpoint_folder_name(client):
    assert [m.id for m in client.models.list()] == ["wc-tiny"]
    assert client.models.retrieve("wc-tiny").id == "wc-tiny"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="wc-tiny", prompt="x", max_tokens=0)


def test_completions_greedy_match_the_reference_with_length_and_usage(client, ref):
    _, tok, greedy = ref
    r = client.completions.create(model="wc-tiny", prompt=PROMPTS, max_tokens=8, temperature=0)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2]
    refs = [greedy(p, 8) for p in PROMPTS]
    for c, ids in zip(r.choices, refs):
        assert c.text == tok.decode(ids)
        assert c.finish_reason == ("length" if len(ids) == 8 else "stop")
    assert r.usage.prompt_tokens == sum(len(tok.encode(p)) for p in PROMPTS)
    assert r.usage.completion_tokens == sum(len(ids) for ids in refs)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def _stop_from(tok, ids: list[int]) -> tuple[str, int]:
    """A stop string first seen in the middle of a greedy completion, and how many tokens it takes to complete it."""
    text = tok.decode(ids)
    for k in range(2, len(ids)):
        start = len(tok.decode(ids[:k]))
        stop = text[start:start + 2]
        if len(stop) == 2 and stop.strip() and text.find(stop) == start:
            return stop, next(m for m in range(1, len(ids) + 1) if stop in tok.decode(ids[:m]))
    raise AssertionError(f"no new text in the middle of {text!r}")


def test_stop_string_ends_the_completion_with_stop(client, ref):
    _, tok, greedy = ref
    ids = greedy(PROMPTS[1], 16)
    stop, m = _stop_from(tok, ids)
    text = tok.decode(ids)
    r = client.completions.create(model="wc-tiny", prompt=PROMPTS[1], max_tokens=16, temperature=0, stop=[stop, "@@@@"])
    (c,) = r.choices
    assert c.finish_reason == "stop" and c.text == text[: text.find(stop)]
    assert r.usage.completion_tokens == m  # the tokens generated, through the one that completed the stop string


def test_chat_uses_the_alpaca_template(client, ref):
    from wizardcoder.data.templates import ALPACA

    _, tok, greedy = ref
    msg = "Write a Python function that reverses a string."
    r = client.chat.completions.create(model="wc-tiny", messages=[{"role": "user", "content": msg}], max_tokens=6,
                                       temperature=0)
    (c,) = r.choices
    ids = greedy(ALPACA.prompt(msg), 6)
    assert r.object == "chat.completion" and c.message.role == "assistant"
    assert c.message.content == tok.decode(ids) and c.finish_reason == ("length" if len(ids) == 6 else "stop")
    assert r.usage.prompt_tokens == len(tok.encode(ALPACA.prompt(msg)))
    assert r.usage.completion_tokens == len(ids)


def test_n_seeded_samples_equal_the_engine_alone_while_other_requests_share_the_batch(client, ref):
    from wizardcoder.engine import Engine, SamplingParams

    model, tok, _ = ref
    params = SamplingParams(n=3, temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=10, seed=7)
    (expected,) = Engine(model, tok, max_slots=8, max_len=MAX_LEN).generate([PROMPTS[1]], params)
    others = []  # different sampling settings at the same time: they share the engine's batch

    def other(t):
        try:
            others.append(client.completions.create(model="wc-tiny", prompt=PROMPTS[2], max_tokens=12, temperature=t,
                                                    n=2, seed=1))
        except Exception as e:  # reported by the assertion below
            others.append(e)

    threads = [threading.Thread(target=other, args=(t,)) for t in (0.0, 0.5, 1.3)]
    for t in threads:
        t.start()
    r = client.completions.create(model="wc-tiny", prompt=PROMPTS[1], max_tokens=10, temperature=0.9, top_p=0.95,
                                  n=3, seed=7, extra_body={"top_k": 50})
    for t in threads:
        t.join(120)
    assert len(others) == 3 and all(len(o.choices) == 2 for o in others), others
    assert [c.text for c in r.choices] == [e.text for e in expected], [tok.encode(e.text) for e in expected]
    assert [c.finish_reason for c in r.choices] == [e.finish_reason for e in expected]
    assert r.usage.completion_tokens == sum(len(e.token_ids) for e in expected)


def _collect(chunks, text_of):
    """Stream chunks -> ({index: joined text}, {index: finish_reason}, usage, chunks)."""
    texts, reasons, usage, seen = {}, {}, None, []
    for ch in chunks:
        seen.append(ch)
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + (text_of(c) or "")
            if c.finish_reason is not None:
                assert c.index not in reasons  # one finishing chunk per choice
                reasons[c.index] = c.finish_reason
    return texts, reasons, usage, seen


def test_streaming_completions_send_the_same_text_as_one_answer(client, ref):
    _, tok, greedy = ref
    stop, _ = _stop_from(tok, greedy(PROMPTS[1], 16))
    kw = dict(model="wc-tiny", prompt=[PROMPTS[1], PROMPTS[2]], max_tokens=16, temperature=0.8, n=2, seed=3,
              stop=stop)
    whole = client.completions.create(**kw)
    texts, reasons, usage, chunks = _collect(client.completions.create(**kw, stream=True,
                                                                       stream_options={"include_usage": True}),
                                             lambda c: c.text)
    assert texts == {c.index: c.text for c in whole.choices}
    assert reasons == {c.index: c.finish_reason for c in whole.choices}
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].choices == [] and all(ch.object == "text_completion" for ch in chunks)
    greedy_stream = _collect(client.completions.create(model="wc-tiny", prompt=PROMPTS[1], max_tokens=16,
                                                       temperature=0, stop=stop, stream=True), lambda c: c.text)
    text = tok.decode(greedy(PROMPTS[1], 16))
    assert greedy_stream[0] == {0: text[: text.find(stop)]} and greedy_stream[1] == {0: "stop"}
    assert len(greedy_stream[3]) >= 2  # the text came in pieces, not as one body


def test_streaming_chat_sends_role_then_content_then_finish(client):
    kw = dict(model="wc-tiny", messages=[{"role": "system", "content": "Answer in Python."},
                                         {"role": "user", "content": "Sum a list."}], max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**kw)
    texts, reasons, usage, chunks = _collect(client.chat.completions.create(**kw, stream=True),
                                             lambda c: c.delta.content)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks) and usage is None
    assert chunks[0].choices[0].delta.role == "assistant"
    assert texts == {0: whole.choices[0].message.content}
    assert reasons == {0: whole.choices[0].finish_reason} == {0: "length"} or reasons == {0: "stop"}
