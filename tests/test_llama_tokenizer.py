"""Llama-family tokenizers through `Tokenizer.from_pretrained` against transformers' own loading of the same files (an
independent implementation: transformers converts a tokenizer.model into a `tokenizers` pipeline and never calls
sentencepiece's encoder): a sentencepiece model trained here on code text with Llama's trainer settings, the shared
Llama-2 tokenizer.model (CodeLlama's base vocabulary), WizardCoder-Python's added [PAD], and a byte-level BPE
tokenizer.json laid out as DeepSeek-Coder's (its special tokens, no prefix space, BOS by default)."""
import glob
import json
import os

import pytest

from _util import REPO

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from wizardcoder import Tokenizer  # noqa: E402

CODE_SAMPLES = [
    "def add(a, b):\n    return a + b\n",
    "    indented = True\n\tif x:\n\t\treturn [i ** 2 for i in range(10)]",
    "  two leading spaces, trailing  ",
    "class Foo(Bar):\n    \"\"\"Docstring with ünïcödé and 中文 and 🙂.\"\"\"\n    pass",
    "x = 1234567890  # digits split one by one\n\n\n",
    "",
    "\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }",
]


@pytest.fixture(autouse=True, scope="module")
def _transformers_reads_sentencepiece_protos():
    """transformers reads a tokenizer.model's protobuf through sentencepiece's generated module when sentencepiece
    is installed; sentencepiece 0.2.x's module needs a newer protobuf runtime than the one locked here
    (requirements.lock), so point transformers at its own generated copy of the same schema. Reading only."""
    import importlib

    convert_slow_tokenizer = importlib.import_module("transformers.convert_slow_tokenizer")
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
        yield
        return
    except Exception:
        pass
    from transformers.utils import sentencepiece_model_pb2_new

    original = convert_slow_tokenizer.import_protobuf
    convert_slow_tokenizer.import_protobuf = lambda error_message="": sentencepiece_model_pb2_new
    yield
    convert_slow_tokenizer.import_protobuf = original


def _code_corpus() -> list[str]:
    """This repository's own Python sources: real code text that every checkout has."""
    lines = []
    for path in sorted(glob.glob(os.path.join(REPO, "wizardcoder", "**", "*.py"), recursive=True))[:40]:
        with open(path, encoding="utf-8") as f:
            lines.extend(f.read().splitlines())
    return lines


def _codellama_config(folder, **extra):
    """tokenizer_config.json / special_tokens_map.json as CodeLlama's and WizardCoder-Python's releases write them."""
    cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
           "eos_token": "</s>", "unk_token": "<unk>", "legacy": None, **extra}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)


