"""Generation for pass@k: our engine vs HF transformers' `generate`, same weights, same prompts, same run.

    PYTHONPATH=. python -m bench.bench_generate            # CPU proxy (small model) or, with CUDA, the 1B shape
    PYTHONPATH=. python -m bench.bench_generate --quick    # a smoke run (seconds)
    PYTHONPATH=. python -m bench.bench_generate --case passk   # the pass@k workload alone
    PYTHONPATH=. python -m bench.bench_generate --case ops     # aten ops of one decode step, torch and Triton paths
    PYTHONPATH=. python -m bench.bench_generate --case deterministic   # the cost of Engine(deterministic=True)

Cases (EOS disabled, so each sample's length is set by the workload and both sides generate the same tokens; the
counts are checked before any time is reported):
- `step bs1`: one sample, greedy; decode time per step = (T(N new tokens) - T(1 new token)) / (N - 1) for each side,
  so prefill is not counted. On CUDA also the weight-bandwidth floor: model bytes / measured device copy bandwidth.
- `n=200`: 200 samples of one 256-token prompt, top-p sampling (T=0.8, p=0.95). Ours: the prompt prefilled once into
  a shared prompt slot, 200 slots. HF: the prompt repeated per sample, batches of `hf_batch` (200 on CPU, 128 on CUDA).
  On CUDA ours runs twice, in turns with HF: its decode attention as the Triton cascade kernel (the default there)
  and as the torch cascade (`_engines`: the same model, prefill and sampler).
- `mixed`: prompts of 64-256 tokens with n=8 samples each whose lengths differ widely (per-request max_new_tokens,
  drawn from a long-tailed distribution), the case continuous batching is for. Ours: every sample has its own
  length and a finished slot is refilled at once. HF: static batches of the same size in the same order, each
  running until its longest sample ends (padding the rest), as a batch sampler without refill must. Figures count
  useful tokens only (each sample's own length), the same total for both.
- `pass@k` (`--case passk`, alone): the paper's evaluation workload, 20 samples of one 256-token prompt, top-p 0.95,
  T 0.8, 64 new tokens, on a 4-layer d512 model with StarCoder's 49152-token vocabulary (the LM head and the top-p
  filter dominate). HF: one batch of 20. On CUDA (bf16) it also ends the default run, with both decode attention
  paths as in `n=200`.
Correctness gate first: greedy tokens of ours and HF on one prompt must agree (fp32: exactly; half precision: the
match length is reported).
"""
from __future__ import annotations

import time

import torch

from wizardcoder import StarCoder, StarCoderConfig
from wizardcoder.engine import Engine, SamplingParams

