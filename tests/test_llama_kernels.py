"""The Llama kernels (kernels/rmsnorm.py, rope.py, swiglu.py) against their plain-torch references: outputs and every
gradient, odd shapes, fp32 and fp16 (bf16 on CUDA). Rule (flash-attention's): the kernel's error against a float64
reference is at most 2x the same-dtype torch computation's error plus a small floor. Then the whole model with
kernel_backend=triton against kernel_backend=torch. CPU: Triton interpreter."""
import math

import pytest
import torch

pytest.importorskip("triton")

from wizardcoder.kernels.rmsnorm import add_rms_norm, add_rms_norm_reference  # noqa: E402
from wizardcoder.kernels.rope import apply_rope_, rope_reference  # noqa: E402
from wizardcoder.kernels.swiglu import swiglu, swiglu_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _close(names, got, ref, base, dtype):
    for name, a, r, c in zip(names, got, ref, base):
        assert a.shape == r.shape, name
        err, base_err = (a.double() - r.double()).abs().max().item(), (c.double() - r.double()).abs().max().item()
        assert math.isfinite(err) and err <= 2 * base_err + FLOOR[dtype] * max(1.0, r.abs().max().item()), (name, err, base_err)


def _rand(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE)


# ------------------------------------------------------------------------------------------------- add + RMSNorm
def _run_rms(fn, x, res, w, dy, dr, dtype):
    x, w = (t.detach().to(dtype).requires_grad_() for t in (x, w))
    res = res.detach().to(dtype).requires_grad_() if res is not None else None
    y, r = fn(x, res, w, 1e-6)
    loss = (y.double() * dy).sum() + (r.double() * dr).sum()
    ins = [t for t in (x, res, w) if t is not None]
    return (y, r, *torch.autograd.grad(loss, ins))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,has_res", [((3, 7, 97), True), ((5, 64), False), ((1, 13, 300), True), ((2, 1, 1000), False)])
def test_add_rms_norm_matches_reference(shape, has_res, dtype):
    g = torch.Generator().manual_seed(0)
    x, res = _rand(g, *shape, scale=2.0) + 0.5, (_rand(g, *shape) if has_res else None)
    w = 1 + _rand(g, shape[-1], scale=0.3)
    dy, dr = _rand(g, *shape).double(), _rand(g, *shape).double()
    got = _run_rms(add_rms_norm, x, res, w, dy, dr, dtype)
    ref = _run_rms(add_rms_norm_reference, x, res, w, dy, dr, torch.float64)
    base = _run_rms(add_rms_norm_reference, x, res, w, dy, dr, dtype)
    assert got[0].dtype == base[0].dtype == dtype
    _close(["y", "r", "dx"] + (["dresidual"] if has_res else []) + ["dweight"], got, ref, base, dtype)


def test_add_rms_norm_promotes_like_torch():
    """A half block output added to the fp32 residual stream (autocast training) gives fp32 r and y, as torch's add
    and HF's RMSNorm with an fp32 weight give."""
    x = torch.randn(4, 33, device=DEVICE).half()
    res, w = torch.randn(4, 33, device=DEVICE), torch.rand(33, device=DEVICE) + 0.5
    y, r = add_rms_norm(x, res, w, 1e-5)
    y_ref, r_ref = add_rms_norm_reference(x, res, w, 1e-5)
    assert y.dtype == y_ref.dtype == r.dtype == r_ref.dtype == torch.float32
    assert (y - y_ref).abs().max().item() <= 1e-5 and torch.equal(r, r_ref)


# ---------------------------------------------------------------------------------------------------------- RoPE
def _inv_freq(d, theta, scale):
    return 1.0 / (theta ** (torch.arange(0, d, 2).float() / d)) / scale


