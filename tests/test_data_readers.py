"""Readers: formats, several files, folders, hub ids (offline, real huggingface_hub path), and bad input."""
import gzip
import json
import os
import subprocess
import sys

import pytest

from wizardcoder.data.readers import ReadStats, read_examples, resolve_data_files
from wizardcoder.errors import DataError

RECS = [
    {"instruction": "Add two numbers.", "input": "", "output": "def add(a, b):\n    return a + b"},
    {"instruction": "Reverse.", "input": "s = 'ab'", "output": "s[::-1]"},
    {"instruction": "Evolved only.", "output": "print(1)"},
]


def write_jsonl(path, recs):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def test_formats_and_order(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", RECS[:2])
    (tmp_path / "b.json").write_text(json.dumps(RECS[2:]))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps(RECS[0]) + "\n")
    stats = ReadStats()
    ex = read_examples([str(tmp_path / "a.jsonl"), str(tmp_path / "b.json"), str(tmp_path / "c.jsonl.gz")], stats=stats)
    assert [(e.instruction, e.input, e.output) for e in ex] == [
        (r["instruction"], r.get("input", ""), r["output"]) for r in RECS + RECS[:1]
    ]
    assert ex[1].source.endswith("a.jsonl:2") and ex[2].source.endswith("b.json[0]")
    assert stats.records == 4 and stats.kept == 4 and not stats.skipped
    # a folder reads its data files in sorted order; a glob works too
    assert [e.output for e in read_examples(str(tmp_path))] == [e.output for e in ex]
    assert len(read_examples(str(tmp_path / "*.json"))) == 1


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(RECS[:2]), tmp_path / "d.parquet")
    ex = read_examples(str(tmp_path / "d.parquet"))
    assert [e.output for e in ex] == [r["output"] for r in RECS[:2]] and ex[1].source.endswith("[row 1]")


def test_field_map_and_null_input(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"prompt": "Do it.", "response": "ok", "input": None}])
    (e,) = read_examples(str(tmp_path / "x.jsonl"), field_map={"instruction": "prompt", "output": "response"})
    assert (e.instruction, e.input, e.output) == ("Do it.", "", "ok")
    write_jsonl(tmp_path / "y.jsonl", [{"instruction": "a", "response": "b"}, {"instruction": "c", "output": "d", "response": "x"}])
    assert [e.output for e in read_examples(str(tmp_path / "y.jsonl"))] == ["b", "d"]  # `response` when no `output`


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(RECS[0]) + "\n\n{not json\n" + json.dumps(RECS[1]) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        read_examples(str(p))
    stats = ReadStats()
    ex = read_examples(str(p), on_bad="skip", stats=stats)
    assert len(ex) == 2 and stats.skipped == {"malformed_json": 1} and stats.records == 3
    assert "bad.jsonl:3" in stats.skipped_examples[0]


def test_missing_and_wrong_fields(tmp_path):
    p = tmp_path / "f.jsonl"
    write_jsonl(p, [RECS[0], {"instruction": "no output"}, {"instruction": "x", "output": 3}, [1, 2], RECS[1]])
    with pytest.raises(DataError, match=r"f\.jsonl:2: missing field 'output'"):
        read_examples(str(p))
    stats = ReadStats()
    ex = read_examples(str(p), on_bad="skip", stats=stats)
    assert len(ex) == 2
    assert stats.skipped == {"missing_field": 1, "wrong_type": 1, "not_an_object": 1}
    assert stats.records == 5 and stats.kept == 2


def test_empty_response_policy(tmp_path):
    p = tmp_path / "e.json"
    p.write_text(json.dumps([RECS[0], {"instruction": "x", "output": "  \n"}]))
    stats = ReadStats()
    assert len(read_examples(str(p), stats=stats)) == 1
    assert stats.skipped == {"empty_response": 1} and "e.json[1]" in stats.skipped_examples[0]
    assert len(read_examples(str(p), on_empty="keep")) == 2
    with pytest.raises(DataError, match=r"e\.json\[1\]: field 'output' is empty"):
        read_examples(str(p), on_empty="error")


def test_not_json_and_missing_files(tmp_path):
    (tmp_path / "notes.json").write_text("hello, this is text\n")
    with pytest.raises(DataError, match=r"notes\.json: not JSON or JSONL"):
        read_examples(str(tmp_path / "notes.json"))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DataError, match=r"bin\.jsonl: not a UTF-8 text file"):
        read_examples(str(tmp_path / "bin.jsonl"))
    (tmp_path / "broken.json").write_text('[{"instruction": "a", "output": "b"},\n {"oops"}]')
    with pytest.raises(DataError, match=r"broken\.json:2: not valid JSON"):
        read_examples(str(tmp_path / "broken.json"))
    with pytest.raises(DataError, match="no such file"):
        resolve_data_files(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        resolve_data_files("data/missing.json")  # a relative path, not a hub id
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        resolve_data_files(str(tmp_path / "empty"))


def test_hub_dataset_from_local_cache_offline(tmp_path):
    """The real huggingface_hub path (snapshot_download), served from a cache laid out as the hub client does it."""
    cache = tmp_path / "hub"
    repo = cache / "datasets--someorg--tiny-evol"
    snap = repo / "snapshots" / ("b" * 40)
    (snap / "data").mkdir(parents=True)
    write_jsonl(snap / "data" / "train.jsonl", RECS)
    write_jsonl(snap / "data" / "test.jsonl", RECS[:1])  # a test split is not read unless asked for
    (snap / "README.md").write_text("not data")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    code = (
        "import sys; from wizardcoder.data import read_examples\n"
        "from wizardcoder.errors import DataError\n"
        "print([e.output for e in read_examples('someorg/tiny-evol')] == %r)\n"
        "print(len(read_examples('hf://datasets/someorg/tiny-evol:data/*.jsonl')))\n"
        "print(len(read_examples('someorg/tiny-evol:data/test.jsonl')))\n"
        "try:\n    read_examples('someorg/not-cached')\n"
        "except DataError as e:\n    print('DataError', e)\n" % [r["output"] for r in RECS]
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "True" and lines[1] == "4" and lines[2] == "1"
    assert lines[3].startswith("DataError someorg/not-cached: not a local path and not in the hub cache"), lines
