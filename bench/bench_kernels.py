"""Micro-benchmarks of the Triton kernels against their peers, correctness first.

    PYTHONPATH=. python -m bench.bench_kernels --quick   # GPU: small shapes, < 2 min on an H100 (autotune included)
    PYTHONPATH=. python -m bench.bench_kernels           # GPU: full shapes (StarCoderBase-1B, bf16)
    PYTHONPATH=. python -m bench.run_all --only kernels [--quick]   # the same through the runner
On CPU the kernels run in the Triton interpreter: tiny shapes, times that mean nothing, and a CPU proxy of the
memory (below).

For every case: (1) correctness on the device: ours and the same-dtype torch computation against an fp32 reference
(the plain-torch reference that lives beside each kernel: outputs and every gradient; ours must be within 2x torch's
error + a floor; column `check`); (2) median times of forward, backward and forward+backward (CUDA events after
warm-up; backward timed on a retained graph, except the fused cross-entropy, whose backward only scales the
gradients the forward made); (3) extra peak memory of one forward+backward over what was allocated before it (MB;
the CUDA allocator's peak, or on CPU a proxy: the peak of the running sum of torch's allocations and frees, from
the profiler's allocator events); (4) a throughput figure: TFLOP/s for attention (causal FLOPs: 4*S^2/2*H*D forward, 2.5x that
backward), GB/s for LayerNorm / GELU (bytes that must move); and the ratio of the peer's forward+backward time to
ours (`x_vs_torch` > 1: ours faster).

Peers: torch (each kernel's reference: SDPA for attention, whose flash backend runs for causal bf16 on CUDA; add +
F.layer_norm; F.gelu(x + b); torch matmul + fp32 F.cross_entropy), flash-attn and Liger-Kernel when installed
(skipped otherwise). The cross-entropy runs in the two mixed-precision modes: pure bf16 parameters, and autocast over
fp32 master weights (ours takes the fp32 weight; torch's autocast casts it for F.linear). Shapes (full): attention
causal MQA B8 H16 S2048 D128 dense and a 16k-token pack of documents with lengths like the evolved data (lognormal,
median 245, mean 332, clipped to [16, 2048]); residual-add + LayerNorm 16384 x 2048; bias-GELU 16384 x 8192; fused
linear cross-entropy T=16384, D=2048, V=49152.
"""
from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():  # must precede the kernels' import: Triton reads it when decorating
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import timeit  # noqa: E402
from wizardcoder import ops  # noqa: E402
from wizardcoder.kernels import cross_entropy as ce  # noqa: E402
from wizardcoder.kernels import flash_attention as fa  # noqa: E402
from wizardcoder.kernels import gelu as gl  # noqa: E402
from wizardcoder.kernels import layernorm as ln  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


# ------------------------------------------------------------------------------------------------------ helpers
def _peak(fn) -> float:
    """Extra peak memory (MB) of one call of `fn` over what was allocated before it: the CUDA allocator's peak, or on
    CPU a proxy: the running sum of the profiler's allocator events (every torch allocation and free, in order)."""
    if CUDA:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 1e6
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:  # every allocator event (size > 0: allocation, < 0: free), wherever in the op tree it happened
        e = stack.pop()
        stack.extend(e.children)
        if e.typed[0] == _EventType.Allocation and e.typed[1].device.type == "cpu":
            events.append((e.start_time_ns, e.typed[1].alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak / 1e6


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout, retain_graph=True)


def _time_case(make_out, inputs, dout, iters, warmup, retain=True):
    """fwd, bwd, fwd+bwd median seconds and extra peak MB for `make_out()` (differentiable in `inputs`). Without
    `retain` (a backward that runs once per forward), bwd is fwd+bwd minus fwd."""
    fwd = timeit(lambda: make_out(), warmup, iters)
    if retain:
        out = make_out()
        bwd = timeit(lambda: _grads(out, inputs, dout), warmup, iters)
        del out
    both = timeit(lambda: torch.autograd.grad(make_out(), inputs, dout), warmup, iters)
    if not retain:
        bwd = both - fwd
    mem = _peak(lambda: torch.autograd.grad(make_out(), inputs, dout))
    return fwd, bwd, both, mem


def _err(a, ref):
    return (a.double() - ref.double()).abs().max().item()


def _check(ours, base, ref, floor=1e-3) -> str:
    """'ok' when every tensor of `ours` is within 2x the same-dtype torch error (+ floor * scale) of `ref`."""
    worst = []
    for name, a, b, r in ours_base_ref(ours, base, ref):
        e, eb = _err(a, r), _err(b, r)
        scale = max(1.0, r.abs().max().item())
        if not math.isfinite(e) or e > 2 * eb + floor * scale:
            worst.append(f"{name} {e:.2g}>2x{eb:.2g}")
    return "ok" if not worst else "FAIL " + "; ".join(worst)


def ours_base_ref(ours, base, ref):
    names = ["out"] + [f"grad{i}" for i in range(len(ours) - 1)]
    return zip(names, ours, base, ref)


def _with_grads(fn, inputs, dout):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, dout))


