"""The hand-written Llama against transformers' LlamaForCausalLM (the independent reference), fp32 on CPU: tiny random
models made by transformers (GQA 8:2, CodeLlama's rope theta 1e6, DeepSeek-Coder's linear scaling 4, odd MLP widths,
untied and tied heads), loaded through our checkpoint reader; logits, loss and every gradient, dense and packed
(packed against per-document dense runs); saving read back by transformers; load_pretrained's family dispatch."""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from wizardcoder import Llama, LlamaConfig, StarCoder, load_pretrained  # noqa: E402
from wizardcoder.errors import CheckpointError, ConfigError  # noqa: E402
from wizardcoder.llama_config import LLAMA_PRESETS  # noqa: E402

HF_CONFIGS = {
    # CodeLlama-34B's shape in miniature: GQA 8:2, theta 1e6, no scaling, untied head, odd SwiGLU width.
    "codellama-gqa": dict(vocab_size=211, hidden_size=64, intermediate_size=173, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-5),
    # DeepSeek-Coder-33B's: GQA, theta 1e5 with linear scaling 4, eps 1e-6.
    "deepseek-linear4": dict(vocab_size=300, hidden_size=48, intermediate_size=131, num_hidden_layers=3,
                             num_attention_heads=8, num_key_value_heads=2, rope_theta=1e5, rms_norm_eps=1e-6,
                             rope_scaling={"type": "linear", "factor": 4.0}),
    # Plain multi-head with an explicit head_dim and a tied head (Llama-style small models).
    "mha-tied": dict(vocab_size=97, hidden_size=40, intermediate_size=67, num_hidden_layers=2, num_attention_heads=4,
                     head_dim=12, rope_theta=1e4, tie_word_embeddings=True),
}


