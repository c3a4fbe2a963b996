"""Compile every Triton kernel for an H100 (sm_90) without a GPU: the interpreter runs the Python semantics of a kernel
but not Triton's compiler, which rejects things the interpreter accepts (non-constexpr globals, type changes in
loop-carried values, bad layouts). This runs the real compiler down to PTX and ptxas, in a subprocess without
TRITON_INTERPRET (the test session's kernels are interpreted). Skipped on CUDA machines, where every other kernel
test already compiles the kernels.

The test compiles one variant of each kernel (bf16, head dim 128, causal: what StarCoder trains with; plus the fp32
attention forward for the IEEE-dot path), about a minute on 2 cores with a cold Triton cache. Every dtype, head dim
and flag: `python tests/test_kernels_compile.py --all` (a few minutes).

The default-tile tests go further, through `bench.compile_report`: the tile each training-path kernel launches with
when autotuning is off, compiled with a real launch's arguments (alignment hints; StarCoder 1B and 15B, CodeLlama 7B
and 34B shapes), must not spill registers and must fit the architecture's shared memory."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from _util import REPO


def _variants(full: bool):
    """(kernel, arg types, constexprs, num_warps, num_stages, label): with `full`, every dtype, some head dims and
    flags; else one variant of each kernel."""
    from wizardcoder.kernels import cross_entropy as ce
    from wizardcoder.kernels import flash_attention as fa
    from wizardcoder.kernels import gelu as gl
    from wizardcoder.kernels import layernorm as ln

    out = []
    for dt in ("bf16", "fp16", "fp32") if full else ("bf16", "fp32"):
        prec = "ieee" if dt == "fp32" else None
        P = {n: "*" + dt for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
        P.update(LSE="*fp32", DELTA="*fp32", cu_q="*i32", cu_k="*i32", QBLOCKS="*i32", KBLOCKS="*i32", sm_scale="fp32")
        if not full and dt == "fp32":  # the IEEE fp32 dot path, forward only
            out.append((fa._fwd_kernel, P, dict(D=64, CAUSAL=True, BLOCK_D=64, PREC=prec, BLOCK_M=64, BLOCK_N=32), 4, 3, dt))
            continue
        for causal, (D, BD) in (((True, (128, 128)), (False, (64, 64)), (True, (40, 64))) if full and dt == "bf16" else ((True, (128, 128)),)):
            tag = f"{dt} causal={causal} D={D}"
            common = dict(D=D, CAUSAL=causal, BLOCK_D=BD, PREC=prec)
            big = dt != "fp32"  # fp32 keeps tiles <= 64 (see flash_attention._prune)
            out.append((fa._fwd_kernel, P, dict(common, BLOCK_M=128 if big else 64, BLOCK_N=64), 4, 3, tag))
            if full:
                out.append((fa._dkdv_kernel, P, dict(common, BLOCK_M=32, BLOCK_N=128 if big else 64, HEADS_PER_SPLIT=2), 4, 3, tag))
            out.append((fa._dkdv_kernel, dict(P, DK="*fp32", DV="*fp32"), dict(common, BLOCK_M=32, BLOCK_N=128 if dt != "fp32" else 64, HEADS_PER_SPLIT=4),
                        4, 3, tag + " fp32 partials"))
            out.append((fa._dq_kernel, P, dict(common, BLOCK_M=128 if big else 64, BLOCK_N=32), 4, 3, tag))
        out.append((fa._bwd_preprocess, P, dict(D=128, BLOCK_M=64, BLOCK_D=128), 4, 1, dt))
        io = {n: "*" + dt for n in ("X", "RES", "W", "B", "Y", "R", "DY", "DR", "DX", "LOGITS")}
        io.update(MEAN="*fp32", RSTD="*fp32", DW="*fp32", DB="*fp32", eps="fp32", TARGETS="*i64", LOSS="*fp32",
                  SCALE="*fp32")
        for flag in (True, False) if full else (True,):
            out.append((ln._ln_fwd_kernel, io, dict(HAS_RES=flag, BLOCK_M=1, BLOCK_N=2048), 8, 1, f"{dt} residual={flag}"))
            out.append((ln._ln_fwd_kernel, io, dict(HAS_RES=flag, BLOCK_M=16, BLOCK_N=128), 1, 1, f"{dt} residual={flag} 16 rows"))
            out.append((ln._ln_bwd_kernel, io, dict(HAS_DR=flag, BLOCK_M=1, BLOCK_N=8192), 16, 1, f"{dt} dr={flag}"))
            out.append((ln._ln_bwd_kernel, io, dict(HAS_DR=flag, BLOCK_M=16, BLOCK_N=128), 1, 1, f"{dt} dr={flag} 16 rows"))
            out.append((gl._gelu_fwd_kernel, io, dict(APPROX=flag, BLOCK=1024), 4, 1, f"{dt} tanh={flag}"))
            out.append((gl._gelu_bwd_kernel, io, dict(APPROX=not flag, BLOCK=1024), 4, 1, f"{dt} tanh={not flag}"))
        out.append((ce._ce_kernel, io, dict(BLOCK_V=4096), 16, 1, dt))
        out.append((ce._scale_kernel, io, dict(BLOCK=1024), 4, 1, dt))
    return out


def compile_all(full: bool = False) -> int:
    """Compile every variant for sm_90; print one line each; return the number of failures."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = 0
    for kernel, types, consts, warps, stages, label in _variants(full):
        fn = kernel
        while not isinstance(fn, triton.runtime.jit.JITFunction):  # unwrap @triton.autotune
            fn = fn.fn
        sig = {a: "constexpr" if a in consts else types.get(a, "i32") for a in fn.arg_names}
        try:
            k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": warps, "num_stages": stages})
            print(f"ok   {fn.__name__:18s} {label:34s} shared={k.metadata.shared}")
        except Exception as e:  # report all, fail once
            failures += 1
            print(f"FAIL {fn.__name__:18s} {label}: {type(e).__name__}: {e}")
    return failures


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CUDA machine: the other tests compile the kernels")
def test_every_kernel_compiles_for_sm90():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]


