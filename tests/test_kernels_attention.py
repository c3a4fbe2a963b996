"""Triton FlashAttention (kernels/flash_attention.py) against the plain-torch reference: outputs and dq/dk/dv, packed
documents of uneven length (1, 17, 97, ...), MQA/GQA/MHA, head dims 16..128, causal and not. On CPU the kernels run
in the Triton interpreter (fp32, fp16); on CUDA the same tests run compiled, plus bf16.

Tolerance rule (flash-attn's): the kernel's max error against a float64 reference is at most 2x the error of the
same computation done by torch in the tested dtype, plus a small floor."""
import math

import pytest
import torch

pytest.importorskip("triton")

from wizardcoder.kernels.flash_attention import attention_reference, flash_attn_func, flash_attn_varlen_func  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)


def _inputs(Tq, Tk, Hq, Hkv, D, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype).requires_grad_()  # noqa: E731
    return mk(Tq, Hq, D), mk(Tk, Hkv, D), mk(Tk, Hkv, D)


def _ref_and_baseline(q, k, v, do, cu_q, cu_k, scale, causal):
    """(float64 reference outputs, same-dtype torch outputs); each a tuple (o, dq, dk, dv)."""
    res = []
    for dt in (torch.float64, q.dtype):
        qq, kk, vv = (t.detach().to(dt).requires_grad_() for t in (q, k, v))
        o = attention_reference(qq, kk, vv, cu_q, cu_k, softmax_scale=scale, causal=causal, upcast=False)
        res.append((o, *torch.autograd.grad(o, (qq, kk, vv), do.to(dt))))
    return res


def _assert_2x(got, ref, base, dtype, names=("out", "dq", "dk", "dv")):
    for name, a, r, b in zip(names, got, ref, base):
        err = (a.double() - r).abs().max().item()
        base_err = (b.double() - r).abs().max().item()
        assert math.isfinite(err), name
        assert err <= 2 * base_err + FLOOR[dtype], f"{name}: kernel error {err:.3g} > 2 x torch {dtype} error {base_err:.3g}"


CASES = [  # (document lengths, Hq, Hkv, D, causal)
    ([17], 2, 1, 64, True),
    ([1, 17, 97, 5], 4, 1, 64, True),  # MQA, as StarCoder
    ([33, 1, 40], 4, 2, 128, True),  # GQA, head dim 128
    ([23, 40], 3, 3, 16, True),  # MHA, small head dim
    ([19, 8, 30], 2, 1, 40, True),  # head dim not a power of two
    ([1, 17, 45], 4, 2, 32, False),  # full (non-causal) attention
    ([0, 12, 0, 0, 7], 2, 1, 32, True),  # empty documents in the pack
]


HALF_CASES = [([17, 40], 4, 1, 64, True), ([33, 1, 20], 4, 2, 128, True), ([1, 17, 45], 4, 2, 32, False)]
PARAMS = [(*c, torch.float32) for c in CASES] + [(*c, dt) for dt in DTYPES[1:] for c in (CASES if DEVICE == "cuda" else HALF_CASES)]


@pytest.mark.parametrize("lens,Hq,Hkv,D,causal,dtype", PARAMS, ids=lambda p: str(p).replace("torch.", ""))
def test_varlen_matches_reference(lens, Hq, Hkv, D, causal, dtype):
    cu = _cu(lens)
    q, k, v = _inputs(sum(lens), sum(lens), Hq, Hkv, D, dtype)
    scale = 1.0 / math.sqrt(D)
    o = flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal)
    do = torch.randn_like(o)
    got = (o, *torch.autograd.grad(o, (q, k, v), do))
    ref, base = _ref_and_baseline(q, k, v, do, cu, cu, scale, causal)
    assert o.shape == q.shape and o.dtype == dtype
    _assert_2x(got, ref, base, dtype)


def test_documents_do_not_attend_to_each_other():
    """Changing one document's keys/values leaves every other document's output and q-gradient unchanged."""
    lens = [9, 21, 4]
    cu = _cu(lens)
    q, k, v = _inputs(sum(lens), sum(lens), 2, 1, 32, torch.float32)
    o1 = flash_attn_varlen_func(q, k, v, cu, cu, 21, 21)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[9:30] += 1.0
    v2[9:30] -= 2.0
    o2 = flash_attn_varlen_func(q, k2, v2, cu, cu, 21, 21)
    assert torch.equal(o1[:9], o2[:9]) and torch.equal(o1[30:], o2[30:])
    assert not torch.allclose(o1[9:30], o2[9:30])


