"""pack_dataset + shards: every sample rebuilt token for token against the tokenizers library, masks exactly on the
response and EOS, overlong policy, efficiency on the evolved data, atomic writes."""
import gzip
import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

from wizardcoder.data import PackedShards, pack_dataset, read_examples
from wizardcoder.data import shards as shards_mod
from wizardcoder.errors import DataError

# The WizardCoder prompt, written out independently of wizardcoder.data.templates.
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{}\n\n### Response:")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Input:\n{}"
              "\n\n### Response:")
SEQ = 512


@pytest.fixture(scope="module")
def small_data(shared_data, tmp_path_factory):
    """180 records: Code Alpaca ones (many with an input) and evolved ones (instruction/output only)."""
    with open(os.path.join(shared_data, "code_alpaca", "code_alpaca_2k.json")) as f:
        alpaca = json.load(f)[:100]
    with gzip.open(os.path.join(shared_data, "evol_instruct_code", "evol-codealpaca-2k-1.json.gz"), "rt") as f:
        evol = json.load(f)[:80]
    d = tmp_path_factory.mktemp("small")
    with open(d / "alpaca.jsonl", "w") as f:
        for r in alpaca:
            f.write(json.dumps(r) + "\n")
    (d / "evol.json").write_text(json.dumps(evol))
    return [str(d / "alpaca.jsonl"), str(d / "evol.json")]


@pytest.fixture(scope="module")
def hf_tok(starcoder_tokenizer_dir):
    return HFTokenizer.from_file(os.path.join(starcoder_tokenizer_dir, "tokenizer.json"))


@pytest.fixture(scope="module")
def packed(small_data, starcoder_tokenizer_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("packed") / "shards")
    meta = pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, out, packs_per_shard=7, progress=False)
    return out, meta


def expected(hf_tok, ex):
    prompt = WITH_INPUT.format(ex.instruction, ex.input) if ex.input else NO_INPUT.format(ex.instruction)
    p = hf_tok.encode(prompt, add_special_tokens=False).ids
    r = hf_tok.encode(ex.output, add_special_tokens=False).ids
    return p, r


def test_every_sample_rebuilt_token_for_token(packed, small_data, hf_tok):
    out, meta = packed
    examples = read_examples(small_data)
    sh = PackedShards(out)
    assert len(meta["shards"]) > 1  # several shard files exercised
    seen = set()
    n_trunc = 0
    for src, tokens, mask in sh.documents():
        seen.add(src)
        p, r = expected(hf_tok, examples[src])
        full = p + r + [0]  # EOS <|endoftext|> = 0
        if len(full) > SEQ:  # --overlong truncate: the first SEQ tokens, EOS lost
            full = full[:SEQ]
            n_trunc += 1
        assert tokens.tolist() == full
        # loss exactly on the response and EOS
        assert mask.tolist() == [0] * len(p) + [1] * (len(full) - len(p))
        if len(full) == len(p) + len(r) + 1:
            assert hf_tok.decode(tokens[mask.astype(bool)][:-1].tolist(), skip_special_tokens=False) == examples[src].output
    s = meta["summary"]
    assert seen == set(range(len(examples))) and s["samples_kept"] == len(examples) == 180
    assert s["truncated"] == n_trunc > 0
    assert s["tokens"] == sh.meta["num_tokens"] and s["loss_tokens"] + s["prompt_tokens"] == s["tokens"]
    files = sh.meta["inputs"]
    assert [(os.path.basename(f["path"]), f["kept_start"], f["kept"]) for f in files] == [
        ("alpaca.jsonl", 0, 100), ("evol.json", 100, 80)]


def test_packs_respect_seq_len_and_metadata(packed, starcoder_tokenizer_dir):
    out, meta = packed
    sh = PackedShards(out)
    lens = [len(sh.pack(i).tokens) for i in range(sh.num_packs)]
    assert max(lens) <= SEQ and sum(lens) == meta["summary"]["tokens"]
    assert meta["summary"]["packing_efficiency"] == pytest.approx(sum(lens) / (SEQ * sh.num_packs))
    with open(os.path.join(out, "metadata.json")) as f:
        on_disk = json.load(f)
    assert on_disk["complete"] and on_disk["seq_len"] == SEQ and on_disk["token_dtype"] == "uint16"
    assert on_disk["template"]["name"] == "alpaca" and on_disk["template"]["prompt_no_input"] == NO_INPUT.replace("{}", "{instruction}")
    assert on_disk["summary"]["samples_kept"] == 180 and "padded_recipe" in on_disk["summary"]
    from wizardcoder.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(starcoder_tokenizer_dir)
    assert on_disk["tokenizer"]["fingerprint"] == tok.fingerprint
    sh.check_tokenizer(tok)

    class Other:
        fingerprint, name = "0" * 64, "other"

    with pytest.raises(DataError, match="re-pack with the model's tokenizer"):
        sh.check_tokenizer(Other())


