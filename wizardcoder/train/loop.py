"""The training loop: one process or `torchrun`, the same code path (a single process is an FSDP2 world of one).

Start-up, in order, so that bad input fails in one sentence before anything expensive: the config (validated on
construction), the run folder, the tokenizer, the model's shape (meta device), the shards
(`data.shards.validate`: positions, vocabulary, offsets, content hash), the batch split over ranks, the plan; then
the model is built on the meta device, sharded, and each rank loads only its slice (`checkpoint.load_sharded_`) and
logs `{"event": "loaded", "rank", "peak_bytes"}`. One step:

1. take `grad_accum` micro-batches of `micro_batch_packs` packs on every rank (PackedLoader: disjoint per rank);
2. count the loss tokens of the whole global step (all ranks) once, so the loss is the mean over every response
   token of the step, however documents fall into micro-batches and ranks;
3. forward/backward each micro-batch with reduction="sum" scaled by world_size / global_loss_tokens (FSDP2 averages
   gradients over ranks; fp16 also multiplies by the loss scale). Every micro-batch reduce-scatters its gradients
   into the sharded fp32 gradients (as torchtitan does): skipping the sync would keep each rank's full unsharded
   gradients until the step (4 bytes x all parameters: 62 GB per GPU for the 15B recipe);
4. unscale and check (fp16), clip, then the step's one host sync (loss, overflow flag and gradient norm read back
   together; the token counts are host numbers, reduced over ranks on the CPU), step, schedule; log a metrics row
   (loss, lr, tokens/s, TFLOP/s, MFU, memory, and where the step went: data_s, forward_s, backward_s, optimizer_s,
   comm_s from profiling.StepTimer).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings

import torch

from ..errors import ConfigError
from .config import TrainConfig, grad_accum_for, lr_at


def prepare_out(out: str) -> None:
    """The run folder must be a folder we can write (it may hold an earlier run to resume)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: is a file; give a folder for the run (checkpoints, metrics, final model).")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder.") from None


def model_config(cfg: TrainConfig, vocab_needed: int):
    """`(model class, its config, checkpoint folder or None for a preset)` of `--model`, of any family
    (wizardcoder.families), without building it. The vocabulary grows to the tokenizer's (e.g. WizardCoder's [PAD]
    on top of StarCoder's or CodeLlama's)."""
    from ..families import resolve_model

    cls, mcfg, folder = resolve_model(cfg.model, attn_backend=cfg.attn_backend, kernel_backend=cfg.kernel_backend)
    if mcfg.vocab_size < vocab_needed:
        mcfg = dataclasses.replace(mcfg, vocab_size=vocab_needed)
    return cls, mcfg, folder


def build_model(cls, mcfg, folder: str | None, cfg: TrainConfig, d, param_dtype):
    """Meta device -> activation checkpointing / compile / fully_shard -> allocate the local shards -> load (or init)
    only this rank's rows."""
    from ..checkpoint import init_sharded_, load_sharded_
    from ..parallel import parallelize

    with torch.device("meta"):
        model = cls(mcfg)
    parallelize(model, d, param_dtype, cfg.activation_checkpointing, cfg.checkpoint_every, cfg.compile, cfg.offload)
    model.to_empty(device="cpu" if cfg.offload else d.device)
    if folder is None:
        init_sharded_(model, cfg.seed)
    else:
        load_sharded_(model, folder)
    return model


