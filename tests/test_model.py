"""The hand-written StarCoder against transformers' GPTBigCodeForCausalLM (the independent reference), fp32 on CPU."""
import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

from wizardcoder import StarCoder, StarCoderConfig  # noqa: E402
from wizardcoder.layout import positions_from_cu_seqlens, shift_labels  # noqa: E402

CONFIGS = {
    "mqa-tanh": StarCoderConfig(vocab_size=301, n_positions=64, n_embd=48, n_layer=2, n_head=4),
    "mha-exact": StarCoderConfig(vocab_size=257, n_positions=64, n_embd=40, n_layer=3, n_head=5, multi_query=False, activation_function="gelu"),
    "mqa-odd-inner": StarCoderConfig(vocab_size=1000, n_positions=96, n_embd=36, n_layer=2, n_head=3, n_inner=50, activation_function="gelu"),
    "mha-gelu-new": StarCoderConfig(vocab_size=128, n_positions=32, n_embd=32, n_layer=1, n_head=2, multi_query=False, activation_function="gelu_new"),
}


def hf_model_from_ours(model: StarCoder):
    """Build the HF model from our config and copy our weights into it (through the public HF config)."""
    hf_cfg = transformers.GPTBigCodeConfig(**{k: v for k, v in model.config.to_hf_dict().items() if k not in ("architectures", "model_type")})
    hf = transformers.GPTBigCodeForCausalLM(hf_cfg).eval()
    from wizardcoder.checkpoint import export_state_dict

    missing, unexpected = hf.load_state_dict(export_state_dict(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    return hf


@pytest.fixture(params=list(CONFIGS))
def pair(request):
    torch.manual_seed(0)
    ours = StarCoder.from_config(CONFIGS[request.param], seed=1).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a misplaced parameter shows
        for n, p in ours.named_parameters():
            if "ln" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        ours.transformer.wte.weight[ours.config.vocab_size :].zero_()
    return ours, hf_model_from_ours(ours)


def test_logits_match_transformers(pair):
    ours, hf = pair
    ids = torch.randint(0, ours.config.vocab_size, (3, 29))
    with torch.no_grad():
        a = ours(ids)
        b = hf(ids).logits
    assert a.shape == b.shape == (3, 29, ours.config.vocab_size)
    assert (a - b).abs().max().item() <= 1e-4


def test_loss_with_ignored_labels_matches_transformers(pair):
    ours, hf = pair
    ids = torch.randint(0, ours.config.vocab_size, (2, 23))
    labels = ids.clone()
    labels[:, :9] = -100
    labels[1, 15:18] = -100
    with torch.no_grad():
        a = ours(ids, labels=labels)
        b = hf(ids, labels=labels).loss
    assert abs(a.item() - b.item()) <= 1e-5


def test_gradients_match_transformers(pair):
    ours, hf = pair
    ids = torch.randint(0, ours.config.vocab_size, (2, 13))
    ours(ids, labels=ids).backward()
    hf(ids, labels=ids).loss.backward()
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        g = p.grad
        if name == "transformer.wte.weight":
            g = g[: ours.config.vocab_size]
        assert torch.allclose(g, hf_params[name].grad, atol=1e-5, rtol=1e-4), name


def test_packed_documents_match_separate_runs():
    cfg = CONFIGS["mqa-tanh"]
    model = StarCoder.from_config(cfg, seed=3).eval()
    lengths = [5, 1, 17, 9]
    docs = [torch.randint(0, cfg.vocab_size, (n,)) for n in lengths]
    stream = torch.cat(docs)[None]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    with torch.no_grad():
        packed = model(stream, cu_seqlens=cu)[0]
        for i, d in enumerate(docs):
            alone = model(d[None])[0]
            assert (packed[cu[i] : cu[i + 1]] - alone).abs().max().item() <= 1e-5


def test_packed_loss_never_crosses_documents():
    cfg = CONFIGS["mha-exact"]
    model = StarCoder.from_config(cfg, seed=4).eval()
    lengths = [7, 11, 4]
    docs = [torch.randint(0, cfg.vocab_size, (n,)) for n in lengths]
    cu = torch.tensor([0, 7, 18, 22], dtype=torch.int32)
    stream = torch.cat(docs)[None]
    with torch.no_grad():
        packed = model(stream, cu_seqlens=cu, labels=stream, reduction="sum")
        separate = sum(model(d[None], labels=d[None], reduction="sum") for d in docs)
    assert abs(packed.item() - separate.item()) <= 1e-3
    # The targets at document ends are ignored.
    t = shift_labels(stream, cu)
    assert t[0, [6, 17, 21]].tolist() == [-100, -100, -100]


def test_positions_restart_per_document():
    cu = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
    assert positions_from_cu_seqlens(cu, 8).tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]


def test_left_padded_batch_matches_unpadded_rows():
    cfg = CONFIGS["mqa-tanh"]
    model = StarCoder.from_config(cfg, seed=5).eval()
    a, b = torch.randint(0, cfg.vocab_size, (9,)), torch.randint(0, cfg.vocab_size, (4,))
    ids = torch.stack([a, torch.cat([torch.zeros(5, dtype=torch.long), b])])
    mask = torch.tensor([[1] * 9, [0] * 5 + [1] * 4])
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        assert (out[0] - model(a[None])[0]).abs().max() <= 1e-5
        assert (out[1, 5:] - model(b[None])[0]).abs().max() <= 1e-5


def test_padded_vocab_is_invisible():
    cfg = dataclasses.replace(CONFIGS["mqa-tanh"], vocab_size=301, vocab_multiple=128)
    model = StarCoder.from_config(cfg, seed=0)
    assert model.transformer.wte.weight.shape[0] == 384
    assert model(torch.zeros(1, 3, dtype=torch.long)).shape[-1] == 301


def test_meta_build_then_materialise_has_no_meta_tensors():
    model = StarCoder.from_preset("tiny", seed=0)
    assert not any(p.is_meta for p in model.parameters())
    assert model.config.num_params() == sum(p.numel() for p in model.parameters()) - (
        model.config.padded_vocab_size - model.config.vocab_size
    ) * model.config.n_embd


def test_presets_and_unknown_preset():
    assert StarCoderConfig.from_preset("starcoderbase-1b").n_layer == 24
    w = StarCoderConfig.from_preset("wizardcoder-15b")
    assert (w.n_layer, w.n_embd, w.n_head, w.vocab_size) == (40, 6144, 48, 49153)
    from wizardcoder.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown preset 'starcoder-99b'"):
        StarCoderConfig.from_preset("starcoder-99b")


def test_resize_token_embeddings_adds_mean_rows():
    cfg = dataclasses.replace(CONFIGS["mqa-tanh"], vocab_size=256, vocab_multiple=128)
    model = StarCoder.from_config(cfg, seed=0)
    w0 = model.transformer.wte.weight[:256].clone()
    model.resize_token_embeddings(257)  # crosses the padding multiple: a new, larger matrix
    w = model.transformer.wte.weight
    assert w.shape[0] == 384 and model.config.vocab_size == 257
    assert torch.equal(w[:256], w0) and torch.allclose(w[256], w0.mean(0)) and not w[257:].any()
    assert model(torch.tensor([[256]])).shape[-1] == 257


def test_key_bias_gets_no_gradient():
    """Why the trainer tests leave the key bias out: it shifts every score of a softmax row equally."""
    cfg = CONFIGS["mqa-tanh"]
    model = StarCoder.from_config(cfg, seed=2)
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    model(ids, labels=ids).backward()
    g = model.transformer.h[0].attn.c_attn.bias.grad
    key = g[cfg.n_embd : cfg.n_embd + cfg.head_dim]
    assert key.abs().max() < 1e-6 * g[: cfg.n_embd].abs().max()


@pytest.mark.parametrize("family", ["starcoder", "llama"])
def test_model_protocol_of_both_families(family):
    """What the trainer, FSDP2 wrapping, MFU and the optimizer ask of a model (wizardcoder.protocol), checked against
    the modules themselves: the blocks are the repeated layers; matmul_params() is the weight count of every Linear
    plus the LM head (tied: the embedding's vocab_size rows); the decay groups split the parameters into matrices and
    the rest, each parameter once."""
    from wizardcoder import Llama, LlamaConfig

    if family == "starcoder":
        model = StarCoder.from_config(CONFIGS["mqa-odd-inner"], seed=0)
        layers, head = model.transformer.h, model.config.vocab_size * model.config.n_embd
    else:
        model = Llama.from_config(LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=173,
                                              num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2), seed=0)
        layers, head = model.model.layers, 0  # the untied head is a Linear
    assert [id(b) for b in model.blocks()] == [id(b) for b in layers]
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.config.matmul_params() == linear + head
    decay, rest = (g["params"] for g in model.parameter_groups(0.1))
    assert {id(p) for p in decay} | {id(p) for p in rest} == {id(p) for p in model.parameters()}
    assert all(p.dim() == 2 for p in decay) and all(p.dim() == 1 for p in rest)
    assert [g["weight_decay"] for g in model.parameter_groups(0.1)] == [0.1, 0.0]
