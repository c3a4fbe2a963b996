"""Evol-Instruct pieces that need no server: the method draw, prompt files, elimination rules, seed loading and the
hygiene steps, each checked against a brute-force or hand-made reference."""
import collections
import dataclasses
import json
import os
import random

import pytest

pytest.importorskip("openai")  # the evolve client is built on it (a GPU machine may not have it)

from wizardcoder.errors import ConfigError, DataError
from wizardcoder.evol import hygiene as H
from wizardcoder.evol import rules as R
from wizardcoder.evol.evolution import load_seed
from wizardcoder.evol.prompts import CODE_METHODS, EvolPrompts, load_prompts

CHI2_DF4_P001 = 18.467  # chi-square critical value, 4 degrees of freedom, p = 0.001


def chi2(counts, n, k):
    e = n / k
    return sum((c - e) ** 2 / e for c in counts)


def test_method_draw_uniform_pure_and_round_dependent():
    p = EvolPrompts()
    ids = [f"seed-{i}" for i in range(5000)]
    draws = [p.draw_method(7, i, 1) for i in ids]
    counts = collections.Counter(draws)
    assert set(counts) == set(CODE_METHODS)
    assert chi2(counts.values(), len(ids), 5) < CHI2_DF4_P001
    # pure: the same in any order, and from a fresh object
    assert [EvolPrompts().draw_method(7, i, 1) for i in reversed(ids)] == draws[::-1]
    # a different round or seed draws differently for most ids, still uniformly
    r2 = [p.draw_method(7, i, 2) for i in ids]
    assert sum(a != b for a, b in zip(draws, r2)) > 0.7 * len(ids)
    assert chi2(collections.Counter(r2).values(), len(ids), 5) < CHI2_DF4_P001
    assert [p.draw_method(8, i, 1) for i in ids] != draws


def test_evolution_prompt_wording_and_braces():
    p = EvolPrompts()
    q = "Write f(x) = {x: 1} in Python."
    text = p.evolution_prompt("erroneous_code", q)
    assert text == ("Please increase the difficulty of the given programming test question a bit.\n\n"
                    "You can increase the difficulty using, but not limited to, the following methods:\n"
                    "Provide a piece of erroneous code as a reference to increase misdirection.\n\n" + q)
    t2 = load_prompts("evol-teacher").evolution_prompt("complexity", q)
    assert t2.endswith(f"#Given Test#\n{q}\n\n#Rewritten Test#\n")


def test_prompts_file_adds_or_replaces_methods(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"add_methods": {"tests": "Require unit tests for every edge case."}}))
    p = load_prompts(str(f))
    assert len(p.methods) == 6 and p.methods["tests"].startswith("Require")
    draws = collections.Counter(p.draw_method(0, f"s{i}", 1) for i in range(3000))
    assert set(draws) == set(p.methods)
    f.write_text(json.dumps({"template": "Harder please ({method}):\n{question}", "methods": ["A", "B"]}))
    p = load_prompts(str(f))
    assert p.evolution_prompt("method_1", "Q") == "Harder please (B):\nQ"
    f.write_text(json.dumps({"template": "no fields"}))
    with pytest.raises(ConfigError, match=r"\{method\}"):
        load_prompts(str(f))
    f.write_text("{bad json")
    with pytest.raises(ConfigError, match="p.json:1"):
        load_prompts(str(f))
    api = EvolPrompts()
    api.add_method("io", "Read the input from a file.")
    assert "io" in api.method_names


@pytest.mark.parametrize("instruction,answer,rule", [
    ("", "def f(): pass", "empty"),
    ("Sort a list.", "   ", "empty"),
    ("x" * 5000, "def f(): pass", "too_long"),
    ("Sort a list.", "y" * 20000, "too_long"),
    ("#Rewritten Prompt#: sort a list in place", "def f(): pass", "copied"),
    ("Rewrite the given prompt so that it sorts in place.", "def f(): pass", "copied"),
    ("Sort.\n#Rewritten Test#\nSort in place.", "def f(): pass", "copied"),
    ("For the given test case [1], then in the given test make it harder.", "def f(): pass", "copied"),
    ("Sort a list.", "I'm sorry, but I cannot help with that request.", "sorry"),
    ("Sort a list.", "The, and of... it is!", "stopwords"),
    ("Sort a list.", "?!;:", "stopwords"),
])
def test_each_rule_fires(instruction, answer, rule):
    cfg = R.RuleConfig()
    assert R.check_pair(instruction, answer, cfg)[0] == rule
    other = R.check_pair(instruction, answer, dataclasses.replace(cfg, disabled=(rule,)))
    assert other is None or other[0] != rule  # switched off, the rule no longer fires


