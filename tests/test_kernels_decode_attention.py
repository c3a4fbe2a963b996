"""The Triton cascade decode attention (kernels/decode_attention.py) against its plain-torch reference: rows sharing
a prompt slot, a row alone in one, rows holding their prompt themselves, padding in the groups (and a group of
padding only), MQA, GQA and MHA (1 to 16 query heads per K/V head), lengths that are not multiples of the blocks, q
a strided view (as the fused QKV projection hands it over) and K/V views of wider buffers (as the engine's cache
holds them). On CPU the kernel runs in the Triton interpreter (fp32, fp16); on CUDA also bf16.

Tolerance rule (flash-attn's): the kernel's max error against a float64 reference is at most 2x the error of the
same computation done by torch in the tested dtype, plus a small floor."""
import pytest
import torch

pytest.importorskip("triton")

from wizardcoder.kernels.decode_attention import (  # noqa: E402
    cascade_decode_attention_reference, cascade_decode_attention_triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])  # numpy has no bf16


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq,Hkv,D", [(4, 1, 16), (4, 2, 16), (2, 2, 32), (16, 1, 16), (48, 1, 16)])
def test_cascade_kernel_matches_the_reference(dtype, Hq, Hkv, D):
    g = torch.Generator().manual_seed(0)
    B, P, Lp, Lr = 7, 3, 80, 40
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    qkv = mk(B, Hq + 2 * Hkv, D)
    q = qkv[:, :Hq]
    pk, pv, rk, rv = mk(P, Hkv, Lp, D), mk(P, Hkv, Lp, D), mk(B, Hkv, Lr, D), mk(B, Hkv, Lr, D)
    prefix_len = torch.tensor([70, 5, 0])  # keys past a slot's length (and a row's) are never read
    row_len = torch.tensor([1, 21, 3, 17, 9, 2, 20])
    # slot 0: rows 0, 2, 5, 6; slot 1: row 1; rows 3 and 4 hold their prompt themselves; slot 2 is empty; the last
    # group is padding only
    groups = torch.tensor([[0, 2, 5, 6, -1], [1, -1, -1, -1, -1], [3, 4, -1, -1, -1], [-1, -1, -1, -1, -1]])
    group_slot = torch.tensor([0, 1, -1, -1])
    args = (prefix_len, groups, group_slot)
    ref = cascade_decode_attention_reference(q.double(), pk.double(), pv.double(), *args, rk.double(), rv.double(),
                                             row_len, 0.25)
    same = cascade_decode_attention_reference(q.to(dtype), pk.to(dtype), pv.to(dtype), *args, rk.to(dtype),
                                              rv.to(dtype), row_len, 0.25).to(dtype)
    q_view = qkv.to(DEVICE, dtype)[:, :Hq]  # the row stride of the fused QKV output
    dev = [t.to(DEVICE, dtype) for t in (pk, pv, rk, rv)]
    out = cascade_decode_attention_triton(q_view, *dev[:2], *(t.to(DEVICE) for t in args), *dev[2:],
                                          row_len.to(DEVICE), 0.25)
    assert out.dtype == dtype and out.shape == (B, Hq, D)
    err = (out.cpu().double() - ref).abs().max().item()
    base = (same.double() - ref).abs().max().item()
    assert err <= 2 * base + FLOOR[dtype], (err, base)
