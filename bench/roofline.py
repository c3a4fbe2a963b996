"""The roofline: every kernel, a whole train step and a whole decode step, achieved FLOP/s against arithmetic
intensity (FLOPs per byte moved), under the device's own measured ceilings.

    PYTHONPATH=. python -m bench.roofline [--quick] [--out DIR]     # writes DIR/roofline.png, roofline.md, roofline.jsonl

Ceilings, measured in this run the way the points are: the matmul peak (the best of square matmuls in the compute
dtype: bf16 on CUDA, fp32 on CPU) and the copy bandwidth (a device-to-device `copy_`, read + write bytes). The roof
at intensity I is min(peak, bandwidth x I); the ridge point peak / bandwidth separates memory-bound (left) from
compute-bound (right). Each point's FLOPs and bytes are the work the operation must do and the bytes it must move
at least (inputs read once, outputs written once); measured time is the median after warm-up (bench.common.timeit:
CUDA events, or the wall clock on CPU). So a point's height against the roof above it is how much of the device
the operation gets, and its distance to the left of the ridge says the bytes, not the math, bound it.

Points (the kernels through wizardcoder.ops, which is where the model calls them: Triton on CUDA, the plain-torch
references on CPU; the column `impl` says which ran):
- `attention fwd`: causal MQA, B x H x S x D (FLOPs 4*B*H*S^2*D/2; bytes q, k, v, out).
- `add+layernorm fwd`: T x D residual add and LayerNorm (bytes x, residual in; out, sum out; FLOPs ~8 per element).
- `bias+gelu fwd`: T x 4D (bytes in, out; FLOPs ~10 per element: the tanh form).
- `linear+cross-entropy fwd`: T x D hidden against the V x D head (FLOPs 2*T*D*V; bytes hidden, head, targets).
- `matmul T x D x 4D`: the MLP's first GEMM, for scale.
- `train step`: bench.bench_model's step (forward, backward, AdamW) on the model of the bench's shape; FLOPs from
  the config (6 x params per token + attention); bytes: weights read twice, gradients written, AdamW's
  read/write of weights, gradients and both moments (activations not counted: a lower bound on bytes).
- `decode step`: the engine's batched decode, B rows at context C, as bench.bench_generate times it
  ((T(N new) - T(1 new)) / (N - 1)); FLOPs 2 x matmul params + attention per row; bytes the weights once and every
  row's K/V.
Shapes: StarCoderBase-1B's width on CUDA; a small model on CPU (the plot is real there too: the CPU's own ceilings).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bench.common import REPO, print_table, stamp, timeit

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32


# ----------------------------------------------------------------------------------------------------- ceilings
def matmul_peak(sizes: tuple[int, ...], iters: int = 5) -> float:
    """FLOP/s: the best square matmul of the compute dtype over `sizes`."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=DEV, dtype=DTYPE), torch.randn(n, n, device=DEV, dtype=DTYPE)
        best = max(best, 2 * n ** 3 / timeit(lambda: a @ b, warmup=1, iters=iters))
    return best


