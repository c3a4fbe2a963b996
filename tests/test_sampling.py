"""Sampling settings, the counter-based noise, the simple left-padded KV cache, and the text `generate` API."""
import pytest
import torch

from wizardcoder import StarCoder, StarCoderConfig
from wizardcoder.errors import ConfigError
from wizardcoder.model import KVCache
from wizardcoder.sampling import SamplingParams, fmix32, sample_key, truncate_at_stop, uniform_noise

from test_engine import one_thread  # noqa: F401  (autouse fixture: one intra-op thread for tiny tensors)

CFG = StarCoderConfig(vocab_size=211, n_positions=128, n_embd=48, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def model():
    return StarCoder.from_config(CFG, seed=11).eval()


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=2.5), dict(temperature=-1), dict(temperature=float("inf")),
                                 dict(top_p=0), dict(top_p=1.5), dict(top_k=-1), dict(max_new_tokens=0),
                                 dict(stop=[""]), dict(stop=[3]), dict(seed="abc"), dict(seed=True)])
def test_bad_settings_name_the_field(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_hash_matches_python_ints_and_noise_is_uniform():
    xs = torch.tensor([0, 1, 2**31, 2**32 - 1, 123456789])
    assert fmix32(xs).tolist() == [fmix32(int(x)) for x in xs]  # the tensor and python paths agree
    assert fmix32(0) == 0 and len({fmix32(i) for i in range(1000)}) == 1000  # a bijection
    keys = torch.tensor([sample_key(5, i) for i in range(20000)])
    u = uniform_noise(keys, torch.zeros(20000, dtype=torch.long))
    assert torch.equal(u, uniform_noise(keys, torch.zeros(20000, dtype=torch.long)))
    assert 0 < float(u.min()) and float(u.max()) < 1
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.01)
    later = uniform_noise(keys[:1].expand(20000), torch.arange(20000))  # one sample's stream over its steps
    assert torch.allclose(torch.histc(later, bins=10, min=0, max=1) / 20000, torch.full((10,), 0.1), atol=0.01)
    assert abs(float(torch.corrcoef(torch.stack([u, later]))[0, 1])) < 0.03


def greedy_without_cache(model, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_left_padded_cache_greedy_matches_recompute(model):
    prompts = [[5, 9, 13, 2, 7, 1, 8], [3], [100, 200, 44, 17]]
    P = max(map(len, prompts))
    ids = torch.zeros(3, P, dtype=torch.long)
    mask = torch.zeros(3, P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), True
    cache = KVCache(CFG, 3, P + 8)
    out = [[] for _ in prompts]
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, kv_cache=cache)[:, -1]
        for _ in range(8):
            nxt = logits.argmax(-1)
            for o, t in zip(out, nxt.tolist()):
                o.append(t)
            logits = model(nxt[:, None], kv_cache=cache)[:, -1]
    assert out == [greedy_without_cache(model, p, 8) for p in prompts]


def test_cache_prefill_logits_match_full_forward(model):
    ids = torch.randint(0, CFG.vocab_size, (2, 9))
    cache = KVCache(CFG, 2, 16)
    with torch.no_grad():
        a = model(ids[:, :6], kv_cache=cache)
        b = model(ids[:, 6:], kv_cache=cache)
        full = model(ids)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-5)


def test_truncate_at_stop():
    assert truncate_at_stop("abc\ndef\nclass X", ["\nclass", "\nif"]) == "abc\ndef"
    assert truncate_at_stop("abc", ["zz"]) == "abc"


def test_text_generate_n_per_prompt_and_stop(starcoder_tokenizer_dir):
    from wizardcoder import Tokenizer
    from wizardcoder.sampling import generate

    tok = Tokenizer.from_pretrained(starcoder_tokenizer_dir)
    m = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size).eval()
    prompts = ["def add(a, b):\n", "# sort a list\nimport"]
    out = generate(m, tok, prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=0), batch_size=4)
    assert [len(o) for o in out] == [3, 3] and len(set(out[0])) > 1
    assert out == generate(m, tok, prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=0))
    greedy = generate(m, tok, prompts, SamplingParams(max_new_tokens=20))
    ids = greedy_without_cache(m, tok.encode(prompts[0]), 20)
    if tok.eos_id in ids:
        ids = ids[: ids.index(tok.eos_id)]
    assert greedy[0][0] == tok.decode(ids)
    stop = greedy[0][0][5:8]
    assert len(stop) == 3, f"the greedy text {greedy[0][0]!r} is too short to take a stop string from"
    cut = generate(m, tok, prompts[:1], SamplingParams(max_new_tokens=20, stop=[stop]))[0][0]
    assert cut == greedy[0][0][: greedy[0][0].find(stop)]
