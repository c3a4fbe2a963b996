"""`PackedLoader`: micro-batches of packs for a (torchrun) trainer, in the packed form the model takes.

Each micro-batch is `micro_batch_size` packs laid end to end in one row of T = micro_batch_size * seq_len tokens:

    input_ids     int64 [1, T]   documents back to back; each pack's tail is padding (pad_token_id, EOS by default)
    labels        int64 [1, T]   unshifted (HF style): labels[t] = input_ids[t] on response and EOS tokens, -100 on
                                 prompt and padding; the model shifts internally, per document
    position_ids  int64 [1, T]   0, 1, ... restarting at every document (and at every padding segment)
    cu_seqlens    int32 [S + 1]  segment boundaries, segments = documents plus one padding segment per unfull pack;
                                 cu_seqlens[0] = 0, cu_seqlens[-1] = T
    max_seqlen    int            longest segment
    num_docs, num_real_tokens, num_loss_tokens   ints (padding excluded; loss tokens = labels != -100)

Order. Epoch e uses the permutation `default_rng([seed, e]).permutation(num_packs)`, cut into consecutive chunks of
micro_batch_size packs; chunk j is rank (j % world_size)'s micro-batch j // world_size. So every rank takes the same
number of steps and, within an epoch, ranks see disjoint packs. The epoch is cut to whole steps of
world_size * micro_batch_size packs: with `drop_last` the remainder is skipped (it changes every epoch); without it the
order is extended by repeating its start, so every pack is seen and the few repeated ones may land on other ranks.

Position. The state is (epoch, packs_consumed), plain ints, identical on every rank: `state_dict()` after k steps says
k * world_size * micro_batch_size packs of the epoch are consumed. `load_state_dict()` resumes exactly there, also
under another world size or micro-batch size when the consumed count divides evenly. This suits
torch.distributed.checkpoint's Stateful protocol.

Iterating the loader yields the rest of the current epoch, then moves to the next epoch; `steps_per_epoch` tells how
many micro-batches an epoch has.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .shards import PackedShards


class PackedLoader:
    def __init__(
        self,
        shards: str | PackedShards,
        micro_batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        pad_token_id: int | None = None,
        pin_memory: bool = False,
    ):
        self.shards = shards if isinstance(shards, PackedShards) else PackedShards(shards)
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        self.seq_len = self.shards.seq_len
        meta = self.shards.meta
        self.pad_token_id = int(meta.get("pad_token_id", 0) if pad_token_id is None else pad_token_id)
        self.pin_memory = pin_memory
        self.epoch = 0
        self.packs_consumed = 0
        self._order_cache: tuple[int, np.ndarray] | None = None
        if self.shards.num_packs == 0:  # an epoch of no steps: a trainer's loop would never end
            raise DataError(f"{self.shards.folder}: holds no packs; run `wizardcoder pack` again.")
        if self.packs_per_step > self.shards.num_packs and drop_last:
            raise DataError(
                f"{self.shards.folder}: {self.shards.num_packs} packs cannot fill one step of world_size "
                f"{world_size} x micro_batch_size {micro_batch_size} with drop_last; lower them or add data."
            )

    # ------------------------------------------------------------------------------------------- order
    @property
    def packs_per_step(self) -> int:
        return self.world_size * self.micro_batch_size

    @property
    def steps_per_epoch(self) -> int:
        n, k = self.shards.num_packs, self.packs_per_step
        return n // k if self.drop_last else -(-n // k)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Pack indices of one epoch, all ranks together, cut to whole steps."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.shards.num_packs)
        order = np.resize(perm, self.steps_per_epoch * self.packs_per_step)  # repeats the start when it must grow
        self._order_cache = (epoch, order)
        return order

    def rank_packs(self, epoch: int) -> list[np.ndarray]:
        """This rank's micro-batches (pack indices) of an epoch, from its start."""
        order, mbs = self.epoch_order(epoch), self.micro_batch_size
        starts = range(self.rank * mbs, len(order), self.packs_per_step)
        return [order[s : s + mbs] for s in starts]

    def _normalize(self) -> None:
        if self.packs_consumed >= self.steps_per_epoch * self.packs_per_step:
            self.epoch += 1
            self.packs_consumed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.packs_consumed = int(epoch), 0

    def __iter__(self):
        self._normalize()
        epoch, order, mbs = self.epoch, self.epoch_order(self.epoch), self.micro_batch_size
        while self.epoch == epoch and self.packs_consumed < len(order):
            start = self.packs_consumed + self.rank * mbs
            self.packs_consumed += self.packs_per_step  # counted when handed out: the state after a step includes it
            yield self.collate(order[start : start + mbs])
        self._normalize()

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        self._normalize()
        return {
            "epoch": self.epoch,
            "packs_consumed": self.packs_consumed,
            "seed": self.seed,
            "num_packs": self.shards.num_packs,
            "content_sha256": self.shards.meta.get("content_sha256", ""),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise DataError(f"the saved data position used seed {state['seed']}, this loader seed {self.seed}; pass the same seed.")
        if state.get("num_packs", self.shards.num_packs) != self.shards.num_packs or state.get(
            "content_sha256", self.shards.meta.get("content_sha256", "")
        ) != self.shards.meta.get("content_sha256", ""):
            raise DataError(f"the saved data position belongs to other shards than {self.shards.folder}; resume with the same shards.")
        consumed = int(state["packs_consumed"])
        if consumed % self.packs_per_step:
            raise DataError(
                f"the saved position ({consumed} packs into epoch {state['epoch']}) is not a whole number of steps of "
                f"{self.packs_per_step} packs (world_size x micro_batch_size); resume with sizes that divide it."
            )
        self.epoch, self.packs_consumed = int(state["epoch"]), consumed
        self._normalize()

    # ------------------------------------------------------------------------------------------- batches
    def collate_numpy(self, pack_ids) -> dict:
        """The micro-batch of these packs as numpy arrays (see the module docstring)."""
        S = self.seq_len
        T = len(pack_ids) * S
        input_ids = np.full(T, self.pad_token_id, np.int64)
        labels = np.full(T, -100, np.int64)
        seg_lens = []
        n_docs = n_real = 0
        for k, p in enumerate(pack_ids):
            pack = self.shards.pack(int(p))
            n = len(pack.tokens)
            base = k * S
            tokens = pack.tokens.astype(np.int64)  # (uint16 on disk: -100 must not wrap)
            input_ids[base : base + n] = tokens
            labels[base : base + n] = np.where(pack.loss_mask.astype(bool), tokens, -100)
            seg_lens.extend(pack.doc_lens.tolist())
            n_docs += len(pack.doc_lens)
            n_real += n
            if n < S:
                seg_lens.append(S - n)  # the padding is a segment of its own
        seg_lens = np.asarray(seg_lens, np.int64)
        cu = np.zeros(len(seg_lens) + 1, np.int32)
        np.cumsum(seg_lens, out=cu[1:])
        position_ids = np.arange(T, dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), seg_lens)
        n_loss = int((labels != -100).sum())
        return {
            "input_ids": input_ids[None],
            "labels": labels[None],
            "position_ids": position_ids[None],
            "cu_seqlens": cu,
            "max_seqlen": int(seg_lens.max()),
            "num_docs": n_docs,
            "num_real_tokens": n_real,
            "num_loss_tokens": n_loss,
        }

    def collate(self, pack_ids) -> dict:
        """The micro-batch of these packs as torch tensors (ints stay ints)."""
        import torch

        out = self.collate_numpy(pack_ids)
        for k in ("input_ids", "labels", "position_ids", "cu_seqlens"):
            t = torch.from_numpy(out[k])
            out[k] = t.pin_memory() if self.pin_memory else t
        return out
