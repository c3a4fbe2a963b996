"""The engine against transformers' generate (greedy), plain SDPA (shared-prefix attention), reference sampling
distributions, and itself (seeded samples do not depend on what shares the batch); continuous batching by counts."""
import math

import pytest
import torch

from wizardcoder import StarCoder, StarCoderConfig
from wizardcoder.engine import Engine, SamplingParams
from wizardcoder.engine.attention import cascade_decode_attention, decode_attention_full, row_attention
from wizardcoder.errors import ConfigError
from wizardcoder.engine.params import sample_key
from wizardcoder.engine.sampler import sample_rows

CFG = StarCoderConfig(vocab_size=211, n_positions=128, n_embd=48, n_layer=2, n_head=4)
PROMPTS = [[5, 9, 13, 2, 7, 1, 8], [3], [100, 200, 44, 17], [7, 19, 23, 99, 4, 61, 62, 63, 64, 65, 66]]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds hand-offs, and on a busy machine they dominate."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return StarCoder.from_config(CFG, seed=11).eval()


def tokens(completions):
    return [[c.token_ids for c in per_prompt] for per_prompt in completions]


def test_greedy_matches_transformers_generate(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    model.save_pretrained(str(tmp_path))
    hf = transformers.GPTBigCodeForCausalLM.from_pretrained(str(tmp_path)).eval()
    refs = [hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=20,
                        do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in PROMPTS]
    ours = StarCoder.from_pretrained(str(tmp_path)).eval()
    # n=2 puts a prompt in a shared prompt slot, n=1 in its own row: both paths must give HF's tokens.
    params = [SamplingParams(n=2, max_new_tokens=20), SamplingParams(max_new_tokens=20)] * 2
    out = Engine(ours, max_slots=3, sync_every=3).generate(PROMPTS, params)
    for ref, per_prompt in zip(refs, out):
        assert all(c.token_ids == ref and c.finish_reason == "length" for c in per_prompt)


@pytest.mark.parametrize("multi_query", [True, False])
def test_triton_decode_path_matches_the_torch_path_and_transformers(tmp_path, multi_query):
    """The engine end to end on the Triton cascade kernel (attn_backend="triton"; on CPU in the interpreter): the
    same greedy tokens as its torch path and as HF transformers, for a shared prompt with several samples (a slot
    group wider than a kernel program's rows), prompts of mixed lengths, rows holding their prompt themselves (n=1,
    and a one-token prompt, which is never shared), and rows refilled mid-way (more samples than slots, different
    lengths), with free rows inside the step's rows. MQA (4 query heads per K/V head) and MHA (1); head_dim 16."""
    pytest.importorskip("triton")
    transformers = pytest.importorskip("transformers")
    cfg = dict(vocab_size=211, n_positions=128, n_embd=64, n_layer=2, n_head=4, multi_query=multi_query,
               initializer_range=0.2)  # large weights: greedy tokens that vary, so attention errors would show
    ours = {b: StarCoder.from_config(StarCoderConfig(**cfg, attn_backend=b), seed=11).eval()
            for b in ("triton", "torch")}
    ours["torch"].save_pretrained(str(tmp_path))
    hf = transformers.GPTBigCodeForCausalLM.from_pretrained(str(tmp_path)).eval()
    prompts = PROMPTS + [[3, 1], [9] * 20]
    news = [14, 9, 20, 6, 11, 17]
    refs = [hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=k,
                        do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
            for p, k in zip(prompts, news)]
    assert len({t for r in refs for t in r}) > 10
    params = [SamplingParams(n=n, max_new_tokens=k) for n, k in zip([5, 2, 1, 3, 1, 2], news)]
    out = {}
    for backend, model in ours.items():
        engine = Engine(model, max_slots=4, max_prompts=2, sync_every=3)
        assert engine.runner.cache.decode_backend == backend
        engine.scheduler.pow2_rows = True  # as on CUDA: steps also cover free rows (rows in use, rounded up)
        out[backend] = tokens(engine.generate(prompts, params))
    assert out["triton"] == out["torch"]
    for ref, per_prompt in zip(refs, out["triton"]):
        assert per_prompt == [ref] * len(per_prompt)


def cascade_inputs(q, pk, prefix_len, row_prefix, row_len, Lr):
    """What the cache hands cascade_decode_attention: biases, the rows of each slot and each row's place there."""
    P, Lp = pk.shape[0], pk.shape[2]
    groups = [[b for b, p in enumerate(row_prefix.tolist()) if p == s] for s in range(P)]
    Gm = max(len(g) for g in groups)
    flat = torch.tensor([g[i] if i < len(g) else 0 for g in groups for i in range(Gm)]).view(P, Gm)
    pos = torch.tensor([next((p * Gm + g.index(b) for p, g in enumerate(groups) if b in g), -1)
                        for b in range(len(row_prefix))])
    inf = float("-inf")
    prefix_bias = torch.where(torch.arange(Lp)[None] < prefix_len[:, None], 0.0, inf)[:, None, None]
    row_bias = torch.where(torch.arange(Lr)[None] < row_len[:, None], 0.0, inf)[:, None, None]
    return prefix_bias, flat, pos.clamp(min=0), torch.where(pos >= 0, 0.0, inf)[:, None, None], row_bias


@pytest.mark.parametrize("n_kv", [1, 2])
def test_cascade_attention_matches_sdpa_over_the_concatenation(n_kv):
    """Each row against its own prompt slot and its own keys only, merged by log-sum-exp: SDPA over the
    concatenation, for rows sharing a slot, alone in one, with their prompt in their own keys, and an empty slot."""
    g = torch.Generator().manual_seed(0)
    B, Hq, D, P, Lp, Lr = 5, 4, 16, 3, 9, 6
    q = torch.randn(B, Hq, D, generator=g)
    pk, pv = torch.randn(P, n_kv, Lp, D, generator=g), torch.randn(P, n_kv, Lp, D, generator=g)
    rk, rv = torch.randn(B, n_kv, Lr, D, generator=g), torch.randn(B, n_kv, Lr, D, generator=g)
    prefix_len = torch.tensor([9, 4, 0])
    row_prefix = torch.tensor([0, 1, 0, -1, 0])  # row 3 has its prompt in its own keys; slot 2 is empty
    row_len = torch.tensor([1, 3, 6, 5, 2])
    args = cascade_inputs(q, pk, prefix_len, row_prefix, row_len, Lr)
    out = cascade_decode_attention(q[:, None], pk, pv, args[0], args[1], args[2], args[3], rk, rv, args[4], 0.3)[:, 0]
    for b in range(B):
        p = int(row_prefix[b])
        n = int(prefix_len[p]) if p >= 0 else 0
        ref = decode_attention_full(q[b], pk[max(p, 0)], pv[max(p, 0)], n, rk[b], rv[b], int(row_len[b]), 0.3)
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)
    rmask = torch.arange(Lr)[None] < row_len[:, None]
    own = row_attention(q[:, None], rk, rv, rmask, scale=0.3)[:, 0]  # no prompt slot: the row's keys alone
    for b in range(B):
        ref = decode_attention_full(q[b], pk[0], pv[0], 0, rk[b], rv[b], int(row_len[b]), 0.3)
        torch.testing.assert_close(own[b], ref, atol=1e-5, rtol=1e-5)


