"""`wizardcoder train` / `torchrun --nproc_per_node N -m wizardcoder.train`: fine-tune StarCoder on packed shards.

The recipe is WizardCoder's (AdamW, lr 2e-5, 30 warmup steps then cosine, 3 epochs, loss on responses only), on
packed token streams instead of right-padded batches. One step:

1. take `grad_accum` micro-batches of `micro_batch_packs` packs on every rank (PackedLoader: disjoint per rank);
2. count the loss tokens of the whole global step (all ranks) once, so the loss is the mean over every response
   token of the step, however documents fall into micro-batches and ranks;
3. forward/backward each micro-batch with reduction="sum" scaled by world_size / global_loss_tokens (FSDP2 averages
   gradients over ranks), gradient sync only on the last micro-batch;
4. clip, step, schedule.

Checkpoints are torch.distributed.checkpoint folders (model, optimizer, step, data position, RNG) written to
`OUT/checkpoints/step_N` through a temporary folder renamed into place, with `OUT/checkpoints/latest` naming the
newest complete one; a restarted run resumes from it. At the end (and with --export-every) rank 0 writes an HF
checkpoint (safetensors + config + tokenizer) to `OUT/final`. Metrics go to `OUT/metrics.jsonl` and `OUT/loss.png`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass

import torch

from .errors import ConfigError, UserError


@dataclass
class TrainConfig:
    """Every training setting; `--config FILE.json` fills these, command-line flags override."""

    model: str = "tiny"  # preset name (random init) or checkpoint folder / hub id
    data: str = ""  # packed shard folder (`wizardcoder pack`)
    out: str = "runs/train"
    tokenizer: str | None = None  # default: the checkpoint's own, else the bundled one
    micro_batch_packs: int = 1  # packs per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 2e-5
    min_lr: float = 0.0
    warmup_steps: int = 30
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "auto"  # bfloat16 on CUDA, float32 on CPU
    seed: int = 0
    activation_checkpointing: bool = False
    compile: bool = False
    log_every: int = 1
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    attn_backend: str = "auto"
    kernel_backend: str = "auto"
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        cfg = cls()
        if args.config:
            try:
                with open(args.config, encoding="utf-8") as f:
                    d = json.load(f)
            except FileNotFoundError:
                raise ConfigError(f"--config {args.config}: no such file.") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{args.config}:{e.lineno}: not valid JSON ({e.msg}).") from None
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(d) - names)
            if unknown:
                raise ConfigError(f"{args.config}: unknown field {unknown[0]!r}; fields are {', '.join(sorted(names))}.")
            cfg = dataclasses.replace(cfg, **d)
        for f in dataclasses.fields(cls):
            v = getattr(args, f.name, None)
            if v is not None:
                setattr(cfg, f.name, v)
        if not cfg.data:
            raise ConfigError("--data is required: a packed shard folder from `wizardcoder pack`.")
        return cfg


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine to min_lr at `total` (HF's cosine schedule)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TrainState:
    """What a checkpoint holds besides model and optimizer (torch.distributed.checkpoint Stateful)."""

    def __init__(self, model, optimizer, loader):
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.step = 0

    def state_dict(self):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        return {"model": msd, "optim": osd, "step": self.step, "loader": self.loader.state_dict(),
                "rng": torch.get_rng_state()}

    def load_state_dict(self, sd):
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        self.step = int(sd["step"])
        self.loader.load_state_dict(sd["loader"])
        torch.set_rng_state(sd["rng"])


def _checkpoint_dir(out: str) -> str:
    return os.path.join(out, "checkpoints")


def latest_checkpoint(out: str) -> str | None:
    p = os.path.join(_checkpoint_dir(out), "latest")
    if not os.path.isfile(p):
        return None
    name = open(p, encoding="utf-8").read().strip()
    path = os.path.join(_checkpoint_dir(out), name)
    return path if os.path.isdir(path) else None


def save_checkpoint(state: TrainState, out: str, d, keep: int) -> str:
    import torch.distributed.checkpoint as dcp

    from .io import atomic_write_text
    from .parallel import barrier

    root = _checkpoint_dir(out)
    name = f"step_{state.step:07d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".{name}.tmp")
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(d)
    with warnings.catch_warnings():  # one process without a process group is a supported, intended case
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"train": state}, checkpoint_id=tmp)
    barrier(d)
    if d.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(os.path.join(root, "latest"), name + "\n")
        done = sorted(n for n in os.listdir(root) if n.startswith("step_"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    barrier(d)
    return final


def export_hf(model, tokenizer, folder: str, d) -> None:
    """Gather the full state dict to rank 0 and write an HF checkpoint (safetensors + config + tokenizer)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from .model import StarCoder

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.is_main:
        cfg = dataclasses.replace(model.config)
        with torch.device("meta"):
            cpu_model = StarCoder(cfg)
        cpu_model.load_state_dict({k.replace("._checkpoint_wrapped_module", ""): v for k, v in sd.items()}, assign=True)
        tmp = folder.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cpu_model.save_pretrained(tmp)
        tokenizer.save(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)


