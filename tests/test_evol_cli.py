"""`wizardcoder evolve` as a user runs it, in a subprocess against the stub server: a run killed with SIGKILL mid-run
and restarted ends with the same dataset as an uninterrupted one; bad seed lines, a wrong key and an unreachable
endpoint give one clear line and lose nothing; `--filter-only` over the public evolved rounds."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("openai")  # the evolve client is built on it (a GPU machine may not have it)

from openai_stub import StubLLM
from wizardcoder.evol import hygiene as H
from wizardcoder.evol import rules as R
from wizardcoder.evol.prompts import COPY_MARKERS

from _util import REPO


def cli(*args, env=None, **kw):
    e = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "wizardcoder", "evolve", *args], cwd=REPO, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def journal_lines(out):
    return sum(sum(1 for _ in open(os.path.join(out, f))) for f in os.listdir(out) if f.startswith("round_"))


def snapshot(out):
    return {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out)) if f.startswith("round_")}


@pytest.fixture
def seed_file(tmp_path):
    path = tmp_path / "seed.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"instruction": f"Write a function that returns the {i}-th prime number.",
                                "output": f"def p(n): ...  # {i}"}) + "\n")
    return str(path)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_dataset(tmp_path, seed_file, shared_data):
    bench = ["--decontaminate-against", os.path.join(shared_data, "humaneval", "HumanEval.jsonl"),
             os.path.join(shared_data, "mbpp", "mbpp.jsonl")]
    key = {"EVOL_KEY": "sekret"}
    with StubLLM(api_key="sekret", delay=0.01) as stub:
        common = ["--data", seed_file, "--rounds", "3", "--llm-base-url", stub.base_url, "--llm-model", "stub-model",
                  "--llm-api-key-env", "EVOL_KEY", "--concurrency", "4", *bench]
        ref = str(tmp_path / "ref")
        p = cli(*common, "--out", ref, env=key)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "dataset:" in out

        run = str(tmp_path / "run")
        p = cli(*common, "--out", run, env=key)
        deadline = time.time() + 60
        while time.time() < deadline:
            if os.path.isdir(run) and any(f.startswith("round_") for f in os.listdir(run)) and journal_lines(run) >= 25:
                break
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        killed_at = journal_lines(run)
        assert 25 <= killed_at < 120, "the kill must land mid-run"
        before = snapshot(run)

        # a wrong key and an unreachable endpoint: one clear line, exit 2, the journals untouched
        p = cli(*common, "--out", run, env={"EVOL_KEY": "wrong"})
        _, err = p.communicate(timeout=60)
        assert p.returncode == 2 and err.strip().splitlines()[-1].startswith("error: ")
        assert "refused the API key (HTTP 401" in err and "$EVOL_KEY" in err
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        s.close()
        p = cli(*[a if a != stub.base_url else dead for a in common], "--out", run, env=key)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 2 and "cannot reach the LLM endpoint" in err
        assert snapshot(run) == before

        p = cli(*common, "--out", run, env=key)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for name in ("merged.jsonl", "clean.jsonl"):
        assert open(os.path.join(run, name), "rb").read() == open(os.path.join(ref, name), "rb").read(), name
    for r in (1, 2, 3):  # one record per lineage and round: nothing lost, nothing done twice
        ids = [json.loads(line)["id"] for line in open(os.path.join(run, f"round_{r}.jsonl"))]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 40
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["complete"] and summary["merged"] == 40 * 4
    assert [c["attempted"] for c in summary["rounds"]] == [40, 40, 40]


def test_torn_journal_tail_is_repaired_on_resume(tmp_path, seed_file):
    with StubLLM() as stub:
        common = ["--data", seed_file, "--rounds", "1", "--llm-base-url", stub.base_url, "--llm-model", "m",
                  "--no-hygiene", "--llm-api-key-env", ""]
        out = str(tmp_path / "o")
        assert cli(*common, "--out", out).wait(60) == 0
        ref = open(os.path.join(out, "merged.jsonl"), "rb").read()
        lines = open(os.path.join(out, "round_1.jsonl"), "rb").read().splitlines(keepends=True)
        with open(os.path.join(out, "round_1.jsonl"), "wb") as f:  # as if killed while writing line 31
            f.writelines(lines[:30])
            f.write(lines[30][:17])
        p = cli(*common, "--out", out)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert open(os.path.join(out, "merged.jsonl"), "rb").read() == ref
        assert len(stub.prompts("evolve")) == 40 + 10


def test_bad_seed_lines_and_changed_settings_are_named(tmp_path, seed_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"instruction": "also ok"}\n{"instruction": oops}\n')
    p = cli("--data", str(bad), "--out", str(tmp_path / "o"), "--llm-base-url", "http://127.0.0.1:9/v1",
            "--llm-model", "m", "--no-hygiene")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and f"{bad}:3: not valid JSON" in err and "Traceback" not in err
    p = cli("--out", str(tmp_path / "o"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--data, --llm-base-url, --llm-model" in err
    with StubLLM() as stub:
        common = ["--data", seed_file, "--rounds", "1", "--llm-base-url", stub.base_url, "--no-hygiene",
                  "--out", str(tmp_path / "o2")]
        assert cli(*common, "--llm-model", "m").wait(60) == 0
        p = cli(*common, "--llm-model", "other")
        _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "different `model`" in err


@pytest.mark.slow
def test_filter_only_on_public_round(tmp_path, shared_data):
    """Every removal is re-checked independently of the code that made it."""
    src = os.path.join(shared_data, "evol_instruct_code", "evol-codealpaca-2k-1.json.gz")
    he = os.path.join(shared_data, "humaneval", "HumanEval.jsonl")
    mbpp = os.path.join(shared_data, "mbpp", "mbpp.jsonl")
    out = str(tmp_path / "f")
    p = cli("--filter-only", "--data", src, "--out", out, "--decontaminate-against", he, mbpp)
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    rep = json.load(open(os.path.join(out, "report.json")))
    clean = [json.loads(line) for line in open(os.path.join(out, "clean.jsonl"))]
    removed = [json.loads(line) for line in open(os.path.join(out, "removed.jsonl"))]
    import gzip

    data = json.load(gzip.open(src, "rt"))
    assert rep["files"]["evol-codealpaca-2k-1.json.gz"]["records"] == len(data) == 1966
    assert len(clean) + len(removed) == len(data)
    assert sorted(r["id"] for r in clean + removed) == sorted(f"evol-codealpaca-2k-1.json.gz:{i}" for i in
                                                              range(len(data)))
    problems = {p.task_id: p for p in H.load_benchmark(he) + H.load_benchmark(mbpp)}
    for r in removed:
        why, d = r["removed_by"], r["removed_detail"]
        low = r["instruction"].lower()
        if why == "copied":
            assert any(m in re.sub(r"given test cases?\b", "", low) for m in COPY_MARKERS)
        elif why == "sorry":
            assert "sorry" in r["output"].lower() and len(r["output"].split()) < 80
        elif why == "contaminated":
            text = " ".join(H.tokens(r[d["sample_field"]]))
            src_text = " ".join(H.tokens(getattr(problems[d["task_id"]], d["benchmark_field"])))
            assert d["ngram"] in text and d["ngram"] in src_text and len(d["ngram"].split()) == 13
        elif why in ("exact_duplicate", "near_duplicate"):
            assert d["of"] in {c["id"] for c in clean}
        else:
            assert why in R.RULES
    # nothing kept trips a rule
    cfg = R.RuleConfig()
    assert cfg.copy_markers == COPY_MARKERS
    assert all(R.check_pair(c["instruction"], c["output"], cfg) is None for c in clean)
    assert rep["files"]["evol-codealpaca-2k-1.json.gz"]["eliminated"]["copied"] == sum(
        any(m in re.sub(r"given test cases?\b", "", (x["instruction"] or "").lower()) for m in COPY_MARKERS)
        for x in data)
    assert "paraphrase" in rep["hygiene"] and len(rep["hygiene"]["paraphrase"]["top"]) == 20


def _in_process(capsys, *args):
    from wizardcoder.cli import main

    code = main(["evolve", *args])
    return code, capsys.readouterr().err


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "missing.jsonl", r"missing\.jsonl: no such seed file; check the path"),
    (lambda d: d, r"is a folder, not a file; give the seed file itself"),
    (lambda d: _write(d / "seed.json", b"\x1f\x8b\x08\x00\xff\xfe\x00\x01binary"), r"seed\.json: not a UTF-8 text file"),
    (lambda d: _write(d / "seed.jsonl", b'["a list"]\n'), r"seed\.jsonl\[0\]: expected a JSON object, got str"),
    (lambda d: _write(d / "seed.json", b'{\n  "data": []\n}\n'), r"seed\.json: one JSON dict, not an array of records"),
    (lambda d: _write(d / "seed.jsonl", b'"a string"\n'), r"seed\.jsonl: not JSON or JSONL \(starts with '\"a string\""),
])
def test_bad_seed_files_are_one_sentence_before_any_work(tmp_path, capsys, make, says):
    seed = make(tmp_path)
    out = tmp_path / "out"
    code, err = _in_process(capsys, "--data", str(seed), "--out", str(out), "--llm-base-url", "http://127.0.0.1:9/v1",
                            "--llm-model", "m")
    assert code == 2 and re.search(says, err) and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()  # nothing made, no LLM or benchmark touched


@pytest.mark.parametrize("flag, value, says", [
    ("--top-p", "0", r"--top-p 0\.0: must be in \(0, 1\]"),
    ("--temperature", "nan", r"--temperature nan: must be 0 or more"),
    ("--concurrency", "0", r"--concurrency 0: must be at least 1"),
    ("--llm-max-tokens", "0", r"--llm-max-tokens 0: must be at least 1"),
    ("--timeout", "-1", r"--timeout -1\.0: must be more than 0 seconds"),
    ("--rounds", "0", r"--rounds 0: must be at least 1"),
    ("--disable-rule", "sorrow", r"--disable-rule 'sorrow': no such rule"),
    ("--near-dup-threshold", "1.5", r"--near-dup-threshold 1\.5: must be in \(0, 1\]"),
    ("--prompts", "nonesuch", r"--prompts 'nonesuch': neither a template name"),
])
def test_bad_flags_name_themselves(tmp_path, capsys, seed_file, flag, value, says):
    out = tmp_path / "out"
    code, err = _in_process(capsys, "--data", seed_file, "--out", str(out), "--llm-base-url",
                            "http://127.0.0.1:9/v1", "--llm-model", "m", flag, value)
    assert code == 2 and re.search(says, err) and "Traceback" not in err, err
    assert not out.exists()


def test_seed_is_a_number_and_out_must_be_a_folder(tmp_path, capsys, seed_file):
    with pytest.raises(SystemExit) as e:  # argparse: --seed takes the RNG seed, the seed file is --data
        _in_process(capsys, "--seed", seed_file, "--out", str(tmp_path / "o"))
    assert e.value.code == 2 and "--seed: invalid int value" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("keep")
    code, err = _in_process(capsys, "--data", seed_file, "--out", str(afile), "--llm-base-url",
                            "http://127.0.0.1:9/v1", "--llm-model", "m", "--no-hygiene")
    assert code == 2 and "--out" in err and "is a file, not a folder" in err and afile.read_text() == "keep"
    mine = tmp_path / "mine"  # a folder of the user's: evolve would write merged.jsonl etc. over their files
    mine.mkdir()
    (mine / "merged.jsonl").write_text("my data\n")
    code, err = _in_process(capsys, "--data", seed_file, "--out", str(mine), "--llm-base-url",
                            "http://127.0.0.1:9/v1", "--llm-model", "m", "--no-hygiene")
    assert code == 2 and "holds files and is not made by wizardcoder" in err
    assert os.listdir(mine) == ["merged.jsonl"] and (mine / "merged.jsonl").read_text() == "my data\n"


def test_config_file_keys_are_the_flag_dests(tmp_path, seed_file):
    """An [evolve] section with the config keys (llm_base_url, seed, data, llm_max_tokens, hygiene, disable_rule)
    runs the same as the flags."""
    with StubLLM() as stub:
        cfg = tmp_path / "run.toml"
        cfg.write_text(f'[evolve]\ndata = ["{seed_file}"]\nllm_base_url = "{stub.base_url}"\nllm_model = "m"\n'
                       'seed = 7\nrounds = 1\nllm_max_tokens = 99\nhygiene = false\nllm_api_key_env = ""\n'
                       'disable_rule = ["sorry"]\n')
        p = cli("--config", str(cfg), "--out", str(tmp_path / "o"))
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        bodies = [b for _, b, _ in stub.requests]
    assert bodies and all(b["max_tokens"] in (99, 16) for b in bodies)  # 16: the equality check's
    ident = json.load(open(tmp_path / "o" / "config.json"))["identity"]
    assert ident["seed"] == 7 and ident["rules"]["disabled"] == ["sorry"]


def test_an_edited_journal_is_one_sentence(tmp_path, capsys, seed_file):
    with StubLLM() as stub:
        args = ["--data", seed_file, "--rounds", "1", "--llm-base-url", stub.base_url, "--llm-model", "m",
                "--no-hygiene", "--llm-api-key-env", "", "--out", str(tmp_path / "o"), "--no-progress"]
        assert _in_process(capsys, *args)[0] == 0
        journal = tmp_path / "o" / "round_1.jsonl"
        lines = journal.read_text().splitlines(keepends=True)
        rec = json.loads(lines[4])
        del rec["root_id"]
        journal.write_text("".join(lines[:4]) + json.dumps(rec) + "\n" + "".join(lines[5:]))
        code, err = _in_process(capsys, *args)
    assert code == 2 and "round_1.jsonl: record 5 is not a round-1 journal record" in err and "Traceback" not in err


@pytest.mark.parametrize("args, says", [
    ([], r"evolve needs --out DIR"),
    (["--out", "o", "--filter-only"], r"evolve --filter-only needs --data FILE \[FILE \.\.\.\]"),
    (["--out", "o", "--data", "a.json", "b.json", "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m"],
     r"evolve reads one seed file, got 2 --data files; merge them first"),
])
def test_missing_or_extra_inputs_are_one_sentence_before_any_work(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    code, err = _in_process(capsys, *args)
    assert code == 2 and re.search(says, err) and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def test_config_keys_are_the_settings_and_the_old_names_are_refused():
    """The [evolve] keys come from Config's fields (renamed ones by their `key`); a key evolve no longer has is one
    sentence listing the valid ones."""
    from wizardcoder import settings
    from wizardcoder.errors import ConfigError
    from wizardcoder.evol.cli import Config

    cfg = settings.build(Config, {"out": "o", "data": ["s.json"], "llm_base_url": "http://h:1", "llm_model": "m",
                                  "llm_max_tokens": 7, "timeout": 5, "hygiene": False, "progress": False,
                                  "disable_rule": ["sorry"], "decontaminate_against": ["HumanEval.jsonl"]})
    assert (cfg.llm.base_url, cfg.llm.max_tokens, cfg.llm.timeout_s) == ("http://h:1/v1", 7, 5.0)
    assert (cfg.hygiene, cfg.progress, cfg.evol.rules.disabled, cfg.hyg.benchmarks) == \
        (False, False, ("sorry",), ["HumanEval.jsonl"])
    assert cfg.evol.rules.copy_markers == cfg.evol.templates.copy_markers
    for old in ("max_new_tokens", "no_hygiene", "no_progress", "backoff_s", "rules", "copy_markers", "extra_body"):
        with pytest.raises(ConfigError, match=rf"unknown field '{old}'; valid fields are .*llm_max_tokens"):
            settings.build(Config, {"out": "o", old: 1})