def test_seeded_samples_do_not_depend_on_the_batch_or_on_prompt_sharing(model):
    mine = SamplingParams(n=5, temperature=0.9, top_p=0.9, top_k=50, max_new_tokens=12, seed=1234)
    alone = Engine(model, max_slots=5, sync_every=4).generate([PROMPTS[0]], mine)
    others = [SamplingParams(n=3, temperature=1.3, max_new_tokens=7, seed=5), SamplingParams(max_new_tokens=9),
              mine, SamplingParams(n=2, temperature=0.5, top_k=3, max_new_tokens=15)]
    crowded = Engine(model, max_slots=4, sync_every=3, max_prompts=2).generate(
        [PROMPTS[2], PROMPTS[1], PROMPTS[0], PROMPTS[3]], others)
    unshared = Engine(model, max_slots=7, sync_every=5, share_prompts=False).generate([PROMPTS[0]], mine)
    assert tokens(alone)[0] == tokens(crowded)[2] == tokens(unshared)[0]
    assert len({tuple(t) for t in tokens(alone)[0]}) > 1  # the samples differ from each other
    other_seed = Engine(model, max_slots=5).generate([PROMPTS[0]], SamplingParams(**{**mine.__dict__, "seed": 99}))
    assert tokens(other_seed) != tokens(alone)