COLUMNS = ["case", "impl", "dtype", "check", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "peak_extra_MB", "peak_vs_torch", "rate",
           "fwd_rate", "unit", "x_vs_torch", "x_vs_peer"]


def _row(case, impl, dtype, t, unit="", rate_fb=float("nan"), rate_f=float("nan"), check=""):
    """One table row; every row has the same keys (run_all prints the first row's columns)."""
    fwd, bwd, both, mem = t
    return {"bench": "kernels", "case": case, "impl": impl, "dtype": str(dtype).replace("torch.", ""), "check": check,
            "fwd_ms": fwd * 1e3, "bwd_ms": bwd * 1e3, "fwd+bwd_ms": both * 1e3, "peak_extra_MB": mem,
            "mem_source": "cuda allocator" if CUDA else "CPU proxy (profiler allocations)",
            "rate": rate_fb, "fwd_rate": rate_f, "unit": unit, "x_vs_torch": "", "x_vs_peer": "", "peak_vs_torch": ""}


def _mode(impl: str) -> str:
    """'ours (pure bf16, ...)' -> 'pure bf16': the mixed-precision mode a row ran in ('' when not named)."""
    return impl.partition("(")[2].split(",")[0].rstrip(")") if "(" in impl else ""


def _ratios(rows: list[dict]) -> list[dict]:
    """Fill x_vs_torch / x_vs_peer on our rows: the peer's fwd+bwd time over ours (> 1: ours faster). `peer` is the
    fastest non-torch peer in the same case (flash-attn, Liger) when one ran."""
    for r in rows:
        if not r["impl"].startswith("ours") or not isinstance(r.get("fwd+bwd_ms"), float):
            continue
        same = [p for p in rows if p["case"] == r["case"] and not p["impl"].startswith("ours") and isinstance(p.get("fwd+bwd_ms"), float)]
        torch_rows = [p for p in same if p["impl"].startswith("torch")]
        peers = [p for p in same if not p["impl"].startswith("torch")]
        same_mode = [p for p in torch_rows if _mode(p["impl"]) == _mode(r["impl"])]
        if same_mode or torch_rows:
            r["x_vs_torch"] = (same_mode or torch_rows)[0]["fwd+bwd_ms"] / r["fwd+bwd_ms"]
            r["peak_vs_torch"] = r["peak_extra_MB"] / max((same_mode or torch_rows)[0]["peak_extra_MB"], 1e-9)
        if peers:
            best = min(peers, key=lambda p: p["fwd+bwd_ms"])
            r["x_vs_peer"] = f"{best['fwd+bwd_ms'] / r['fwd+bwd_ms']:.3g} ({best['impl']})"
    return rows


# ---------------------------------------------------------------------------------------------------- attention
def _doc_lengths(total: int, max_len: int, gen: torch.Generator) -> list[int]:
    lens = []
    while sum(lens) < total:
        n = int(math.exp(5.5 + 0.78 * torch.randn((), generator=gen).item()))
        lens.append(max(16, min(max_len, n, total - sum(lens))) if total - sum(lens) >= 16 else total - sum(lens))
    return lens


