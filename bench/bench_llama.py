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

from bench.bench_model import compare_train_step
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
    cfg, B, S = (DEEPSEEK_1B, 4, 2048) if torch.cuda.is_available() and not quick else (CPU_SMALL, 2, 256)
    return compare_train_step(lambda: Llama.from_config(cfg, seed=0), _hf_from_ours, cfg, B, S, "llama_train_step",
                              "1.3b" if cfg is DEEPSEEK_1B else "small", quick)


if __name__ == "__main__":
    import sys

    from bench.common import print_table, save_rows

    r = run(quick="--quick" in sys.argv)
    print_table(r)
    save_rows(r, "llama")