def _truncate_metrics(path: str, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop their rows (and the old run's memory rows)."""
    from ..io import atomic_write_text

    if not os.path.isfile(path):
        return
    keep = []
    for line in open(path, encoding="utf-8"):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if row.get("step", 0) <= step and row.get("event") != "memory":
            keep.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(keep))


def train(cfg: TrainConfig) -> dict:
    from ..data.shards import validate
    from ..dtypes import resolve_dtype
    from ..parallel import init_distributed
    from ..tokenizer import Tokenizer

    if not cfg.data:
        raise ConfigError("--data is required: a packed shard folder from `wizardcoder pack`.")
    cuda = torch.cuda.is_available()
    if cfg.offload and not cuda:
        raise ConfigError("--offload moves parameters, gradients and optimizer state from GPU to host memory and "
                          "needs CUDA; on a CPU-only machine everything is in host memory already: drop --offload.")
    prepare_out(cfg.out)
    tok_src = cfg.tokenizer or (cfg.model if os.path.isdir(cfg.model) else None)
    tokenizer = Tokenizer.from_pretrained(tok_src) if tok_src else Tokenizer.bundled()
    cls, mcfg, folder = model_config(cfg, tokenizer.vocab_size)
    shards = validate(cfg.data, vocab_size=mcfg.vocab_size, max_positions=mcfg.n_positions)
    shards.check_tokenizer(tokenizer)

    d = init_distributed(world_of_one=True)
    # FSDP2 warns for every block because nn.Linear on a 3-D input returns a view; no block output is modified in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    try:
        return _train(cfg, d, resolve_dtype(cfg.dtype, d.device), tokenizer, cls, mcfg, folder, shards)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d, dtype: torch.dtype, tokenizer, cls, mcfg, folder, shards) -> dict:
    """The run itself, in `dtype` (the compute dtype, resolved once on this run's device)."""
    from ..data import PackedLoader
    from ..dtypes import dtype_name
    from ..flops import doc_sum_sq, peak_tflops, train_flops
    from ..io import JsonlAppender, atomic_write_json, read_jsonl
    from ..parallel import all_reduce_host, barrier, peak_memory_bytes, reset_peak_memory
    from ..plan import Config as PlanConfig, format_side_by_side, plan_memory
    from ..profiling import Profile, StepTimer, plot_breakdown, time_fsdp_waits
    from .optim import LossScaler, build_optimizer, state_bytes
    from .state import TrainState, export_hf, latest_checkpoint, load_checkpoint, run_identity, save_checkpoint

    grad_accum = grad_accum_for(cfg, d.world_size, shards.seq_len)
    plan = plan_memory(mcfg, PlanConfig.from_train(cfg, d.world_size, shards.seq_len), dtype=dtype)
    torch.manual_seed(cfg.seed)
    reset_peak_memory(d.device)  # the peak compared with the plan is this run's alone
    rss_start = peak_memory_bytes(d.device)
    model = build_model(cls, mcfg, folder, cfg, d, dtype)
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    loaded = {"event": "loaded", "rank": d.rank, "peak_bytes": peak_memory_bytes(d.device), "start_bytes": rss_start}

    optimizer = build_optimizer(model.parameter_groups(cfg.weight_decay), cfg, d.device)
    scaler = LossScaler(dtype == torch.float16)
    loader = PackedLoader(shards, cfg.micro_batch_packs, d.rank, d.world_size, seed=cfg.seed,
                          pin_memory=d.device.type == "cuda")  # so the non_blocking copies overlap
    steps_per_epoch = max(1, loader.steps_per_epoch // grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    state = TrainState(model, optimizer, loader, scaler)
    identity = run_identity(mcfg, d.world_size, cfg.optimizer)
    resumed = latest_checkpoint(cfg.out)
    if resumed:
        load_checkpoint(state, resumed, d, identity, cfg.out)
    if d.is_main:
        atomic_write_json(os.path.join(cfg.out, "train_config.json"), dataclasses.asdict(cfg))
        _truncate_metrics(metrics_path, state.step)
    barrier(d)
    log = JsonlAppender(metrics_path)  # every rank appends whole lines (one write each): its own "loaded" row
    barrier(d)
    log.write(loaded)
    if d.is_main:
        print(f"training {cfg.model} ({mcfg.num_params():,} params, {dtype_name(dtype)} compute, "
              f"fp32 master weights) on {shards.num_packs} packs of {shards.seq_len} tokens; {d.world_size} rank(s) x "
              f"{cfg.micro_batch_packs} packs x {grad_accum} accumulation = "
              f"{d.world_size * cfg.micro_batch_packs * grad_accum} packs/step; {total} steps"
              + (f"; resumed from {resumed} at step {state.step}" if resumed else ""), flush=True)
        print(f"plan per GPU: {_gb(plan['per_gpu']['total'])} GB (params {_gb(plan['per_gpu']['params'])}, grads "
              f"{_gb(plan['per_gpu']['grads'])}, optimizer {_gb(plan['per_gpu']['optimizer'])}, activations "
              f"{_gb(plan['per_gpu']['activations'])}, transient {_gb(plan['per_gpu']['transient'])})", flush=True)

    def batches():
        while True:
            yield from loader

    it = batches()
    peak = peak_tflops(d.device, cfg.peak_tflops)
    bar = None
    if d.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    last, held = {}, None
    timer = StepTimer(d.device)  # the per-step breakdown in metrics.jsonl (data_s, forward_s, ...)
    if not cfg.compile:  # hooks inside a compiled block would break its graph
        time_fsdp_waits(model, timer)
    prof = Profile.from_config(cfg, os.path.join(cfg.out, "profile"), d.rank, d.device)
    prof.start()
    while state.step < total:
        t0 = time.perf_counter()
        lr = lr_at(state.step, total, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        timer.begin("data")
        micro = [next(it) for _ in range(grad_accum)]
        # The step's token counts (host numbers from the loader) over all ranks: one CPU collective, no device wait.
        timer.begin("comm")
        n_loss, n_real, sum_sq = all_reduce_host([sum(b["num_loss_tokens"] for b in micro),
                                                  sum(b["num_real_tokens"] for b in micro),
                                                  sum(doc_sum_sq(b["cu_seqlens"], b["labels"]) for b in micro)], d)
        loss_sum = torch.zeros((), device=d.device)
        for b in micro:
            timer.begin("forward")
            loss = model(b["input_ids"].to(d.device, non_blocking=True),
                         position_ids=b["position_ids"].to(d.device, non_blocking=True),
                         cu_seqlens=b["cu_seqlens"].to(d.device, non_blocking=True), max_seqlen=b["max_seqlen"],
                         labels=b["labels"].to(d.device, non_blocking=True), reduction="sum")
            timer.begin("backward")
            (loss.float() * (scaler.scale * d.world_size / max(n_loss, 1.0))).backward()
            loss_sum += loss.detach().float()
        timer.begin("optimizer")
        found_inf = scaler.unscale_(model.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        # The step's one host sync: the loss and the overflow flag summed over ranks, with the (already global)
        # gradient norm, read back together.
        summed = torch.stack([loss_sum, found_inf.to(d.device).sum() if found_inf is not None else loss_sum * 0])
        if d.world_size > 1:
            torch.distributed.all_reduce(summed)
        loss_total, n_inf, grad_norm = torch.cat([summed, grad_norm.to(d.device, torch.float32).reshape(1)]).tolist()
        finite = n_inf == 0
        if finite:
            optimizer.step()
        scaler.update(finite)
        if held is None:  # the static bytes after the first step (the plan's check): shards, their grads, state
            held = _held_bytes(model, optimizer, state_bytes)
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        timer.begin("comm")
        loss_value = loss_total / max(n_loss, 1.0)
        dt, mem = all_reduce_host([time.perf_counter() - t0, peak_memory_bytes(d.device)], d, "max")
        flops = train_flops(mcfg, int(n_real), int(sum_sq)) / dt
        timer.end_step()
        last = {"step": state.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                "tokens": int(n_real), "loss_tokens": int(n_loss), "tok_per_s": n_real / dt,
                "tflops_per_s": flops / 1e12, "tok_per_s_per_gpu": n_real / dt / d.world_size,
                "tflops_per_gpu": flops / 1e12 / d.world_size,
                "mfu": flops / d.world_size / (peak * 1e12) if peak else None, "peak_bytes": int(mem), "step_s": dt}
        if scaler.enabled:
            last.update(loss_scale=scaler.scale, skipped=not finite)
        if state.step % cfg.log_every == 0 or state.step == total:  # every rank: read its timer's events once
            last.update(timer.read())
        if d.is_main:
            if state.step % cfg.log_every == 0 or state.step == total:
                log.write(last)
            if bar is not None:
                bar.update(1)
                post = dict(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s_gpu=f"{last['tok_per_s_per_gpu']:.0f}",
                            tflops_gpu=f"{last['tflops_per_gpu']:.1f}", mem=f"{_gb(mem)}GB")
                if last["mfu"] is not None:
                    post["mfu"] = f"{100 * last['mfu']:.1f}%"
                bar.set_postfix(post)
        if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total:
            save_checkpoint(state, cfg.out, d, cfg.keep_checkpoints, identity)
        prof.step()
    prof.stop()
    if bar is not None:
        bar.close()
    if cfg.save_final:
        save_checkpoint(state, cfg.out, d, cfg.keep_checkpoints, identity)
        export_hf(model, tokenizer, os.path.join(cfg.out, "final"), d)
    measured = {**(held or {}), "peak_bytes": peak_memory_bytes(d.device)}
    log.write({"event": "memory", "rank": d.rank, "device": d.device.type, **measured, "plan": plan["per_gpu"]})
    log.close()
    if d.is_main:
        print(format_side_by_side(plan["per_gpu"], measured, d.device.type), flush=True)
        plot_metrics(metrics_path, os.path.join(cfg.out, "loss.png"))
        plot_breakdown(list(read_jsonl(metrics_path, skip_bad=True)), os.path.join(cfg.out, "breakdown.png"))
    return last


def _held_bytes(model, optimizer, state_bytes) -> dict:
    """Bytes of this rank's parameter shards, their gradients and the optimizer state, right after a step."""
    from ..parallel import local_shard

    params = grads = 0
    for p in model.parameters():
        local, _ = local_shard(p)
        params += local.numel() * local.element_size()
        if p.grad is not None:
            g, _ = local_shard(p.grad)
            grads += g.numel() * g.element_size()
    return {"params": params, "grads": grads, "optimizer": state_bytes(optimizer)}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def plot_metrics(metrics_path: str, png: str) -> None:
    """Loss and learning rate against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import read_jsonl

    rows = [r for r in read_jsonl(metrics_path, skip_bad=True) if "step" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over response tokens)")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", alpha=0.5, label="lr")
    ax2.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
