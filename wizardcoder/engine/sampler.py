"""The per-row sampler the engine runs on the device (how to sample one request: params.py).

`sample_rows` draws the next token for a whole batch whose rows may each have their own temperature / top-k / top-p /
seed, all as tensors. Its noise is a pure function of (seed, sample index, step): a counter-based hash, not a
stateful generator, so a sample's tokens do not depend on which other rows share the batch, on the row it sits in,
or on how the work is split over processes. Top-k and top-p are found without sorting the vocabulary
(`sample_rows_sorted` is the sorting reference they are tested against): on the CPU by one histogram over the
weights' top bits and a sort of the boundary bucket's few tokens (`cut_top_k_top_p`, one host sync, free there);
on CUDA by a radix select over the weights' bits, every row at once, with no host sync (`keep_top_k_top_p`), so a
decode step stays capturable as a CUDA graph. Drawing is by inverse CDF in token order: the first token whose
cumulative weight (softmax(logits / T) restricted to the top-k / top-p set) reaches u.
"""
from __future__ import annotations

import torch

from ..profiling import ranged
from .params import MASK32, fmix32


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """u in (0, 1), `[B]` fp32: a pure function of (keys[b], steps[b]), 24 random bits each."""
    bits = fmix32(keys ^ fmix32((steps & MASK32) ^ 0x6A09E667)) >> 8
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


# ------------------------------------------------------------------------------------------------ the sampler
@ranged("sampling")  # a named range in --profile traces
def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                keys: torch.Tensor, steps: torch.Tensor, filtered: bool = True, random: bool = True,
                any_top_k: bool = True) -> torch.Tensor:
    """Next token per row of `logits [B, V]`, each row with its own settings (all `[B]` tensors on the device),
    without sorting the vocabulary.

    Weights w = exp(logits / T - max) (softmax up to its sum), in one [B, V] buffer. With `filtered`, the top-k set
    and then the nucleus of the renormalised rest (the same set as the sorting reference `sample_rows_sorted`,
    including its tie rule) are cut from w: on the CPU by `cut_top_k_top_p`, on CUDA through the radix select's
    mask (`keep_top_k_top_p`). The draw is by inverse CDF in token order over the kept weights, with one
    uniform per row from (keys, steps): the same distribution as the reference, not the same token for the same u.
    Rows with temperature 0 take the argmax. A row's draw does not depend on the other rows (every reduction runs
    within a row; the CPU cut pads the rows' boundary buckets to the widest, which changes no row's sums).
    `filtered` False (no top-k / top-p), `any_top_k` False (no top-k) and `random` False (all greedy) skip work no
    row needs. No host sync on CUDA; one on the CPU with `filtered`."""
    logits = logits.float()
    if not random:
        return logits.argmax(-1)
    greedy = temperature <= 0
    w = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    top, argmax = w.max(-1, keepdim=True)  # a greedy row's w is its logits: its argmax is the greedy token
    w = w.sub_(top).exp_()  # in place: one [B, V] buffer
    if filtered and w.is_cuda:  # no host sync: decode steps stay capturable as CUDA graphs
        w = torch.where(keep_top_k_top_p(w, top_k, top_p, any_top_k), w, 0.0)
    elif filtered:
        w = cut_top_k_top_p(w, top_k, top_p, any_top_k)[0]
    cdf = w.cumsum_(-1)
    u = uniform_noise(keys, steps)[:, None] * cdf[:, -1:]
    token = torch.searchsorted(cdf, u).clamp(max=w.shape[-1] - 1)[:, 0]  # first token with cdf >= u
    return torch.where(greedy, argmax[:, 0], token)


def keep_top_k_top_p(w: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, any_top_k: bool = True,
                     radix: bool | None = None) -> torch.Tensor:
    """Which tokens survive top-k then top-p, `[B, V]` bool, for weights w `[B, V]` in [0, 1] (softmax numerators
    exp(x - max), or probabilities); top_k `[B]` (0: off), top_p `[B]` (1: off).

    Both are "the shortest prefix of the tokens sorted by weight (ties: lower token id first) whose size reaches k /
    whose mass reaches p", and such a prefix is fixed by its last token's weight tau plus how many of tau's ties it
    takes: tie j (in token order) is kept iff what the prefix holds before it is below the target (the reference's
    `before < top_p`). Ties are ties of w in fp32 (two logits whose exp rounds to one float tie, where the
    reference, sorting logits / T, would order them). `radix` (default: on CUDA) finds tau by `_radix_select`,
    with no host sync; otherwise `cut_top_k_top_p` finds it (one host sync)."""
    if not (w.is_cuda if radix is None else radix):
        _, tau, drop = cut_top_k_top_p(w, top_k, top_p, any_top_k)
        keep = w.view(torch.int32) >= tau
        keep.view(-1)[drop] = False
        return keep
    inf = torch.full_like(top_p, float("inf"))
    keep = None
    if any_top_k:
        keep = _keep_prefix(w, torch.ones_like(w), torch.where(top_k > 0, top_k.float(), inf), by_count=True)
        w = w * keep
    mass = w.double()  # summed in fp64: over 49152 tokens fp32 sums drift by more than a boundary token's weight
    target = torch.where(top_p < 1, top_p.double() * mass.sum(-1), inf.double())
    keep_p = _keep_prefix(w, mass, target, by_count=False)
    return keep_p if keep is None else keep & keep_p