def _fill(lens: list[int], total: int, max_len: int) -> list[int]:
    """`lens` cut or extended (with max_len-long documents) to sum to `total`."""
    out = []
    for n in lens + [max_len] * (total // max_len + 1):
        n = min(n, total - sum(out))
        if n <= 0:
            break
        out.append(n)
    return out


def bench_attention(quick: bool, iters: int, warmup: int) -> list[dict]:
    rows = []
    dtype = torch.bfloat16 if CUDA else torch.float32
    B, S, H, D = (8, 2048, 16, 128) if not quick else ((2, 256, 4, 64) if CUDA else (1, 48, 2, 32))
    scale = 1 / math.sqrt(D)
    gen = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen).to(DEV, dtype).requires_grad_()  # noqa: E731

    # --- dense, causal MQA ---
    q, k, v = mk(B, S, H, D), mk(B, S, 1, D), mk(B, S, 1, D)
    do = torch.randn_like(q)
    flops_fwd = 4 * B * H * D * S * S / 2
    ours = lambda q, k, v: fa.flash_attn_func(q, k, v, softmax_scale=scale)  # noqa: E731
    torch_ref = lambda q, k, v: fa.attention_reference(q, k, v, softmax_scale=scale)  # noqa: E731  SDPA, batched
    n = min(B, 2)  # correctness on a slice of the batch (the fp32 reference holds [H, S, S])
    sl = [t[:n].detach().requires_grad_() for t in (q, k, v)]
    ref = _with_grads(torch_ref, [t.detach().float().requires_grad_() for t in sl], do[:n].float())
    check = _check(_with_grads(ours, sl, do[:n]), _with_grads(torch_ref, sl, do[:n]), ref)
    peers = {"torch-sdpa": torch_ref}
    try:
        import flash_attn

        peers["flash-attn"] = lambda q, k, v: flash_attn.flash_attn_func(q, k, v, softmax_scale=scale, causal=True)
    except ImportError:
        pass
    case = f"attn dense MQA B{B} H{H} S{S} D{D}"
    t_peer = {name: _time_case(lambda f=f: f(q, k, v), (q, k, v), do, iters, warmup) for name, f in peers.items()}
    t_ours = _time_case(lambda: ours(q, k, v), (q, k, v), do, iters, warmup)
    tf = lambda t: flops_fwd * 3.5 / t[2] / 1e12  # noqa: E731  fwd + bwd (bwd = 2.5x fwd)
    rows.append(_row(case, "ours-triton", dtype, t_ours, "TFLOP/s", tf(t_ours), flops_fwd / t_ours[0] / 1e12, check))
    for name, t in t_peer.items():
        rows.append(_row(case, name, dtype, t, "TFLOP/s", tf(t), flops_fwd / t[0] / 1e12))

    # --- packed varlen: the same number of tokens as documents of uneven length ---
    T = B * S
    lens = _doc_lengths(T, S, gen) if not quick else _fill([1, 17, S - 18, 7], T, S)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    qv, kv, vv = (t.detach().reshape(T, -1, D).requires_grad_() for t in (q, k, v))
    dov = do.reshape(T, H, D)
    flops_v = sum(4 * H * D * L * L / 2 for L in lens)
    ours_v = lambda q, k, v: fa.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), softmax_scale=scale)  # noqa: E731
    torch_v = lambda q, k, v: fa.attention_reference(q, k, v, cu, cu, softmax_scale=scale)  # noqa: E731
    end = int(cu[min(len(lens), 4)])  # check the first documents
    cu_s = cu[: min(len(lens), 4) + 1]
    sl = [t[:end].detach().requires_grad_() for t in (qv, kv, vv)]
    ref = _with_grads(lambda q, k, v: fa.attention_reference(q, k, v, cu_s, cu_s, softmax_scale=scale),
                      [t.detach().float().requires_grad_() for t in sl], dov[:end].float())
    check = _check(_with_grads(lambda q, k, v: fa.flash_attn_varlen_func(q, k, v, cu_s, cu_s, max(lens), max(lens), softmax_scale=scale), sl, dov[:end]),
                   _with_grads(lambda q, k, v: fa.attention_reference(q, k, v, cu_s, cu_s, softmax_scale=scale), sl, dov[:end]), ref)
    peers = {"torch-sdpa-per-doc": torch_v}
    try:
        import flash_attn

        peers["flash-attn"] = lambda q, k, v: flash_attn.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), softmax_scale=scale, causal=True)
    except ImportError:
        pass
    case = f"attn varlen MQA {len(lens)} docs T{T} max{max(lens)} H{H} D{D}"
    t_ours_v = _time_case(lambda: ours_v(qv, kv, vv), (qv, kv, vv), dov, iters, warmup)
    t_peer = {name: _time_case(lambda f=f: f(qv, kv, vv), (qv, kv, vv), dov, iters, warmup) for name, f in peers.items()}
    tfv = lambda t: flops_v * 3.5 / t[2] / 1e12  # noqa: E731
    rows.append(_row(case, "ours-triton", dtype, t_ours_v, "TFLOP/s", tfv(t_ours_v), flops_v / t_ours_v[0] / 1e12, check))
    for name, t in t_peer.items():
        rows.append(_row(case, name, dtype, t, "TFLOP/s", tfv(t), flops_v / t[0] / 1e12))
    return rows


