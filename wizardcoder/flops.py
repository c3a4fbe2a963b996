"""Model FLOPs of a packed training step and the peak of common accelerators, for MFU.

MFU = useful model FLOPs per second per device / the device's peak. Useful FLOPs count the real (non-padding)
tokens only, and attention over each document's own length (a packed stream never attends across documents):

    6 * N_matmul * real_tokens  +  6 * n_layer * (n_head * head_dim) * sum(L_doc ** 2)

(forward + backward = 3x forward; causal attention does half of the L x L score and value products; recomputation
under activation checkpointing is not useful work and is not counted, as in the PaLM paper's MFU). N_matmul is the
model config's `matmul_params()` (wizardcoder.protocol.ModelConfig), so every family is counted by its own shapes.
"""
from __future__ import annotations

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peak in TFLOP/s from the vendors' data sheets. fp32 runs are measured
# against the same figure (their MFU is then the fraction of the half-precision peak).
PEAK_TFLOPS: list[tuple[str, float]] = [  # (substring of torch.cuda.get_device_name(), peak); first match wins
    ("B200", 2250.0),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM, and GH200's H100
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),  # fp16 with fp32 accumulation
    ("RTX 3090", 71.0),  # fp16 with fp32 accumulation
    ("V100", 125.0),  # fp16 (no bf16)
    ("T4", 65.0),  # fp16 (no bf16)
    ("MI300X", 1307.4),
    ("MI250X", 383.0),
]


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense half-precision peak (TFLOP/s), `override` if given; None where unknown (CPUs)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def train_flops(cfg, real_tokens: int, sum_sq_doc_lengths: int) -> float:
    """Useful FLOPs of forward + backward over `real_tokens` tokens in documents whose squared lengths sum to
    `sum_sq_doc_lengths`, for any family's config (wizardcoder.protocol.ModelConfig)."""
    return (6.0 * cfg.matmul_params() * real_tokens
            + 6.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * sum_sq_doc_lengths)


def doc_sum_sq(cu_seqlens: torch.Tensor, labels: torch.Tensor) -> int:
    """sum(L ** 2) over the segments of a packed micro-batch that hold a document: a segment whose labels are all
    -100 is a pack's padding (a document always carries its response's labels)."""
    cu = cu_seqlens.long().cpu()
    lens = cu[1:] - cu[:-1]
    seg = torch.repeat_interleave(torch.arange(len(lens)), lens)
    loss_per_seg = torch.zeros(len(lens)).index_add_(0, seg, (labels.reshape(-1).cpu() != -100).float())
    # Summed in Python from one list: no per-element tensor-to-scalar reads.
    return sum(n * n for n, has_loss in zip(lens.tolist(), (loss_per_seg > 0).tolist()) if has_loss)