def make_hf(name: str, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = dict(HF_CONFIGS[name])
    scaling = kwargs.pop("rope_scaling", None)
    theta = kwargs.pop("rope_theta")
    rope = {"rope_type": "default", "rope_theta": theta}
    if scaling:
        rope = {"rope_type": scaling["type"], "factor": scaling["factor"], "rope_theta": theta}
    cfg = transformers.LlamaConfig(max_position_embeddings=512, rope_parameters=rope, attn_implementation="eager",
                                   **kwargs)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial RMSNorm gains, so a misplaced or skipped norm shows
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return hf


@pytest.fixture(scope="module", params=list(HF_CONFIGS))
def pair(request, tmp_path_factory):
    """(ours, transformers') with the same weights: transformers saves, we load."""
    hf = make_hf(request.param)
    folder = tmp_path_factory.mktemp(f"hf-{request.param}")
    hf.save_pretrained(folder)
    ours = load_pretrained(str(folder))
    assert isinstance(ours, Llama)
    ours.config.attn_backend = ours.config.kernel_backend = "torch"
    return ours.eval(), hf


def test_config_read_from_transformers(pair):
    ours, hf = pair
    c, h = ours.config, hf.config
    assert (c.num_key_value_heads, c.head_dim, c.intermediate_size) == (h.num_key_value_heads, h.head_dim, h.intermediate_size)
    assert c.rope_theta == h.rope_parameters["rope_theta"]
    assert c.tie_word_embeddings == h.tie_word_embeddings


def test_logits_match_transformers(pair):
    ours, hf = pair
    ids = torch.randint(0, ours.config.vocab_size, (3, 37))
    with torch.no_grad():
        a, b = ours(ids), hf(ids).logits
    assert a.shape == b.shape == (3, 37, ours.config.vocab_size)
    assert (a - b).abs().max().item() <= 1e-4


def test_long_positions_match_transformers(pair):
    """Positions far from 0 (where a wrong theta or scale shows most): a window starting at position 400."""
    ours, hf = pair
    ids = torch.randint(0, ours.config.vocab_size, (1, 17))
    pos = torch.arange(400, 417)[None]
    with torch.no_grad():
        a, b = ours(ids, position_ids=pos), hf(ids, position_ids=pos).logits
    assert (a - b).abs().max().item() <= 1e-4


def _grads(model, loss):
    names = [n for n, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    return dict(zip(names, grads))


def test_loss_and_every_gradient_match_transformers(pair):
    ours, hf = pair
    ids = torch.randint(0, ours.config.vocab_size, (2, 29))
    labels = ids.clone()
    labels[:, :7] = -100
    labels[1, 20:24] = -100
    a = ours(ids, labels=labels)
    b = hf(ids, labels=labels).loss
    assert abs(a.item() - b.item()) <= 1e-5
    ga, gb = _grads(ours, a), _grads(hf, b)
    assert set(ga) == set(gb)  # HF parameter names, one to one
    for name in gb:
        scale = gb[name].abs().max().item()
        assert scale > 0, name
        assert (ga[name] - gb[name]).abs().max().item() <= 1e-4 * max(1.0, scale), name


def test_packed_matches_per_document_runs(pair):
    """One packed stream of 4 documents = 4 separate transformers runs: logits per token, summed loss, every
    gradient. Positions restart per document, so RoPE must rotate by the document's own positions."""
    ours, hf = pair
    lengths = [5, 13, 1, 9]
    cu = torch.tensor([0, 5, 18, 19, 28], dtype=torch.int32)
    ids = torch.randint(0, ours.config.vocab_size, (1, sum(lengths)))
    loss_ours = ours(ids, cu_seqlens=cu, labels=ids, reduction="sum")
    with torch.no_grad():
        logits = ours(ids, cu_seqlens=cu)
    loss_hf = 0.0
    for i, n in enumerate(lengths):
        doc = ids[:, cu[i] : cu[i + 1]]
        out = hf(doc)
        with torch.no_grad():
            assert (logits[:, cu[i] : cu[i + 1]] - out.logits).abs().max().item() <= 1e-4
        if n > 1:
            loss_hf = loss_hf + torch.nn.functional.cross_entropy(out.logits[0, :-1], doc[0, 1:], reduction="sum")
    assert abs(loss_ours.item() - loss_hf.item()) <= 1e-3
    ga, gb = _grads(ours, loss_ours), _grads(hf, loss_hf)
    for name in gb:
        assert (ga[name] - gb[name]).abs().max().item() <= 1e-4 * max(1.0, gb[name].abs().max().item()), name


def test_left_padded_batch_matches_unpadded_runs(pair):
    ours, hf = pair
    a = torch.randint(0, ours.config.vocab_size, (1, 11))
    b = torch.randint(0, ours.config.vocab_size, (1, 6))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        out = ours(ids, attention_mask=mask)
        assert (out[0] - hf(a).logits[0]).abs().max().item() <= 1e-4
        assert (out[1, 5:] - hf(b).logits[0]).abs().max().item() <= 1e-4


def test_greedy_decode_with_kv_cache_matches_transformers(pair):
    """Prefill + token-by-token decode through the tests' simple KVCache (GQA: Hkv heads cached): every step's logits equal
    transformers' on the whole sequence so far (argmax alone is too forgiving on tiny random models), and the tokens
    equal transformers' greedy generate."""
    from _kv_cache import KVCache

    ours, hf = pair
    prompt = torch.randint(0, ours.config.vocab_size, (1, 7))
    want = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12,
                       pad_token_id=0, eos_token_id=None)[0, 7:].tolist()
    cache = KVCache(ours.config, 1, 32)
    assert cache.k.shape[3] == ours.config.num_key_value_heads
    got, ids, seq = [], prompt, prompt
    with torch.no_grad():
        for _ in range(12):
            step = ours(ids, kv_cache=cache)[0, -1]
            assert (step - hf(seq).logits[0, -1]).abs().max().item() <= 1e-4
            got.append(int(step.argmax()))
            ids = torch.tensor([[got[-1]]])
            seq = torch.cat([seq, ids], 1)
    assert got == want


def test_engine_greedy_matches_transformers_generate(pair):
    """The generation engine (packed prefill, shared-prompt slots with Hydragen decode attention over the GQA cache,
    per-row decode) runs the Llama through the same cache protocol as StarCoder: greedy tokens = transformers'."""
    from wizardcoder.engine import Engine, SamplingParams

    ours, hf = pair
    prompts = [[5, 9, 13, 2, 7, 1, 8], [3], [60, 20, 44, 17]]
    refs = [hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=10,
                        do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    # n=2 puts a prompt in a shared prompt slot, n=1 in its own row: both paths must give transformers' tokens.
    params = [SamplingParams(n=2, max_new_tokens=10), SamplingParams(max_new_tokens=10), SamplingParams(n=2, max_new_tokens=10)]
    out = Engine(ours, max_slots=3, max_len=64, sync_every=3).generate(prompts, params)
    for ref, per_prompt in zip(refs, out):
        assert all(c.token_ids == ref for c in per_prompt)


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    ours, hf = pair
    ours.save_pretrained(str(tmp_path), max_shard_bytes=20_000)  # sharded, with an index
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 19))
    with torch.no_grad():
        assert (back(ids).logits - ours(ids)).abs().max().item() <= 1e-5
    again = Llama.from_pretrained(str(tmp_path))  # and our own reader takes the sharded folder back
    for (n, p), (m, q) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert n == m and torch.equal(p, q), n


