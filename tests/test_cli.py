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


# ------------------------------------------------------------------------------ bad input: one sentence, exit 2
def one_sentence(out) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    err = out.stderr.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_info_of_a_missing_folder_names_the_folder_not_a_preset(tmp_path):
    err = one_sentence(wc("info", "/nonexistent"))
    assert "/nonexistent: no such checkpoint folder" in err and "unknown preset" not in err
    (tmp_path / "empty").mkdir()
    assert "without a config.json" in one_sentence(wc("info", str(tmp_path / "empty")))


def test_a_folder_given_as_config_is_called_a_folder(tmp_path):
    err = one_sentence(wc("pack", "--config", str(tmp_path)))
    assert f"--config {tmp_path} is a folder; give the config file itself" in err
    assert "is a folder" in one_sentence(wc("run", str(tmp_path)))


def test_pack_seq_len_beyond_any_model_is_refused_before_allocating(tmp_path):
    """--seq-len 10^11 allocated a table of 10^11 entries and was killed by the kernel with no message. The child
    runs under a 4 GiB address-space limit, so a regression fails here as a MemoryError, not an OOM kill."""
    import resource

    from _util import REPO

    assets = f"{REPO}/wizardcoder/assets"
    cmd = [sys.executable, "-m", "wizardcoder", "pack", "--data", f"{assets}/demo_seed.jsonl", "--tokenizer",
           f"{assets}/tokenizer", "--seq-len", "100000000000", "--out", str(tmp_path / "packed")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=repo_env(), timeout=300,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)))
    err = one_sentence(out)
    assert "--seq-len 100000000000 is outside [2, 1048576]" in err
    assert not (tmp_path / "packed").exists()


def test_run_with_nothing_to_run_says_so(tmp_path):
    for text in ("", '[run]\nout = "x"\n', '[serve]\nmodel = "tiny"\n'):
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        err = one_sentence(wc("run", str(cfg), cwd=tmp_path))
        assert f"{cfg} names no stage, so there is nothing to run" in err
    cfg.write_text('[evaluate]\nsamples = "s.jsonl"\ntask = "humaneval"\n')
    err = one_sentence(wc("run", str(cfg), "--until", "pack", cwd=tmp_path))
    assert "selects none of the stages" in err and "(evaluate)" in err


def test_run_into_a_folder_it_cannot_write_is_one_sentence(tmp_path):
    import os

    cfg = tmp_path / "c.toml"
    cfg.write_text('[pack]\ndata = ["{assets}/demo_seed.jsonl"]\ntokenizer = "{assets}/tokenizer"\nseq_len = 64\n')
    if os.geteuid() == 0:  # root writes through file modes; /sys is read-only for everyone
        out_dir = "/sys/wizardcoder-test-run"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        out_dir = str(tmp_path / "ro" / "run")
    err = one_sentence(wc("run", str(cfg), "--out", out_dir))
    assert f"--out {out_dir}: cannot write the run folder there" in err and "give a folder you can write to" in err


def test_bench_runs_as_a_verb_and_standalone_with_one_set_of_flags():
    from _util import REPO

    err = one_sentence(wc("bench", "--only", "nope"))
    assert "--only 'nope' is not a benchmark; choose from data, eval," in err
    standalone = subprocess.run([sys.executable, "-m", "bench.run_all", "--only", "nope"], capture_output=True,
                                text=True, env=repo_env(), cwd=REPO)
    assert one_sentence(standalone) == err
    help_ = subprocess.run([sys.executable, "-m", "bench.run_all", "--help"], capture_output=True, text=True,
                           env=repo_env(), cwd=REPO)
    assert help_.returncode == 0 and "--quick" in help_.stdout and "--only" in help_.stdout


def test_info_and_plan_flags_come_from_their_config():
    err = one_sentence(wc("info", "tiny", "--seq-len", "0"))
    assert "--seq-len 0: must be at least 1" in err
    out = wc("info", "tiny", "--seq-len", "16")
    assert out.returncode == 0 and "train_flops_per_token" in out.stdout
    err = one_sentence(wc("plan", "--model", "tiny", "--dtype", "int8"))
    assert "--dtype 'int8' is not a dtype" in err
