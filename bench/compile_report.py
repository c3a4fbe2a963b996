"""Registers, spills and shared memory of every training-path Triton kernel and of the engine's decode attention
kernel, compiled for Hopper (sm_90a) and Ampere (sm_80) without a GPU: Triton's compiler down to PTX, then its bundled
ptxas with -v.

    python -m bench.compile_report [--json] [--defaults] [--arch 90 80] [--model starcoderbase-1b codellama-34b]

One row per compile: kernel, dtype, head_dim, num_warps, num_stages, registers, spill_bytes, shared_bytes, default (the
config used with autotuning off, WIZARDCODER_AUTOTUNE=0), plus the model and arch. `--model` takes presets of either
family (default: StarCoderBase-1B, StarCoder-15B, CodeLlama-7B, CodeLlama-34B). Each kernel is compiled with the
arguments of a real training launch at the model's shapes (1 pack of 2048 tokens per micro-batch, bf16; MQA or GQA with
head dim 128; StarCoder's add+LayerNorm and bias-GELU, Llama's add+RMSNorm, RoPE on q and on k, and SwiGLU; and the
engine's cascade decode attention at its launch tile, `decode_attention.tiles`, over 200 sample rows of one prompt in
the cache's layout), so the compiler sees what the launcher gives it: the 16-byte divisibility hints of aligned pointers
and of integer arguments that are multiples of 16, and integer arguments equal to 1 specialised away. The attention
kernels are compiled once per config of the architecture's autotune list (`flash_attention.CUDA_TILES`), the others with
the one config their launcher uses. Spill bytes are ptxas's spill stores (per thread); shared bytes are Triton's dynamic
shared memory per program (Hopper allows 227 KB, Ampere 163 KB).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
MODELS = ("starcoderbase-1b", "starcoder-15b", "codellama-7b", "codellama-34b")
TOKENS = 2048  # one pack per micro-batch, as the recipe trains
H100_SMS = 132


@dataclass
class Row:
    model: str
    arch: str
    kernel: str
    dtype: str
    head_dim: int
    block: str  # the tile (BLOCK_M x BLOCK_N, or the block over the row)
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    default: bool


@dataclass
class Launch:
    """One kernel launch as the training path makes it: argument values (ints, floats, or '*dtype' pointers),
    constexprs, warps and stages."""
    name: str
    fn: object
    args: dict
    consts: dict
    num_warps: int
    num_stages: int
    block: str
    default: bool = True


def _jit(kernel):
    import triton

    while not isinstance(kernel, triton.runtime.jit.JITFunction):  # unwrap @triton.autotune
        kernel = kernel.fn
    return kernel


def launches(model: str, arch: int = 90, dtype: str = "bf16") -> list[Launch]:
    """Every training-path kernel launch of one micro-batch of `model` (a preset of either family; forward and
    backward) on `arch` (90 or 80: the attention kernels' tile lists differ): attention and the loss, which both
    families share, and the block's own kernels (`BLOCK_KERNELS` by the config's family)."""
    import torch

    from wizardcoder.families import class_for
    from wizardcoder.kernels import cross_entropy as ce
    from wizardcoder.kernels import flash_attention as fa
    from wizardcoder.plan import resolve_config

    cfg = resolve_config(model)
    with torch.device("meta"):
        V = class_for(cfg.model_type)(cfg).lm_head_weight().shape[0]  # the LM head's rows (StarCoder's padded)
    T, Hq, Hkv, D, E = TOKENS, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_embd
    group = Hq // Hkv
    BD = max(16, 1 << (D - 1).bit_length())
    ptr, f32, i32 = "*" + dtype, "*fp32", "*i32"
    q_t, kv_t = QKV_STRIDES[cfg.model_type](Hq, Hkv, D)
    n_docs = 7  # any count; not a multiple of 16, as in general
    bucket = fa._seq_bucket(T)
    prec = None if dtype != "fp32" else "ieee"
    attn = dict(Q=ptr, K=ptr, V=ptr, O=ptr, DO=ptr, DQ=ptr, LSE=f32, DELTA=f32, cu_q=i32, cu_k=i32, QBLOCKS=i32,
                KBLOCKS=i32, sm_scale=D ** -0.5, stride_qt=q_t, stride_qh=D, stride_kt=kv_t, stride_kh=D,
                stride_vt=kv_t, stride_vh=D, stride_ot=Hq * D, stride_oh=D, stride_dot=Hq * D, stride_doh=D,
                stride_dqt=Hq * D, stride_dqh=D, stride_lse_h=T, n_docs=n_docs, group=group, SEQ_BUCKET=bucket)
    common = dict(D=D, CAUSAL=True, BLOCK_D=BD, PREC=prec)
    out = []
    n_split = fa._head_splits(group, Hkv, T, H100_SMS)
    for kind, kernel, extra, consts in (
        ("fwd", fa._fwd_kernel, {}, {}),
        ("dkdv", fa._dkdv_kernel,
         dict(DK=ptr if n_split == 1 else f32, DV=ptr if n_split == 1 else f32, stride_dks=T * Hkv * D,
              stride_dkt=Hkv * D, stride_dkh=D, stride_dvs=T * Hkv * D, stride_dvt=Hkv * D, stride_dvh=D,
              n_split=n_split), dict(HEADS_PER_SPLIT=group // n_split)),
        ("dq", fa._dq_kernel, {}, {}),
    ):
        configs = [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s) for m, n, w, s in fa.CUDA_TILES[arch][kind]]
        kept = [c for c in configs if BD <= 128 or c["BLOCK_M"] * c["BLOCK_N"] <= 64 * 64]  # fa._prune's rule
        for i, c in enumerate(kept):
            out.append(Launch(f"attn_{kind}", kernel, {**attn, **extra},
                              {**common, **consts, "BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]},
                              c["num_warps"], c["num_stages"], f"{c['BLOCK_M']}x{c['BLOCK_N']}", default=i == 0))
    out.append(Launch("attn_bwd_preprocess", fa._bwd_preprocess,
                      dict(O=ptr, DO=ptr, DELTA=f32, stride_ot=Hq * D, stride_oh=D, stride_dot=Hq * D, stride_doh=D,
                           stride_delta_h=T, T=T), dict(D=D, BLOCK_M=64, BLOCK_D=BD), 4, 3, "64"))
    out += BLOCK_KERNELS[cfg.model_type](cfg, ptr)
    out.append(Launch("cross_entropy", ce._ce_kernel,
                      dict(LOGITS=ptr, TARGETS="*i64", LOSS=f32, SCALE=f32, stride_l=V, V=cfg.vocab_size,
                           ignore_index=-100), dict(BLOCK_V=4096), 16, 3, "4096"))
    out.append(Launch("cross_entropy_scale", ce._scale_kernel, dict(X=ptr, SCALE=f32, numel=V * E),
                      dict(BLOCK=1024), 4, 3, "1024"))
    out.append(_decode_launch(cfg, ptr, q_t))
    return out


def _decode_launch(cfg, ptr: str, q_stride: int, rows: int = 200) -> Launch:
    """The engine's cascade decode attention (kernels/decode_attention.py) as the cache launches it: q a view of the
    attention's q (row stride `q_stride`), K/V the cache's whole buffers (max_len = the model's positions), `rows`
    samples of one prompt in one group."""
    from wizardcoder.kernels import decode_attention as da

    Hq, Hkv, D, L = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_positions
    t = da.tiles(Hq // Hkv, D)
    kv = dict(pk_ptr=ptr, pv_ptr=ptr, rk_ptr=ptr, rv_ptr=ptr, sp_p=Hkv * L * D, sp_h=L * D, sp_l=D, sr_b=Hkv * L * D,
              sr_h=L * D, sr_l=D)
    args = dict(q_ptr=ptr, plen_ptr="*i64", groups_ptr="*i64", gslot_ptr="*i64", rlen_ptr="*i64", out_ptr=ptr,
                sq_b=q_stride, sq_h=D, so_b=Hq * D, so_h=D, W=rows, scale=D ** -0.5, **kv)
    consts = dict(G=Hq // Hkv, GP=t["GP"], D=D, ROWS=t["ROWS"], BLOCK_N=t["BLOCK_N"], BLOCK_R=t["BLOCK_R"], PREC=None)
    return Launch("decode_attention", da._cascade_kernel, args, consts, t["num_warps"], t["num_stages"],
                  f"{t['ROWS']}x{t['GP']}, {t['BLOCK_N']}/{t['BLOCK_R']}")


def _row_launches(cfg, ptr: str, fwd, bwd, name: str, extra: dict) -> list[Launch]:
    """The fused residual-add + norm forward and backward over T rows of n_embd, as their launchers tile them."""
    from wizardcoder.kernels import layernorm as ln

    E, f32 = cfg.n_embd, "*fp32"
    BN = 1 << (E - 1).bit_length()
    rows = dict(X=ptr, RES=ptr, W=f32, B=f32, Y=ptr, R=ptr, MEAN=f32, RSTD=f32, DY=ptr, DR=ptr, DX=ptr, DW=f32,
                DB=f32, stride_x=E, stride_res=E, stride_y=E, stride_r=E, stride_dy=E, stride_dr=E, stride_dx=E,
                M=TOKENS, N=E, rows_per_program=TOKENS // (4 * H100_SMS) + 1, **extra)
    return [Launch(f"{name}_fwd", fwd, rows, dict(HAS_RES=True, BLOCK_M=ln._rows_per_block(BN), BLOCK_N=BN),
                   ln._warps(BN), 3, str(BN)),
            Launch(f"{name}_bwd", bwd, rows, dict(HAS_DR=True, BLOCK_M=ln._rows_per_block(BN), BLOCK_N=BN),
                   ln._warps(BN), 3, str(BN))]


def _starcoder_block(cfg, ptr: str) -> list[Launch]:
    """add+LayerNorm and bias-GELU."""
    from wizardcoder.kernels import gelu as gl
    from wizardcoder.kernels import layernorm as ln

    F = cfg.ffn_dim
    elem = dict(X=ptr, B=ptr, Y=ptr, DY=ptr, DX=ptr, numel=TOKENS * F, N=F)
    return _row_launches(cfg, ptr, ln._ln_fwd_kernel, ln._ln_bwd_kernel, "layernorm",
                         dict(eps=cfg.layer_norm_epsilon)) + [
        Launch("gelu_fwd", gl._gelu_fwd_kernel, elem, dict(APPROX=cfg.gelu_tanh, BLOCK=gl.BLOCK), 4, 3,
               str(gl.BLOCK)),
        Launch("gelu_bwd", gl._gelu_bwd_kernel, elem, dict(APPROX=cfg.gelu_tanh, BLOCK=gl.BLOCK), 4, 3,
               str(gl.BLOCK))]


def _llama_block(cfg, ptr: str) -> list[Launch]:
    """add+RMSNorm, RoPE on q and on k (forward in place, backward into new tensors) and SwiGLU."""
    from wizardcoder.kernels import rmsnorm as rn
    from wizardcoder.kernels import rope as rp
    from wizardcoder.kernels import swiglu as sg

    out = _row_launches(cfg, ptr, rn._rms_fwd_kernel, rn._rms_bwd_kernel, "rmsnorm", dict(eps=cfg.rms_norm_eps))
    D, BD = cfg.head_dim, 1 << (cfg.head_dim // 2 - 1).bit_length()
    for which, H in (("q", cfg.n_head), ("k", cfg.n_kv_head)):
        args = dict(X=ptr, OUT=ptr, POS="*i64", INV_FREQ="*fp32", stride_t=H * D, stride_h=D, stride_ot=H * D,
                    stride_oh=D, H=H, HALF=D // 2)
        BH = 1 << (H - 1).bit_length()
        for backward in (False, True):
            out.append(Launch(f"rope_{'bwd' if backward else 'fwd'}_{which}", rp._rope_kernel, args,
                              dict(BACKWARD=backward, BLOCK_H=BH, BLOCK_D=BD), rp._warps(BH, BD), 3, f"{BH}x{BD}"))
    F = TOKENS * cfg.ffn_dim
    out.append(Launch("swiglu_fwd", sg._swiglu_fwd_kernel, dict(G=ptr, U=ptr, H=ptr, numel=F),
                      dict(BLOCK=sg.BLOCK), 4, 3, str(sg.BLOCK)))
    out.append(Launch("swiglu_bwd", sg._swiglu_bwd_kernel, dict(DH=ptr, G=ptr, U=ptr, DG=ptr, DU=ptr, numel=F),
                      dict(BLOCK=sg.BLOCK), 4, 3, str(sg.BLOCK)))
    return out


# Per family (config.json's model_type): the kernels of its block, and the token strides of q and of k/v as its
# attention hands them over (StarCoder: views of the fused c_attn output; Llama: separate projections).
BLOCK_KERNELS = {"gpt_bigcode": _starcoder_block, "llama": _llama_block}
QKV_STRIDES = {"gpt_bigcode": lambda Hq, Hkv, D: ((Hq + 2 * Hkv) * D,) * 2,
               "llama": lambda Hq, Hkv, D: (Hq * D, Hkv * D)}


def _signature(fn, args: dict, consts: dict) -> tuple[dict, dict, dict]:
    """Triton's (signature, constexprs, attrs) for these argument values, specialised as a launch would: pointers
    (16-byte aligned from the caching allocator) and integers divisible by 16 get the divisibility hint; integers
    equal to 1 become constants."""
    sig, cons, attrs = {}, dict(consts), {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        v = args[name]
        if isinstance(v, str):
            sig[name] = v
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[name] = "fp32"
        elif v == 1:
            sig[name], cons[name] = "constexpr", 1
        else:
            sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, cons, attrs


def compile_one(launch: Launch, arch: int) -> tuple[int, int, int]:
    """(registers, spill bytes, shared bytes) of `launch` compiled for sm_{arch} (sm_90a on Hopper)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    fn = _jit(launch.fn)
    sig, cons, attrs = _signature(fn, launch.args, launch.consts)
    k = triton.compile(ASTSource(fn, sig, constexprs=cons, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(k.asm["ptx"])
        log = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)) if regs else 0, int(spill.group(1)) if spill else 0, int(k.metadata.shared)


def report(models=MODELS, archs=(90, 80), defaults_only: bool = False, dtype: str = "bf16", progress=None) -> list[Row]:
    rows = []
    for model in models:
        for arch in archs:
            for launch in launches(model, arch, dtype):
                if defaults_only and not launch.default:
                    continue
                regs, spill, shared = compile_one(launch, arch)
                rows.append(Row(model, f"sm_{arch}{'a' if arch >= 90 else ''}", launch.name, dtype,
                                launch.consts.get("D", 0) or 0, launch.block, launch.num_warps, launch.num_stages,
                                regs, spill, shared, launch.default))
                if progress:
                    progress(rows[-1])
    return rows


COLUMNS = ("model", "arch", "kernel", "dtype", "head_dim", "block", "num_warps", "num_stages", "registers",
           "spill_bytes", "shared_bytes", "default")


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        d = asdict(r)
        d["default"] = "yes" if r.default else ""
        lines.append("| " + " | ".join(str(d[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    p.add_argument("--defaults", action="store_true", help="only the configs used with autotuning off")
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=[80, 90])
    p.add_argument("--model", nargs="+", default=list(MODELS))
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_report: unset TRITON_INTERPRET (it compiles the kernels, it does not interpret them).",
              file=sys.stderr)
        return 2
    emit = (lambda r: print(json.dumps(asdict(r)), flush=True)) if args.json else None
    rows = report(args.model, args.arch, args.defaults, args.dtype, progress=emit)
    if not args.json:
        print(markdown(rows))
    over = [r for r in rows if r.spill_bytes or r.shared_bytes > SHARED_LIMIT[int(r.arch[3:5])]]
    print(f"{len(rows)} compiles, {len(over)} spill or exceed shared memory", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
