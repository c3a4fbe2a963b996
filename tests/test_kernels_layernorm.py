"""Fused residual-add + LayerNorm (kernels/layernorm.py) against torch: y, r and the gradients of x, residual, weight
and bias, with and without a residual, odd row widths. Kernel error vs a float64 reference <= 2x torch's same-dtype
error + a floor. CPU: Triton interpreter (fp32, fp16); CUDA: compiled, plus bf16."""
import math

import pytest
import torch

pytest.importorskip("triton")

from wizardcoder.kernels.layernorm import add_layer_norm, add_layer_norm_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _run(fn, x, res, w, b, dy, dr, dtype):
    x, w, b = (t.detach().to(dtype).requires_grad_() for t in (x, w, b))
    res = res.detach().to(dtype).requires_grad_() if res is not None else None
    y, r = fn(x, res, w, b, 1e-5)
    loss = (y.double() * dy).sum() + (r.double() * dr).sum()
    ins = [t for t in (x, res, w, b) if t is not None]
    return (y, r, *torch.autograd.grad(loss, ins))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,has_res", [((3, 7, 97), True), ((5, 64), False), ((1, 13, 300), True), ((2, 1, 1000), False)])
def test_add_layer_norm_matches_reference(shape, has_res, dtype):
    g = torch.Generator().manual_seed(0)
    N = shape[-1]
    mk = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc).to(DEVICE)  # noqa: E731
    x, res = mk(*shape, sc=2.0) + 0.5, (mk(*shape) if has_res else None)
    w, b = 1 + mk(N, sc=0.2), mk(N, sc=0.2)
    dy, dr = mk(*shape).double(), mk(*shape).double()
    got = _run(add_layer_norm, x, res, w, b, dy, dr, dtype)
    ref = _run(add_layer_norm_reference, x, res, w, b, dy, dr, torch.float64)
    base = _run(add_layer_norm_reference, x, res, w, b, dy, dr, dtype)
    names = ["y", "r", "dx"] + (["dresidual"] if has_res else []) + ["dweight", "dbias"]
    for name, a, r, c in zip(names, got, ref, base):
        assert a.dtype == dtype and a.shape == r.shape, name
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        assert math.isfinite(err) and err <= 2 * base_err + FLOOR[dtype] * max(1.0, r.abs().max().item()), (name, err, base_err)


def test_no_residual_returns_input_as_residual():
    x = torch.randn(4, 33, device=DEVICE)
    w, b = torch.ones(33, device=DEVICE), torch.zeros(33, device=DEVICE)
    y, r = add_layer_norm(x, None, w, b, 1e-5)
    assert r is x
    assert torch.allclose(y, torch.nn.functional.layer_norm(x, (33,), w, b, 1e-5), atol=1e-5)


def test_custom_ops_fake_tensor_and_schema():
    from wizardcoder.kernels import layernorm as ln

    x, res = torch.randn(6, 40, device=DEVICE), torch.randn(6, 40, device=DEVICE)
    w, b = torch.randn(40, device=DEVICE), torch.randn(40, device=DEVICE)
    torch.library.opcheck(ln._fwd_op, (x, res, w, b, 1e-5, torch.float32), test_utils=("test_schema", "test_faketensor"))
    y, r, mean, rstd = ln._fwd_op(x, res, w, b, 1e-5, torch.float32)
    torch.library.opcheck(ln._bwd_op, (torch.randn_like(y), torch.randn_like(y), r, w, mean, rstd),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("N", [2048, 6144])
def test_gpu_starcoder_widths_bf16(N):
    g = torch.Generator().manual_seed(1)
    M = 4099
    x, res = (torch.randn(M, N, generator=g).cuda() for _ in range(2))
    w, b = (1 + 0.1 * torch.randn(N, generator=g)).cuda(), (0.1 * torch.randn(N, generator=g)).cuda()
    dy, dr = torch.randn(M, N, generator=g).cuda().double(), torch.randn(M, N, generator=g).cuda().double()
    got = _run(add_layer_norm, x, res, w, b, dy, dr, torch.bfloat16)
    ref = _run(add_layer_norm_reference, x, res, w, b, dy, dr, torch.float64)
    base = _run(add_layer_norm_reference, x, res, w, b, dy, dr, torch.bfloat16)
    for name, a, r, c in zip(("y", "r", "dx", "dres", "dw", "db"), got, ref, base):
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        assert err <= 2 * base_err + FLOOR[torch.bfloat16] * max(1.0, r.abs().max().item()), (name, err, base_err)


@pytest.mark.parametrize("has_res", [True, False])
def test_low_precision_block_output_on_fp32_residual_stream(has_res):
    """Autocast's shapes: x (a block output) in the low dtype, the residual stream, weight and bias fp32, the normed
    output in fp32. r is fp32 (torch's promotion), gradients come back in each input's dtype, and everything is
    within 2x of the same torch computation's error against a float64 reference."""
    low = torch.bfloat16 if DEVICE == "cuda" else torch.float16
    g = torch.Generator().manual_seed(5)
    shape, N = (3, 11, 97), 97
    mk = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc).to(DEVICE)  # noqa: E731
    x, res = mk(*shape, sc=2.0), (mk(*shape) if has_res else None)
    w, b = 1 + mk(N, sc=0.2), mk(N, sc=0.2)
    dy, dr = mk(*shape).double(), mk(*shape).double()

    def run(fn, dtypes):
        xx = x.to(dtypes[0]).requires_grad_()
        rr = res.to(dtypes[1]).requires_grad_() if has_res else None
        ww, bb = w.to(dtypes[1]).requires_grad_(), b.to(dtypes[1]).requires_grad_()
        y, r = fn(xx, rr, ww, bb, 1e-5, out_dtype=dtypes[1])
        loss = (y.double() * dy).sum() + (r.double() * dr).sum()
        return (y, r, *torch.autograd.grad(loss, [t for t in (xx, rr, ww, bb) if t is not None]))

    got = run(add_layer_norm, (low, torch.float32))
    base = run(add_layer_norm_reference, (low, torch.float32))
    ref = run(add_layer_norm_reference, (torch.float64, torch.float64))
    names = ["y", "r", "dx"] + (["dresidual"] if has_res else []) + ["dweight", "dbias"]
    for name, a, c, r in zip(names, got, base, ref):
        assert a.dtype == c.dtype, (name, a.dtype, c.dtype)
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        assert err <= 2 * base_err + FLOOR[low] * max(1.0, r.abs().max().item()), (name, err, base_err)
    assert got[0].dtype == torch.float32 and got[2].dtype == low
