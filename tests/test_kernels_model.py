"""StarCoder with every fused kernel (attn_backend='triton', kernel_backend='triton') against the same weights on the
torch backends: logits, loss and every parameter gradient, dense and packed, MQA and MHA, in fp32; and the tiny preset
in the trainer's two mixed-precision modes (autocast over fp32 parameters; pure low-precision parameters) against
plain fp32 torch. On CPU the kernels run in the Triton interpreter (fp16 there: its bf16 dots are wrong); on CUDA the
same tests run compiled, in bf16."""
import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from wizardcoder import StarCoder, StarCoderConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = {
    "mqa-tanh": StarCoderConfig(vocab_size=301, n_positions=128, n_embd=64, n_layer=2, n_head=4),
    "mha-erf-hd12": StarCoderConfig(vocab_size=203, n_positions=64, n_embd=36, n_layer=1, n_head=3, multi_query=False,
                                    activation_function="gelu"),
}


def _pair(name):
    cfg = dataclasses.replace(CONFIGS[name], attn_backend="torch", kernel_backend="torch")
    ref = StarCoder.from_config(cfg, device=DEVICE, seed=1)
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for n, p in ref.named_parameters():
            if "ln" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    fast = StarCoder.from_config(dataclasses.replace(cfg, attn_backend="triton", kernel_backend="triton"), device=DEVICE)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _compare(ref, fast, **inputs):
    with torch.no_grad():
        a, b = ref(**inputs), fast(**inputs)
    assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4
    labels = inputs["input_ids"].clone()
    labels[..., :3] = -100
    la, lb = ref(**inputs, labels=labels), fast(**inputs, labels=labels)
    assert abs(la.item() - lb.item()) < 1e-5
    la.backward()
    lb.backward()
    fast_params = dict(fast.named_parameters())
    for n, p in ref.named_parameters():
        assert torch.allclose(p.grad, fast_params[n].grad, atol=2e-5, rtol=1e-3), n


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dense_model_matches_torch_backend(name):
    ref, fast = _pair(name)
    ids = torch.randint(0, ref.config.vocab_size, (2, 17), device=DEVICE)
    _compare(ref, fast, input_ids=ids)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_model_matches_torch_backend(name):
    ref, fast = _pair(name)
    lens = [1, 17, 6]
    cu = torch.tensor([0, 1, 18, 24], dtype=torch.int32, device=DEVICE)
    ids = torch.randint(0, ref.config.vocab_size, (1, sum(lens)), device=DEVICE)
    _compare(ref, fast, input_ids=ids, cu_seqlens=cu, max_seqlen=max(lens))


def test_torch_compile_traces_all_kernels_in_one_graph():
    """The kernels are custom ops with fake implementations inside autograd.Functions: torch.compile traces a chain of
    all four with fullgraph=True (aot_eager here, so no C++ compiler is needed) and gives the eager result."""
    from wizardcoder.kernels.cross_entropy import fused_linear_cross_entropy
    from wizardcoder.kernels.flash_attention import flash_attn_varlen_func
    from wizardcoder.kernels.gelu import bias_gelu
    from wizardcoder.kernels.layernorm import add_layer_norm

    cu = torch.tensor([0, 5, 21], dtype=torch.int32, device=DEVICE)

    def step(q, k, v, w, b, lw, t):
        o = flash_attn_varlen_func(q, k, v, cu, cu, 16, 16).flatten(1)
        y, _ = add_layer_norm(o, o * 0.5, w, b, 1e-5)
        return fused_linear_cross_entropy(bias_gelu(y, b, True), lw, t)

    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEVICE).requires_grad_()  # noqa: E731
    args = (mk(21, 2, 8), mk(21, 1, 8), mk(21, 1, 8), mk(16), mk(16), mk(30, 16), torch.randint(0, 30, (21,), device=DEVICE))
    eager = step(*args)
    g_eager = torch.autograd.grad(eager, args[:6])
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(*args)
    g_comp = torch.autograd.grad(compiled, args[:6])
    assert torch.allclose(eager, compiled)
    assert all(torch.allclose(a, c, atol=1e-6) for a, c in zip(g_eager, g_comp))


