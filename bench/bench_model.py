"""Training step throughput of our StarCoder vs HF transformers' GPTBigCodeForCausalLM: same config, same weights,
same batch, same run. Forward + backward + fused AdamW step on CUDA in the trainer's two mixed-precision modes: pure
bf16 parameters (as under FSDP2's param_dtype) and bf16 autocast over fp32 parameters (the single-process trainer);
fp32 on CPU in --quick smoke runs. Ours runs with the `auto` backends (the Triton kernels on CUDA).

    PYTHONPATH=. python -m bench.bench_model [--quick]

Figures: tokens/s, model TFLOP/s (6N + attention, from StarCoderConfig.flops_per_token), peak memory, and the ratio
ours / HF. Correctness first: the two models' losses on the batch must agree before anything is timed.
"""
from __future__ import annotations

import torch

from bench.common import timeit
from wizardcoder import StarCoder, StarCoderConfig


def _hf_from_ours(model):
    import transformers

    from wizardcoder.checkpoint import export_state_dict

    d = {k: v for k, v in model.config.to_hf_dict().items() if k not in ("architectures", "model_type")}
    with torch.device(next(model.parameters()).device):  # built where ours lives (a 1B init on a CPU is slow)
        hf = transformers.GPTBigCodeForCausalLM(transformers.GPTBigCodeConfig(**d))
    hf.load_state_dict(export_state_dict(model), strict=False)
    hf.tie_weights()
    return hf


def _step_fn(model, loss_fn, opt):
    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def compare_train_step(make_ours, to_hf, cfg, B: int, S: int, bench: str, case: str, quick: bool) -> list[dict]:
    """One train step (forward + backward + AdamW) of `make_ours()` against `to_hf(ours)`, same weights and batch,
    in each mixed-precision mode of the device; the losses must agree before anything is timed. Rows per mode:
    HF first, then ours with `speedup_vs_HF`. bench_llama uses it too."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    # (mode, parameter dtype, autocast dtype): CPU runs fp32 only (a smoke run of the timing code).
    modes = [("pure bf16", torch.bfloat16, None), ("autocast bf16, fp32 params", torch.float32, torch.bfloat16)] if cuda \
        else [("fp32", torch.float32, None)]
    ids = torch.randint(0, cfg.vocab_size, (B, S), device=device)
    flops = cfg.flops_per_token(S) * B * S
    rows = []
    for mode, param_dtype, amp in modes:
        ours = make_ours().to(device=device, dtype=param_dtype)
        hf = to_hf(ours).to(device=device, dtype=param_dtype)

        def in_mode(fn):
            def call():
                with torch.autocast(device, dtype=amp or torch.bfloat16, enabled=amp is not None):
                    return fn()
            return call

        ours_loss, hf_loss = in_mode(lambda: ours(ids, labels=ids)), in_mode(lambda: hf(ids, labels=ids).loss)
        with torch.no_grad():
            a, b = ours_loss().float().item(), hf_loss().float().item()
        if abs(a - b) > (2e-2 if param_dtype == torch.bfloat16 or amp else 1e-4):
            raise AssertionError(f"{mode}: loss mismatch before timing: ours {a} vs HF {b}")
        mode_rows = []
        for name, model, loss_fn in [("HF transformers (sdpa)", hf, hf_loss), ("wizardcoder", ours, ours_loss)]:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = timeit(_step_fn(model, loss_fn, opt), warmup=2 if quick else 3, iters=3 if quick else 10)
            mode_rows.append({
                "bench": bench, "case": f"{case} B{B}xS{S} {mode}",
                "impl": name, "ms": t * 1e3, "tok/s": B * S / t, "TFLOP/s": flops / t / 1e12,
                "peak_GB": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"),
            })
            del opt
        for r in mode_rows:
            r["speedup_vs_HF"] = mode_rows[0]["ms"] / r["ms"]
        rows += mode_rows
        del ours, hf
    return rows


def run(quick: bool = False) -> list[dict]:
    if quick or not torch.cuda.is_available():
        cfg, B, S = StarCoderConfig.from_preset("tiny", n_layer=2), 2, 256
    else:
        cfg, B, S = StarCoderConfig.from_preset("starcoderbase-1b"), 4, 2048
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialised where it runs (1B on a CPU takes long)
    return compare_train_step(lambda: StarCoder.from_config(cfg, seed=0, device=device), _hf_from_ours, cfg, B, S,
                              "model_train_step", "1b" if S == 2048 else "tiny", quick)


if __name__ == "__main__":
    import sys

    from bench.common import print_table, save_rows

    r = run(quick="--quick" in sys.argv)
    print_table(r)
    save_rows(r, "model")