def _run_rope(fn, q, k, pos, inv_freq, dq, dk, dtype):
    q0, k0 = (t.detach().to(dtype).requires_grad_() for t in (q, k))
    # the in-place kernel rotates a non-leaf (a projection's output in the model): rotate a copy that autograd tracks
    qo, ko = fn(q0 * 1, k0 * 1, pos, inv_freq)
    loss = (qo.double() * dq).sum() + (ko.double() * dk).sum()
    return (qo, ko, *torch.autograd.grad(loss, [q0, k0]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout,hq,hk,d,theta,scale", [
    ("packed", 8, 2, 16, 1e6, 1.0),   # GQA 8:2, CodeLlama's theta
    ("packed", 7, 1, 10, 1e5, 4.0),   # odd head count, MQA, head dim 10 (D/2 = 5, not a power of 2), DeepSeek's scaling
    ("dense", 4, 4, 32, 1e4, 1.0),    # [B, S] dense with left-padding-style positions
])
def test_rope_matches_reference(layout, hq, hk, d, theta, scale, dtype):
    g = torch.Generator().manual_seed(1)
    if layout == "packed":  # three documents, positions restarting at 0, one far from 0
        pos = torch.cat([torch.arange(5), torch.arange(11), torch.arange(3000, 3017)]).to(DEVICE)
        lead = (pos.numel(),)
    else:
        pos = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]], device=DEVICE)
        lead = tuple(pos.shape)
    q, k = _rand(g, *lead, hq, d), _rand(g, *lead, hk, d)
    dq, dk = _rand(g, *lead, hq, d).double(), _rand(g, *lead, hk, d).double()
    inv_freq = _inv_freq(d, theta, scale).to(DEVICE)
    got = _run_rope(apply_rope_, q, k, pos, inv_freq, dq, dk, dtype)
    ref = _run_rope(rope_reference, q, k, pos, inv_freq, dq, dk, torch.float64)
    base = _run_rope(rope_reference, q, k, pos, inv_freq, dq, dk, dtype)
    assert got[0].dtype == dtype
    _close(["q", "k", "dq", "dk"], got, ref, base, dtype)


def test_rope_is_in_place_and_leaves_incoming_gradients_alone():
    q, k = torch.randn(6, 4, 8, device=DEVICE), torch.randn(6, 2, 8, device=DEVICE)
    pos, inv_freq = torch.arange(6, device=DEVICE), _inv_freq(8, 1e6, 1.0).to(DEVICE)
    q_ref, k_ref = rope_reference(q, k, pos, inv_freq)
    qo, ko = apply_rope_(q, k, pos, inv_freq)
    assert qo.data_ptr() == q.data_ptr() and ko.data_ptr() == k.data_ptr()
    assert (q - q_ref).abs().max().item() <= 1e-6 and (k - k_ref).abs().max().item() <= 1e-6
    leaf = torch.randn(6, 4, 8, device=DEVICE, requires_grad=True)
    kl = torch.randn(6, 2, 8, device=DEVICE, requires_grad=True)
    gq, gk = torch.randn(6, 4, 8, device=DEVICE), torch.randn(6, 2, 8, device=DEVICE)
    keep = gq.clone(), gk.clone()
    torch.autograd.backward(apply_rope_(leaf * 1, kl * 1, pos, inv_freq), [gq, gk])
    assert torch.equal(gq, keep[0]) and torch.equal(gk, keep[1])
    assert leaf.grad is not None and not torch.equal(leaf.grad, gq)  # the gradient is rotated back, into a new tensor


# -------------------------------------------------------------------------------------------------------- SwiGLU
def _run_swiglu(fn, gate, up, dh, dtype):
    gate, up = (t.detach().to(dtype).requires_grad_() for t in (gate, up))
    h = fn(gate, up)
    return (h, *torch.autograd.grad((h.double() * dh).sum(), [gate, up]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 7, 173), (1, 1), (9, 41, 341), (2, 1031)])
def test_swiglu_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(2)
    gate, up, dh = _rand(g, *shape, scale=3.0), _rand(g, *shape), _rand(g, *shape).double()
    got = _run_swiglu(swiglu, gate, up, dh, dtype)
    ref = _run_swiglu(swiglu_reference, gate, up, dh, torch.float64)
    base = _run_swiglu(swiglu_reference, gate, up, dh, dtype)
    assert got[0].dtype == dtype
    _close(["h", "dgate", "dup"], got, ref, base, dtype)


# ---------------------------------------------------------------------------------------------- in the model
def test_model_with_triton_kernels_matches_torch_path():
    """The whole Llama (GQA 4:2, linear scaling 4, packed with cu_seqlens) with kernel_backend=triton against
    kernel_backend=torch: loss and every gradient."""
    from wizardcoder.llama import Llama
    from wizardcoder.llama_config import LlamaConfig

    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=45, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, rope_theta=1e5, rope_scaling={"type": "linear", "factor": 4.0},
                      attn_backend="torch", kernel_backend="torch")
    torch.manual_seed(0)
    model = Llama.from_config(cfg, seed=0, device=DEVICE)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
    ids = torch.randint(0, 101, (1, 23), device=DEVICE)
    cu = torch.tensor([0, 9, 10, 23], dtype=torch.int32, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        model.config.kernel_backend = backend
        loss = model(ids, cu_seqlens=cu, labels=ids)
        results[backend] = (loss, torch.autograd.grad(loss, list(model.parameters())))
    (la, ga), (lb, gb) = results["torch"], results["triton"]
    assert abs(la.item() - lb.item()) <= 1e-5
    for (n, _), a, b in zip(model.named_parameters(), ga, gb):
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item()), n


