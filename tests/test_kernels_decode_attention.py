"""The Triton cascade decode attention (kernels/decode_attention.py) against its plain-torch reference: rows sharing
a prompt slot, a row alone in one, rows holding their prompt themselves, padding in the groups, MQA and GQA, lengths
that are not multiples of the blocks. On CPU the kernel runs in the Triton interpreter (fp32, fp16).

Tolerance rule (flash-attn's): the kernel's max error against a float64 reference is at most 2x the error of the
same computation done by torch in the tested dtype, plus a small floor."""
import pytest
import torch

pytest.importorskip("triton")

from wizardcoder.kernels.decode_attention import (  # noqa: E402
    cascade_decode_attention_reference, cascade_decode_attention_triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Hq,Hkv", [(4, 1), (4, 2)])
def test_cascade_kernel_matches_the_reference(dtype, Hq, Hkv):
    g = torch.Generator().manual_seed(0)
    B, D, P, Lp, Lr = 7, 16, 3, 37, 21
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, pk, pv, rk, rv = mk(B, Hq, D), mk(P, Hkv, Lp, D), mk(P, Hkv, Lp, D), mk(B, Hkv, Lr, D), mk(B, Hkv, Lr, D)
    prefix_len = torch.tensor([37, 5, 0])
    row_len = torch.tensor([1, 21, 3, 17, 9, 2, 20])
    # slot 0: rows 0, 2, 5, 6; slot 1: row 1; rows 3 and 4 hold their prompt themselves; slot 2 is empty
    groups = torch.tensor([[0, 2, 5, 6], [1, -1, -1, -1], [3, 4, -1, -1]])
    group_slot = torch.tensor([0, 1, -1])
    args = (prefix_len, groups, group_slot)
    ref = cascade_decode_attention_reference(q.double(), pk.double(), pv.double(), *args, rk.double(), rv.double(),
                                             row_len, 0.25)
    same = cascade_decode_attention_reference(q.to(dtype), pk.to(dtype), pv.to(dtype), *args, rk.to(dtype),
                                              rv.to(dtype), row_len, 0.25).to(dtype)
    dev = [t.to(DEVICE) for t in (q, pk, pv, rk, rv)]
    out = cascade_decode_attention_triton(*(t.to(dtype) for t in dev[:3]), *(t.to(DEVICE) for t in args),
                                          *(t.to(dtype) for t in dev[3:]), row_len.to(DEVICE), 0.25)
    assert out.dtype == dtype and out.shape == (B, Hq, D)
    err = (out.cpu().double() - ref).abs().max().item()
    base = (same.double() - ref).abs().max().item()
    assert err <= 2 * base + FLOOR[dtype], (err, base)