@pytest.mark.parametrize("instruction,answer", [
    ("Given a list of numbers, sort it.", "def f(xs): return sorted(xs)"),  # "given" alone is not a copy
    ("Sort it; for the given test case [3, 1] return [1, 3].", "sorted(xs)"),  # task wording, not "#Given Test#"
    ("Match digits then spaces.", r"^\d+\s+$"),  # regex tokens d, s are not stop words
    ("Explain.", "Sorry for the long answer. " + "word " * 100),  # sorry, but long
    ("Which is smaller?", "A"),  # a one-letter answer that is not a stop word ("A" is, see below)
])
def test_rules_leave_good_pairs(instruction, answer):
    cfg = R.RuleConfig()
    got = R.check_pair(instruction, answer, cfg)
    if answer == "A":
        assert got[0] == "stopwords"  # WizardLM's rule is literal: "a" is a stop word
    else:
        assert got is None


def test_equality_rules():
    assert R.same_text("Sort a list.", "sort   a LIST")
    assert not R.same_text("Sort a list.", "Sort a list in place.")
    assert R.is_equal_verdict("Equal") and R.is_equal_verdict(" equal.")
    assert R.is_equal_verdict("The two prompts are equal.")
    assert not R.is_equal_verdict("Not Equal") and not R.is_equal_verdict("not equal, because ...")
    assert not R.is_equal_verdict("They are not equal.") and not R.is_equal_verdict("Unequal")
    assert not R.is_equal_verdict("") and not R.is_equal_verdict("The second adds a constraint.")
    cfg = R.RuleConfig()
    assert R.check_instruction("sort a list", "Sort a list.", cfg)[0] == "equal"


def test_seed_loading_names_file_and_line(tmp_path):
    f = tmp_path / "seed.jsonl"
    f.write_text('{"instruction": "a", "output": "x"}\n\n{"instruction": "b", "input": "[1, 2]"}\n{not json\n')
    with pytest.raises(DataError, match=r"seed.jsonl:4"):
        load_seed(str(f))
    f.write_text('{"instruction": "a"}\n{"output": "x"}\n')
    with pytest.raises(DataError, match=r"seed.jsonl:2: missing or empty `instruction`"):
        load_seed(str(f))
    f.write_text('{"instruction": "a", "id": 1}\n{"instruction": "b", "id": "1"}\n')
    with pytest.raises(DataError, match=r"seed.jsonl:2: duplicate id"):
        load_seed(str(f))
    f.write_text('{"instruction": "a", "output": "x"}\n\n{"instruction": "b", "input": "[1, 2]"}\n')
    seeds = load_seed(str(f))
    assert seeds == [{"id": "seed-0", "instruction": "a", "output": "x"},
                     {"id": "seed-1", "instruction": "b\n[1, 2]", "output": None}]


# ------------------------------------------------------------------------------------------------------ hygiene


def _brute_near_dups(texts, k, thr):
    """Reference: greedy in order, exact Jaccard against every kept text."""
    sets, kept, removed = [], [], {}
    for i, t in enumerate(texts):
        s = set(H.ngrams(H.tokens(t), k))
        best = max(((len(s & sets[j]) / len(s | sets[j]), j) for j in kept), default=(0, None))
        if best[0] >= thr:
            removed[i] = best[1]
        else:
            kept.append(i)
        sets.append(s)
    return removed


def test_exact_and_near_duplicates_match_brute_force():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(40)]
    texts = []
    for b in base:
        texts.append(b)
        words = b.split()
        if rng.random() < 0.5:
            texts.append(" ".join(words[:-1] + ["changed"]))  # J ~ 0.93: near duplicate
        if rng.random() < 0.5:
            texts.append(" ".join(words[:30] + [rng.choice(vocab) for _ in range(30)]))  # J ~ 0.3: different
        if rng.random() < 0.3:
            texts.append(b.upper() + " !!")  # same normalized tokens: exact duplicate
    recs = [{"id": f"r{i}", "instruction": t, "output": ""} for i, t in enumerate(texts)]
    kept, removed, rep = H.clean(recs, H.HygieneConfig(decontaminate=False, measure_paraphrase=False), None)
    ref = _brute_near_dups(texts, 5, 0.8)
    got = {int(r["id"][1:]): r for r in removed}
    assert set(got) == set(ref)
    for i, r in got.items():
        if r["removed_by"] == "exact_duplicate":
            assert H.tokens(texts[i]) == H.tokens(texts[int(r["removed_detail"]["of"][1:])])
        else:
            assert r["removed_by"] == "near_duplicate" and r["removed_detail"]["jaccard"] >= 0.8
    assert len(kept) + len(removed) == len(recs) and rep["near_dup_rate"] > 0