# ------------------------------------------------------------------------------------ compiled, not interpreted
_COMPILE = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from wizardcoder.kernels import rmsnorm, rope, swiglu

failures = 0
for dt in ("bf16", "fp32"):
    io = {n: "*" + dt for n in ("X", "RES", "W", "Y", "R", "DY", "DR", "DX", "G", "U", "DH", "DG", "DU", "OUT")}
    io.update(RSTD="*fp32", DW="*fp32", POS="*i64", INV_FREQ="*fp32", eps="fp32")
    swiglu_io = dict(io, H="*" + dt)  # SwiGLU's output pointer; RoPE's H is the head count (i32)
    variants = [
        (rmsnorm._rms_fwd_kernel, dict(HAS_RES=True, BLOCK_M=1, BLOCK_N=8192), 16),   # Llama 34B / 33B widths
        (rmsnorm._rms_fwd_kernel, dict(HAS_RES=False, BLOCK_M=16, BLOCK_N=128), 1),
        (rmsnorm._rms_bwd_kernel, dict(HAS_DR=True, BLOCK_M=1, BLOCK_N=8192), 16),
        (rope._rope_kernel, dict(BACKWARD=False, BLOCK_H=64, BLOCK_D=64), 4),          # 64 heads, head dim 128
        (rope._rope_kernel, dict(BACKWARD=True, BLOCK_H=8, BLOCK_D=64), 4),
        (swiglu._swiglu_fwd_kernel, dict(BLOCK=1024), 4),
        (swiglu._swiglu_bwd_kernel, dict(BLOCK=1024), 4),
    ]
    for fn, consts, warps in variants:
        types = swiglu_io if fn is swiglu._swiglu_fwd_kernel else io
        sig = {a: "constexpr" if a in consts else types.get(a, "i32") for a in fn.arg_names}
        for arch in (90, 80):
            try:
                k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                                   options={"num_warps": warps, "num_stages": 1})
                print(f"ok   sm_{arch} {fn.__name__:20s} {dt} {consts} shared={k.metadata.shared}")
            except Exception as e:
                failures += 1
                print(f"FAIL sm_{arch} {fn.__name__} {dt} {consts}: {type(e).__name__}: {str(e)[:400]}")
sys.exit(1 if failures else 0)
'''


@pytest.mark.skipif(DEVICE == "cuda", reason="on CUDA every test above already compiles the kernels")
def test_llama_kernels_compile_for_sm90_and_sm80():
    """Triton's real compiler (down to PTX and ptxas, no GPU needed) accepts each kernel at the Llama 34B / 33B
    shapes: the interpreter runs a kernel's Python semantics but not the compiler, which rejects more."""
    import subprocess
    import sys

    from _util import repo_env

    env = repo_env()
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_model_under_autocast_kernels_match_references():
    """bf16 autocast over fp32 parameters (the single-process trainer's mode): the kernels take the dtypes the
    references get (bf16 projections, the fp32 residual stream) and land within bf16 rounding of them."""
    from wizardcoder.llama import Llama
    from wizardcoder.llama_config import LlamaConfig

    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=45, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attn_backend="torch", kernel_backend="torch")
    model = Llama.from_config(cfg, seed=0, device=DEVICE)
    ids = torch.randint(0, 101, (2, 17), device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        model.config.kernel_backend = backend
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            h = model.hidden_states(ids)
            loss = model(ids, labels=ids)
        assert h.dtype == torch.float32  # the final RMSNorm on the fp32 residual stream with its fp32 weight
        results[backend] = (loss.float(), torch.autograd.grad(loss, list(model.parameters())))
    (la, ga), (lb, gb) = results["torch"], results["triton"]
    assert abs(la.item() - lb.item()) <= 1e-2 * abs(la.item())
    for (n, _), a, b in zip(model.named_parameters(), ga, gb):
        assert a.dtype == b.dtype == torch.float32, n
        assert (a - b).norm().item() <= 5e-2 * a.norm().item(), n