def copy_bandwidth(nbytes: int, iters: int = 5) -> float:
    """Bytes/s of a device-to-device copy of `nbytes` (read + write counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=DEV)
    y = torch.empty_like(x)
    return 2 * nbytes / timeit(lambda: y.copy_(x), warmup=1, iters=iters)


# ------------------------------------------------------------------------------------------------------- points
def kernel_points(T: int, D: int, H: int, B: int, S: int, V: int, quick: bool = False) -> list[dict]:
    """(name, impl, flops, bytes, seconds) of each kernel the model calls, forward, at these shapes."""
    from wizardcoder import ops

    e = torch.finfo(DTYPE).bits // 8
    g = torch.Generator(device=DEV).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=DEV, dtype=DTYPE, generator=g)

    def clock(fn):
        return timeit(fn, warmup=1 if quick else 3, iters=3 if quick else 10)

    pts = []
    with torch.no_grad():
        q, k, v = rand(B, S, H, D // H), rand(B, S, 1, D // H), rand(B, S, 1, D // H)
        fn = lambda: ops.attention(q, k, v, scale=(D // H) ** -0.5)  # noqa: E731
        pts.append(("attention fwd", ops.resolve("auto", q, "attention"), 4 * B * H * S * S * (D // H) / 2,
                    (2 * B * S * D + 2 * B * S * (D // H)) * e, clock(fn)))
        x, r, w, b = rand(T, D), rand(T, D), rand(D), rand(D)
        pts.append(("add+layernorm fwd", ops.resolve("auto", x), 8 * T * D, (4 * T * D + 2 * D) * e,
                    clock(lambda: ops.add_layer_norm(x, r, w, b, 1e-5))))
        from wizardcoder.kernels import gelu

        h, bias = rand(T, 4 * D), rand(4 * D)
        backend = ops.resolve("auto", h)
        fn = (lambda: gelu.bias_gelu(h, bias, approximate=True)) if backend == "triton" else \
            (lambda: gelu.bias_gelu_reference(h, bias, approximate=True))
        pts.append(("bias+gelu fwd", backend, 10 * T * 4 * D, (2 * T * 4 * D + 4 * D) * e, clock(fn)))
        head, tgt = rand(V, D), torch.randint(0, V, (T,), device=DEV, generator=g)
        pts.append(("linear+cross-entropy fwd", ops.resolve("auto", x), 2 * T * D * V, (T * D + V * D) * e + 8 * T,
                    clock(lambda: ops.linear_cross_entropy(x, head, tgt))))
        wfc = rand(4 * D, D)
        pts.append((f"matmul {T}x{D}x{4 * D}", "torch", 2 * T * D * 4 * D, (T * D + 4 * D * D + T * 4 * D) * e,
                    clock(lambda: x @ wfc.T)))
    return [dict(name=n, impl=i, flops=float(f), bytes=float(by), seconds=s) for n, i, f, by, s in pts]


def train_step_point(cfg, B: int, S: int, quick: bool) -> dict:
    """bench.bench_model's train step (forward, backward, AdamW) on a model of `cfg`, pure compute dtype."""
    from bench.bench_model import _step_fn
    from wizardcoder import StarCoder

    model = StarCoder.from_config(cfg, seed=0).to(device=DEV, dtype=DTYPE)
    ids = torch.randint(0, cfg.vocab_size, (B, S), device=DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=CUDA)
    t = timeit(_step_fn(model, lambda: model(ids, labels=ids), opt), warmup=2, iters=3 if quick else 10)
    P = sum(p.numel() for p in model.parameters())
    e = torch.finfo(DTYPE).bits // 8
    # weights read in forward and backward, gradients written; AdamW reads w, g, m, v and writes w, m, v
    nbytes = P * e * (2 + 1 + 4 + 3)
    del model, opt
    return dict(name=f"train step B{B}xS{S}", impl="wizardcoder", flops=float(cfg.flops_per_token(S) * B * S),
                bytes=float(nbytes), seconds=t)


def decode_step_point(cfg, B: int, C: int, N: int) -> dict:
    """One batched decode step of the engine: B rows (one sample of each of B prompts of C - 1 tokens), timed as
    (T(N new tokens) - T(1 new token)) / (N - 1), which leaves the prefill out."""
    from wizardcoder import StarCoder
    from wizardcoder.engine import Engine, SamplingParams

    model = StarCoder.from_config(cfg, seed=0).to(device=DEV, dtype=DTYPE).eval()
    prompts = torch.randint(0, cfg.vocab_size, (B, C - 1)).tolist()
    engine = Engine(model, None, max_slots=B, max_len=C + N)  # no tokenizer: no EOS, every row runs N steps

    def run(n):
        return lambda: engine.generate(prompts, SamplingParams(max_new_tokens=n))

    step = (timeit(run(N), warmup=1, iters=3) - timeit(run(1), warmup=1, iters=3)) / (N - 1)
    if step <= 0:
        raise RuntimeError(f"decode step: {N} new tokens took no longer than 1 ({step * 1e3:.3g} ms a step); the "
                           "timing is noise at this size, raise N.")
    e = torch.finfo(DTYPE).bits // 8
    hd = cfg.n_embd // cfg.n_head
    ctx = C + N // 2  # the mean context over the N steps
    flops = B * (2 * cfg.matmul_params() + 4 * cfg.n_layer * cfg.n_embd * ctx)
    kv = B * ctx * 2 * cfg.n_layer * hd * e  # MQA: one K/V head per layer
    weights = sum(p.numel() for p in model.parameters()) * e
    del model, engine
    return dict(name=f"decode step B{B} ctx{C}", impl="wizardcoder engine", flops=float(flops),
                bytes=float(weights + kv), seconds=step)


# ------------------------------------------------------------------------------------------------ table and plot
def roof(intensity: float, peak: float, bw: float) -> float:
    return min(peak, bw * intensity)


def finish(rows: list[dict], peak: float, bw: float) -> list[dict]:
    for r in rows:
        r["intensity"] = r["flops"] / r["bytes"]
        r["TFLOP/s"] = r["flops"] / r["seconds"] / 1e12
        r["roof TFLOP/s"] = roof(r["intensity"], peak, bw) / 1e12
        r["of roof"] = r["TFLOP/s"] / r["roof TFLOP/s"]
        r["bound"] = "memory" if r["intensity"] < peak / bw else "compute"
    return rows