def test_same_seed_same_shards(packed, small_data, starcoder_tokenizer_dir, tmp_path):
    out, meta = packed
    again = pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, str(tmp_path / "b"), packs_per_shard=7, progress=False)
    assert again["content_sha256"] == meta["content_sha256"]
    other = pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, str(tmp_path / "c"), seed=1, progress=False)
    assert other["content_sha256"] != meta["content_sha256"] and other["num_tokens"] == meta["num_tokens"]


def test_overlong_drop(small_data, starcoder_tokenizer_dir, tmp_path):
    meta = pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, str(tmp_path / "d"), overlong="drop", progress=False)
    s = meta["summary"]
    assert s["truncated"] == 0 and s["dropped"]["too_long"] > 0
    assert s["samples_kept"] + s["dropped"]["too_long"] == 180
    # a prompt longer than the pack: dropped and counted even when truncating
    meta = pack_dataset(small_data, starcoder_tokenizer_dir, 40, str(tmp_path / "e"), progress=False)
    assert meta["summary"]["dropped"]["prompt_too_long"] > 0
    assert meta["summary"]["samples_kept"] + meta["summary"]["dropped"]["prompt_too_long"] == 180


def test_evolved_data_packs_at_98_percent(shared_data, starcoder_tokenizer_dir, tmp_path):
    """All rounds of ../shared/data/evol_instruct_code, StarCoder tokenizer, 2048 tokens per pack."""
    meta = pack_dataset(os.path.join(shared_data, "evol_instruct_code"), starcoder_tokenizer_dir, 2048,
                        str(tmp_path / "evol"), progress=False)
    s = meta["summary"]
    assert s["records_read"] == 2017 + 1966 + 1953
    assert s["samples_kept"] + sum(s["dropped"].values()) == s["records_read"]
    assert s["packing_efficiency"] >= 0.98
    assert 0.30 <= s["padded_recipe"]["efficiency"] <= 0.40  # WizardCoder's bs16 right-padded batches


def test_interrupted_pack_leaves_nothing(small_data, starcoder_tokenizer_dir, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    real_save, calls = shards_mod._save, []

    def dying_save(path, arr, digest):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-shard
        real_save(path, arr, digest)

    monkeypatch.setattr(shards_mod, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, str(out), progress=False)
    assert not out.exists() and os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="no such folder"):
        PackedShards(str(out))


def test_killed_pack_leftovers_are_never_taken_for_complete(small_data, starcoder_tokenizer_dir, tmp_path):
    # What a SIGKILL leaves: a hidden temporary folder (dead pid) with some arrays and no metadata.
    stale = tmp_path / ".shards.tmp-999999999-deadbeef"
    stale.mkdir()
    np.save(stale / "tokens-00000.npy", np.zeros(5, np.uint16))
    # A folder without metadata (e.g. copied by hand, half done) is refused.
    half = tmp_path / "half"
    half.mkdir()
    np.save(half / "tokens-00000.npy", np.zeros(5, np.uint16))
    with pytest.raises(DataError, match="no metadata.json"):
        PackedShards(str(half))
    pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, str(tmp_path / "shards"), progress=False)
    assert not stale.exists()  # the next pack into the same target cleans up
    assert PackedShards(str(tmp_path / "shards")).num_packs > 0


def test_damaged_shards_are_refused(packed, tmp_path):
    import shutil

    out, _ = packed
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    np.save(bad / "tokens-00000.npy", np.zeros(3, np.uint16))
    with pytest.raises(DataError, match=r"tokens-00000\.npy has shape"):
        PackedShards(str(bad))
    meta = json.loads((bad / "metadata.json").read_text())
    meta["complete"] = False
    (bad / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not a complete"):
        PackedShards(str(bad))


def test_existing_output_needs_overwrite(packed, small_data, starcoder_tokenizer_dir):
    out, meta = packed
    with pytest.raises(DataError, match="already exists"):
        pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, out, progress=False)
    again = pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, out, packs_per_shard=7, overwrite=True, progress=False)
    assert again["content_sha256"] == meta["content_sha256"]
    assert [p for p in os.listdir(os.path.dirname(out)) if p.startswith(".")] == []


