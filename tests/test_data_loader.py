"""PackedLoader: the packed form the model takes (labels exactly on response + EOS), seeded order, disjoint ranks,
exact resume."""
import gzip
import json
import os

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer

from wizardcoder.data import PackedLoader, PackedShards, pack_dataset, read_examples
from wizardcoder.errors import DataError

NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{}\n\n### Response:")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Input:\n{}"
              "\n\n### Response:")
SEQ = 1024


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory, starcoder_tokenizer_dir):
    with open(os.path.join(shared_data, "code_alpaca", "code_alpaca_2k.json")) as f:
        recs = json.load(f)[:150]
    with gzip.open(os.path.join(shared_data, "evol_instruct_code", "evol-codealpaca-2k-2.json.gz"), "rt") as f:
        recs += json.load(f)[:150]
    d = tmp_path_factory.mktemp("loader")
    (d / "data.json").write_text(json.dumps(recs))
    out = str(d / "shards")
    pack_dataset(str(d / "data.json"), starcoder_tokenizer_dir, SEQ, out, progress=False)
    return str(d / "data.json"), out


@pytest.fixture(scope="module")
def hf_tok(starcoder_tokenizer_dir):
    return HFTokenizer.from_file(os.path.join(starcoder_tokenizer_dir, "tokenizer.json"))


def reference_batch(pack_ids, shards, examples, hf_tok):
    """input_ids / labels / position_ids / segment lengths built from the text with the tokenizers library."""
    ids, labels, pos, segs = [], [], [], []
    for p in pack_ids:
        n = 0
        for src in shards.pack(int(p)).source.tolist():
            ex = examples[src]
            prompt = WITH_INPUT.format(ex.instruction, ex.input) if ex.input else NO_INPUT.format(ex.instruction)
            pi = hf_tok.encode(prompt, add_special_tokens=False).ids
            ri = hf_tok.encode(ex.output, add_special_tokens=False).ids + [0]
            doc = (pi + ri)[:SEQ]
            ids += doc
            labels += ([-100] * len(pi) + ri)[:SEQ]
            pos += list(range(len(doc)))
            segs.append(len(doc))
            n += len(doc)
        if n < SEQ:
            ids += [0] * (SEQ - n)
            labels += [-100] * (SEQ - n)
            pos += list(range(SEQ - n))
            segs.append(SEQ - n)
    return ids, labels, pos, segs


