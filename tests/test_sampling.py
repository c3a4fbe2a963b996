"""Sampling settings, the counter-based noise, the simple left-padded KV cache, and text in, text out through the\nengine."""
import pytest
import torch

from wizardcoder import StarCoder, StarCoderConfig
from _kv_cache import KVCache
from wizardcoder.errors import ConfigError
from wizardcoder.engine import Engine
from wizardcoder.engine.params import SamplingParams, fmix32, sample_key
from wizardcoder.engine.sampler import truncate_at_stop, uniform_noise

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
    tok = Tokenizer.from_pretrained(starcoder_tokenizer_dir)
    m = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size).eval()

    def generate(model, tok, prompts, params, batch_size=32):
        """Text for text through the engine: the texts of each prompt's samples."""
        return [[c.text for c in per] for per in Engine(model, tok, max_slots=batch_size).generate(prompts, params)]
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


# ------------------------------------------------------------------------------ sort-free top-k / top-p
def kept_set_sorted(logits, top_k, top_p):
    """The sorting reference's kept set for one row `[V]`: sort stably (ties: lower id first), keep the top-k, then
    the tokens whose renormalised mass before them is below top_p (at least one)."""
    x, order = logits.double().sort(descending=True, stable=True)
    rank = torch.arange(x.shape[-1])
    if top_k > 0:
        x = x.masked_fill(rank >= top_k, float("-inf"))
    probs = x.softmax(-1)
    keep = ~((probs.cumsum(-1) - probs >= top_p) & (rank > 0)) & torch.isfinite(x)
    out = torch.zeros_like(keep)
    out[order] = keep
    return out