def test_row_reader_loading_grows_the_vocabulary_like_resize(pair, tmp_path):
    """load_sharded_ (the per-rank loader, here on an unsharded model: its own shard at row 0) reads what
    from_pretrained reads, and rows for added tokens (WizardCoder-Python's [PAD]) start at the mean of the stored rows
    in both the embedding and the untied head, as resize_token_embeddings makes them."""
    import dataclasses

    from wizardcoder.checkpoint import load_sharded_

    ours, _ = pair
    ours.save_pretrained(str(tmp_path))
    grown_cfg = dataclasses.replace(ours.config, vocab_size=ours.config.vocab_size + 2)
    with torch.device("meta"):
        grown = Llama(grown_cfg)
    grown.to_empty(device="cpu")
    load_sharded_(grown, str(tmp_path))
    want = Llama.from_pretrained(str(tmp_path))
    want.resize_token_embeddings(grown_cfg.vocab_size)
    got, ref = dict(grown.state_dict()), dict(want.state_dict())
    assert set(got) == set(ref)
    for name in ref:
        assert (got[name] - ref[name]).abs().max().item() <= 1e-6, name
    with pytest.raises(CheckpointError, match="needs at most"):
        small = Llama(dataclasses.replace(ours.config, vocab_size=ours.config.vocab_size - 1))
        load_sharded_(small, str(tmp_path))


def test_dtype_and_device_on_load(pair, tmp_path):
    ours, _ = pair
    ours.save_pretrained(str(tmp_path))
    half = Llama.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_load_pretrained_picks_the_family(tmp_path):
    from wizardcoder import StarCoderConfig

    star = StarCoder.from_config(StarCoderConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2), seed=0)
    star.save_pretrained(str(tmp_path / "star"))
    assert isinstance(load_pretrained(str(tmp_path / "star")), StarCoder)
    os.makedirs(tmp_path / "other")
    with open(tmp_path / "other" / "config.json", "w") as f:
        json.dump({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, f)
    with pytest.raises(CheckpointError, match="mistral.*gpt_bigcode.*llama"):
        load_pretrained(str(tmp_path / "other"))


def test_checkpoint_errors_name_the_tensor(pair, tmp_path):
    ours, _ = pair
    ours.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] += 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mlp.*has shape"):
        Llama.from_pretrained(str(tmp_path))