# ---------------------------------------------------------------------------------------------------- layernorm
def bench_layernorm(quick: bool, iters: int, warmup: int) -> list[dict]:
    dtype = torch.bfloat16 if CUDA else torch.float32
    M, N = (16384, 2048) if not quick else ((1024, 2048) if CUDA else (64, 96))
    gen = torch.Generator().manual_seed(0)
    x, res = (torch.randn(M, N, generator=gen).to(DEV, dtype).requires_grad_() for _ in range(2))
    w = (1 + 0.1 * torch.randn(N, generator=gen)).to(DEV, dtype).requires_grad_()
    b = (0.1 * torch.randn(N, generator=gen)).to(DEV, dtype).requires_grad_()
    dy = torch.randn(M, N, generator=gen).to(DEV, dtype)
    ins = (x, res, w, b)
    # y + r as one output, so one upstream gradient reaches both (dy for y, dy for r).
    ours = lambda x, r, w, b: torch.stack(ln.add_layer_norm(x, r, w, b, 1e-5))  # noqa: E731
    torch_ref = lambda x, r, w, b: torch.stack(ln.add_layer_norm_reference(x, r, w, b, 1e-5))  # noqa: E731
    dout = torch.stack([dy, dy])
    ref = _with_grads(lambda *t: torch_ref(*t), [t.detach().float().requires_grad_() for t in ins], dout.float())
    check = _check(_with_grads(ours, ins, dout), _with_grads(torch_ref, ins, dout), ref, floor=1e-2)
    el = dtype.itemsize
    bytes_fb = 4 * M * N * el + 4 * M * N * el  # fwd: x, res in; y, r out. bwd: r, dy, dr in; dx out
    case = f"add+layernorm {M}x{N}"
    # the stack copies are the same for both implementations; the figure counts kernel bytes over the whole time.
    t_ours = _time_case(lambda: ours(*ins), ins, dout, iters, warmup)
    t_ref = _time_case(lambda: torch_ref(*ins), ins, dout, iters, warmup)
    # fwd_rate: the forward kernel alone (no stack copy), the figure for the 80%-of-copy-bandwidth goal.
    with torch.no_grad():
        tf_ours = timeit(lambda: ln.add_layer_norm(x, res, w, b, 1e-5), warmup, iters)
        tf_ref = timeit(lambda: ln.add_layer_norm_reference(x, res, w, b, 1e-5), warmup, iters)
    return [_row(case, "ours-triton", dtype, t_ours, "GB/s", bytes_fb / t_ours[2] / 1e9, 4 * M * N * el / tf_ours / 1e9, check),
            _row(case, "torch", dtype, t_ref, "GB/s", bytes_fb / t_ref[2] / 1e9, 4 * M * N * el / tf_ref / 1e9)]


# --------------------------------------------------------------------------------------------------------- gelu
def bench_gelu(quick: bool, iters: int, warmup: int) -> list[dict]:
    dtype = torch.bfloat16 if CUDA else torch.float32
    M, N = (16384, 8192) if not quick else ((1024, 8192) if CUDA else (32, 130))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(M, N, generator=gen).to(DEV, dtype).requires_grad_()
    b = torch.randn(N, generator=gen).to(DEV, dtype).requires_grad_()
    dy = torch.randn(M, N, generator=gen).to(DEV, dtype)
    ours = lambda x, b: gl.bias_gelu(x, b, True)  # noqa: E731
    torch_ref = lambda x, b: gl.bias_gelu_reference(x, b, True)  # noqa: E731
    ref = _with_grads(torch_ref, [x.detach().float().requires_grad_(), b.detach().float().requires_grad_()], dy.float())
    check = _check(_with_grads(ours, (x, b), dy), _with_grads(torch_ref, (x, b), dy), ref, floor=1e-2)
    el = dtype.itemsize
    bytes_fb = 2 * M * N * el + 3 * M * N * el  # fwd: x in, y out; bwd: dy, x in, dx out (+ the dbias reduction)
    case = f"bias+gelu(tanh) {M}x{N}"
    t_ours = _time_case(lambda: ours(x, b), (x, b), dy, iters, warmup)
    t_ref = _time_case(lambda: torch_ref(x, b), (x, b), dy, iters, warmup)
    return [_row(case, "ours-triton", dtype, t_ours, "GB/s", bytes_fb / t_ours[2] / 1e9, 2 * M * N * el / t_ours[0] / 1e9, check),
            _row(case, "torch", dtype, t_ref, "GB/s", bytes_fb / t_ref[2] / 1e9, 2 * M * N * el / t_ref[0] / 1e9)]