def _keep_prefix(w: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, by_count: bool) -> torch.Tensor:
    """Tokens of the shortest by-w-descending prefix whose `weight` (ones when `by_count`, else w itself) sums to
    `target` `[B]` (inf: all tokens), by the radix select: tau, then tie j (in token order) is kept iff
    above + j * tau_weight < target."""
    bits = w.view(torch.int32)  # w >= 0: the bit patterns order like the floats
    tau, above = _radix_select(bits, weight, target[:, None])
    tau_weight = 1.0 if by_count else tau.view(torch.float32)
    tie = bits == tau
    tie_rank = tie.cumsum(-1, dtype=torch.int32) - 1  # j: ties before this one, in token order
    return (bits > tau) | (tie & (above + tie_rank * tau_weight < target[:, None]))


def cut_top_k_top_p(w: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, any_top_k: bool = True):
    """The weights w `[B, V]` (in [0, 1]) with those of the tokens outside top-k then top-p (the sets of
    `keep_top_k_top_p`) zeroed, and the cut: the kept tokens are those whose w's bit pattern is >= tau `[B, 1]`
    int32, less `drop` (flat indices into w of tau's ties past the prefix). With one host sync, so for the CPU."""
    inf = torch.full_like(top_p, float("inf"), dtype=torch.float64)
    tau, drop = torch.zeros(w.shape[0], 1, dtype=torch.int32), torch.zeros(0, dtype=torch.long)
    if any_top_k:
        w, tau, drop = _cut_prefix(w, None, torch.where(top_k > 0, top_k.double(), inf))
    # the nucleus of what top-k left, mass summed in fp64: over 49152 tokens fp32 sums drift by more than a
    # boundary token's weight
    w, tau_p, drop_p = _cut_prefix(w, w.double(), torch.where(top_p < 1, top_p.double(), inf))
    return w, torch.maximum(tau, tau_p), torch.cat([drop, drop_p])


def _cut_prefix(w: torch.Tensor, mass: torch.Tensor | None, limit: torch.Tensor):
    """w with the weights of the tokens past the shortest by-w-descending prefix holding `limit` `[B]` fp64 tokens
    (`mass` None) or the share `limit` of the row's `mass` (inf: all tokens) zeroed, tau and drop, as
    `cut_top_k_top_p`.

    One histogram over the top 12 bits of w's bit pattern (w <= 1: 7 exponent + 4 mantissa bits, buckets 1/16 of
    an octave wide) finds the bucket where the count / mass from the top reaches the target. Every token above it is
    kept and every token below it is not; the tokens of that bucket (a few hundred a row even when the nucleus is
    most of the vocabulary) are sorted, stably, so ties keep token order, and kept while what comes before them is
    below the target. Then the weights are cut by integer ops on their bit patterns, into the buffer of the
    buckets' indices (no new [B, V] buffer; not in place, which torch.compile cannot take through a dtype view)."""
    B, V = w.shape
    n = 1 << 11
    bits = w.view(torch.int32)  # w >= 0: the bit patterns order like the floats
    # each token's bucket, counted from the heaviest down (w <= 1: its top bits are at most 2032), in row b's
    # stretch [b * n, (b + 1) * n) of one histogram, so that a plain cumsum is what lies at or above a bucket
    idx = (bits >> 19).neg_().add_(torch.arange(n - 1, B * n, n, dtype=torch.int32)[:, None])
    if mass is None:
        hist = torch.bincount(idx.view(-1), minlength=B * n).view(B, n).double()
    else:
        hist = torch.zeros(B * n, dtype=mass.dtype).index_add_(0, idx.view(-1), mass.view(-1)).view(B, n)
    upto = hist.cumsum(-1)
    target = limit if mass is None else limit * upto[:, -1]  # inf * total: inf
    first = (upto < target[:, None]).sum(-1, keepdim=True)  # the first bucket reaching the target; n: none does
    at = first.clamp(max=n - 1)
    above = upto.gather(-1, at) - hist.gather(-1, at)  # what the buckets above it hold
    edge = (first + torch.arange(0, B * n, n)[:, None]).int()  # as an idx (n: past the row's stretch, no token)
    flat = (idx == edge).view(-1).nonzero()[:, 0]  # the bucket's tokens, row by row, in token order
    tau, drop = torch.zeros(B, 1, dtype=torch.int32), flat[:0]
    if flat.numel():
        rows = flat // V
        count = torch.bincount(rows, minlength=B)
        pos = torch.arange(flat.numel()) - (count.cumsum(0) - count)[rows]
        pad = torch.full((B, int(count.max())), -1, dtype=torch.int32)  # sorts after every weight
        pad[rows, pos] = bits.view(-1).index_select(0, flat)
        ids = torch.zeros(pad.shape, dtype=torch.long)
        ids[rows, pos] = flat
        pad, order = pad.sort(dim=-1, descending=True, stable=True)
        ids = ids.gather(-1, order)
        real = pad >= 0
        held = real.double() if mass is None else torch.where(real, mass.view(-1)[ids], 0.0)
        take = real & (above + held.cumsum(-1) - held < target[:, None])  # a prefix of each row
        last = pad.gather(-1, (take.sum(-1, keepdim=True) - 1).clamp(min=0))
        tau = torch.where(count[:, None] > 0, last, 0)
        drop = ids[real & ~take & (pad == tau)]
    # w * (bits >= tau), as bits & ~((bits - tau) >> 31) (all ones when kept, zero when not), into idx
    cut = torch.sub(bits, tau, out=idx).bitwise_right_shift_(31).bitwise_not_().bitwise_and_(bits)
    cut.view(-1).index_fill_(0, drop, 0)  # the bit pattern of 0.0
    return cut.view(torch.float32), tau, drop


