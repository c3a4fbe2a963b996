"""Tokenizer API against the `tokenizers` and `sentencepiece` libraries themselves (independent references)."""
import gzip
import json
import os

import pytest

from wizardcoder import Tokenizer
from wizardcoder.errors import CheckpointError

CODE_SAMPLES = [
    "def add(a, b):\n    return a + b\n",
    "class Foo:\n\tdef __init__(self):\n\t\tself.x = 1  # tab-indented\r\n",
    "x = [i ** 2 for i in range(100)]  # 12345678901234567890\n",
    "print('héllo wörld 你好 🚀')\n",
    "   leading spaces and trailing   \n\n\n",
    "",
    "<fim_prefix>def f():<fim_suffix>\n<fim_middle>",
    "s = \"<|endoftext|>\"",
]


def test_starcoder_roundtrip_and_matches_tokenizers(starcoder_tokenizer_dir, shared_data):
    from tokenizers import Tokenizer as HF

    tok = Tokenizer.from_pretrained(starcoder_tokenizer_dir)
    ref = HF.from_file(os.path.join(starcoder_tokenizer_dir, "tokenizer.json"))
    with open(os.path.join(shared_data, "humaneval", "HumanEval.jsonl")) as f:
        programs = [json.loads(line) for line in f][:40]
    texts = CODE_SAMPLES + [p["prompt"] + p["canonical_solution"] for p in programs]
    for t in texts:
        ids = tok.encode(t)
        assert ids == ref.encode(t, add_special_tokens=False).ids
        assert tok.decode(ids) == t
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode_batch(tok.encode_batch(texts)) == texts
    assert tok.vocab_size == 49152
    assert tok.eos_id == 0 and tok.pad_id is None
    assert tok.fim_ids == {"<fim_prefix>": 1, "<fim_middle>": 2, "<fim_suffix>": 3, "<fim_pad>": 4}
    # Special tokens in text are encoded as the special ids, as tokenizers does.
    assert tok.encode("<fim_prefix>")[0] == 1
    assert tok.encode("x", add_eos=True)[-1] == 0


def test_wizardcoder_tokenizer_has_pad(wizardcoder_tokenizer_dir):
    tok = Tokenizer.from_pretrained(wizardcoder_tokenizer_dir)
    assert tok.vocab_size == 49153 and tok.pad_id == 49152 and tok.eos_id == 0
    assert tok.decode([tok.pad_id, 589], skip_special_tokens=True) == tok.decode([589])


def test_gzipped_tokenizer_file_and_fingerprint(shared_data, starcoder_tokenizer_dir):
    gz = os.path.join(shared_data, "tokenizers", "starcoder", "tokenizer.json.gz")
    a = Tokenizer.from_pretrained(gz)
    b = Tokenizer.from_pretrained(starcoder_tokenizer_dir)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.encode(CODE_SAMPLES[0]) == b.encode(CODE_SAMPLES[0])


def test_sentencepiece_through_same_api(llama2_tokenizer_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=llama2_tokenizer_model)
    tok = Tokenizer.from_pretrained(llama2_tokenizer_model)
    assert tok.kind == "sentencepiece" and tok.vocab_size == 32000
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    for t in CODE_SAMPLES[:4]:
        assert tok.encode(t) == sp.encode(t)
        assert tok.decode(tok.encode(t)) == sp.decode(sp.encode(t))
    assert tok.encode_batch(CODE_SAMPLES[:4]) == sp.encode(CODE_SAMPLES[:4])
    assert tok.encode("def f", add_bos=True, add_eos=True) == [1] + sp.encode("def f") + [2]
    # Code round-trips exactly once the dummy-prefix space is accounted for (byte fallback keeps the rest).
    assert tok.decode(tok.encode("def f(x):\n\treturn x ** 2  # 🚀")) == "def f(x):\n\treturn x ** 2  # 🚀"


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        Tokenizer.from_pretrained(str(tmp_path / "missing" / "tok"))
    with pytest.raises(CheckpointError, match="no tokenizer.json or tokenizer.model"):
        Tokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizer.json"):
        Tokenizer.from_pretrained(str(tmp_path))
    bad = tmp_path / "x.model"
    bad.write_bytes(gzip.compress(b"nonsense"))
    with pytest.raises(CheckpointError, match="not a sentencepiece model"):
        Tokenizer.from_pretrained(str(bad))
