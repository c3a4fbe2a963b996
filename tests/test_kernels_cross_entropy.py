"""Fused linear cross-entropy (kernels/cross_entropy.py) against torch (F.linear + F.cross_entropy): the loss and the
gradients of h and weight, mean and sum, ignored targets, several chunks, all targets ignored. Kernel error vs a
float64 reference <= 2x torch's same-dtype error + a floor. CPU: Triton interpreter (fp32, fp16); CUDA: compiled,
plus bf16."""
import math

import pytest
import torch

pytest.importorskip("triton")

from wizardcoder.kernels.cross_entropy import fused_linear_cross_entropy, linear_cross_entropy_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _run(fn, h, w, t, dtype, reduction, **kw):
    h, w = h.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    loss = fn(h, w, t, reduction=reduction, **kw)
    return (loss, *torch.autograd.grad(loss * 0.7, (h, w)))  # a non-unit upstream gradient


def _data(N, D, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(DEVICE)
    w = (torch.randn(V, D, generator=g) / math.sqrt(D) * 3).to(DEVICE)
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.rand(N, generator=g) < 0.3] = -100
    return h, w, t.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("N,D,V,chunk", [(37, 48, 301, 0), (37, 48, 301, 8), (1, 16, 5, 0), (64, 32, 1000, 16)])
def test_fused_linear_cross_entropy_matches_reference(N, D, V, chunk, reduction, dtype):
    h, w, t = _data(N, D, V)
    got = _run(fused_linear_cross_entropy, h, w, t, dtype, reduction, chunk_size=chunk)
    ref = _run(linear_cross_entropy_reference, h, w, t, torch.float64, reduction)
    base = _run(linear_cross_entropy_reference, h, w, t, dtype, reduction)
    for name, a, r, c in zip(("loss", "dh", "dweight"), got, ref, base):
        assert a.shape == r.shape, name
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        floor = FLOOR[dtype] * max(1.0, r.abs().max().item())
        assert math.isfinite(err) and err <= 2 * base_err + floor, (name, err, base_err)
    assert got[1].dtype == dtype and got[2].dtype == dtype


@pytest.mark.parametrize("accumulate_fp32", [True, False])
def test_grad_weight_accumulation_modes_agree(accumulate_fp32):
    h, w, t = _data(40, 32, 200, seed=1)
    a = _run(fused_linear_cross_entropy, h, w, t, torch.float16, "mean", chunk_size=8, accumulate_fp32=accumulate_fp32)
    r = _run(linear_cross_entropy_reference, h, w, t, torch.float64, "mean")
    assert (a[2].double() - r[2]).abs().max().item() < 1e-3


def test_all_targets_ignored():
    """`sum` gives 0; `mean` gives nan as torch does (0 / 0); gradients are zero in both."""
    h, w, _ = _data(6, 16, 50)
    t = torch.full((6,), -100, device=DEVICE)
    for reduction in ("mean", "sum"):
        loss, dh, dw = _run(fused_linear_cross_entropy, h, w, t, torch.float32, reduction)
        ref = linear_cross_entropy_reference(h, w, t, reduction=reduction)
        assert (math.isnan(loss.item()) and math.isnan(ref.item())) if reduction == "mean" else loss.item() == 0.0
        assert dh.abs().max() == 0 and dw.abs().max() == 0


def test_custom_ignore_index():
    h, w, t = _data(20, 16, 70)
    t = torch.where(t == -100, torch.full_like(t, 3), t)
    a = fused_linear_cross_entropy(h, w, t, ignore_index=3)
    b = linear_cross_entropy_reference(h, w, t, ignore_index=3)
    assert abs(a.item() - b.item()) < 1e-5