def plot(rows: list[dict], peak: float, bw: float, png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = min(min(r["intensity"] for r in rows), peak / bw) / 4
    hi = max(max(r["intensity"] for r in rows), peak / bw) * 4
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(xs, [roof(x, peak, bw) / 1e12 for x in xs], color="black",
            label=f"roof: {peak / 1e12:.3g} TFLOP/s matmul, {bw / 1e9:.3g} GB/s copy")
    ax.axvline(peak / bw, color="gray", ls=":", lw=1)
    for r in rows:
        marker = "s" if "step" in r["name"] else "o"
        ax.scatter(r["intensity"], r["TFLOP/s"], marker=marker, zorder=3)
        ax.annotate(f"{r['name']} ({100 * r['of roof']:.0f}%)", (r["intensity"], r["TFLOP/s"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte moved)",
           ylabel="achieved TFLOP/s", title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict], peak: float, bw: float, s: dict) -> str:
    head = ["point", "impl", "GFLOP", "MB", "ms", "FLOP/byte", "TFLOP/s", "roof TFLOP/s", "of roof", "bound"]
    lines = [f"Roofline on {s['device']}, commit {s['commit']}, {s['date']}: matmul peak {peak / 1e12:.4g} TFLOP/s "
             f"({str(DTYPE).removeprefix('torch.')}), copy bandwidth {bw / 1e9:.4g} GB/s, ridge at "
             f"{peak / bw:.3g} FLOP/byte.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['name']} | {r['impl']} | {r['flops'] / 1e9:.4g} | {r['bytes'] / 1e6:.4g} | "
                     f"{r['seconds'] * 1e3:.4g} | {r['intensity']:.3g} | {r['TFLOP/s']:.4g} | "
                     f"{r['roof TFLOP/s']:.4g} | {100 * r['of roof']:.0f}% | {r['bound']} |")
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> tuple[list[dict], float, float]:
    from wizardcoder import StarCoderConfig

    if CUDA and not quick:
        peak, bw = matmul_peak((4096, 8192)), copy_bandwidth(1 << 30)
        shapes = dict(T=16384, D=2048, H=16, B=8, S=2048, V=49152)
        model_cfg, train_bs, dec = StarCoderConfig.from_preset("starcoderbase-1b"), (4, 2048), (64, 512, 33)
    elif CUDA:
        peak, bw = matmul_peak((4096,)), copy_bandwidth(1 << 28)
        shapes = dict(T=4096, D=2048, H=16, B=2, S=1024, V=49152)
        model_cfg, train_bs, dec = StarCoderConfig.from_preset("tiny", n_embd=1024, n_layer=4, n_head=16,
                                                               vocab_size=49152), (2, 1024), (32, 256, 17)
    else:  # CPU: a small model, the CPU's own ceilings
        peak = matmul_peak((512, 1024), iters=3) if quick else matmul_peak((1024, 1536))
        bw = copy_bandwidth(1 << 26, iters=3 if quick else 10)
        shapes = dict(T=512, D=256, H=8, B=2, S=256, V=8192) if quick else dict(T=2048, D=512, H=8, B=4, S=512, V=16384)
        model_cfg = StarCoderConfig.from_preset("tiny", n_embd=128 if quick else 256, n_layer=2, n_head=8,
                                                vocab_size=4096)
        train_bs, dec = ((2, 128), (4, 64, 33)) if quick else ((4, 256), (16, 128, 33))
    rows = kernel_points(**shapes, quick=quick)
    rows.append(train_step_point(model_cfg, *train_bs, quick))
    rows.append(decode_step_point(model_cfg, *dec))
    return finish(rows, peak, bw), peak, bw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "bench", "out"),
                   help="folder for roofline.png, roofline.md, roofline.jsonl (default $OUT, else bench/out)")
    a = p.parse_args(argv)
    if not CUDA:
        torch.manual_seed(0)
    t0 = time.time()
    rows, peak, bw = run(a.quick)
    s = stamp()
    os.makedirs(a.out, exist_ok=True)
    title = f"roofline: {s['device']} ({str(DTYPE).removeprefix('torch.')})"
    plot(rows, peak, bw, os.path.join(a.out, "roofline.png"), title)
    from wizardcoder.io import atomic_write_text

    atomic_write_text(os.path.join(a.out, "roofline.md"), markdown(rows, peak, bw, s))
    ceilings = {"bench": "roofline", "case": "ceilings", "matmul_flops_per_s": peak, "copy_bytes_per_s": bw}
    atomic_write_text(os.path.join(a.out, "roofline.jsonl"),
                      "".join(json.dumps({**s, **r}) + "\n" for r in [ceilings] + [{"bench": "roofline", **r}
                                                                                     for r in rows]))
    print_table(rows, ["name", "impl", "intensity", "TFLOP/s", "roof TFLOP/s", "of roof", "bound"])
    print(f"matmul peak {peak / 1e12:.4g} TFLOP/s, copy {bw / 1e9:.4g} GB/s; wrote {a.out}/roofline.png, "
          f"roofline.md, roofline.jsonl in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