DEFAULTS_CHECK = """
import json, sys
from bench.compile_report import report
rows = report(archs=[int(a) for a in sys.argv[1:]], defaults_only=True)
print(json.dumps([r.__dict__ for r in rows]))
"""


def _defaults(*archs: str) -> list[dict]:
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", DEFAULTS_CHECK, *archs], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _assert_fits(rows: list[dict]) -> None:
    from bench.compile_report import SHARED_LIMIT

    kernels = {r["kernel"] for r in rows}
    assert {"attn_fwd", "attn_dkdv", "attn_dq", "layernorm_fwd", "layernorm_bwd", "gelu_fwd", "gelu_bwd",
            "cross_entropy", "rmsnorm_fwd", "rmsnorm_bwd", "rope_fwd_q", "rope_bwd_q", "rope_fwd_k", "rope_bwd_k",
            "swiglu_fwd", "swiglu_bwd"} <= kernels
    assert {r["model"] for r in rows} == {"starcoderbase-1b", "starcoder-15b", "codellama-7b", "codellama-34b"}
    bad = [r for r in rows if r["spill_bytes"] or r["shared_bytes"] > SHARED_LIMIT[int(r["arch"][3:5])]]
    assert not bad, bad


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CUDA machine: the other tests compile the kernels")
def test_default_tiles_do_not_spill_on_hopper():
    """The tile every training-path kernel uses with autotuning off, compiled for sm_90a with the arguments of a
    StarCoderBase-1B, a StarCoder-15B, a CodeLlama-7B and a CodeLlama-34B training launch (alignment hints included;
    the Llama rows add RMSNorm, RoPE on q and k, SwiGLU and GQA attention): no register spills, and shared memory
    within Hopper's 227 KB."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    _assert_fits(_defaults("90"))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CUDA machine: the other tests compile the kernels")
def test_default_tiles_do_not_spill_on_ampere():
    pytest.importorskip("triton.backends.nvidia.compiler")
    _assert_fits(_defaults("80"))


if __name__ == "__main__":
    sys.exit(1 if compile_all(full="--all" in sys.argv) else 0)