def _digits(V: int) -> list[tuple[int, int]]:
    """(shift, width) of each pass over the 31 value bits, high digits first: 11 bits at a time for a real
    vocabulary, narrower for a small one, so a pass's histograms (B x 2**width) stay no larger than the logits."""
    width = min(11, max(3, V.bit_length() - 1))
    out, top = [], 31
    while top > 0:
        w = min(width, top)
        out.append((top - w, w))
        top -= w
    return out


def _radix_select(bits: torch.Tensor, weight: torch.Tensor, target: torch.Tensor):
    """Per row, tau = the largest bit pattern v with sum(weight[bits >= v]) >= target (0 when no v reaches it), and
    the weight strictly above tau; both `[B, 1]`. Passes over the 31 value bits (11 + 11 + 9 for V >= 2048): each
    histograms the weight of the tokens that match the digits found so far by their next digit, and keeps the digit
    where the mass from the top crosses the target. (FlashInfer's sorting-free top-p instead draws and rejects with
    pivots; this is its deterministic, fixed-pass cousin: no data-dependent loop, so no host sync.)"""
    B, V = bits.shape
    prefix = torch.zeros(B, 1, dtype=torch.int32, device=bits.device)
    above = torch.zeros(B, 1, dtype=weight.dtype, device=bits.device)
    for shift, width in _digits(V):
        n = 1 << width
        high = bits >> shift
        bucket = (high & (n - 1)) + torch.arange(B, dtype=torch.int32, device=bits.device)[:, None] * n
        if shift + width < 31:  # later passes: only the tokens matching the digits found so far count
            weight = torch.where((high >> width) == prefix, weight, 0.0)
        hist = torch.zeros(B * n, dtype=weight.dtype, device=bits.device)
        hist = hist.index_add_(0, bucket.flatten(), weight.flatten()).view(B, n)
        from_top = hist.flip(-1).cumsum(-1).flip(-1) + above  # mass of the tokens at or above each digit
        d = ((from_top >= target).sum(-1, keepdim=True) - 1).clamp(min=0)
        above = (from_top - hist).gather(-1, d)
        prefix = (prefix << width) | d.int()
    return prefix, above


def sample_rows_sorted(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                       keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The sorting reference `sample_rows` is held to: sort each row (stably, so ties keep token order), keep the
    top-k, then the smallest prefix whose renormalised mass reaches top-p (at least one token); softmax; inverse CDF
    in sorted order with the same uniforms."""
    logits = logits.float()
    greedy = temperature <= 0
    x = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    x, order = x.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(x.shape[-1], device=x.device)[None, :]
    x = x.masked_fill((top_k[:, None] > 0) & (rank >= top_k[:, None]), float("-inf"))
    probs = x.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the more likely tokens
    x = x.masked_fill((before >= top_p[:, None]) & (rank > 0), float("-inf"))
    cdf = x.softmax(-1).cumsum(-1)
    u = uniform_noise(keys, steps) * cdf[:, -1]
    pick = torch.searchsorted(cdf, u[:, None]).clamp(max=x.shape[-1] - 1)
    return torch.where(greedy, logits.argmax(-1), order.gather(-1, pick)[:, 0])


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
