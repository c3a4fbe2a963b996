"""shards.validate: every way a shard folder can be unusable is one DataError before the first training step."""
import json
import os

import numpy as np
import pytest

from wizardcoder.data import PackedLoader, pack_dataset
from wizardcoder.data.shards import validate
from wizardcoder.errors import DataError

VOCAB = 300


class CharTokenizer:
    """One id per byte (+1), EOS = 0: an independent, exactly predictable tokenizer."""
    eos_id, pad_id, name, fingerprint, vocab_size = 0, None, "chars", "c" * 64, VOCAB
    bos_id, add_bos_token, kind = None, False, "chars"

    def encode_batch(self, texts):
        return [[b + 1 for b in t.encode()] for t in texts]


@pytest.fixture
def packed(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"task {i}", "output": "x" * (i % 7 + 1)}) + "\n"
                            for i in range(40)))
    out = tmp_path / "shards"
    pack_dataset(str(data), CharTokenizer(), 400, str(out), packs_per_shard=2, progress=False)
    return out


def _rewrite(path, change):
    arr = np.load(path)
    change(arr)
    np.save(path, arr)


def test_a_good_folder_passes(packed):
    shards = validate(str(packed), vocab_size=VOCAB, max_positions=400)
    assert shards.num_packs == json.loads((packed / "metadata.json").read_text())["num_packs"] > 2


@pytest.mark.parametrize("n", [0, -1])
def test_packs_per_shard_below_one_is_refused_before_writing(tmp_path, n):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    with pytest.raises(DataError, match=f"--packs-per-shard must be at least 1, got {n}"):
        pack_dataset(str(data), CharTokenizer(), 64, str(tmp_path / "out"), packs_per_shard=n, progress=False)
    assert os.listdir(tmp_path) == ["d.jsonl"]


def test_no_shards(packed):
    meta = json.loads((packed / "metadata.json").read_text())
    meta.update(shards=[], num_packs=0)
    (packed / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="holds no packs"):
        validate(str(packed))
    with pytest.raises(DataError, match="holds no packs"):  # the loader alone would yield empty epochs for ever
        PackedLoader(str(packed))


def test_empty_and_truncated_shards(packed):
    f = packed / "loss_mask-00001.npy"
    f.write_bytes(b"")
    with pytest.raises(DataError, match=r"loss_mask-00001\.npy: missing, empty or truncated"):
        validate(str(packed))
    f = packed / "tokens-00000.npy"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"tokens-00000\.npy: missing, empty or truncated"):
        validate(str(packed))


def test_changed_content_fails_the_hash(packed):
    _rewrite(packed / "tokens-00001.npy", lambda a: a.__setitem__(3, a[3] % 200 + 1))  # still a valid id
    with pytest.raises(DataError, match="do not match the content hash"):
        validate(str(packed), vocab_size=VOCAB)


def test_ids_outside_the_vocabulary(packed):
    with pytest.raises(DataError, match=r"shard 00000: token id \d+ is outside the model's vocabulary of 100"):
        validate(str(packed), vocab_size=100)  # the stored ids reach 'x' + 1 = 121


def test_corrupt_offsets(packed, tmp_path):
    _rewrite(packed / "doc_offsets-00001.npy", lambda a: a.__setitem__(1, a[2] + 1))
    with pytest.raises(DataError, match="shard 00001: corrupt document offsets"):
        validate(str(packed))


def test_corrupt_pack_offsets(packed):
    _rewrite(packed / "pack_offsets-00000.npy", lambda a: a.__setitem__(1, 0))
    with pytest.raises(DataError, match="shard 00000: corrupt pack offsets"):
        validate(str(packed))


def test_bad_loss_mask(packed):
    _rewrite(packed / "loss_mask-00000.npy", lambda a: a.__setitem__(0, 7))
    with pytest.raises(DataError, match=r"loss_mask-00000\.npy holds values other than 0 and 1"):
        validate(str(packed))


def test_packs_longer_than_the_model(packed):
    with pytest.raises(DataError, match="packed to --seq-len 400, longer than the model's 256 positions; "
                                        "re-pack with --seq-len 256 or less"):
        validate(str(packed), max_positions=256)


def test_malformed_metadata(packed):
    meta = json.loads((packed / "metadata.json").read_text())
    del meta["shards"][0]["tokens"]
    (packed / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="malformed metadata"):
        validate(str(packed))


def test_pack_longer_than_its_seq_len(packed):
    meta = json.loads((packed / "metadata.json").read_text())
    meta["seq_len"] = 10
    (packed / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="shard 00000: a pack of \\d+ tokens, longer than the folder's seq_len 10"):
        validate(str(packed))