def build_model(cfg: TrainConfig, vocab_needed: int, device: torch.device):
    from .config import PRESETS
    from .model import StarCoder

    overrides = dict(attn_backend=cfg.attn_backend, kernel_backend=cfg.kernel_backend)
    if cfg.model in PRESETS:
        model = StarCoder.from_preset(cfg.model, seed=cfg.seed, device=device, **overrides)
    else:
        model = StarCoder.from_pretrained(cfg.model, dtype=torch.float32, device=device, **overrides)
    if model.config.vocab_size < vocab_needed:
        model.resize_token_embeddings(vocab_needed)  # e.g. WizardCoder's [PAD] on top of StarCoder's vocab
    return model


def train(cfg: TrainConfig) -> dict:
    from .data import PackedLoader, PackedShards
    from .parallel import all_reduce_sum, init_distributed, parallelize
    from .tokenizer import Tokenizer

    d = init_distributed()
    torch.manual_seed(cfg.seed)
    shards = PackedShards(cfg.data)
    tok_src = cfg.tokenizer or (cfg.model if os.path.isdir(cfg.model) else None)
    tokenizer = Tokenizer.from_pretrained(tok_src) if tok_src else Tokenizer.bundled()
    shards.check_tokenizer(tokenizer)
    model = build_model(cfg, tokenizer.vocab_size, d.device)
    dtype = {"auto": torch.bfloat16 if d.device.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}.get(cfg.dtype)
    if dtype is None:
        raise ConfigError(f"--dtype {cfg.dtype!r}: use auto, bfloat16 or float32.")
    parallelize(model, d, dtype if dtype != torch.float32 and d.enabled else None, cfg.activation_checkpointing, cfg.compile)
    autocast = d.device.type == "cuda" and dtype == torch.bfloat16 and not d.enabled
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay, fused=d.device.type == "cuda")
    loader = PackedLoader(shards, cfg.micro_batch_packs, d.rank, d.world_size, seed=cfg.seed)
    steps_per_epoch = max(1, loader.steps_per_epoch // cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    state = TrainState(model, optimizer, loader)

    resumed = latest_checkpoint(cfg.out)
    if resumed:
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"train": state}, checkpoint_id=resumed)
    if d.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        from .io import atomic_write_json

        atomic_write_json(os.path.join(cfg.out, "train_config.json"), dataclasses.asdict(cfg))
        print(f"training {cfg.model} ({model.config.num_params():,} params) on {shards.num_packs} packs of "
              f"{shards.seq_len} tokens; {d.world_size} rank(s) x {cfg.micro_batch_packs} packs x {cfg.grad_accum} "
              f"accumulation = {d.world_size * cfg.micro_batch_packs * cfg.grad_accum} packs/step; {total} steps"
              + (f"; resumed from {resumed} at step {state.step}" if resumed else ""), flush=True)

    def batches():
        while True:
            yield from loader

    it = batches()
    flops_per_token = model.config.flops_per_token(shards.seq_len)
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    bar = None
    if d.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    last = {}
    while state.step < total:
        t0 = time.perf_counter()
        lr = lr_at(state.step, total, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        micro = [next(it) for _ in range(cfg.grad_accum)]
        n_loss = all_reduce_sum(sum(b["num_loss_tokens"] for b in micro), d)
        n_real = all_reduce_sum(sum(b["num_real_tokens"] for b in micro), d)
        loss_sum = 0.0
        for i, b in enumerate(micro):
            if d.enabled:
                model.set_requires_gradient_sync(i == len(micro) - 1)
            with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(b["input_ids"].to(d.device, non_blocking=True), position_ids=b["position_ids"].to(d.device, non_blocking=True),
                             cu_seqlens=b["cu_seqlens"].to(d.device, non_blocking=True), max_seqlen=b["max_seqlen"],
                             labels=b["labels"].to(d.device, non_blocking=True), reduction="sum")
            (loss * (d.world_size / max(n_loss, 1.0))).backward()
            loss_sum += loss.detach().float()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        loss_value = all_reduce_sum(float(loss_sum), d) / max(n_loss, 1.0)
        dt = time.perf_counter() - t0
        last = {"step": state.step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                "tokens": int(n_real), "loss_tokens": int(n_loss), "tok_per_s": n_real / dt,
                "tflops_per_s": flops_per_token * n_real / dt / 1e12, "step_s": dt}
        if d.device.type == "cuda":
            last["mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
        if d.is_main:
            if state.step % cfg.log_every == 0 or state.step == total:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(last) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{last['tok_per_s']:.0f}")
        if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total:
            save_checkpoint(state, cfg.out, d, cfg.keep_checkpoints)
    if bar is not None:
        bar.close()
    save_checkpoint(state, cfg.out, d, cfg.keep_checkpoints)
    export_hf(model, tokenizer, os.path.join(cfg.out, "final"), d)
    if d.is_main:
        plot_metrics(metrics_path, os.path.join(cfg.out, "loss.png"))
    if d.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    return last


def plot_metrics(metrics_path: str, png: str) -> None:
    """Loss and learning rate against step (needs matplotlib; skipped quietly without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if not os.path.isfile(metrics_path):
        return
    rows = [json.loads(line) for line in open(metrics_path, encoding="utf-8") if line.strip()]
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="JSON file of TrainConfig fields; flags override it")
    p.add_argument("--model", default=None, help="preset name (random init) or checkpoint folder / hub id (default tiny)")
    p.add_argument("--data", default=None, help="packed shard folder from `wizardcoder pack`")
    p.add_argument("--out", default=None, help="run folder: checkpoints/, final/, metrics.jsonl, loss.png")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--micro-batch-packs", dest="micro_batch_packs", type=int, default=None)
    p.add_argument("--grad-accum", dest="grad_accum", type=int, default=None)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr", dest="min_lr", type=float, default=None)
    p.add_argument("--warmup-steps", dest="warmup_steps", type=int, default=None)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None)
    p.add_argument("--grad-clip", dest="grad_clip", type=float, default=None)
    p.add_argument("--dtype", default=None, help="auto | bfloat16 | float32")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--activation-checkpointing", dest="activation_checkpointing", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--save-every", dest="save_every", type=int, default=None)
    p.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int, default=None)
    p.add_argument("--attn-backend", dest="attn_backend", default=None)
    p.add_argument("--kernel-backend", dest="kernel_backend", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def run(args: argparse.Namespace) -> int:
    last = train(TrainConfig.from_args(args))
    if last and int(os.environ.get("RANK", 0)) == 0:
        print(f"final step {last['step']}: loss {last['loss']:.4f}, {last['tok_per_s']:.0f} tok/s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wizardcoder.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