def test_batches_are_the_packed_form(data, hf_tok):
    path, out = data
    examples = read_examples(path)
    loader = PackedLoader(out, micro_batch_size=3, seed=5)
    shards = loader.shards
    batches = list(loader)
    assert len(batches) == loader.steps_per_epoch == -(-shards.num_packs // 3)
    for step, (b, pack_ids) in enumerate(zip(batches, loader.rank_packs(0))):
        T = 3 * SEQ
        assert b["input_ids"].shape == b["labels"].shape == b["position_ids"].shape == (1, T)
        assert b["input_ids"].dtype == b["labels"].dtype == b["position_ids"].dtype == torch.int64
        assert b["cu_seqlens"].dtype == torch.int32 and b["cu_seqlens"][0] == 0 and b["cu_seqlens"][-1] == T
        ids, labels, pos, segs = reference_batch(pack_ids, shards, examples, hf_tok)
        assert b["input_ids"][0].tolist() == ids
        assert b["labels"][0].tolist() == labels  # exactly response + EOS tokens carry labels, unshifted
        assert b["position_ids"][0].tolist() == pos
        assert b["cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(segs)]).tolist()
        assert b["max_seqlen"] == max(segs)
        assert b["num_loss_tokens"] == sum(x != -100 for x in labels)
        assert b["num_real_tokens"] == sum(len(shards.pack(int(p)).tokens) for p in pack_ids)
        assert b["num_docs"] == sum(len(shards.pack(int(p)).source) for p in pack_ids)


def order(loader, epochs=1):
    seen = []
    for _ in range(epochs):
        for b in loader:
            seen.append(b["input_ids"][0, :8].tolist() + [b["num_real_tokens"]])
    return seen


def test_same_seed_same_order_other_seed_other_order(data):
    _, out = data
    a = order(PackedLoader(out, micro_batch_size=2, seed=3), epochs=2)
    assert a == order(PackedLoader(out, micro_batch_size=2, seed=3), epochs=2)
    assert a != order(PackedLoader(out, micro_batch_size=2, seed=4), epochs=2)
    half = len(a) // 2
    assert a[:half] != a[half:]  # each epoch reshuffles


def test_two_ranks_see_disjoint_halves(data):
    _, out = data
    n = PackedShards(out).num_packs
    for drop_last in (True, False):
        r0 = PackedLoader(out, micro_batch_size=2, rank=0, world_size=2, seed=1, drop_last=drop_last)
        r1 = PackedLoader(out, micro_batch_size=2, rank=1, world_size=2, seed=1, drop_last=drop_last)
        p0 = np.concatenate(r0.rank_packs(0))
        p1 = np.concatenate(r1.rank_packs(0))
        assert len(r0) == len(r1) and len(p0) == len(p1)
        if drop_last:
            assert not set(p0) & set(p1) and len(p0) + len(p1) == n // 4 * 4
        else:  # every pack is seen; the few repeats that fill the last step are the epoch's first packs
            assert set(p0) | set(p1) == set(range(n))
            assert len(set(p0) & set(p1)) <= (4 - n % 4) % 4
        # what the loader yields is what rank_packs says
        first = next(iter(r1))
        assert first["input_ids"][0].tolist() == r1.collate(p1[:2])["input_ids"][0].tolist()


def test_resume_continues_exactly(data):
    _, out = data
    full = PackedLoader(out, micro_batch_size=2, seed=9)
    expect = order(full, epochs=3)
    steps = PackedLoader(out, micro_batch_size=2, seed=9).steps_per_epoch
    for stop in (1, steps - 1, steps, steps + 2):
        first = PackedLoader(out, micro_batch_size=2, seed=9)
        got = []
        while len(got) < stop:
            for b in first:
                got.append(b["input_ids"][0, :8].tolist() + [b["num_real_tokens"]])
                if len(got) == stop:
                    break
        state = json.loads(json.dumps(first.state_dict()))  # plain ints: survives any checkpoint format
        resumed = PackedLoader(out, micro_batch_size=2, seed=9)
        resumed.load_state_dict(state)
        while len(got) < len(expect):
            got += order(resumed)
        assert got == expect, stop


def test_resume_under_another_world_size(data):
    _, out = data
    one = PackedLoader(out, micro_batch_size=2, world_size=1, seed=2, drop_last=True)
    it = iter(one)
    for _ in range(4):  # 8 packs consumed
        next(it)
    state = one.state_dict()
    assert state["packs_consumed"] == 8
    ranks = [PackedLoader(out, micro_batch_size=2, rank=r, world_size=2, seed=2, drop_last=True) for r in range(2)]
    for r in ranks:
        r.load_state_dict(state)
    nxt = [next(iter(r)) for r in ranks]
    rest = [next(it) for _ in range(2)]  # the single-rank loader's next two micro-batches
    assert [b["input_ids"].tolist() for b in nxt] == [b["input_ids"].tolist() for b in rest]
    odd = PackedLoader(out, micro_batch_size=3, seed=2)
    with pytest.raises(DataError, match="not a whole number of steps"):
        odd.load_state_dict(state)
    with pytest.raises(DataError, match="same seed"):
        PackedLoader(out, micro_batch_size=2, seed=3).load_state_dict(state)


def test_bad_arguments(data):
    _, out = data
    with pytest.raises(ValueError):
        PackedLoader(out, rank=2, world_size=2)
    with pytest.raises(DataError, match="cannot fill one step"):
        PackedLoader(out, micro_batch_size=10_000, drop_last=True)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_state_round_trips_through_distributed_checkpoint(data, tmp_path):
    """torch.distributed.checkpoint treats the loader as a Stateful object (single process here)."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    _, out = data
    a = PackedLoader(out, micro_batch_size=2, seed=4)
    it = iter(a)
    for _ in range(3):
        next(it)
    dcp.save({"data": a}, checkpoint_id=str(tmp_path / "ckpt"))
    b = PackedLoader(out, micro_batch_size=2, seed=4)
    dcp.load({"data": b}, checkpoint_id=str(tmp_path / "ckpt"))
    assert b.state_dict() == a.state_dict()
    assert next(iter(b))["input_ids"].equal(next(it)["input_ids"])