@pytest.mark.parametrize("radix", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_sort_free_sets_equal_the_sorting_reference(ties, radix):
    """Every row at once, each with its own top-k / top-p, V = 49152, by both ways of finding the cut (the radix
    select's three passes all matter; the CPU's histogram + sorted boundary bucket); with `ties`, logits take 6
    values only, so the nucleus boundary falls inside a run of equal weights and the tie rule (lower token id first)
    decides."""
    from wizardcoder.engine.sampler import keep_top_k_top_p

    g = torch.Generator().manual_seed(3)
    B, V = 12, 49152
    logits = torch.randn(B, V, generator=g) * 3
    if ties:
        logits = logits.round().clamp(-3, 2)
    top_k = torch.tensor([0, 0, 0, 1, 7, 50, 0, 1000, 0, 20000, 5, 0])
    top_p = torch.tensor([0.95, 0.5, 1.0, 1.0, 1.0, 0.9, 0.01, 0.7, 0.999, 0.8, 0.3, 0.123])
    w = torch.exp(logits - logits.amax(-1, keepdim=True))
    kept = keep_top_k_top_p(w, top_k, top_p, radix=radix)
    for b in range(B):
        ref = kept_set_sorted(logits[b], int(top_k[b]), float(top_p[b]))
        assert torch.equal(kept[b], ref), (b, int(kept[b].sum()), int(ref.sum()))
    assert 1 <= int(kept[6].sum()) < int(kept[0].sum()) < V  # the sets are neither trivial nor everything


def kept_set_of_weights(w, top_k, top_p):
    """The reference's kept set on fp32 weights `[V]` themselves (ties: equal floats, lower id first), for rows
    whose logits are so close that distinct logits round to one weight."""
    x, order = w.sort(descending=True, stable=True)
    rank = torch.arange(x.shape[-1])
    x = x.double().masked_fill((rank >= top_k) if top_k > 0 else torch.zeros_like(rank, dtype=torch.bool), 0.0)
    before = (x.cumsum(-1) - x) / x.sum()
    keep = ~((before >= top_p) & (rank > 0)) & ((rank < top_k) if top_k > 0 else True)
    out = torch.zeros_like(keep)
    out[order] = keep
    return out


@pytest.mark.parametrize("radix", [False, True])
def test_cut_at_its_hard_cases(radix):
    """V = 49152, the rows where a cut is hardest to find: nearly flat (logits within 0.001: the whole row in the
    histogram's boundary bucket, weights tied by fp32 rounding), every logit equal (one run of V ties), top_k past V
    and at V - 1, top_p 1 with and without top-k, top-k then a tiny top_p, a row of mostly underflowed weights."""
    from wizardcoder.engine.sampler import keep_top_k_top_p

    g = torch.Generator().manual_seed(13)
    B, V = 10, 49152
    logits = torch.randn(B, V, generator=g)
    logits[0:2] *= 0.001
    logits[2:4] = 0.5
    logits[4] *= 0.001
    logits[9] *= 60
    top_k = torch.tensor([0, 0, 0, 3000, 60000, V - 1, 0, 100, 40, 0])
    top_p = torch.tensor([0.95, 0.3, 0.5, 0.9, 0.95, 1.0, 1.0, 1.0, 0.001, 0.99])
    w = torch.exp(logits - logits.amax(-1, keepdim=True))
    kept = keep_top_k_top_p(w, top_k, top_p, radix=radix)
    for b in range(B):
        ref = kept_set_of_weights(w[b], int(top_k[b]), float(top_p[b]))
        assert torch.equal(kept[b], ref), (b, int(kept[b].sum()), int(ref.sum()))
    assert kept[2].sum() == V // 2 and kept[2, : V // 2].all()  # ties: the lower token ids first
    assert kept[3].sum() == 2700 and kept[3, :2700].all()  # top-k 3000 of the ties, then 0.9 of those
    assert kept[6].all() and kept[5].sum() == V - 1 and 0 < kept[8].sum() < 40


def test_rows_drawn_alone_or_in_a_batch_and_as_the_radix_path_draws():
    """The CPU sampler's work is shaped by the whole batch (its boundary buckets are padded to the widest row), yet
    each row's token is the one it draws alone, and the one drawn over the radix select's set with the same
    uniform (same set, same cumulative sums); greedy rows in between take the argmax."""
    from wizardcoder.engine.sampler import keep_top_k_top_p, sample_rows

    g = torch.Generator().manual_seed(17)
    B, V = 12, 4096
    logits = torch.randn(B, V, generator=g) * torch.tensor([0.3, 3.0, 0.01, 1.0] * 3)[:, None]
    temperature = torch.tensor([0.8, 1.0, 0.0, 2.0, 0.7, 0.0, 1.5, 0.8, 1.0, 0.3, 0.0, 5.0])
    top_k = torch.tensor([0, 50, 0, 0, 7, 0, 5000, 0, 1, 0, 0, 300])
    top_p = torch.tensor([0.95, 1.0, 0.9, 0.5, 0.8, 1.0, 0.99, 0.999, 1.0, 0.9, 0.5, 0.95])
    keys = torch.tensor([sample_key(5, i) for i in range(B)])
    steps = torch.arange(B) * 3
    tokens = sample_rows(logits, temperature, top_p, top_k, keys, steps)
    alone = [int(sample_rows(logits[b : b + 1], temperature[b : b + 1], top_p[b : b + 1], top_k[b : b + 1],
                             keys[b : b + 1], steps[b : b + 1])) for b in range(B)]
    assert tokens.tolist() == alone
    greedy = temperature == 0
    x = logits / torch.where(greedy, 1.0, temperature)[:, None]
    w = torch.exp(x - x.amax(-1, keepdim=True))
    cdf = torch.where(keep_top_k_top_p(w, top_k, top_p, radix=True), w, 0.0).cumsum(-1)
    radix = torch.searchsorted(cdf, uniform_noise(keys, steps)[:, None] * cdf[:, -1:])[:, 0]
    assert tokens.tolist() == torch.where(greedy, logits.argmax(-1), radix).tolist()


def test_sort_free_draws_follow_the_sorting_samplers_distribution():
    """Same logits, same settings: the sort-free sampler and the sorting one draw each token equally often (the
    kept sets agree, so differences are sampling noise only: a two-sample chi-square over the kept tokens)."""
    from wizardcoder.engine.sampler import sample_rows, sample_rows_sorted

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(64, generator=g) * 2
    N = 30000
    keys = torch.tensor([sample_key(11, i) for i in range(N)])
    args = (torch.full((N,), 0.8), torch.full((N,), 0.9), torch.full((N,), 20), keys, torch.zeros(N, dtype=torch.long))
    ours = torch.bincount(sample_rows(logits.expand(N, -1), *args), minlength=64).double()
    ref = torch.bincount(sample_rows_sorted(logits.expand(N, -1), *args), minlength=64).double()
    assert torch.equal(ours > 0, ref > 0)
    both = (ours + ref) > 0
    chi2 = float((((ours - ref) ** 2) / (ours + ref))[both].sum())
    dof = int(both.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, (chi2, dof)


def test_triton_sampler_keeps_the_same_sets_and_draws_the_same_tokens():
    """The Triton kernel (CPU interpreter here) against the torch sort-free sampler (itself held to the sorting
    reference above): every row's kept set, and the token drawn with the same uniform, for rows with their own
    temperature / top-k / top-p, V not a multiple of the block, and tied logits."""
    pytest.importorskip("triton")
    from wizardcoder.kernels.sampling import sample_rows_triton
    from wizardcoder.engine.sampler import keep_top_k_top_p, sample_rows

    g = torch.Generator().manual_seed(9)
    B, V = 16, 300
    logits = torch.randn(B, V, generator=g) * 2
    logits[8:] = logits[8:].round().clamp(-2, 2)  # runs of ties
    temperature = torch.rand(B, generator=g) + 0.5
    top_k = torch.tensor([0, 1, 5, 0, 40, 0, 299, 500] * 2)
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.3, 1.0, 0.999, 0.7, 0.95] * 2)
    keys = torch.tensor([sample_key(2, i) for i in range(B)])
    steps = torch.arange(B)
    tokens, keep = sample_rows_triton(logits, temperature, top_p, top_k, uniform_noise(keys, steps), return_keep=True)
    x = logits / temperature[:, None]
    w = torch.exp(x - x.amax(-1, keepdim=True))
    assert torch.equal(keep, keep_top_k_top_p(w, top_k, top_p))
    assert tokens.tolist() == sample_rows(logits, temperature, top_p, top_k, keys, steps).tolist()
