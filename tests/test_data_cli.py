"""`wizardcoder pack`: summary printed and stored, clear errors with exit status 2."""
import json
import os
import subprocess
import sys

from wizardcoder.cli import main
from wizardcoder.data import PackedShards

ASSET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wizardcoder", "assets",
                     "demo_seed.jsonl")


def test_pack_demo_seed(starcoder_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "shards"
    rc = main(["pack", "--data", ASSET, "--tokenizer", starcoder_tokenizer_dir, "--seq-len", "256",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    s = meta["summary"]
    assert s["records_read"] == 30 and s["samples_kept"] == 30 and s["dropped"] == {}
    assert f"{s['packs']:,} x 256 tokens" in printed and "packing eff." in printed
    assert PackedShards(str(out)).num_docs == 30
    with open(ASSET) as f:
        assert sum(1 for line in f if json.loads(line)["input"]) >= 3  # the with-input template is exercised


def test_pack_errors_exit_2(starcoder_tokenizer_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    args = ["pack", "--data", str(bad), "--tokenizer", starcoder_tokenizer_dir, "--seq-len", "64", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "o1")]) == 2
    assert f"error: {bad}:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()
    # with --skip-bad the line is skipped and counted, and the summary says so
    assert main(args + ["--out", str(tmp_path / "o2"), "--skip-bad", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dropped"] == {"malformed_json": 1} and s["samples_kept"] == 1
    assert main(args + ["--out", str(tmp_path / "o2")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_pack_through_the_installed_entry_point(starcoder_tokenizer_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "wizardcoder", "pack", "--data", ASSET, "--tokenizer", starcoder_tokenizer_dir,
         "--seq-len", "512", "--out", str(tmp_path / "s")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "records read     30" in out.stdout
    assert "tokenize" in out.stderr  # the progress bar


def test_overwrite_never_replaces_a_folder_pack_did_not_make(starcoder_tokenizer_dir, tmp_path, capsys, monkeypatch):
    """`pack --out . --overwrite` once deleted every file in the working folder, its input included."""
    work = tmp_path / "work"
    work.mkdir()
    data = work / "records.jsonl"
    data.write_text(open(ASSET).read())
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    args = ["pack", "--data", "records.jsonl", "--tokenizer", starcoder_tokenizer_dir, "--seq-len", "256",
            "--no-progress", "--overwrite"]
    assert main(args + ["--out", "."]) == 2
    err = capsys.readouterr().err
    assert "not a folder that wizardcoder made" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(work)) == ["notes.txt", "records.jsonl"] and data.read_text() == open(ASSET).read()
    # a folder pack made is replaced; once the user adds a file to it, it is not
    assert main(args + ["--out", "shards"]) == 0 and main(args + ["--out", "shards"]) == 0
    (work / "shards" / "mine.txt").write_text("keep")
    capsys.readouterr()
    assert main(args + ["--out", "shards"]) == 2
    assert "holds 1 file(s) that pack did not write (e.g. mine.txt)" in capsys.readouterr().err
    assert (work / "shards" / "mine.txt").read_text() == "keep" and PackedShards("shards").num_docs == 30


def test_bad_packs_per_shard_and_unwritable_out(starcoder_tokenizer_dir, tmp_path, capsys):
    args = ["pack", "--data", ASSET, "--tokenizer", starcoder_tokenizer_dir, "--seq-len", "256", "--no-progress"]
    for n in ("0", "-1"):
        assert main(args + ["--out", str(tmp_path / "o"), "--packs-per-shard", n]) == 2
        assert f"--packs-per-shard must be at least 1, got {n}" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(args + ["--out", str(afile / "shards")]) == 2
    err = capsys.readouterr().err
    assert "cannot create a folder in" in err and "choose a writable --out" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == ["afile"]


def test_missing_settings_and_bad_fields_are_one_sentence(starcoder_tokenizer_dir, tmp_path, capsys):
    assert main(["pack", "--data", ASSET, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pack needs --tokenizer, --seq-len, e.g.") and err.count("\n") == 1
    args = ["pack", "--data", ASSET, "--tokenizer", starcoder_tokenizer_dir, "--seq-len", "64", "--out",
            str(tmp_path / "o")]
    for bad in ("output", "outptu=response", "output="):
        assert main(args + ["--fields", bad]) == 2
        assert f"--fields takes ours=theirs pairs for instruction/input/output, e.g. output=response; got {bad!r}." \
            in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_config_section_renames_fields_and_turns_progress_off(starcoder_tokenizer_dir, tmp_path, capsys):
    """[pack] keys are the flags' names (`progress = false` is --no-progress); `fields` may be a TOML table."""
    data = tmp_path / "renamed.jsonl"
    with open(ASSET) as f, open(data, "w") as g:
        for line in f:
            r = json.loads(line)
            g.write(json.dumps({"prompt": r["instruction"], "input": r["input"], "answer": r["output"]}) + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[pack]\ndata = ["{data}"]\ntokenizer = "{starcoder_tokenizer_dir}"\nseq_len = 256\n'
                   f'out = "{tmp_path / "s"}"\nprogress = false\n'
                   'fields = {instruction = "prompt", output = "answer"}\n')
    assert main(["pack", "--config", str(cfg), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["samples_kept"] == 30 and "tokenize" not in out.err
    assert PackedShards(str(tmp_path / "s")).num_docs == 30
    cfg.write_text(cfg.read_text().replace('output = "answer"', 'response = "answer"'))
    assert main(["pack", "--config", str(cfg)]) == 2
    assert "--fields takes ours=theirs pairs" in capsys.readouterr().err