def test_custom_op_fake_tensor_and_schema():
    from wizardcoder.kernels import cross_entropy as ce

    h, w, t = _data(12, 16, 40)
    torch.library.opcheck(ce._fwd_op, (h, w, t, -100, True, True, 4), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ce._scale_op, (h.half(), torch.tensor(3.0, device=DEVICE)),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
def test_gpu_starcoder_vocab_bf16():
    """V=49152 over several token chunks, bf16, as in StarCoder training."""
    h, w, t = _data(3000, 256, 49152, seed=2)
    got = _run(fused_linear_cross_entropy, h, w, t, torch.bfloat16, "mean", chunk_size=512)
    ref = _run(linear_cross_entropy_reference, h, w, t, torch.float64, "mean")
    base = _run(linear_cross_entropy_reference, h, w, t, torch.bfloat16, "mean")
    for name, a, r, c in zip(("loss", "dh", "dweight"), got, ref, base):
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        assert err <= 2 * base_err + FLOOR[torch.bfloat16] * max(1.0, r.abs().max().item()), (name, err, base_err)


@pytest.mark.parametrize("chunk", [0, 8])
def test_fp32_master_weight_with_half_h(chunk):
    """Autocast over fp32 parameters: h in the low dtype, the fp32 weight passed as is; the gradient comes back in fp32,
    within 2x of torch's autocast computation (F.linear on a low-precision copy of the weight) of a float64 reference."""
    low = torch.bfloat16 if DEVICE == "cuda" else torch.float16
    h, w, t = _data(37, 48, 301, seed=4)
    hl = h.to(low).requires_grad_()
    w32 = w.clone().requires_grad_()
    loss = fused_linear_cross_entropy(hl, w32, t, chunk_size=chunk)
    got = (loss, *torch.autograd.grad(loss * 0.7, (hl, w32)))
    assert got[1].dtype == low and got[2].dtype == torch.float32
    ref = _run(linear_cross_entropy_reference, h, w, t, torch.float64, "mean")
    hb, wb = h.to(low).requires_grad_(), w.clone().requires_grad_()
    lb = linear_cross_entropy_reference(hb, wb.to(low), t)
    base = (lb, *torch.autograd.grad(lb * 0.7, (hb, wb)))
    for name, a, r, c in zip(("loss", "dh", "dweight"), got, ref, base):
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        assert err <= 2 * base_err + FLOOR[low] * max(1.0, r.abs().max().item()), (name, err, base_err)


def test_backward_hands_its_buffers_over_once():
    """The backward scales the forward's gradients in place and gives them to autograd: a second backward through a
    retained graph is refused with a clear error instead of returning wrong gradients."""
    h, w, t = _data(10, 16, 40)
    h.requires_grad_()
    loss = fused_linear_cross_entropy(h, w, t)
    (g1,) = torch.autograd.grad(loss, h, retain_graph=True)
    ref = linear_cross_entropy_reference(h, w, t)
    (g_ref,) = torch.autograd.grad(ref, h)
    assert torch.allclose(g1, g_ref, atol=1e-6)
    with pytest.raises(RuntimeError, match="once per forward"):
        torch.autograd.grad(loss, h)


def test_loss_scale_beyond_half_range():
    """GradScaler multiplies the loss by 2**16, which is inf in fp16: the scaled gradients (finite) must match torch's."""
    h, w, t = _data(24, 32, 150, seed=6)
    scale = 65536.0
    hl, wl = h.half().requires_grad_(), w.half().requires_grad_()
    loss = fused_linear_cross_entropy(hl, wl, t, chunk_size=8)
    got = torch.autograd.grad(loss * scale, (hl, wl))
    hr, wr = h.double().requires_grad_(), w.double().requires_grad_()
    want = torch.autograd.grad(linear_cross_entropy_reference(hr, wr, t) * scale, (hr, wr))
    for a, r in zip(got, want):
        assert torch.isfinite(a).all()
        assert (a.double() - r).abs().max().item() <= 2e-3 * r.abs().max().item()


def test_no_tokens():
    h = torch.randn(0, 16, device=DEVICE, requires_grad=True)
    w = torch.randn(40, 16, device=DEVICE, requires_grad=True)
    loss = fused_linear_cross_entropy(h, w, torch.zeros(0, dtype=torch.long, device=DEVICE), reduction="sum")
    loss.backward()
    assert loss.item() == 0.0 and h.grad.shape == (0, 16) and w.grad.abs().max() == 0