# ------------------------------------------------------------------------------------------------ cross-entropy
def bench_cross_entropy(quick: bool, iters: int, warmup: int) -> list[dict]:
    """The LM head + loss in the trainer's two mixed-precision modes. On CPU the shape keeps StarCoder's proportions
    (tokens/D = 2, V/D = 96) small enough for the interpreter, in fp16, so the memory proxy compares layouts."""
    low = torch.bfloat16 if CUDA else torch.float16
    T, D, V = (16384, 2048, 49152) if not quick else ((4096, 2048, 49152) if CUDA else (128, 64, 6144))
    gen = torch.Generator().manual_seed(0)
    h32 = torch.randn(T, D, generator=gen).to(DEV).requires_grad_()
    w32 = (torch.randn(V, D, generator=gen) * 0.02).to(DEV).requires_grad_()
    h, w = (t.detach().to(low).requires_grad_() for t in (h32, w32))
    t = torch.randint(0, V, (T,), generator=gen)
    t[torch.rand(T, generator=gen) < 0.4] = -100  # prompt tokens carry no loss
    t = t.to(DEV)
    one = torch.ones((), device=DEV)

    def autocast(fn):
        def run(hh, ww):
            with torch.autocast(DEV, dtype=low):
                return fn(hh, ww)
        return run

    impls = {  # name -> (function of (h, w), inputs, torch baseline of the same mode for the check)
        f"torch (pure {_name(low)})": (lambda h, w: ce.linear_cross_entropy_reference(h, w, t), (h, w), None),
        f"ours (pure {_name(low)}, fp32 dW acc)": (lambda h, w: ce.fused_linear_cross_entropy(h, w, t), (h, w), "pure"),
        f"ours (pure {_name(low)}, {_name(low)} dW acc: Liger's layout)":
            (lambda h, w: ce.fused_linear_cross_entropy(h, w, t, accumulate_fp32=False), (h, w), "pure"),
        "torch (autocast, fp32 W)": (autocast(lambda h, w: ce.linear_cross_entropy_reference(h, w, t)), (h32, w32), None),
        "ours (autocast, fp32 W)": (autocast(lambda h, w: ops.linear_cross_entropy(h, w, t, backend="triton")),
                                    (h32, w32), "autocast"),
    }
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        impls[f"liger (pure {_name(low)})"] = (lambda h, w: liger(w, h, t), (h, w), None)
    except ImportError:
        pass
    n = min(T, 4096)  # correctness on a slice of the tokens (the fp32 reference holds [n, V] fp32)
    ts = t[:n]

    ref = _with_grads(lambda h, w: ce.linear_cross_entropy_reference(h, w, ts),
                      [h32[:n].detach().requires_grad_(), w32], one)
    base = {"pure": _with_grads(lambda h, w: ce.linear_cross_entropy_reference(h, w, ts), [h[:n].detach().requires_grad_(), w], one),
            "autocast": _with_grads(autocast(lambda h, w: ce.linear_cross_entropy_reference(h, w, ts)),
                                    [h32[:n].detach().requires_grad_(), w32], one)}
    checks = {
        f"ours (pure {_name(low)}, fp32 dW acc)": lambda h, w: ce.fused_linear_cross_entropy(h, w, ts),
        f"ours (pure {_name(low)}, {_name(low)} dW acc: Liger's layout)": lambda h, w: ce.fused_linear_cross_entropy(h, w, ts, accumulate_fp32=False),
        "ours (autocast, fp32 W)": autocast(lambda h, w: ops.linear_cross_entropy(h, w, ts, backend="triton")),
    }
    case = f"linear+CE T{T} D{D} V{V}"
    rows = []
    for name, (f, ins, mode) in impls.items():
        check = ""
        if mode is not None:
            check = _check(_with_grads(checks[name], [ins[0][:n].detach().requires_grad_(), ins[1]], one), base[mode], ref,
                           floor=1e-3)
        try:
            times = _time_case(lambda f=f, ins=ins: f(*ins), ins, one, iters, warmup, retain=not name.startswith("ours"))
        except Exception as e:  # a peer failing (e.g. an old Liger API) must not hide our figures
            rows.append({**_row(case, name, low, (float("nan"),) * 4), "check": f"error: {e!r}"[:80]})
            continue
        rows.append(_row(case, name, low, times, check=check))
    return rows


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def run(quick: bool = False) -> list[dict]:
    if not CUDA:
        quick = True  # the interpreter runs tiny shapes only; CPU figures are a smoke test, not a measurement
    iters, warmup = (2, 1) if not CUDA else ((10, 3) if quick else (30, 5))
    rows = []
    for fn in (bench_attention, bench_layernorm, bench_gelu, bench_cross_entropy):
        rows += fn(quick, iters, warmup)
    return _ratios(rows)


if __name__ == "__main__":
    import argparse

    from bench.common import print_table, save_rows

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    rows = run(p.parse_args().quick)
    print_table(rows, COLUMNS)
    print(f"(rows appended to {save_rows(rows, 'kernels')})")