def reference_probs(logits, temperature, top_k, top_p):
    """softmax(logits / T) restricted to the top-k, then to the nucleus of the renormalised rest (HF's order)."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    mass, kept = 0.0, 0
    total = p[order[: top_k or len(p)]].sum()
    for i in order.tolist():
        if (top_k and kept >= top_k) or mass >= top_p:
            break
        keep[i], mass, kept = True, mass + float(p[i] / total), kept + 1
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8),
                                                     (0.8, 6, 0.9)])
def test_token_frequencies_follow_the_reference_distribution(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(12, generator=g) * 1.5
    ref = reference_probs(logits, temperature, top_k, top_p)
    N = 40000  # rows = independent draws: sample i of request seed 3 at step 0, and sample 0 at step i
    keys = torch.tensor([sample_key(3, i) for i in range(N // 2)] + [sample_key(4, 0)] * (N // 2))
    steps = torch.cat([torch.zeros(N // 2, dtype=torch.long), torch.arange(N // 2)])
    draws = sample_rows(logits.expand(N, -1), torch.full((N,), temperature), torch.full((N,), top_p),
                        torch.full((N,), top_k), keys, steps)
    freq = torch.bincount(draws, minlength=12).double() / N
    assert (freq[ref == 0] == 0).all()  # nothing outside the top-k / nucleus
    # each frequency within 5 binomial standard deviations of its probability
    sd = (ref * (1 - ref) / N).sqrt()
    assert ((freq - ref).abs() <= 5 * sd + 1e-9).all(), (freq, ref)
    chi2 = float((((freq - ref) ** 2) / ref.clamp_min(1e-12))[ref > 0].sum() * N)
    dof = int((ref > 0).sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof) + 5


def test_rows_with_different_settings_share_one_batch():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]]).expand(4, -1)
    keys = torch.tensor([sample_key(1, i) for i in range(4)])
    out = sample_rows(logits, torch.tensor([0.0, 1.0, 1.0, 5.0]), torch.tensor([1.0, 1.0, 0.5, 1.0]),
                      torch.tensor([0, 1, 0, 0]), keys, torch.zeros(4, dtype=torch.long))
    assert out[:3].tolist() == [0, 0, 0]  # greedy; top_k 1; top_p 0.5 (token 0 alone holds 0.61)


def test_continuous_batching_refills_a_finished_slot_at_once(model):
    """Two slots; one 40-token sample and four 4-token ones. Refilling keeps both slots busy: 40 decode steps in
    all (a static batch of two would run 40 + 4 + 4 = 48 steps, with the short ones paired behind the long one)."""
    engine = Engine(model, max_slots=2, sync_every=8)
    params = [SamplingParams(max_new_tokens=40)] + [SamplingParams(max_new_tokens=4)] * 4
    out = engine.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3], PROMPTS[0]], params)
    assert [len(c[0].token_ids) for c in out] == [40, 4, 4, 4, 4]
    assert engine.stats.decode_steps == 40
    assert engine.stats.row_steps == engine.stats.generated_tokens == 56


def test_eos_ends_a_sample_with_reason_stop(model):
    free = Engine(model).generate([PROMPTS[0]], SamplingParams(max_new_tokens=12))[0][0].token_ids
    eos = free[4]
    cut = Engine(model, eos_id=eos).generate([PROMPTS[0]], SamplingParams(max_new_tokens=12))[0][0]
    assert cut.token_ids == free[: free.index(eos)] and cut.finish_reason == "stop"


def test_stop_strings_cut_text_and_tokens(starcoder_tokenizer_dir):
    from wizardcoder import Tokenizer

    tok = Tokenizer.from_pretrained(starcoder_tokenizer_dir)
    m = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size).eval()
    engine = Engine(m, tok, max_slots=4, max_len=64, sync_every=8)
    free = engine.generate(["def add(a, b):\n"], SamplingParams(max_new_tokens=30))[0][0]
    assert free.text == tok.decode(free.token_ids)
    stop = free.text[10:13]
    cut = engine.generate(["def add(a, b):\n"], SamplingParams(max_new_tokens=30, stop=["zzzz", stop]))[0][0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)] and stop in tok.decode(cut.token_ids)
    assert stop not in tok.decode(cut.token_ids[:-1])


def test_a_bad_request_fails_alone_and_abort_frees_its_slots(model):
    engine = Engine(model, max_slots=2, max_len=32)
    good = engine.add_request(PROMPTS[0], SamplingParams(max_new_tokens=5))
    for bad, params in [([], SamplingParams()), ([1] * 30, SamplingParams(max_new_tokens=5)), ([999], SamplingParams())]:
        with pytest.raises(ConfigError):
            engine.add_request(bad, params)
    with pytest.raises(ConfigError):
        SamplingParams(temperature=float("nan"))
    with pytest.raises(ConfigError):
        SamplingParams(seed="abc")
    doomed = engine.add_request(PROMPTS[2], SamplingParams(n=3, temperature=1.0, max_new_tokens=20))
    outs = engine.step()  # runs 5 steps: the good request finishes, the other stays mid-way
    assert {o.request_id for o in outs} == {good, doomed}
    engine.abort(doomed)
    finished = [o for o in outs if o.finished]
    while engine.has_unfinished():
        finished += [o for o in engine.step() if o.finished]
    assert [(o.request_id, len(o.token_ids)) for o in finished] == [(good, 5)]
    assert engine.num_waiting() == 0 and engine.scheduler.free_prompt_slots  # the aborted request's prompt slot is back


@pytest.mark.slow
def test_compiled_steps_match_eager_steps_on_cpu(model):
    """`compile="compile"` on CPU (inductor, one compile per decode shape): the same tokens as eager steps, greedy and
    seeded with top-k / top-p (the sampler's CPU cut writes its buffers in ways compile must take)."""
    params = [SamplingParams(n=3, temperature=0.9, top_p=0.9, max_new_tokens=20, seed=1), SamplingParams(max_new_tokens=16),
              SamplingParams(n=2, temperature=1.2, top_k=20, top_p=0.95, max_new_tokens=24, seed=2)]
    compiled = Engine(model, max_slots=4, sync_every=4, compile="compile").generate(PROMPTS[:3], params)
    eager = Engine(model, max_slots=4, sync_every=4, compile="off").generate(PROMPTS[:3], params)
    assert tokens(compiled) == tokens(eager)


@pytest.mark.gpu
def test_cuda_graph_steps_match_eager_steps():
    """On CUDA every decode step is a replayed graph: the same tokens as eager steps, greedy and seeded, shared and
    own-row prompts, with slots refilled mid-way (new shapes, new captures)."""
    cfg = StarCoderConfig(vocab_size=211, n_positions=128, n_embd=64, n_layer=2, n_head=4)  # head_dim 16: kernels
    cpu_model = StarCoder.from_config(cfg, seed=11).eval()
    cuda_model = StarCoder.from_config(cfg, seed=11).to("cuda").eval()
    params = [SamplingParams(n=3, temperature=0.9, top_p=0.9, max_new_tokens=30, seed=1), SamplingParams(max_new_tokens=25),
              SamplingParams(n=2, max_new_tokens=40), SamplingParams(n=4, temperature=1.2, top_k=20, max_new_tokens=9, seed=2)]
    graphs = Engine(cuda_model, max_slots=4, sync_every=4)
    eager = Engine(cuda_model, max_slots=4, sync_every=4, compile="off")
    assert graphs.runner.graphs_on and not eager.runner.graphs_on
    a, b = graphs.generate(PROMPTS, params), eager.generate(PROMPTS, params)
    assert tokens(a) == tokens(b) and graphs.runner.graphs  # graphs were captured and replayed
    cpu = Engine(cpu_model, max_slots=4).generate(PROMPTS, [SamplingParams(max_new_tokens=25)] * 4)
    assert tokens(Engine(cuda_model, max_slots=4).generate(PROMPTS, [SamplingParams(max_new_tokens=25)] * 4)) == tokens(cpu)


@pytest.mark.gpu
@pytest.mark.parametrize("n_embd", [64, 256])
def test_triton_decode_path_matches_the_torch_path_on_cuda(n_embd):
    """On CUDA the engine's decode attention is the Triton cascade kernel by default (attn_backend auto), each step a
    captured graph: in fp32 the same greedy and seeded tokens as the torch cascade path (attn_backend="torch") and as
    the CPU engine, for shared prompts, own-row prompts and rows refilled mid-way; head_dim 16 and 64."""
    pytest.importorskip("triton")
    cfg = dict(vocab_size=211, n_positions=128, n_embd=n_embd, n_layer=2, n_head=4, initializer_range=0.2)
    models = {b: StarCoder.from_config(StarCoderConfig(**cfg, attn_backend=b), seed=11).to("cuda").eval()
              for b in ("auto", "torch")}
    params = [SamplingParams(n=3, temperature=0.9, top_p=0.9, max_new_tokens=30, seed=1),
              SamplingParams(max_new_tokens=25), SamplingParams(n=5, max_new_tokens=40),
              SamplingParams(n=4, temperature=1.2, top_k=20, max_new_tokens=9, seed=2)]
    out = {}
    for b, model in models.items():
        engine = Engine(model, max_slots=6, max_prompts=2, sync_every=4)
        assert engine.runner.cache.decode_backend == {"auto": "triton", "torch": "torch"}[b] and engine.runner.graphs_on
        out[b] = tokens(engine.generate(PROMPTS, params))
    assert out["auto"] == out["torch"]
    greedy = [SamplingParams(n=2, max_new_tokens=25), SamplingParams(max_new_tokens=25)] * 2
    cpu = StarCoder.from_config(StarCoderConfig(**cfg), seed=11).eval()
    assert tokens(Engine(models["auto"], max_slots=4).generate(PROMPTS, greedy)) == \
        tokens(Engine(cpu, max_slots=4).generate(PROMPTS, greedy))


def test_deterministic_engine_tiles_rows_and_keeps_samples_whatever_shares_the_batch(model):
    """Batch-invariant mode: the row-tiled linear equals F.linear (to rounding) and is bitwise the same for a row
    whatever the other rows; 80 tokens of a seeded request alone and among others are identical."""
    import torch.nn.functional as F

    from wizardcoder.engine.invariant import tiled_linear

    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(11, 48, generator=g), torch.randn(96, 48, generator=g), torch.randn(96, generator=g)
    torch.testing.assert_close(tiled_linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    assert torch.equal(tiled_linear(x[3:4], w, b), tiled_linear(x, w, b)[3:4])
    mine = SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=80, seed=42)
    alone = Engine(model, max_slots=4, sync_every=4, deterministic=True).generate([PROMPTS[0]], mine)
    others = [SamplingParams(n=3, temperature=1.3, max_new_tokens=70, seed=5), SamplingParams(max_new_tokens=90), mine]
    crowded = Engine(model, max_slots=7, sync_every=3, max_prompts=3, deterministic=True).generate(
        [PROMPTS[2], PROMPTS[1], PROMPTS[0]], others)
    assert tokens(alone)[0] == tokens(crowded)[2] and all(len(t) == 80 for t in tokens(alone)[0])