def test_causal_bottom_right_alignment_when_lengths_differ():
    """seqlen_q != seqlen_k: query i sees keys j <= i + (len_k - len_q); a row that sees none outputs 0."""
    lq, lk = [5, 12, 3], [9, 7, 3]
    cu_q, cu_k = _cu(lq), _cu(lk)
    q, _, _ = _inputs(sum(lq), 1, 4, 2, 32, torch.float32, seed=1)
    _, k, v = _inputs(1, sum(lk), 4, 2, 32, torch.float32, seed=2)
    o = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk), causal=True)
    do = torch.randn_like(o)
    got = (o, *torch.autograd.grad(o, (q, k, v), do))
    ref, base = _ref_and_baseline(q, k, v, do, cu_q, cu_k, 1 / math.sqrt(32), True)
    _assert_2x(got, ref, base, torch.float32)
    assert o[5:10].abs().max() == 0  # document 2: queries 0..4 of 12 see no key (7 keys, offset -5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dense_batch_matches_reference(dtype):
    B, S, Hq, Hkv, D = 2, 33, 4, 1, 64
    q, k, v = (t.detach().view(B, S, -1, D).requires_grad_() for t in _inputs(B * S, B * S, Hq, Hkv, D, dtype, seed=3))
    o = flash_attn_func(q, k, v, softmax_scale=0.2, causal=True)
    do = torch.randn_like(o)
    got = (o, *torch.autograd.grad(o, (q, k, v), do))
    cu = _cu([S] * B)
    flat = lambda t: t.detach().reshape(B * S, -1, D)  # noqa: E731
    ref, base = _ref_and_baseline(flat(q), flat(k), flat(v), flat(do), cu, cu, 0.2, True)
    _assert_2x([t.reshape(B * S, -1, D) for t in got], ref, base, dtype)


def test_strided_inputs_from_fused_qkv():
    """The model passes q/k/v as views of one fused QKV projection (non-contiguous rows)."""
    T, Hq, D = 26, 4, 16
    qkv = torch.randn(T, (Hq + 2) * D, device=DEVICE, requires_grad=True)
    q = qkv[:, : Hq * D].view(T, Hq, D)
    k = qkv[:, Hq * D : (Hq + 1) * D].view(T, 1, D)
    v = qkv[:, (Hq + 1) * D :].view(T, 1, D)
    cu = _cu([11, 15])
    o = flash_attn_varlen_func(q, k, v, cu, cu, 15, 15)
    (g,) = torch.autograd.grad(o.square().sum(), qkv)
    qkv2 = qkv.detach().clone().requires_grad_()
    o2 = attention_reference(qkv2[:, : Hq * D].view(T, Hq, D), qkv2[:, Hq * D : (Hq + 1) * D].view(T, 1, D),
                             qkv2[:, (Hq + 1) * D :].view(T, 1, D), cu, cu)
    (g2,) = torch.autograd.grad(o2.square().sum(), qkv2)
    assert torch.allclose(o, o2, atol=1e-5) and torch.allclose(g, g2, atol=1e-4)


def test_custom_op_fake_tensor_and_schema():
    from wizardcoder.kernels import flash_attention as fa

    q, k, v = (t.detach() for t in _inputs(18, 18, 2, 1, 16, torch.float32))
    cu = _cu([7, 11])
    torch.library.opcheck(fa._fwd_op, (q, k, v, cu, cu, 11, 11, 0.25, True), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_realistic_shapes(dtype):
    """StarCoder shapes on the compiled kernels (autotuned tiles, unmasked inner blocks, head splits): MQA D=128, a
    dense 2x1024 batch and an uneven pack with a 2048-token document."""
    for lens, Hq in (([1024, 1024], 16), ([2048, 300, 17, 1, 641, 96], 16)):
        cu = _cu(lens)
        q, k, v = _inputs(sum(lens), sum(lens), Hq, 1, 128, dtype, seed=5)
        o = flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens))
        do = torch.randn_like(o)
        got = (o, *torch.autograd.grad(o, (q, k, v), do))
        ref, base = _ref_and_baseline(q, k, v, do, cu, cu, 1 / math.sqrt(128), True)
        _assert_2x(got, ref, base, dtype)


@pytest.mark.parametrize("lens,Hq,Hkv,max_extra", [([1, 17, 0, 97, 3, 40], 4, 1, 0), ([64, 64, 1], 6, 2, 0),
                                                   ([5, 0, 30, 30, 2], 4, 4, 9), ([0, 0, 13], 2, 1, 0)])
def test_batched_torch_fallback_matches_reference(lens, Hq, Hkv, max_extra):
    """The plain-torch packed path (one SDPA over blocks of max_seqlen tokens, no loop over documents) against the
    per-document reference: output and every gradient, in fp32 and float64 (max_seqlen exact or larger)."""
    from wizardcoder.kernels.flash_attention import attention_packed_torch

    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        cu = _cu(lens)
        q, k, v = _inputs(sum(lens), sum(lens), Hq, Hkv, 32, dtype)
        out = attention_packed_torch(q, k, v, cu, max(lens) + max_extra)
        ref = attention_reference(q, k, v, cu)
        g = torch.randn_like(out)
        for a, b in zip((out, *torch.autograd.grad(out, (q, k, v), g)), (ref, *torch.autograd.grad(ref, (q, k, v), g))):
            assert (a - b).abs().max().item() <= tol * (1 + b.abs().max().item())