# ------------------------------------------------------------------------ mixed precision, the trainer's two modes
def _tiny(backend: str, seed: int = 0) -> StarCoder:
    """`StarCoder.from_preset("tiny")` (vocab 49153, d 64, 2 layers, MQA) with non-trivial LayerNorm and bias values."""
    model = StarCoder.from_preset("tiny", device=DEVICE, seed=seed, attn_backend=backend, kernel_backend=backend)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in model.named_parameters():
            if "ln" in n or n.endswith("bias"):
                p.add_((torch.randn(p.shape, generator=g) * 0.1).to(DEVICE))
    return model


def _loss_and_grads(model, batch, autocast_dtype=None):
    """The trainer's step: forward (under autocast when asked), backward outside it; fp32 copies of loss and grads."""
    with torch.autocast(DEVICE, dtype=autocast_dtype or torch.float16, enabled=autocast_dtype is not None):
        loss = model(**batch)
    loss.backward()
    return {"loss": loss.detach().float().reshape(1), **{n: p.grad.float() for n, p in model.named_parameters()}}


LOW = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 dots are wrong (Triton 3.6)
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1e-2}  # of each tensor's scale, on top of 2x torch's error
TOL = {torch.float16: 2e-2, torch.bfloat16: 8e-2}  # sanity bound on the error vs fp32, of each tensor's scale


@pytest.mark.parametrize("mode", ["autocast", "pure"])
def test_tiny_model_mixed_precision_matches_fp32_torch(mode):
    """Every kernel on, under `mode` = autocast over fp32 parameters or pure low-precision parameters, against plain
    torch in fp32: the loss and every parameter gradient. Rule (flash-attn's): the fused model's error is at most 2x
    the error of plain torch run the same way (same autocast / same parameter dtype), plus a small floor; and both
    stay within low-precision tolerance of fp32."""
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 3, 20], dtype=torch.int32, device=DEVICE)  # a 17-token document crosses the tiles
    ids = torch.randint(0, 49153, (1, 20), generator=g).to(DEVICE)
    labels = ids.clone()
    labels[0, :2] = -100  # prompt tokens carry no loss
    batch = dict(input_ids=ids, cu_seqlens=cu, max_seqlen=17, labels=labels)
    ref = _loss_and_grads(_tiny("torch"), batch)
    if mode == "autocast":
        same, fused = (_loss_and_grads(_tiny(b), batch, LOW) for b in ("torch", "triton"))
    else:
        same, fused = (_loss_and_grads(_tiny(b).to(LOW), batch) for b in ("torch", "triton"))
    for name, r in ref.items():
        scale = max(r.abs().max().item(), 1e-3)
        err, base_err = (fused[name] - r).abs().max().item(), (same[name] - r).abs().max().item()
        assert err <= 2 * base_err + FLOOR[LOW] * scale, f"{name}: fused error {err:.3g} > 2 x torch {LOW} error {base_err:.3g}"
        assert err <= TOL[LOW] * scale, f"{name}: fused error {err:.3g} vs fp32 (scale {scale:.3g})"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["autocast", "pure"])
def test_gpu_starcoder_1b_width_bf16_matches_fp32_torch(mode):
    """Two StarCoderBase-1B blocks (d 2048, 16 heads of 128, MQA, vocab 49152) on a 4k-token pack of uneven
    documents, bf16 (autocast over fp32 parameters, or pure bf16 parameters): the widths where LayerNorm takes one row
    per program, attention autotunes its tiles and the loss runs several token chunks; same rule as the tiny test."""
    cfg = StarCoderConfig.from_preset("starcoderbase-1b", n_layer=2)
    lens = [2048, 300, 17, 1, 641, 96, 993]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, sum(lens)), generator=g).cuda()
    batch = dict(input_ids=ids, cu_seqlens=cu, max_seqlen=max(lens), labels=ids)

    def make(backend):
        return StarCoder.from_config(dataclasses.replace(cfg, attn_backend=backend, kernel_backend=backend), device="cuda", seed=0)

    ref = _loss_and_grads(make("torch"), batch)
    if mode == "autocast":
        same, fused = (_loss_and_grads(make(b), batch, torch.bfloat16) for b in ("torch", "triton"))
    else:
        same, fused = (_loss_and_grads(make(b).to(torch.bfloat16), batch) for b in ("torch", "triton"))
    for name, r in ref.items():
        scale = max(r.abs().max().item(), 1e-3)
        err, base_err = (fused[name] - r).abs().max().item(), (same[name] - r).abs().max().item()
        assert err <= 2 * base_err + FLOOR[torch.bfloat16] * scale, f"{name}: fused error {err:.3g} > 2 x torch bf16 error {base_err:.3g}"
