"""One mixed-precision path: a single process trains through FSDP2's MixedPrecisionPolicy (fp16 compute, fp32
master weights) with the Triton kernels on (the CPU interpreter), and its losses follow the plain fp32 torch path."""
import pytest
import torch
from train_util import metrics, pack, small_checkpoint, small_tokenizer, train_here


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    tok = small_tokenizer(str(root / "tok"))
    return small_checkpoint(str(root / "ckpt"), tok), pack(str(root / "shards"), tok)


def test_fp16_triton_single_process_follows_fp32_torch(small, tmp_path):
    ckpt, shards = small
    # Attention stays on torch's SDPA: the interpreter takes ~10 s a step for it (tests/test_kernels_attention.py
    # holds the Triton attention to its reference); LayerNorm, bias-GELU and the fused loss run in Triton.
    common = dict(model=ckpt, data=shards, max_steps=3, lr=3e-3, seed=0, attn_backend="torch")
    train_here(out=str(tmp_path / "ref"), dtype="float32", kernel_backend="torch", **common)
    train_here(out=str(tmp_path / "fp16"), dtype="float16", kernel_backend="triton", **common)
    ref, half = metrics(str(tmp_path / "ref")), metrics(str(tmp_path / "fp16"))
    assert [r["step"] for r in half] == [1, 2, 3]
    assert not any(r["skipped"] for r in half) and half[0]["loss_scale"] == 2.0**16  # fp16 runs with loss scaling
    for a, b in zip(ref, half):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-3), (a["step"], a["loss"], b["loss"])
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.1  # the steps move the weights, so later losses test the updates


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_with_kernels_follows_fp32_torch(small, tmp_path, dtype):
    """On a GPU: the same single-process path with every Triton kernel (attention included) in bf16 / fp16."""
    ckpt, shards = small
    common = dict(model=ckpt, data=shards, max_steps=4, lr=3e-3, micro_batch_packs=2, seed=0)
    train_here(out=str(tmp_path / "ref"), dtype="float32", kernel_backend="torch", attn_backend="torch", **common)
    train_here(out=str(tmp_path / "half"), dtype=dtype, kernel_backend="triton", attn_backend="triton", **common)
    ref, half = metrics(str(tmp_path / "ref")), metrics(str(tmp_path / "half"))
    for a, b in zip(ref, half):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2), (a["step"], a["loss"], b["loss"])
    assert half[-1]["peak_bytes"] > 0 and half[-1]["tflops_per_gpu"] > 0


def test_activation_checkpointing_changes_no_number(small, tmp_path, monkeypatch):
    """Recomputing every block (full) or every other one (selective) in backward gives the same losses and updates;
    counting the MLP's calls shows the recomputation happens (2 blocks: none 2, selective 3, full 4 per step)."""
    from wizardcoder import ops
    from wizardcoder.parallel import checkpointed_blocks

    assert checkpointed_blocks(5, "selective", 2) == [0, 2, 4] and checkpointed_blocks(3, "full") == [0, 1, 2]
    ckpt, shards = small
    common = dict(model=ckpt, data=shards, max_steps=3, lr=3e-3, seed=0, kernel_backend="torch", attn_backend="torch",
                  save_final=False)
    calls = [0]
    linear_gelu = ops.linear_gelu

    def counted(*args, **kwargs):
        calls[0] += 1
        return linear_gelu(*args, **kwargs)

    monkeypatch.setattr(ops, "linear_gelu", counted)
    losses, per_step = {}, {}
    for mode in ("none", "selective", "full"):
        calls[0] = 0
        train_here(out=str(tmp_path / mode), activation_checkpointing=mode, checkpoint_every=2, **common)
        losses[mode] = [r["loss"] for r in metrics(str(tmp_path / mode))]
        per_step[mode] = calls[0] / 3
    assert per_step == {"none": 2, "selective": 3, "full": 4}
    assert losses["selective"] == pytest.approx(losses["none"], rel=1e-6)
    assert losses["full"] == pytest.approx(losses["none"], rel=1e-6)


class _HostReads:
    """Counts reads of tensor values into Python while a step runs: `aten._local_scalar_dense` dispatches (`.item()`,
    `float(t)`, `bool(t)`, a boolean mask's size) and `Tensor.tolist()`, the two ways a value reaches the host (on a
    GPU each waits for the device). Paused where the values read live in host memory on a GPU machine too: the
    loader and the FLOP count reading the loader's tensors, AdamW reading its step counters (CPU tensors unless
    capturable; the fused CUDA AdamW reads none), and the CPU-only per-document loop of packed attention reading
    cu_seqlens (on a GPU the batched form reads nothing; tests/test_kernels_attention.py holds it to that loop)."""

    def __init__(self, monkeypatch):
        from torch.utils._python_dispatch import TorchDispatchMode

        import wizardcoder.flops
        from wizardcoder.data import PackedLoader
        from wizardcoder.kernels import flash_attention as fa

        self.count, self.paused = 0, False
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default and not counter.paused:
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        tolist = torch.Tensor.tolist

        def counted_tolist(t):
            if not counter.paused:
                counter.count += 1
            return tolist(t)

        def paused(fn):
            def call(*a, **k):
                was, counter.paused = counter.paused, True
                try:
                    return fn(*a, **k)
                finally:
                    counter.paused = was
            return call

        iterate = PackedLoader.__iter__

        def loader_iter(self_):
            it = iterate(self_)
            while True:
                try:
                    b = paused(next)(it)
                except StopIteration:
                    return
                yield b

        monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
        monkeypatch.setattr(PackedLoader, "__iter__", loader_iter)
        monkeypatch.setattr(wizardcoder.flops, "doc_sum_sq", paused(wizardcoder.flops.doc_sum_sq))
        monkeypatch.setattr(torch.optim.AdamW, "step", paused(torch.optim.AdamW.step))
        monkeypatch.setattr(fa, "attention_reference", paused(fa.attention_reference))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_one_host_sync_per_optimizer_step(small, tmp_path, monkeypatch, dtype):
    """Host reads per optimizer step, counted on CPU (2 micro-batches a step, plain-torch kernels, fp16 with its loss
    scaler): runs of 2 and 4 steps differ by 2 steps' reads, and that is at most one read a step."""
    ckpt, shards = small
    reads = _HostReads(monkeypatch)
    counts = []
    for steps in (2, 4):
        reads.count = 0
        with reads.mode:
            train_here(out=str(tmp_path / f"{dtype}-{steps}"), model=ckpt, data=shards, max_steps=steps, lr=1e-3,
                       seed=0, grad_accum=2, dtype=dtype, attn_backend="torch", kernel_backend="torch",
                       save_final=False)
        counts.append(reads.count)
    assert (counts[1] - counts[0]) / 2 == 1, counts  # the loss, overflow flag and gradient norm, read together
