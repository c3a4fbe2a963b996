"""Training step of our Llama vs HF transformers' LlamaForCausalLM: same config, same weights, same batch, same run.
Forward + backward + AdamW step. On CUDA: the DeepSeek-Coder-1.3B shape (24 layers, d 2048, 16 heads, SwiGLU 5504,
linear RoPE scaling 4), pure bf16 parameters and bf16 autocast over fp32 parameters, ours with the `auto` backends
(Triton add+RMSNorm / RoPE / SwiGLU, fused LM-head loss, FlashAttention). On CPU: a small GQA shape in fp32, ours on
the torch references: a CPU proxy of the model code's own overhead, not of the kernels.

    PYTHONPATH=. python -m bench.bench_llama [--quick]

Correctness first: the two losses must agree before anything is timed.
"""
from __future__ import annotations

import torch

from bench.common import timeit
from wizardcoder.llama import Llama
from wizardcoder.llama_config import LlamaConfig

DEEPSEEK_1B = LlamaConfig(vocab_size=32256, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                          num_attention_heads=16, rope_theta=1e5, rope_scaling={"type": "linear", "factor": 4.0},
                          rms_norm_eps=1e-6)
CPU_SMALL = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=2)


def _hf_from_ours(model: Llama):
    import transformers

    d = model.config.to_hf_dict()
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in d.items() if k != "architectures"}))
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def run(quick: bool = False) -> list[dict]:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    cfg, B, S = (DEEPSEEK_1B, 4, 2048) if cuda and not quick else (CPU_SMALL, 2, 256)
    modes = [("pure bf16", torch.bfloat16, None), ("autocast bf16, fp32 params", torch.float32, torch.bfloat16)] if cuda \
        else [("fp32", torch.float32, None)]
    ids = torch.randint(0, cfg.vocab_size, (B, S), device=device)
    flops = cfg.flops_per_token(S) * B * S
    rows = []
    for mode, param_dtype, amp in modes:
        ours = Llama.from_config(cfg, seed=0).to(device=device, dtype=param_dtype)
        hf = _hf_from_ours(ours).to(device=device, dtype=param_dtype)

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

            def step():
                loss = loss_fn()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            t = timeit(step, warmup=2 if quick else 3, iters=3 if quick else 10)
            mode_rows.append({
                "bench": "llama_train_step", "case": f"{'1.3b' if cfg is DEEPSEEK_1B else 'small'} B{B}xS{S} {mode}",
                "impl": name, "ms": t * 1e3, "tok/s": B * S / t, "TFLOP/s": flops / t / 1e12,
                "peak_GB": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"),
            })
            del opt
        for r in mode_rows:
            r["speedup_vs_HF"] = mode_rows[0]["ms"] / r["ms"]
        rows += mode_rows
        del ours, hf
    return rows


if __name__ == "__main__":
    import sys

    from bench.common import print_table, save_rows

    r = run(quick="--quick" in sys.argv)
    print_table(r)
    save_rows(r, "llama")