@pytest.fixture(scope="module")
def trained_sp_dir(tmp_path_factory):
    """A sentencepiece BPE model trained here on code, with Llama 2's trainer settings (byte fallback, digits split,
    whitespace kept as is, dummy prefix, <unk>=0 <s>=1 </s>=2)."""
    folder = tmp_path_factory.mktemp("sp-code")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_code_corpus()), model_prefix=str(folder / "tokenizer"), model_type="bpe",
        vocab_size=800, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", add_dummy_prefix=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    os.remove(folder / "tokenizer.vocab")
    _codellama_config(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def llama2_dir(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama2")
    src = os.path.join(shared_data, "tokenizers", "llama2", "tokenizer.model")
    with open(src, "rb") as fi, open(folder / "tokenizer.model", "wb") as fo:
        fo.write(fi.read())
    _codellama_config(str(folder))
    return str(folder)


def _humaneval_prompts(shared_data) -> list[str]:
    with open(os.path.join(shared_data, "humaneval", "HumanEval.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f]


def _assert_same_as_transformers(folder, texts, tmp_path):
    """Our encoding of `folder` (tokenizer.model + CodeLlama's tokenizer_config) against transformers' conversion of
    the same tokenizer.model into a `tokenizers` pipeline. The reference folder holds the model alone: transformers
    5.25 then converts the proto as it stands, which agrees with sentencepiece (what the models were trained with);
    with tokenizer_class LlamaTokenizer it instead rebuilds a class-defined pipeline that disagrees with sentencepiece
    on nearly every indented code text (docs/llama.md), so that is not a reference."""
    ours = Tokenizer.from_pretrained(folder)
    os.makedirs(tmp_path / "ref", exist_ok=True)
    with open(os.path.join(folder, "tokenizer.model"), "rb") as fi, open(tmp_path / "ref" / "tokenizer.model", "wb") as fo:
        fo.write(fi.read())
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ref"))
    assert ours.kind == "sentencepiece"
    assert (ours.bos_id, ours.eos_id) == (ref.bos_token_id, ref.eos_token_id) == (1, 2)
    assert ours.add_bos_token  # CodeLlama's config: every text starts with <s>
    assert ours.vocab_size == len(ref)
    for text in texts:
        want = ref(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == want, text
        got = ours.encode(text, add_bos=ours.add_bos_token)
        assert got == [1] + want
        assert ours.decode(got, skip_special_tokens=True) == ref.decode(got, skip_special_tokens=True) == text, text
    assert ours.encode_batch(texts, add_bos=True) == [[1] + ref(t, add_special_tokens=False).input_ids for t in texts]


def test_trained_sentencepiece_model_encodes_as_transformers(trained_sp_dir, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=os.path.join(trained_sp_dir, "tokenizer.model"))
    assert sp.get_piece_size() == 800
    held_out = CODE_SAMPLES + ["for (int i = 0; i < n; ++i) { sum += a[i]; }", "λx. x ⊕ y"]
    _assert_same_as_transformers(trained_sp_dir, held_out, tmp_path)


def test_llama2_tokenizer_encodes_humaneval_as_transformers(llama2_dir, shared_data, tmp_path):
    """CodeLlama's vocabulary is Llama 2's (plus infilling tokens on the base 7B/13B): all 164 HumanEval prompts."""
    _assert_same_as_transformers(llama2_dir, CODE_SAMPLES + _humaneval_prompts(shared_data), tmp_path)


def test_wizardcoder_python_pad_token(llama2_dir, tmp_path):
    """WizardCoder-Python-V1.0 adds [PAD] as id 32000 (added_tokens.json) on CodeLlama-Python's 32000 pieces."""
    for name in ("tokenizer.model", "tokenizer_config.json"):
        with open(os.path.join(llama2_dir, name), "rb") as fi, open(tmp_path / name, "wb") as fo:
            fo.write(fi.read())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"[PAD]": 32000}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "[PAD]"}))
    ours = Tokenizer.from_pretrained(str(tmp_path))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (ours.vocab_size, ours.pad_id) == (len(ref), ref.pad_token_id) == (32001, 32000)
    ids = ours.encode("def f():\n    pass") + [ours.pad_id, ours.pad_id]
    assert ours.decode(ids, skip_special_tokens=True) == "def f():\n    pass"
    assert ours.decode(ids) == ref.decode(ids)
    base = Tokenizer.from_pretrained(llama2_dir)
    assert ours.fingerprint != base.fingerprint  # a different vocabulary, a different fingerprint
    ours.save(str(tmp_path / "saved"))  # and it round-trips, [PAD] included
    again = Tokenizer.from_pretrained(str(tmp_path / "saved"))
    assert (again.vocab_size, again.pad_id, again.add_bos_token, again.fingerprint) == (32001, 32000, True, ours.fingerprint)


def test_decode_after_keeps_the_continuation_space(llama2_dir):
    """A HumanEval-style continuation: the first generated piece "▁▁▁" + more carries the space sentencepiece drops
    when a text is decoded alone."""
    tok = Tokenizer.from_pretrained(llama2_dir)
    prompt, body = "def f(x):\n", "    return x + 1\n"
    ids = tok.encode(prompt + body)
    n = len(tok.encode(prompt))
    assert tok.decode(ids[:n]) == prompt
    assert tok.decode(ids[n:]) != body  # alone, the leading space of the first piece is lost
    assert tok.decode_after(ids[:n], ids[n:]) == body


# ------------------------------------------------------------------------------------- DeepSeek-Coder's layout
DEEPSEEK_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>",
                     "<｜fim▁end｜>", "<pad>", "<|User|>", "<|Assistant|>", "<|EOT|>"]


