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
               "--out", str(out), "--quiet"])
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
    args = ["pack", "--data", str(bad), "--tokenizer", starcoder_tokenizer_dir, "--seq-len", "64", "--quiet"]
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
