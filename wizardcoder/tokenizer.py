"""One tokenizer API over HF `tokenizers` (tokenizer.json: StarCoder's byte-level BPE) and `sentencepiece`
(tokenizer.model: Llama-style), loaded from a folder, a file or a hub id.

Llama-family conventions (docs/llama.md): `add_bos_token` says whether the release puts BOS before every text (read
from tokenizer_config.json; CodeLlama and DeepSeek-Coder do, StarCoder has no BOS); a sentencepiece model's
added_tokens.json (WizardCoder-Python's [PAD] = 32000) extends its vocabulary; sentencepiece gives the first piece of
a text a "dummy prefix" space, so a continuation is decoded with `decode_after(prefix_ids, ids)`, not alone.

    tok = Tokenizer.from_pretrained("bigcode/starcoder")        # or a folder, or .../tokenizer.json
    ids = tok.encode("def f(x):\n    return x")
    assert tok.decode(ids) == "def f(x):\n    return x"
    batch = tok.encode_batch(texts)                           # parallel (Rust threads / sentencepiece threads)
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os

from .errors import CheckpointError
from .io import read_json

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
FIM_TOKENS = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>")


class Tokenizer:
    """`encode`/`decode` text, batch variants, and the special-token ids the pipeline needs (`eos_id`, `bos_id`,
    `pad_id`, FIM ids). `fingerprint` identifies the exact vocabulary (stored with packed data)."""

    def __init__(self, backend, kind: str, fingerprint: str, name: str, special: dict[str, str | None], raw: bytes = b"",
                 add_bos_token: bool = False):
        self._raw = raw  # the tokenizer file's bytes, for save()
        self.add_bos_token = add_bos_token  # the release encodes every text as [BOS] + pieces (HF's default encoding)
        self._b = backend
        self.kind = kind  # "hf" | "sentencepiece"
        self.fingerprint = fingerprint
        self.name = name
        self.special_tokens = special  # role -> token text, e.g. {"eos": "<|endoftext|>", "pad": "[PAD]"}

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str) -> "Tokenizer":
        path = os.path.expanduser(path_or_hub_id)
        if os.path.isfile(path):
            return cls._from_file(path, os.path.dirname(path), path_or_hub_id)
        if os.path.isdir(path):
            for fname in ("tokenizer.json", "tokenizer.json.gz", "tokenizer.model"):
                if os.path.isfile(os.path.join(path, fname)):
                    return cls._from_file(os.path.join(path, fname), path, path_or_hub_id)
            raise CheckpointError(f"{path}: no tokenizer.json or tokenizer.model in this folder; point at a tokenizer folder or file.")
        from .hub import download_files, is_hub_id

        if not is_hub_id(path_or_hub_id):
            raise CheckpointError(f"{path_or_hub_id}: no such file or folder; check the tokenizer path.")

        folder = download_files(path_or_hub_id, ["tokenizer.json", "tokenizer.model", "*.json"], what="tokenizer")
        return cls.from_pretrained(folder)

    @classmethod
    def bundled(cls) -> "Tokenizer":
        """WizardCoder-15B's tokenizer (StarCoder BPE + [PAD]), shipped with the package for offline use."""
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tokenizer")
        tok = cls.from_pretrained(folder)
        tok.name = "wizardcoder-15b (bundled)"
        return tok

    @classmethod
    def _from_file(cls, file: str, folder: str, name: str) -> "Tokenizer":
        with open(file, "rb") as f:
            raw = f.read()
        if file.endswith(".gz"):
            raw = gzip.decompress(raw)
        fingerprint = hashlib.sha256(raw).hexdigest()
        special = _read_special_tokens(folder)
        config = _read_config(folder)
        if file.endswith(".model"):
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor()
            try:
                sp.LoadFromSerializedProto(raw)
            except Exception as e:
                raise CheckpointError(f"{file}: not a sentencepiece model ({e}).") from None
            special.setdefault("eos", sp.id_to_piece(sp.eos_id()) if sp.eos_id() >= 0 else None)
            special.setdefault("bos", sp.id_to_piece(sp.bos_id()) if sp.bos_id() >= 0 else None)
            special.setdefault("pad", sp.id_to_piece(sp.pad_id()) if sp.pad_id() >= 0 else None)
            added = _read_added_tokens(folder, sp.get_piece_size())
            if added:  # the vocabulary is the model plus these; the fingerprint must say so
                fingerprint = hashlib.sha256(raw + json.dumps(added, sort_keys=True).encode()).hexdigest()
            # LlamaTokenizer's default is add_bos_token=True (CodeLlama's and WizardCoder-Python's configs say so too)
            return cls(_SentencePiece(sp, added), "sentencepiece", fingerprint, name, special, raw,
                       add_bos_token=bool(config.get("add_bos_token", True)))
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tk = HFTokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:
            raise CheckpointError(f"{file}: not a valid tokenizer.json ({str(e).splitlines()[0]}).") from None
        if "eos" not in special and tk.token_to_id("<|endoftext|>") is not None:
            special["eos"] = "<|endoftext|>"
        return cls(_HF(tk), "hf", fingerprint, name, special, raw, add_bos_token=bool(config.get("add_bos_token", False)))

    def save(self, folder: str) -> None:
        """Write tokenizer.json (or tokenizer.model) and special_tokens_map.json into `folder`, so the folder loads
        with `Tokenizer.from_pretrained` and with transformers' AutoTokenizer."""
        from .io import atomic_open, atomic_write_json

        os.makedirs(folder, exist_ok=True)
        fname = "tokenizer.model" if self.kind == "sentencepiece" else "tokenizer.json"
        with atomic_open(os.path.join(folder, fname), "wb") as f:
            f.write(self._raw)
        roles = {f"{r}_token": t for r, t in self.special_tokens.items() if t is not None}
        atomic_write_json(os.path.join(folder, "special_tokens_map.json"), roles)
        if self.kind == "hf":
            atomic_write_json(os.path.join(folder, "tokenizer_config.json"),
                              {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192,
                               **({"add_bos_token": True} if self.add_bos_token else {}), **roles})
        else:
            if self._b.added:
                atomic_write_json(os.path.join(folder, "added_tokens.json"), self._b.added)
            atomic_write_json(os.path.join(folder, "tokenizer_config.json"),
                              {"tokenizer_class": "LlamaTokenizer", "add_bos_token": self.add_bos_token,
                               "add_eos_token": False, **roles})

    # ----------------------------------------------------------------------------------------------- API
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._b.encode(text)
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if add_eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def encode_prompts(self, texts: list[str]) -> list[list[int]]:
        """Prompts as the model's release encodes them for generation: BOS first when it adds one (CodeLlama,
        DeepSeek-Coder), the text alone otherwise (StarCoder)."""
        return self.encode_batch(texts, add_bos=self.add_bos_token)

    def encode_batch(self, texts: list[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        out = self._b.encode_batch(list(texts))
        if (add_bos and self.bos_id is not None) or (add_eos and self.eos_id is not None):
            pre = [self.bos_id] if add_bos and self.bos_id is not None else []
            post = [self.eos_id] if add_eos and self.eos_id is not None else []
            out = [pre + ids + post for ids in out]
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._b.decode([int(i) for i in ids], skip_special_tokens)

    def decode_after(self, prefix_ids, ids, skip_special_tokens: bool = False) -> str:
        """The text `ids` add after `prefix_ids` (a prompt and its continuation). Decoding `ids` alone loses what
        depends on context: sentencepiece drops the leading space of a text's first piece ("▁▁▁▁return" after a
        prompt is four spaces and "return", alone three)."""
        head = self.decode(prefix_ids, skip_special_tokens)
        full = self.decode(list(prefix_ids) + list(ids), skip_special_tokens)
        return full[len(head):] if full.startswith(head) else self.decode(ids, skip_special_tokens)

    def decode_batch(self, batch, skip_special_tokens: bool = False) -> list[str]:
        return self._b.decode_batch([[int(i) for i in ids] for ids in batch], skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._b.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._b.id_to_token(i)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (WizardCoder's [PAD] makes StarCoder's 49152 into 49153)."""
        return self._b.vocab_size()

    def _special_id(self, role: str) -> int | None:
        tok = self.special_tokens.get(role)
        return None if tok is None else self.token_to_id(tok)

    @property
    def eos_id(self) -> int | None:
        return self._special_id("eos")

    @property
    def bos_id(self) -> int | None:
        return self._special_id("bos")

    @property
    def pad_id(self) -> int | None:
        return self._special_id("pad")

    @property
    def fim_ids(self) -> dict[str, int]:
        """Fill-in-the-middle token ids present in the vocabulary (StarCoder has all four)."""
        return {t: i for t in FIM_TOKENS if (i := self.token_to_id(t)) is not None}

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, kind={self.kind}, vocab={self.vocab_size}, eos={self.eos_id}, pad={self.pad_id})"


def _read_config(folder: str) -> dict:
    """tokenizer_config.json as a dict ({} when absent)."""
    p = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(p):
        return {}
    d = read_json(p, "tokenizer_config.json", CheckpointError, "fix or remove that file")
    if not isinstance(d, dict):
        raise CheckpointError(f"{p}: expected a JSON object; fix or remove that file.")
    return d


def _read_added_tokens(folder: str, base: int) -> dict[str, int]:
    """added_tokens.json's tokens with ids past a sentencepiece model's `base` pieces (as HF's LlamaTokenizer adds
    them: WizardCoder-Python's {"[PAD]": 32000})."""
    p = os.path.join(folder, "added_tokens.json")
    if not os.path.isfile(p):
        return {}
    d = read_json(p, "added_tokens.json", CheckpointError, "fix or remove that file")
    if not isinstance(d, dict) or not all(isinstance(v, int) for v in d.values()):
        raise CheckpointError(f"{p}: expected a JSON object of token -> id; fix or remove that file.")
    added = {t: i for t, i in d.items() if i >= base}
    if sorted(added.values()) != list(range(base, base + len(added))):
        raise CheckpointError(f"{p}: added ids {sorted(added.values())} do not follow the model's {base} pieces; fix the file.")
    return added


def _read_special_tokens(folder: str) -> dict[str, str | None]:
    """Special-token roles from tokenizer_config.json / special_tokens_map.json (the latter wins)."""
    special: dict[str, str | None] = {}
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        p = os.path.join(folder, fname)
        if not os.path.isfile(p):
            continue
        d = read_json(p, fname, CheckpointError, "fix or remove that file")
        if not isinstance(d, dict):
            raise CheckpointError(f"{p}: expected a JSON object; fix or remove that file.")
        for role in ("bos", "eos", "pad", "unk"):
            v = d.get(f"{role}_token")
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                special[role] = v
    return special


class _HF:
    def __init__(self, tk):
        self.tk = tk

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip):
        return self.tk.decode(ids, skip_special_tokens=skip)

    def decode_batch(self, batch, skip):
        return self.tk.decode_batch(batch, skip_special_tokens=skip)

    def token_to_id(self, t):
        return self.tk.token_to_id(t)

    def id_to_token(self, i):
        return self.tk.id_to_token(i)

    def vocab_size(self):
        return self.tk.get_vocab_size(with_added_tokens=True)


class _SentencePiece:
    """A sentencepiece model plus added tokens (ids after its pieces; never produced by encoding text, as sentencepiece
    never produces control pieces from text)."""

    def __init__(self, sp, added: dict[str, int] | None = None):
        self.sp = sp
        self.added = dict(added or {})
        self._added_text = {i: t for t, i in self.added.items()}
        self._base = sp.get_piece_size()

    def encode(self, text):
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts):
        return self.sp.encode(texts, out_type=int, num_threads=os.cpu_count() or 1)

    def decode(self, ids, skip):
        if skip:
            ids = [i for i in ids if i < self._base and not self.sp.is_control(i)]
        if all(i < self._base for i in ids):
            return self.sp.decode(ids)
        out, run = [], []  # added tokens are literal text between sentencepiece runs
        for i in ids:
            if i < self._base:
                run.append(i)
                continue
            out.append(self.sp.decode(run) if run else "")
            out.append(self._added_text.get(i, ""))
            run = []
        out.append(self.sp.decode(run) if run else "")
        return "".join(out)

    def decode_batch(self, batch, skip):
        return [self.decode(ids, skip) for ids in batch]

    def token_to_id(self, t):
        if t in self.added:
            return self.added[t]
        i = self.sp.piece_to_id(t)
        return None if i == self.sp.unk_id() and t != self.sp.id_to_piece(i) else i

    def id_to_token(self, i):
        if i in self._added_text:
            return self._added_text[i]
        return self.sp.id_to_piece(i) if 0 <= i < self._base else None

    def vocab_size(self):
        return self._base + len(self.added)
