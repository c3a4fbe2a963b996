"""wizardcoder.io: atomic folder writes that only ever replace what the program made, and the record readers."""
import gzip
import json
import os
import subprocess
import sys

import pytest
from _util import REPO

from wizardcoder.errors import DataError, UserError
from wizardcoder.io import read_records
from wizardcoder.outdir import MARKER, atomic_dir, check_out_dir
from wizardcoder.resume import Marker


def _write(folder, name, text="x"):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_atomic_dir_writes_marker_and_replaces_its_own_folder(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(str(out), "pack") as tmp:
        assert not out.exists()  # nothing visible until the end
        _write(tmp, "a.txt", "one")
        _write(tmp, "sub/b.txt", "two")
    marker = Marker(str(out / MARKER))  # the one marker format (wizardcoder.resume): settings, hash, state, files
    assert marker.matches({"made_by": "pack"}) and marker.read()["files"] == ["a.txt", "sub/b.txt"]
    with pytest.raises(UserError, match="already exists; choose another --out or pass --overwrite"):
        with atomic_dir(str(out), "pack"):
            pass
    with atomic_dir(str(out), "pack", overwrite=True) as tmp:
        _write(tmp, "c.txt", "three")
    assert sorted(os.listdir(out)) == [MARKER, "c.txt"]
    assert os.listdir(tmp_path) == ["out"]  # no temporary or old folder left beside it


def test_overwrite_refuses_a_folder_it_did_not_make(tmp_path):
    """`pack --out . --overwrite` once deleted the working folder, input included."""
    work = tmp_path / "work"
    _write(str(work), "records.jsonl", "{}\n")
    with pytest.raises(UserError, match=r"not a folder that wizardcoder made \(no \.wizardcoder marker\)"):
        with atomic_dir(str(work), "pack", overwrite=True) as tmp:
            _write(tmp, "a.txt")
    assert os.listdir(work) == ["records.jsonl"]
    assert os.listdir(tmp_path) == ["work"]


def test_overwrite_refuses_a_folder_with_files_added_by_hand(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(str(out), "pack") as tmp:
        _write(tmp, "a.txt")
    _write(str(out), "notes/mine.txt", "keep me")
    with pytest.raises(UserError, match=r"holds 1 file\(s\) that pack did not write \(e\.g\. notes/mine\.txt\)"):
        check_out_dir(str(out), "pack", overwrite=True)
    with pytest.raises(UserError, match="made by `pack`, not by `train`"):
        (out / "notes" / "mine.txt").unlink()
        check_out_dir(str(out), "train", overwrite=True)
    check_out_dir(str(out), "pack", overwrite=True)  # an empty subfolder left behind is no file of the user's


def test_a_folder_marked_before_the_resume_marker_is_still_accepted(tmp_path):
    """Folders made by earlier versions carry {"made_by": ..., "files": [...]} without a hash: same guarantees."""
    out = tmp_path / "old-shards"
    _write(str(out), "a.txt")
    (out / MARKER).write_text(json.dumps({"made_by": "pack", "files": ["a.txt"]}))
    with pytest.raises(UserError, match="made by `pack`, not by `train`"):
        check_out_dir(str(out), "train", overwrite=True)
    _write(str(out), "mine.txt")
    with pytest.raises(UserError, match=r"holds 1 file\(s\) that pack did not write \(e\.g\. mine\.txt\)"):
        check_out_dir(str(out), "pack", overwrite=True)
    (out / "mine.txt").unlink()
    with atomic_dir(str(out), "pack", overwrite=True) as tmp:
        _write(tmp, "b.txt")
    assert sorted(os.listdir(out)) == [MARKER, "b.txt"] and Marker(str(out / MARKER)).matches({"made_by": "pack"})
    from wizardcoder.outdir import claim_out_dir

    run = tmp_path / "old-run"  # claim_out_dir's marker of an earlier version: its own run, resumed
    _write(str(run), "round_1.jsonl", "{}\n")
    (run / MARKER).write_text(json.dumps({"made_by": "evolve"}))
    claim_out_dir(str(run), "evolve")
    with pytest.raises(UserError, match=r"holds files and is made by `evolve`, not a `pack` run"):
        claim_out_dir(str(run), "pack")


def test_empty_folder_is_replaced_without_overwrite_and_a_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(str(empty), "pack") as tmp:
        _write(tmp, "a.txt")
    assert (empty / "a.txt").exists()
    afile = tmp_path / "afile"
    afile.write_text("data")
    with pytest.raises(DataError, match="is a file, not a folder"):
        check_out_dir(str(afile), "pack", overwrite=True, error=DataError)
    link = tmp_path / "link"
    link.symlink_to(empty)
    with pytest.raises(UserError, match="is a symbolic link"):
        check_out_dir(str(link), "pack", overwrite=True)


def test_failure_inside_leaves_the_old_folder(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(str(out), "pack") as tmp:
        _write(tmp, "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(str(out), "pack", overwrite=True) as tmp:
            _write(tmp, "a.txt", "new")
            raise RuntimeError("died mid-write")
    assert (out / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["out"]


def test_unwritable_out_is_one_sentence(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("data")
    with pytest.raises(UserError, match=r"--out .*afile/out: cannot create a folder in .*afile \(.*\); choose a writable --out"):
        with atomic_dir(str(afile / "out"), "pack"):
            pass
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UserError, match=r"cannot create a folder in .*locked \(Permission denied\)"):
                with atomic_dir(str(locked / "out"), "pack"):
                    pass
        finally:
            locked.chmod(0o700)
    assert afile.read_text() == "data"


def test_sigkill_leftovers_are_removed_by_the_next_write(tmp_path):
    out = tmp_path / "out"
    code = (
        "import os, signal\n"
        "from wizardcoder.outdir import atomic_dir\n"
        f"with atomic_dir({str(out)!r}, 'pack') as tmp:\n"
        "    open(os.path.join(tmp, 'half'), 'w').write('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    (left,) = os.listdir(tmp_path)
    assert left.startswith(".out.tmp-") and not out.exists()
    with atomic_dir(str(out), "pack") as tmp:
        _write(tmp, "a.txt")
    assert os.listdir(tmp_path) == ["out"]


def test_read_records_tells_json_from_jsonl(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    arr = tmp_path / "x.jsonl"  # a JSON array under a .jsonl name still reads
    arr.write_text(json.dumps(rows))
    lines = tmp_path / "y.json.gz"
    with gzip.open(lines, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    assert list(read_records(str(arr))) == rows == list(read_records(str(lines)))
    binary = tmp_path / "z.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(DataError, match=r"z\.json: not a UTF-8 text file"):
        list(read_records(str(binary)))
    with pytest.raises(DataError, match="is a folder, not a file"):
        list(read_records(str(tmp_path)))
    one = tmp_path / "one.json"  # one pretty-printed object: named as such, not as a bad line 1
    one.write_text('{\n  "rows": [1, 2]\n}\n')
    with pytest.raises(DataError, match=r"one\.json: one JSON dict, not an array of records or one record per line"):
        list(read_records(str(one)))
    torn = tmp_path / "torn.jsonl"  # a bad first line of real JSONL is still named by its line
    torn.write_text('{"a": \n{"a": 2}\n')
    with pytest.raises(DataError, match=r"torn\.jsonl:1: not valid JSON"):
        list(read_records(str(torn)))


def test_read_json_is_one_sentence_for_every_bad_file(tmp_path):
    from wizardcoder.errors import ConfigError
    from wizardcoder.io import read_json

    good = tmp_path / "t.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(str(good)) == {"a": [1, 2]}
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": \n')
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00binary")
    for path, says in ((tmp_path / "none.json", "no such template file"), (tmp_path, "is a folder, not a file"),
                       (bad, r"bad\.json:2: not valid JSON"), (binary, "not a UTF-8 text file")):
        with pytest.raises(ConfigError, match=says):
            read_json(str(path), "template file", ConfigError)


def test_claim_out_dir_takes_only_its_own_or_an_empty_folder(tmp_path):
    from wizardcoder.outdir import claim_out_dir

    run = tmp_path / "run"
    claim_out_dir(str(run), "evolve")
    assert Marker(str(run / MARKER)).matches({"made_by": "evolve"})
    (run / "round_1.jsonl").write_text("{}\n")
    claim_out_dir(str(run), "evolve")  # a resume: its own folder
    with pytest.raises(UserError, match=r"holds files and is made by `evolve`, not a `evolve --filter-only` run"):
        claim_out_dir(str(run), "evolve --filter-only")
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match="holds files and is not made by wizardcoder, not a `evolve` run; choose a new"):
        claim_out_dir(str(home), "evolve")
    assert os.listdir(home) == ["thesis.tex"]
    legacy = tmp_path / "old-run"  # made before markers: its own config.json says whose it is
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    claim_out_dir(str(legacy), "evolve", legacy_file="config.json")