def test_config_refuses_what_it_cannot_compute():
    base = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4).to_dict()
    with pytest.raises(ConfigError, match="rope_scaling type 'dynamic'"):
        LlamaConfig.from_hf_dict({**base, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}})
    with pytest.raises(ConfigError, match="attention_bias"):
        LlamaConfig.from_hf_dict({**base, "attention_bias": True})
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=3)
    # the released checkpoints' legacy spelling reads the same as transformers 5's
    legacy = LlamaConfig.from_hf_dict({"model_type": "llama", "rope_theta": 1e5, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert (legacy.rope_theta, legacy.rope_scale) == (1e5, 4.0)


# Parameter counts of the released models (their model cards / safetensors index totals, in billions, rounded).
RELEASED_B = {"codellama-7b": 6.74, "codellama-13b": 13.02, "codellama-34b": 33.74, "deepseek-coder-6.7b": 6.74,
              "deepseek-coder-33b": 33.34}


@pytest.mark.parametrize("name", list(RELEASED_B))
def test_presets_have_the_released_sizes(name):
    cfg = LLAMA_PRESETS[name]
    with torch.device("meta"):
        model = Llama(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == cfg.num_params()
    assert abs(n / 1e9 - RELEASED_B[name]) <= 0.01, n


def test_generate_verb_loads_a_llama_folder_and_decodes_like_transformers(tmp_path):
    """`wizardcoder generate --model <a Llama checkpoint folder>`: engine.load picks the family from config.json (no
    family branching in generate) and the greedy samples are transformers' greedy tokens."""
    import shutil

    from wizardcoder.cli import main
    from wizardcoder.tokenizer import Tokenizer

    tok = Tokenizer.bundled()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=61, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                   attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(cfg).eval()
    folder = tmp_path / "llama"
    hf.save_pretrained(folder)
    import wizardcoder

    assets = os.path.join(os.path.dirname(wizardcoder.__file__), "assets", "tokenizer")
    for f in os.listdir(assets):
        shutil.copy(os.path.join(assets, f), folder / f)
    prompts = {"a": "def add(a, b):", "b": "import os\nclass Walker:"}
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"task_id": k, "prompt": v}) + "\n" for k, v in prompts.items()))
    out = tmp_path / "s.jsonl"
    assert main(["generate", "--model", str(folder), "--prompts", str(tmp_path / "p.jsonl"), "--prompt-style", "plain",
                 "--max-new-tokens", "16", "--out", str(out), "--no-progress"]) == 0
    got = {r["task_id"]: r["completion"] for r in map(json.loads, out.read_text().splitlines())}
    for task_id, prompt in prompts.items():
        ids = torch.tensor([tok.encode(prompt)])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
        if tok.eos_id in ref:  # the engine stops at EOS; transformers was told not to
            ref = ref[: ref.index(tok.eos_id)]
        assert got[task_id] == tok.decode(ref), task_id


def test_the_whole_pipeline_runs_on_a_llama_folder(tmp_path):
    """`wizardcoder run` with a Llama-family checkpoint folder in place of StarCoder: pack with its tokenizer, train
    it (the trainer, FSDP2 and export through the model protocol), generate from the export, score in the sandbox."""
    import shutil

    import wizardcoder
    from wizardcoder.cli import main
    from wizardcoder.tokenizer import Tokenizer

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=Tokenizer.bundled().vocab_size, hidden_size=32, intermediate_size=61,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 1e6})
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    assets = os.path.join(os.path.dirname(wizardcoder.__file__), "assets")
    for f in os.listdir(os.path.join(assets, "tokenizer")):
        shutil.copy(os.path.join(assets, "tokenizer", f), folder / f)
    run = tmp_path / "run"
    (tmp_path / "run.toml").write_text(f'''
[run]
out = "{run}"
report = false
[pack]
data = ["{assets}/demo_seed.jsonl"]
tokenizer = "{folder}"
seq_len = 128
[train]
model = "{folder}"
max_steps = 4
lr = 3e-3
warmup_steps = 1
progress = false
[generate]
task = "humaneval"
limit = 2
max_new_tokens = 8
[evaluate]
k = [1]
''')
    assert main(["run", str(tmp_path / "run.toml")]) == 0
    with open(run / "train" / "final" / "config.json") as f:
        assert json.load(f)["model_type"] == "llama"
    back = load_pretrained(str(run / "train" / "final"))
    assert isinstance(back, Llama)
    samples = [json.loads(line) for line in (run / "generate" / "samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    summary = json.loads((run / "evaluate" / "summary.json").read_text())
    assert summary["n_samples"] == 2 and 0.0 <= summary["pass@1"] <= 1.0