def test_near_duplicates_on_public_data_match_brute_force(shared_data):
    """Near the threshold, where banded LSH alone misses about half the pairs: the same decisions as brute force."""
    import gzip

    d = os.path.join(shared_data, "evol_instruct_code")
    texts = [r["instruction"] for r in json.load(open(os.path.join(d, "converted_alpaca_2k.json")))][:300]
    round1 = json.load(gzip.open(os.path.join(d, "evol-codealpaca-2k-1.json.gz"), "rt"))
    texts += [r["instruction"] for r in round1][:300]
    idx = H.NearDupIndex(0.5)
    got = {i for i, t in enumerate(texts) if idx.query_insert(str(i), t)}
    ref = set(_brute_near_dups(texts, 5, 0.5))
    assert got == ref and len(ref) > 5


@pytest.fixture(scope="module")
def problems(shared_data):
    return (H.load_benchmark(os.path.join(shared_data, "humaneval", "HumanEval.jsonl"))
            + H.load_benchmark(os.path.join(shared_data, "mbpp", "mbpp.jsonl")))


def test_decontamination_finds_planted_benchmark_text(problems):
    he = {p.task_id: p for p in problems}
    doc = H._docstring_text(he["HumanEval/0"].prompt)  # "Check if in given list of numbers, are any two ..."
    mbpp2 = he["Mbpp/2"]
    recs = [
        {"id": "planted-he", "instruction": "Please solve: " + doc.strip(), "output": "ok"},
        {"id": "planted-mbpp-solution", "instruction": "Find shared items.", "output": mbpp2.solution},
        {"id": "generic", "instruction": "Check whether n is prime.",
         "output": "def is_prime(n):\n    for i in range(2, int(n ** 0.5) + 1):\n        if n % i == 0:\n"
                   "            return False\n    return n > 1\n"},
        {"id": "clean", "instruction": "Reverse a linked list in place.", "output": "def rev(h): ..."},
    ]
    kept, removed, rep = H.clean(recs, H.HygieneConfig(dedup=False, measure_paraphrase=False), problems)
    by = {r["id"]: r for r in removed}
    assert set(by) == {"planted-he"}
    d = by["planted-he"]["removed_detail"]
    assert d["task_id"] == "HumanEval/0" and d["benchmark_field"] == "prompt"
    # the reported n-gram really is in both (independent check on normalized tokens)
    assert " " + d["ngram"] + " " in " " + " ".join(H.tokens(recs[0]["instruction"])) + " "
    assert " " + d["ngram"] + " " in " " + " ".join(H.tokens(he["HumanEval/0"].prompt)) + " "
    # solutions are checked on request; that also catches the textbook prime loop, which is why it is off by default
    kept, removed, _ = H.clean(recs, H.HygieneConfig(dedup=False, measure_paraphrase=False, solution_ngram=10),
                               problems)
    by = {r["id"]: r["removed_detail"] for r in removed}
    assert set(by) == {"planted-he", "planted-mbpp-solution", "generic"}
    assert by["planted-mbpp-solution"]["task_id"] == "Mbpp/2"
    assert by["planted-mbpp-solution"]["benchmark_field"] == "solution"
    assert [r["id"] for r in kept] == ["clean"]


