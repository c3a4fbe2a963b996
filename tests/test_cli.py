"""The `wizardcoder` program as users run it: a real subprocess, exit codes, one-sentence errors."""
import json
import subprocess
import sys

from _util import repo_env


def wc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "wizardcoder", *args], capture_output=True, text=True, env=repo_env(),
                          cwd=cwd)


def test_info_preset_json():
    out = wc("info", "starcoderbase-1b", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["params"] == 1_137_207_296 and d["kv_heads"] == 1


def test_unknown_preset_is_one_sentence_and_exit_2():
    out = wc("info", "starcoder-99b")
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "unknown preset 'starcoder-99b'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_help_lists_verbs():
    out = wc("--help")
    assert out.returncode == 0
    for verb in ("info", "demo", "run", "evolve", "pack", "train", "generate", "evaluate", "serve"):
        assert verb in out.stdout