@pytest.fixture(scope="module")
def deepseek_style_dir(tmp_path_factory):
    """A byte-level BPE tokenizer.json trained here on code, with DeepSeek-Coder's special tokens, its digit and
    punctuation pre-splitting, no prefix space, and its tokenizer_config (bos/eos as AddedToken dicts,
    add_bos_token true, LlamaTokenizerFast)."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=DEEPSEEK_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_code_corpus(), trainer)
    bos = DEEPSEEK_SPECIALS[0]
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, tk.token_to_id(bos))])
    folder = tmp_path_factory.mktemp("deepseek-style")
    tk.save(str(folder / "tokenizer.json"))
    token = lambda t: {"__type": "AddedToken", "content": t, "lstrip": False, "normalized": True,  # noqa: E731
                       "rstrip": False, "single_word": False}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False,
        "bos_token": token(DEEPSEEK_SPECIALS[0]), "eos_token": token(DEEPSEEK_SPECIALS[1]), "pad_token": None,
        "legacy": True, "clean_up_tokenization_spaces": False, "model_max_length": 16384,
    }))
    return str(folder)


def test_deepseek_style_tokenizer_json_encodes_as_transformers(deepseek_style_dir):
    ours = Tokenizer.from_pretrained(deepseek_style_dir)
    ref = transformers.PreTrainedTokenizerFast.from_pretrained(deepseek_style_dir)
    assert ours.kind == "hf" and ours.add_bos_token
    assert (ours.bos_id, ours.eos_id) == (ref.bos_token_id, ref.eos_token_id) == (0, 1)
    for text in CODE_SAMPLES:
        want = ref(text).input_ids
        assert ours.encode(text, add_bos=ours.add_bos_token) == want, text
        assert ours.decode(want, skip_special_tokens=True) == text  # byte level: no prefix space, exact round trip
        n = len(ours.encode("x = 1\n"))
        ids = ours.encode("x = 1\n" + text)
        assert ours.decode_after(ids[:n], ids[n:]) == ours.decode(ids[n:])  # nothing depends on context here


def test_starcoder_tokenizer_has_no_bos(starcoder_tokenizer_dir):
    assert not Tokenizer.from_pretrained(starcoder_tokenizer_dir).add_bos_token


# ------------------------------------------------------------------------------------- packing (wizardcoder pack)
PACK_RECORDS = [
    {"instruction": "Write a function that adds two numbers.", "output": "def add(a, b):\n    return a + b"},
    {"instruction": "Square the items.", "input": "xs = [1, 2, 3]", "output": "    [x ** 2 for x in xs]\n"},
    {"instruction": "Explain this loop.", "output": "It sums a: for (int i = 0; i < n; ++i) { s += a[i]; }"},
]
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
              "### Input:\n{input}\n\n### Response:")


def _pack(tmp_path, tokenizer_dir, name, **options):
    from wizardcoder.data import PackedShards, pack_dataset

    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PACK_RECORDS))
    meta = pack_dataset(str(data), tokenizer_dir, 256, str(tmp_path / name), progress=False, **options)
    docs = sorted(PackedShards(str(tmp_path / name)).documents(), key=lambda d: d[0])
    return meta, [(tokens.tolist(), mask.tolist()) for _, tokens, mask in docs]


def _prompt(r):
    return WITH_INPUT.format_map(r) if r.get("input") else NO_INPUT.format_map(r)


def test_pack_with_sentencepiece_is_wizardcoders_preprocess_with_bos(trained_sp_dir, tmp_path):
    """`pack` with a CodeLlama-style tokenizer (sentencepiece, add_bos_token) reproduces WizardCoder's `preprocess`
    as its HF tokenizer runs it, re-done with transformers' conversion of the same model: tokenizer(prompt + output +
    eos_token) starts with <s>, and the first len(tokenizer(prompt)) tokens (<s> included) carry no loss. The default
    boundary is the joint one here; a separately encoded response would start with the dummy-prefix piece."""
    os.makedirs(tmp_path / "ref", exist_ok=True)
    with open(os.path.join(trained_sp_dir, "tokenizer.model"), "rb") as fi, \
            open(tmp_path / "ref" / "tokenizer.model", "wb") as fo:
        fo.write(fi.read())
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ref"))
    enc = lambda text: ref(text, add_special_tokens=False).input_ids  # noqa: E731
    meta, docs = _pack(tmp_path, trained_sp_dir, "joint")
    assert meta["options"]["boundary"] == "joint" and meta["tokenizer"]["bos_id"] == 1
    for r, (tokens, mask) in zip(PACK_RECORDS, docs):
        prompt = [1] + enc(_prompt(r))
        assert tokens == [1] + enc(_prompt(r) + r["output"]) + [2]
        assert mask == [0] * len(prompt) + [1] * (len(tokens) - len(prompt))
    ours = Tokenizer.from_pretrained(trained_sp_dir)
    for r, (tokens, mask) in zip(PACK_RECORDS, docs):  # the response decodes exactly after its prompt
        n = mask.index(1)
        assert ours.decode_after(tokens[:n], tokens[n:-1]) == r["output"]
    _, separate = _pack(tmp_path, trained_sp_dir, "separate", boundary="separate")
    dummy = ours.token_to_id("▁")
    for r, (tokens, mask) in zip(PACK_RECORDS, separate):
        n = mask.index(1)
        assert tokens[:n] == [1] + enc(_prompt(r)) and tokens[n:] == enc(r["output"]) + [2]
    assert any(tokens[mask.index(1)] == dummy for tokens, mask in separate)  # what joint avoids


def test_pack_with_a_deepseek_style_tokenizer_puts_bos_first(deepseek_style_dir, tmp_path):
    """Byte-level BPE (no dummy prefix): the default boundary stays separate; BOS first, no loss on it."""
    ref = transformers.PreTrainedTokenizerFast.from_pretrained(deepseek_style_dir)
    enc = lambda text: ref(text, add_special_tokens=False).input_ids  # noqa: E731
    meta, docs = _pack(tmp_path, deepseek_style_dir, "ds")
    assert meta["options"]["boundary"] == "separate" and meta["tokenizer"]["bos_id"] == 0
    for r, (tokens, mask) in zip(PACK_RECORDS, docs):
        prompt = ref(_prompt(r)).input_ids  # the release's own encoding: BOS first
        assert prompt[0] == 0 and tokens == prompt + enc(r["output"]) + [1]
        assert mask == [0] * len(prompt) + [1] * (len(tokens) - len(prompt))


def test_engine_texts_keep_the_continuation_space_and_prompts_start_with_bos(llama2_dir):
    """A sample's text is what its tokens add after the prompt (the whole sequence decoded, minus the prompt's
    text): the engine decodes after the prompt's last tokens, where decoding the new ids alone would drop the leading
    space of a first "▁" piece (an indent, in code). Prompts are encoded the release's way: BOS first."""
    from wizardcoder import Llama
    from wizardcoder.engine import Engine, SamplingParams

    tok = Tokenizer.from_pretrained(llama2_dir)
    (p_ids,) = tok.encode_prompts(["def f(x):\n"])
    assert p_ids[0] == tok.bos_id and p_ids[1:] == tok.encode("def f(x):\n")
    model = Llama.from_preset("llama-tiny", seed=0, vocab_size=tok.vocab_size).eval()
    [samples] = Engine(model, tok, max_slots=8, max_len=64).generate(
        [p_ids], SamplingParams(n=8, temperature=1.0, max_new_tokens=6, seed=3))
    head = tok.decode(p_ids)
    discriminating = 0
    for c in samples:
        want = tok.decode(p_ids + c.token_ids)[len(head):]
        assert c.text == want
        discriminating += tok.decode(c.token_ids) != want
    assert discriminating  # some sample starts with a "▁" piece, whose space decoding alone would have lost