def test_joint_boundary_is_wizardcoders_preprocess(small_data, starcoder_tokenizer_dir, hf_tok, tmp_path):
    """--boundary joint: WizardCoder's `preprocess`, re-done with the tokenizers library: encode(source + output +
    eos_text) truncated to the max length, first len(encode(source)) labels masked."""
    out = str(tmp_path / "joint")
    meta = pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, out, boundary="joint", progress=False)
    assert meta["options"]["boundary"] == "joint"
    examples = read_examples(small_data)
    n_differs = 0
    for src, tokens, mask in PackedShards(out).documents():
        ex = examples[src]
        source = WITH_INPUT.format(ex.instruction, ex.input) if ex.input else NO_INPUT.format(ex.instruction)
        ids = hf_tok.encode(source + ex.output + "<|endoftext|>", add_special_tokens=False).ids[:SEQ]
        n_src = len(hf_tok.encode(source, add_special_tokens=False).ids)
        labels = [-100] * n_src + ids[n_src:]
        assert tokens.tolist() == ids
        assert np.where(mask.astype(bool), tokens.astype(np.int64), -100).tolist() == labels[: len(ids)]
        p, r = expected(hf_tok, ex)
        n_differs += (p + r + [0])[:SEQ] != ids
    assert n_differs > 0  # the boundary merges that make the default differ do occur in this data


def test_sentencepiece_tokenizer(small_data, llama2_tokenizer_model, tmp_path):
    """Llama 2's tokenizer.model (CodeLlama's pieces; sentencepiece's own encoder as the reference): BOS first (a
    bare tokenizer.model is read as LlamaTokenizer's default, add_bos_token), the joined text by default, and the
    prompt with its BOS masked."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=llama2_tokenizer_model)
    out = str(tmp_path / "llama")
    meta = pack_dataset(small_data, llama2_tokenizer_model, SEQ, out, progress=False)
    assert meta["tokenizer"]["eos_id"] == 2 and meta["pad_token_id"] == 2 and meta["tokenizer"]["bos_id"] == 1
    assert meta["options"]["boundary"] == "joint"
    examples = read_examples(small_data)
    for src, tokens, mask in PackedShards(out).documents():
        ex = examples[src]
        prompt = WITH_INPUT.format(ex.instruction, ex.input) if ex.input else NO_INPUT.format(ex.instruction)
        p, joined = [1] + sp.encode(prompt), [1] + sp.encode(prompt + ex.output)
        assert tokens.tolist() == (joined + [2])[:SEQ]
        assert int(mask.sum()) == min(len(joined) + 1, SEQ) - len(p)


def test_large_vocabulary_stores_int32(tmp_path):
    class BigVocab:
        """A stand-in tokenizer with ids above 65535: one id per character, offset."""
        eos_id, pad_id, name, fingerprint, vocab_size = 100_000, None, "big", "f" * 64, 200_000
        bos_id, add_bos_token, kind = None, False, "chars"

        def encode_batch(self, texts):
            return [[70_000 + ord(c) for c in t] for t in texts]

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "hi", "output": "yo"}) + "\n")
    meta = pack_dataset(str(data), BigVocab(), 300, str(tmp_path / "s"), progress=False)
    assert meta["token_dtype"] == "int32"
    (src, tokens, mask), = PackedShards(str(tmp_path / "s")).documents()
    prompt = NO_INPUT.format("hi")
    assert tokens.tolist() == [70_000 + ord(c) for c in prompt + "yo"] + [100_000]
    assert mask.tolist() == [0] * len(prompt) + [1, 1, 1]


def test_sigkilled_pack_leaves_no_shards(small_data, starcoder_tokenizer_dir, tmp_path):
    """A pack process killed with SIGKILL halfway through writing: no DIR, only a hidden temp folder that the
    next pack removes."""
    import subprocess
    import sys

    out = tmp_path / "shards"
    code = (
        "import os, signal, sys\n"
        "from wizardcoder.data import shards, pack_dataset\n"
        "real, n = shards._save, [0]\n"
        "def save(path, arr, digest):\n"
        "    n[0] += 1\n"
        "    if n[0] == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(path, arr, digest)\n"
        "shards._save = save\n"
        f"pack_dataset({small_data!r}, {starcoder_tokenizer_dir!r}, {SEQ}, {str(out)!r}, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".shards.tmp-")
    assert len(os.listdir(tmp_path / left[0])) == 3 and "metadata.json" not in os.listdir(tmp_path / left[0])
    with pytest.raises(DataError, match="no such folder"):
        PackedShards(str(out))
    pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, str(out), progress=False)
    assert os.listdir(tmp_path) == ["shards"] and PackedShards(str(out)).num_docs == 180


def test_cleanup_spares_a_live_packs_temp_folder(small_data, starcoder_tokenizer_dir, tmp_path):
    live = tmp_path / f".my-shards.tmp-{os.getpid()}-aaaa"  # a pack still running (this process)
    dead = tmp_path / ".my-shards.tmp-999999999-bbbb"
    live.mkdir()
    dead.mkdir()
    pack_dataset(small_data, starcoder_tokenizer_dir, SEQ, str(tmp_path / "my-shards"), progress=False)
    assert live.exists() and not dead.exists()