def test_paraphrase_measure_flags_reworded_task(problems):
    recs = [{"id": "p", "instruction": "Using Rust, find out the maximum of two given numbers.", "output": ""},
            {"id": "q", "instruction": "Implement a thread-safe LRU cache with TTL eviction.", "output": ""}]
    kept, removed, rep = H.clean(recs, H.HygieneConfig(dedup=False, decontaminate=False), problems)
    para = rep["paraphrase"]
    assert para["flagged"] == 1 and para["top"][0]["id"] == "p"
    assert para["top"][0]["task_id"] in ("Mbpp/309", "Mbpp/672") or "maximum of two" in para["top"][0][
        "benchmark_prompt"]
    # the matrix score equals a plain set computation
    p = next(x for x in problems if x.task_id == para["top"][0]["task_id"])
    a, b = H.content_words(recs[0]["instruction"]), H.content_words(p.prompt)
    assert para["top"][0]["jaccard"] == pytest.approx(len(a & b) / len(a | b), abs=1e-4)
    assert para["top"][0]["containment"] == pytest.approx(len(a & b) / len(b), abs=1e-4)
    # containment: a longer, evolved instruction that still holds the whole task
    longer = "Using Rust, find out the maximum of two given numbers, in O(1) memory, rejecting NaN inputs."
    _, _, rep2 = H.clean([{"id": "e", "instruction": longer, "output": ""}],
                         H.HygieneConfig(dedup=False, decontaminate=False, containment_threshold=0.9), problems)
    c = rep2["paraphrase"]["containment"]
    assert c["flagged"] == 1 and "maximum of" in c["top"][0]["benchmark_prompt"]
    kept, removed, _ = H.clean(recs, H.HygieneConfig(dedup=False, decontaminate=False, remove_paraphrases=True),
                               problems)
    assert [r["id"] for r in removed] == ["p"] and removed[0]["removed_by"] == "paraphrase"


def test_benchmark_loader_rejects_other_files(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"foo": 1}\n')
    with pytest.raises(DataError, match="neither HumanEval"):
        H.load_benchmark(str(f))


def test_default_benchmarks_are_found_offline(shared_data, monkeypatch):
    """Decontamination's default benchmarks come from local packages through the evaluation stage's loaders: with
    the hub switched off and no route out, all of HumanEval, all 974 MBPP problems and MultiPL-E's six languages
    load, equal to the files."""
    import json

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WIZARDCODER_OFFLINE", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    problems = H.load_benchmarks([])
    he = [json.loads(line) for line in open(os.path.join(shared_data, "humaneval", "HumanEval.jsonl"))]
    mbpp = [json.loads(line) for line in open(os.path.join(shared_data, "mbpp", "mbpp.jsonl"))]
    multi = {lang: [json.loads(line) for line in open(os.path.join(shared_data, "multipl-e", f"humaneval-{lang}.jsonl"))]
             for lang in ("js", "cpp", "java", "rs", "go", "php")}
    translated = [p for p in problems if "MultiPL-E" in p.benchmark]
    assert len(translated) == sum(map(len, multi.values())) == 951
    for lang, rows in multi.items():  # every record of every language, its prompt as the file has it
        mine = {p.task_id: p.prompt for p in translated if p.benchmark.startswith(f"HumanEval-") and
                p.task_id in {r["name"] for r in rows}}
        assert all(r["prompt"] in {p.prompt for p in translated if p.task_id == r["name"]} for r in rows), lang
        assert len(mine) == len(rows)
    problems = [p for p in problems if "MultiPL-E" not in p.benchmark]
    got = {p.task_id: p for p in problems}
    assert len(problems) == len(he) + len(mbpp) == 164 + 974
    assert all(got[r["task_id"]].prompt == r["prompt"] for r in he)
    assert all(got[f"Mbpp/{r['task_id']}"].prompt == r["text"] and got[f"Mbpp/{r['task_id']}"].solution == r["code"]
               for r in mbpp)


def test_default_decontamination_covers_the_translations(monkeypatch):
    """MultiPL-E rewords HumanEval ("list" -> "array" in JavaScript): an instruction copied from the JavaScript
    prompt shares no 13-gram with the Python one, and the default benchmarks still catch it."""
    monkeypatch.setenv("WIZARDCODER_OFFLINE", "1")
    copied = "Check if in given array of numbers, are any two numbers closer to each other"
    recs = [{"id": "js", "instruction": copied, "output": "function f() {}"},
            {"id": "clean", "instruction": "Reverse a linked list in place.", "output": "def rev(h): ..."}]
    cfg = H.HygieneConfig(dedup=False, measure_paraphrase=False)
    python_only = [p for p in H.load_benchmarks([]) if "MultiPL-E" not in p.benchmark]
    _, removed, _ = H.clean(recs, cfg, python_only)
    assert removed == []  # HumanEval and MBPP alone miss it
    kept, removed, _ = H.clean(recs, cfg)
    assert [r["id"] for r in removed] == ["js"] and [r["id"] for r in kept] == ["clean"]
    detail = removed[0]["removed_detail"]
    assert detail["task_id"] == "HumanEval_0_has_close_elements" and "array" in detail["ngram"]