CPU_SHAPE = dict(n_positions=1024, n_embd=256, n_layer=4, n_head=8, vocab_size=8192)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _clock(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _interleaved(fns: dict, reps: int) -> dict:
    """Median seconds of each fn, run in turns (a, b, a, b, ...) in this process, so a shared machine's load falls on
    every side alike."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(_clock(fn))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _hf_generate(hf, prompts: torch.Tensor, new: int, sample: bool):
    kw = dict(do_sample=True, temperature=0.8, top_p=0.95, top_k=0) if sample else dict(do_sample=False)
    return hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
                       eos_token_id=None, pad_token_id=0, **kw)


def _copy_bandwidth(device) -> float:
    """Bytes/s of a device-to-device copy (read + write), 1 GiB."""
    x = torch.empty(1 << 29, dtype=torch.float16, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    t = min(_clock(lambda: y.copy_(x)) for _ in range(5))
    return 2 * x.numel() * x.element_size() / t


def _engines(model, **kw) -> dict:
    """The engine as it runs (its decode attention: the Triton cascade kernel on CUDA) and, where that is the kernel,
    a second one on the torch cascade path: the A/B of the decode attention alone (same model, prefill, sampler)."""
    engines = {"ours": Engine(model, **kw)}
    if engines["ours"].runner.cache.decode_backend == "triton":
        engines["torch cascade"] = Engine(model, **kw)
        engines["torch cascade"].runner.cache.decode_backend = "torch"
    return engines


def _impl(eng: Engine) -> str:
    return f"wizardcoder engine ({eng.runner.cache.decode_backend} cascade)"


def run_passk(samples: int = 20, new: int = 64, reps: int = 3) -> list[dict]:
    """The pass@k workload alone (see the module docstring); every side draws samples x new tokens; medians of `reps`
    interleaved runs. On CUDA the engine runs twice: Triton cascade kernel and torch cascade."""
    from bench.bench_model import _hf_from_ours

    cfg = StarCoderConfig(n_positions=1024, n_embd=512, n_layer=4, n_head=8, vocab_size=49152)
    ours = StarCoder.from_config(cfg, seed=0).eval()
    hf = _hf_from_ours(ours).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
    params = SamplingParams(n=samples, temperature=0.8, top_p=0.95, max_new_tokens=new, seed=1)
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    ours, hf = ours.to(device, dtype), hf.to(device, dtype)
    engines = _engines(ours, max_slots=samples, max_len=256 + new)
    with torch.inference_mode():
        for eng in engines.values():  # warm-up every side
            eng.generate([prompt[0].tolist()], SamplingParams(n=2, temperature=0.8, top_p=0.95, max_new_tokens=4))
        _hf_generate(hf, prompt.to(device), 2, sample=True)
        out, res = [], []
        fns = {name: (lambda e=eng: out.append(e.generate([prompt[0].tolist()], params)))
               for name, eng in engines.items()}
        fns["hf"] = lambda: res.append(_hf_generate(hf, prompt.expand(samples, -1).to(device), new, sample=True))
        t = _interleaved(fns, reps)
        assert all(sum(len(c.token_ids) for c in o[0]) == samples * new for o in out)
        assert all(r.shape == (samples, 256 + new) for r in res)
    case = f"pass@k: n={samples} of one 256-token prompt, {new} new, top-p 0.95 T 0.8, V 49152, 4 x d512"
    return [{"bench": "generate", "case": case, "impl": "HF transformers generate",
             "tok_per_s": samples * new / t["hf"], "seconds": t["hf"], "vs_HF": 1.0}] + [
        {"bench": "generate", "case": case, "impl": _impl(eng), "tok_per_s": samples * new / t[name],
         "seconds": t[name], "vs_HF": t["hf"] / t[name]} for name, eng in engines.items()]


def run_deterministic_cost(samples: int = 20, new: int = 64, reps: int = 3) -> list[dict]:
    """The pass@k workload (as `run_passk`) through the engine as is and with `deterministic=True`, same run,
    medians of `reps` interleaved runs."""
    cfg = StarCoderConfig(n_positions=1024, n_embd=512, n_layer=4, n_head=8, vocab_size=49152)
    model = StarCoder.from_config(cfg, seed=0).eval()
    prompt = torch.randint(0, cfg.vocab_size, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(n=samples, temperature=0.8, top_p=0.95, max_new_tokens=new, seed=1)
    engines = {det: Engine(model, max_slots=samples, max_len=256 + new, deterministic=det) for det in (False, True)}
    outs = {det: [] for det in engines}
    for det, eng in engines.items():
        eng.generate([prompt], SamplingParams(n=2, temperature=0.8, top_p=0.95, max_new_tokens=4))  # warm-up
    t = _interleaved({det: (lambda e=eng, o=outs[det]: o.append(e.generate([prompt], params)))
                      for det, eng in engines.items()}, reps)
    assert all(sum(len(c.token_ids) for c in o[0]) == samples * new for v in outs.values() for o in v)
    return [{"bench": "generate", "case": f"pass@k workload (n={samples}, {new} new, V 49152, 4 x d512)",
             "impl": f"engine, deterministic={det}", "tok_per_s": samples * new / t[det], "seconds": t[det],
             "vs_default": t[False] / t[det]} for det in engines]


def run_op_count() -> list[dict]:
    """Aten ops dispatched by one decode step (the runner's `decode_step`, 8 rows sharing one prompt, top-p), counted
    with a TorchDispatchMode, on each decode attention path: the torch cascade (attn_backend torch) and the Triton
    kernel (attn_backend triton; on CPU in the interpreter, where the launch is one custom op and the interpreter's
    own work is not counted). Per layer = (ops at 4 layers - ops at 2 layers) / 2, with the ops named; the rest is
    the step's embedding, LM head, sampler and state update."""
    import os
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    if not torch.cuda.is_available():  # before the kernel file is first imported (Triton reads it at decoration)
        os.environ.setdefault("TRITON_INTERPRET", "1")

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    rows = []
    for backend, impl in (("torch", "torch cascade"), ("triton", "Triton cascade kernel")):
        totals = {}
        for layers in (2, 4):
            cfg = StarCoderConfig(**{**CPU_SHAPE, "n_layer": layers, "attn_backend": backend})
            eng = Engine(StarCoder.from_config(cfg, seed=0).eval(), max_slots=8, max_len=128, sync_every=1)
            assert eng.runner.cache.decode_backend == backend
            with torch.inference_mode():
                eng.add_request(list(range(1, 40)), SamplingParams(n=8, temperature=0.8, top_p=0.95, max_new_tokens=20))
                eng.step()  # admit + prefill + one step; the next step is a plain decode step
                with Count() as c:
                    eng.runner.decode_step()
            totals[layers] = c.ops
        per_layer = (sum(totals[4].values()) - sum(totals[2].values())) / 2
        named = {op: (totals[4][op] - totals[2][op]) // 2 for op in totals[4]}
        rows.append({"bench": "generate", "case": "aten ops of one decode step (8 rows, shared prompt, top-p)",
                     "impl": f"wizardcoder engine, {impl}", "ops_per_layer": per_layer,
                     "ops_outside_layers": sum(totals[2].values()) - 2 * per_layer,
                     "layer_ops": ", ".join(f"{op.split('.')[-1]} {n}" for op, n in sorted(named.items()) if n)})
    return rows


def run(quick: bool = False) -> list[dict]:
    from bench.bench_model import _hf_from_ours

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if cuda and not quick:
        cfg = StarCoderConfig.from_preset("starcoderbase-1b")
        step_new, n, n_new, hf_batch, mixed_prompts, mixed_max = 64, 200, 128, 200, 16, 256
    elif cuda or not quick:
        cfg = StarCoderConfig(**CPU_SHAPE)
        step_new, n, n_new, hf_batch, mixed_prompts, mixed_max = 64, 200, 32, 200, 12, 96
    else:
        cfg = StarCoderConfig(**{**CPU_SHAPE, "n_layer": 2, "n_embd": 128})
        step_new, n, n_new, hf_batch, mixed_prompts, mixed_max = 16, 24, 8, 24, 4, 24
    slots = 200 if n == 200 else n
    ours = StarCoder.from_config(cfg, seed=0, device=device).to(dtype=dtype).eval()  # initialised on the device
    hf = _hf_from_ours(ours).to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(0)
    V = cfg.vocab_size
    rows = []

    def row(case, impl, **figures):
        rows.append({"bench": "generate", "case": case, "impl": impl, **figures})

    with torch.inference_mode():
        # ---- correctness gate: greedy tokens agree
        prompt = torch.randint(0, V, (1, 64), generator=g)
        one = Engine(ours, max_slots=1, max_len=64 + step_new + 1)
        a = one.generate([prompt[0].tolist()], SamplingParams(max_new_tokens=16))[0][0].token_ids
        b = _hf_generate(hf, prompt.to(device), 16, sample=False)[0, 64:].tolist()
        match = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), 16)
        if match < 16 and dtype == torch.float32:
            raise AssertionError(f"greedy mismatch before timing: {a} vs {b}")

        # ---- batch-1 decode step
        def ours_b1(k):
            return lambda: one.generate([prompt[0].tolist()], SamplingParams(max_new_tokens=k))

        def hf_b1(k):
            return lambda: _hf_generate(hf, prompt.to(device), k, sample=False)

        for fn in (ours_b1(step_new), hf_b1(step_new)):  # warm-up (CUDA graphs captured here)
            fn()
        t_ours = (min(_clock(ours_b1(step_new)) for _ in range(2)) - min(_clock(ours_b1(1)) for _ in range(2))) / (step_new - 1)
        t_hf = (min(_clock(hf_b1(step_new)) for _ in range(2)) - min(_clock(hf_b1(1)) for _ in range(2))) / (step_new - 1)
        case = f"step bs1 (prompt 64, {step_new} new, greedy; greedy match {match}/16)"
        row(case, "HF transformers generate", ms_per_step=t_hf * 1e3, vs_HF=1.0)
        row(case, "wizardcoder engine", ms_per_step=t_ours * 1e3, vs_HF=t_hf / t_ours)
        if cuda:
            weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
            floor = weight_bytes / _copy_bandwidth(device)
            row(case, "weight-bandwidth floor", ms_per_step=floor * 1e3, vs_HF=t_hf / floor,
                ours_over_floor=t_ours / floor)

        # ---- n samples of one 256-token prompt
        prompt = torch.randint(0, V, (1, 256), generator=g)
        params = SamplingParams(n=n, temperature=0.8, top_p=0.95, max_new_tokens=n_new, seed=1)
        engines = _engines(ours, max_slots=slots, max_len=256 + n_new)
        out = []
        # warm-up: on CUDA the whole workload once (each decode shape is captured as a graph on its second use)
        for eng in engines.values():
            eng.generate([prompt[0].tolist()], params if cuda else SamplingParams(n=8, max_new_tokens=n_new))

        def hf_n():
            done = 0
            while done < n:
                bs = min(hf_batch, n - done)
                res = _hf_generate(hf, prompt.expand(bs, -1).to(device), n_new, sample=True)
                assert res.shape == (bs, 256 + n_new)
                done += bs

        _hf_generate(hf, prompt.to(device), 2, sample=True)  # warm-up
        fns = {name: (lambda e=eng: out.append(e.generate([prompt[0].tolist()], params)))
               for name, eng in engines.items()}
        t = _interleaved({**fns, "hf": hf_n}, 1 if quick else 3)
        t_hf = t["hf"]
        assert all(sum(len(c.token_ids) for c in o[0]) == n * n_new for o in out)
        case = f"n={n} of one 256-token prompt, {n_new} new, top-p (HF batch {hf_batch}, ours {slots} slots)"
        row(case, "HF transformers generate", tok_per_s=n * n_new / t_hf, seconds=t_hf, vs_HF=1.0)
        for name, eng in engines.items():
            row(case, _impl(eng), tok_per_s=n * n_new / t[name], seconds=t[name], vs_HF=t_hf / t[name])

        # ---- mixed lengths
        lengths = torch.randint(64, 257, (mixed_prompts,), generator=g).tolist()
        prompts = [torch.randint(0, V, (L,), generator=g).tolist() for L in lengths]
        # long tail: most samples are short, a few run to mixed_max (answers that stop early vs run-ons)
        new = (torch.distributions.Exponential(torch.tensor(6.0 / mixed_max)).sample((mixed_prompts, 8)) + 2)
        new = new.clamp(max=mixed_max).long().tolist()
        jobs = [(p, k) for p, ks in zip(prompts, new) for k in ks]  # samples in request order
        useful = sum(k for _, k in jobs)
        batch = min(hf_batch, 64 if not cuda else 128)
        eng = Engine(ours, max_slots=batch, max_len=256 + mixed_max)
        reqs = [(p, SamplingParams(n=1, temperature=0.8, top_p=0.95, max_new_tokens=k, seed=i))
                for i, (p, k) in enumerate(jobs)]
        out = []
        warm = reqs if cuda else reqs[:batch]
        eng.generate([p for p, _ in warm], [s for _, s in warm])  # warm-up
        t_ours = _clock(lambda: out.append(eng.generate([p for p, _ in reqs], [s for _, s in reqs])))
        assert sum(len(c[0].token_ids) for c in out[0]) == useful

        def hf_mixed():
            for s in range(0, len(jobs), batch):
                chunk = jobs[s : s + batch]
                P = max(len(p) for p, _ in chunk)
                ids = torch.zeros(len(chunk), P, dtype=torch.long)
                mask = torch.zeros(len(chunk), P, dtype=torch.long)
                for i, (p, _) in enumerate(chunk):  # left padding, as HF wants for generation
                    ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), 1
                k = max(k for _, k in chunk)
                res = hf.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=k, min_new_tokens=k,
                                  do_sample=True, temperature=0.8, top_p=0.95, top_k=0, eos_token_id=None,
                                  pad_token_id=0)
                assert res.shape[1] - P == k  # every sample got at least its own length

        t_hf = _clock(hf_mixed)
        case = (f"mixed: {mixed_prompts} prompts x 8 samples, lengths 2-{mixed_max} (mean {useful / len(jobs):.0f}), "
                f"batch {batch}")
        row(case, "HF transformers generate (static batches)", tok_per_s=useful / t_hf, seconds=t_hf, vs_HF=1.0)
        row(case, "wizardcoder engine", tok_per_s=useful / t_ours, seconds=t_ours, vs_HF=t_hf / t_ours)
    if cuda and not quick:  # the pass@k workload too, so one GPU run has both decode attention paths on both
        rows += run_passk()
    return rows


if __name__ == "__main__":
    import sys

    from bench.common import print_table, save_rows, stamp

    s = stamp()
    print(f"device: {s['device']}  commit: {s['commit']}  date: {s['date']}  torch {torch.__version__}")
    r = (run_passk() if "passk" in sys.argv else run_op_count() if "ops" in sys.argv
         else run_deterministic_cost() if "deterministic" in sys.argv
         else run(quick="--quick" in sys.argv))
    print_table(r, ["case", "impl", "ms_per_step", "tok_per_s", "seconds", "vs_HF", "ours_over_floor", "ops_per_layer",
                    "ops_outside_layers", "layer_ops", "vs_default"])
    save_rows(r, "generate")
