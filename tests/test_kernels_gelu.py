"""Fused bias + GELU (kernels/gelu.py), tanh and exact, against torch: output and the gradients of x and bias.
Kernel error vs a float64 reference <= 2x torch's same-dtype error + a floor. CPU: Triton interpreter (fp32, fp16);
CUDA: compiled, plus bf16."""
import math

import pytest
import torch

pytest.importorskip("triton")

from wizardcoder.kernels.gelu import bias_gelu, bias_gelu_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FLOOR = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _run(fn, x, b, dy, approximate, dtype):
    x, b = x.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    y = fn(x, b, approximate)
    return (y, *torch.autograd.grad(y, (x, b), dy.to(dtype)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", [True, False], ids=["tanh", "erf"])
@pytest.mark.parametrize("shape", [(3, 17, 97), (1, 1, 1), (2, 1031)])
def test_bias_gelu_matches_reference(shape, approximate, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) * 3).to(DEVICE)  # wide range: both tails of GELU
    b = torch.randn(shape[-1], generator=g).to(DEVICE)
    dy = torch.randn(*shape, generator=g).to(DEVICE)
    got = _run(bias_gelu, x, b, dy, approximate, dtype)
    ref = _run(bias_gelu_reference, x, b, dy, approximate, torch.float64)
    base = _run(bias_gelu_reference, x, b, dy, approximate, dtype)
    for name, a, r, c in zip(("y", "dx", "dbias"), got, ref, base):
        assert a.dtype == dtype and a.shape == r.shape, name
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        floor = FLOOR[dtype] * max(1.0, r.abs().max().item())
        assert math.isfinite(err) and err <= 2 * base_err + floor, (name, err, base_err)


def test_large_inputs_stay_finite():
    x = torch.tensor([[-1e4, -30.0, 0.0, 30.0, 1e4]], device=DEVICE, requires_grad=True)
    b = torch.zeros(5, device=DEVICE, requires_grad=True)
    for approximate in (True, False):
        y = bias_gelu(x, b, approximate)
        (dx,) = torch.autograd.grad(y.sum(), x)
        assert torch.allclose(y, bias_gelu_reference(x, b, approximate)) and torch.isfinite(dx).all()


def test_custom_op_fake_tensor_and_schema():
    from wizardcoder.kernels import gelu

    x, b = torch.randn(4, 24, device=DEVICE), torch.randn(24, device=DEVICE)
    torch.library.opcheck(gelu._fwd_op, (x, b, True), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(gelu._bwd_op, (torch.randn_like(x), x, b, False), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("approximate", [True, False], ids=["tanh", "erf"])
def test_gpu_starcoder_mlp_width_bf16(approximate):
    """StarCoderBase-1B's MLP activation, 4096 tokens x 8192, bf16, compiled."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(4096, 8192, generator=g) * 3).cuda()
    b, dy = torch.randn(8192, generator=g).cuda(), torch.randn(4096, 8192, generator=g).cuda()
    got = _run(bias_gelu, x, b, dy, approximate, torch.bfloat16)
    ref = _run(bias_gelu_reference, x, b, dy, approximate, torch.float64)
    base = _run(bias_gelu_reference, x, b, dy, approximate, torch.bfloat16)
    for name, a, r, c in zip(("y", "dx", "dbias"), got, ref, base):
        err, base_err = (a.double() - r).abs().max().item(), (c.double() - r).abs().max().item()
        assert err <= 2 * base_err + FLOOR[torch.bfloat16] * max(1.0, r.abs().max().item()), (name, err, base_err)
