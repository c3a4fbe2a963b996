"""wizardcoder/ops.py's mixed-precision policy, op by op: under torch.autocast over fp32 parameters, the fused path
(backend `triton`) returns the dtypes plain torch returns under the same autocast (backend `torch`), and its outputs and
every gradient are within 2x of that torch computation's error against a float64 reference (plus a floor). On CPU the
kernels run in the interpreter under fp16 autocast; on CUDA compiled, under bf16 autocast."""
import math

import pytest
import torch

pytest.importorskip("triton")

from wizardcoder import ops  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOW = torch.bfloat16 if DEVICE == "cuda" else torch.float16
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _mk(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE)


def _cases():
    """name -> (function of (backend, *tensors), fp32 leaf tensors, index of the non-differentiable ones)."""
    T, H, D, N = 21, 2, 16, 48
    cu = torch.tensor([0, 4, 21], dtype=torch.int32, device=DEVICE)
    targets = torch.randint(0, 300, (T,), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    targets[:3] = -100
    return {
        # q, k, v as the model makes them: the output of a linear layer (bf16/fp16 under autocast) from fp32 inputs
        "attention": (lambda be, x, w: ops.attention(*(x @ w).view(T, H + 2, D).split([H, 1, 1], 1), scale=D ** -0.5,
                                                      cu_seqlens=cu, max_seqlen=17, backend=be),
                      [_mk(T, N), _mk(N, (H + 2) * D, scale=N ** -0.5, seed=1)]),
        # the residual stream is fp32 and the block output is the autocast dtype
        "add_layer_norm": (lambda be, x, w, res, lw, lb: ops.add_layer_norm(x @ w, res, lw, lb, 1e-5, be),
                           [_mk(T, N), _mk(N, N, scale=N ** -0.5, seed=1), _mk(T, N, seed=2), 1 + _mk(N, scale=0.2, seed=3),
                            _mk(N, scale=0.2, seed=4)]),
        "linear_gelu": (lambda be, x, w, b: ops.linear_gelu(x, w, b, approximate=True, backend=be),
                        [_mk(T, N), _mk(4 * N, N, scale=N ** -0.5, seed=1), _mk(4 * N, scale=0.5, seed=2)]),
        "linear_cross_entropy": (lambda be, h, w: ops.linear_cross_entropy(h, w, targets, backend=be),
                                 [_mk(T, N), _mk(300, N, scale=3 * N ** -0.5, seed=1)]),
    }


def _run(fn, backend, leaves, dtype, autocast):
    """-> (*outputs, *gradients of the leaves); every output (add_layer_norm's y and r) on its own, dtype included."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in leaves]
    with torch.autocast(DEVICE, dtype=LOW, enabled=autocast):
        outs = fn(backend, *leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    douts = [_mk(*o.shape, seed=9 + i).to(o.dtype) if o.dim() else torch.ones((), device=DEVICE, dtype=o.dtype)
             for i, o in enumerate(outs)]
    return (*outs, *torch.autograd.grad(outs, leaves, douts))  # backward outside autocast, as the trainer does


@pytest.mark.parametrize("name", list(_cases()))
def test_fused_op_under_autocast_matches_torch_autocast(name):
    fn, leaves = _cases()[name]
    ref = _run(fn, "torch", leaves, torch.float64, autocast=False)
    base = _run(fn, "torch", leaves, torch.float32, autocast=True)
    got = _run(fn, "triton", leaves, torch.float32, autocast=True)
    for i, (a, b, r) in enumerate(zip(got, base, ref)):
        n_out = len(got) - len(leaves)
        what = f"out{i}" if i < n_out else f"grad{i - n_out}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name} {what}: {a.dtype} {tuple(a.shape)} vs torch {b.dtype} {tuple(b.shape)}"
        err, base_err = (a.double() - r).abs().max().item(), (b.double() - r).abs().max().item()
        floor = FLOOR[LOW] * max(1.0, r.abs().max().item())
        assert math.isfinite(err) and err <= 2 * base_err + floor, f"{name} {what}: {err:.3g} > 2 x torch autocast {base_err:.3g}"


def test_outside_autocast_mixed_dtypes_are_refused_as_torch_refuses_them():
    h, w = _mk(5, 16).half(), _mk(40, 16).bfloat16()
    t = torch.zeros(5, dtype=torch.long, device=DEVICE)
    with pytest.raises(RuntimeError):
        ops.linear_cross_entropy(h, w, t, backend="torch")
    with pytest.raises(ValueError, match="must be in h's dtype"):
        ops.linear_cross_entropy(h, w, t, backend="triton")


def test_torch_backends_work_without_triton():
    """The references live in the kernel files; on a machine without Triton those files still import (a stand-in
    reads the kernel definitions) and the torch backends give the same loss; a fused backend says what to install."""
    import subprocess

    from _util import PYTHON, repo_env

    script = (
        "import sys; sys.modules['triton'] = None\n"  # `import triton` now raises ImportError
        "import torch; from wizardcoder import StarCoder\n"
        "ids = torch.arange(9)[None] * 7\n"
        "m = StarCoder.from_preset('tiny', seed=0, attn_backend='torch', kernel_backend='torch')\n"
        "print(m(ids, labels=ids).item())\n"
        "m.config.kernel_backend = 'triton'\n"
        "try:\n    m(ids, labels=ids)\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([PYTHON, "-c", script], env=repo_env(TRITON_INTERPRET="0"), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loss, message = out.stdout.strip().splitlines()
    from wizardcoder import StarCoder

    ids = torch.arange(9)[None] * 7
    want = StarCoder.from_preset("tiny", seed=0, attn_backend="torch", kernel_backend="torch")(ids, labels=ids).item()
    assert abs(float(loss) - want) < 1e-5
    assert "need Triton" in message
