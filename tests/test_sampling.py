"""The sampler against full recomputation and transformers' generate (greedy), plus the sampling filters."""
import pytest
import torch

from wizardcoder import StarCoder, StarCoderConfig
from wizardcoder.model import KVCache
from wizardcoder.sampling import SamplingParams, generate_ids, sample_logits, truncate_at_stop

CFG = StarCoderConfig(vocab_size=211, n_positions=128, n_embd=48, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def model():
    return StarCoder.from_config(CFG, seed=11).eval()


def greedy_without_cache(model, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_cached_greedy_matches_recompute_with_left_padding(model):
    prompts = [[5, 9, 13, 2, 7, 1, 8], [3], [100, 200, 44, 17]]
    out = generate_ids(model, prompts, SamplingParams(max_new_tokens=12), eos_id=None)
    for p, o in zip(prompts, out):
        assert o == greedy_without_cache(model, p, 12)


def test_greedy_matches_transformers_generate(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    model.save_pretrained(str(tmp_path))
    hf = transformers.GPTBigCodeForCausalLM.from_pretrained(str(tmp_path)).eval()
    prompt = [7, 19, 23, 99, 4]
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = generate_ids(model, [prompt], SamplingParams(max_new_tokens=10), eos_id=None)[0]
    assert ours == ref[0, len(prompt):].tolist()


def test_cache_prefill_logits_match_full_forward(model):
    ids = torch.randint(0, CFG.vocab_size, (2, 9))
    cache = KVCache(CFG, 2, 16)
    with torch.no_grad():
        a = model(ids[:, :6], kv_cache=cache)
        b = model(ids[:, 6:], kv_cache=cache)
        full = model(ids)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-5)


def test_eos_and_stop_strings(model):
    prompt = [5, 9, 13]
    free = generate_ids(model, [prompt], SamplingParams(max_new_tokens=8), eos_id=None)[0]
    eos = free[3]
    cut = generate_ids(model, [prompt], SamplingParams(max_new_tokens=8), eos_id=eos)[0]
    assert cut == free[: free.index(eos)]
    assert truncate_at_stop("abc\ndef\nclass X", ["\nclass", "\nif"]) == "abc\ndef"
    assert truncate_at_stop("abc", ["zz"]) == "abc"


def test_top_p_and_top_k_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_logits(logits, 1.0, top_p=0.8, generator=g)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8; token 2 is outside the nucleus
    draws = {int(sample_logits(logits, 1.0, top_p=0.81, generator=g)) for _ in range(300)}
    assert draws == {0, 1, 2}
    draws = {int(sample_logits(logits, 1.0, top_k=1, generator=g)) for _ in range(50)}
    assert draws == {0}
    assert int(sample_logits(logits, 0.0)) == 0


def test_sampling_frequencies_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(1)
    logits = probs.log()[None].expand(4000, -1)
    counts = torch.bincount(sample_logits(logits, 1.0, generator=g), minlength=3).float() / 4000
    assert torch.allclose(counts, probs, atol=0.03)


def test_seeded_generation_is_reproducible(model):
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=10)
    a = generate_ids(model, [[1, 2, 3]] * 3, params, None, generator=torch.Generator().manual_seed(5))
    b = generate_ids(model, [[1, 2, 3]] * 3, params, None, generator=torch.Generator().manual_seed(5))
    assert a == b and len({tuple(x) for x in a}) > 1


def test_text_generate_n_per_prompt_and_stop(starcoder_tokenizer_dir):
    from wizardcoder import Tokenizer
    from wizardcoder.sampling import generate

    tok = Tokenizer.from_pretrained(starcoder_tokenizer_dir)
    m = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size).eval()
    prompts = ["def add(a, b):\n", "# sort a list\nimport"]
    out = generate(m, tok, prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=0), batch_size=4)
    assert [len(o) for o in out] == [3, 3]
    greedy = generate(m, tok, prompts, SamplingParams(max_new_tokens=20))
    ids = generate_ids(m, [tok.encode(prompts[0])], SamplingParams(max_new_tokens=20), eos_id=tok.eos_id)[0]
    assert greedy[0][0] == tok.decode(ids)
    stop = greedy[0][0][5:8]
    if stop:
        cut = generate(m, tok, prompts[:1], SamplingParams(max_new_tokens=20, stop=[stop]))[0][0]
        assert cut == greedy[0][0][: greedy[0][0].find(stop)]
