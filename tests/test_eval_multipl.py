"""MultiPL-E (humaneval-js/cpp/java/rs/go/php) through the real evaluate path, in the sandbox.

Per language with its toolchain on this machine: hand-written right solutions of two problems pass (Java: and one
returning an org.javatuples Pair), a wrong answer (Java: caught by `assert` under -ea),
the empty completion and a compile error fail, and hostile programs are contained: a compile-time read of
/etc/shadow (C++ `#include`, Rust `include_str!`) fails without its content reaching the results, and at run time a
connect to a listener of the test, a write outside the program's folder, a read of /etc/shadow and a new process
fail. Every hostile program is otherwise right, so it would pass if its attack succeeded. A language whose toolchain
is missing is reported as skipped, never scored. The data are two records per language copied from MultiPL-E
(tests/fixtures/multipl-e; evaluation only, see the benchmark's docstring for the licence).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from _util import PYTHON, REPO, repo_env

from wizardcoder.eval import languages
from wizardcoder.benchmarks import get_benchmark
from wizardcoder.eval.scoring import evaluate

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

DATA = os.path.join(REPO, "tests", "fixtures", "multipl-e")
STRLEN, ADD, FIB = "HumanEval_23_strlen", "HumanEval_53_add", "HumanEval_55_fib"
PALINDROMES = "HumanEval_107_even_odd_palindrome"  # Java: returns an org.javatuples Pair

# completions of the prompts (each prompt ends with the signature's opening brace)
RIGHT = {
    "js": {STRLEN: "  return string.length;\n}\n", ADD: "  return x + y;\n}\n"},
    "cpp": {STRLEN: "    return string.size();\n", ADD: "    return x + y;\n"},
    "java": {STRLEN: "        return string.length();\n", ADD: "        return x + y;\n",
             PALINDROMES: "        long even = 0, odd = 0;\n        for (long i = 1; i <= n; i++) {\n"
                          "            String s = Long.toString(i);\n"
                          "            if (new StringBuilder(s).reverse().toString().equals(s)) {\n"
                          "                if (i % 2 == 0) even++; else odd++;\n            }\n        }\n"
                          "        return Pair.with(even, odd);\n"},
    "rs": {STRLEN: "    string.len() as isize\n", ADD: "    x + y\n"},
    "go": {STRLEN: "    return len(myString)\n}\n", ADD: "    return x + y\n}\n"},
    # PHP's HumanEval_23 redeclares the builtin strlen (a MultiPL-E quirk no completion can fix): fib instead
    "php": {FIB: "    return $n < 2 ? $n : fib($n - 1) + fib($n - 2);\n}\n", ADD: "    return $x + $y;\n}\n"},
}
WRONG = {"js": "  return x - y;\n}\n", "cpp": "    return x - y;\n", "java": "        return x - y;\n",
         "rs": "    x - y\n", "go": "    return x - y\n}\n", "php": "    return $x - $y;\n}\n"}
BROKEN = {"js": "  return x +;\n}\n", "cpp": "    return x + ;\n", "java": "        return x +;\n", "rs": "    x +\n",
          "go": "    return x +\n}\n", "php": "    return $x +;\n}\n"}
COMPILED = ("cpp", "java", "rs", "go")  # a compile error is `syntax_error`; node and php fail at run time


def hostile(lang: str, port: int, outside: str) -> dict[str, dict]:
    """{name: sample} of attacks on strlen (PHP: add) whose program passes only if the attack succeeds."""
    task = ADD if lang == "php" else STRLEN
    attacks = {name: {"task_id": task, **sample} for name, sample in _attacks(lang, port, outside).items()}
    early = EARLY_EXIT.get(lang) or {  # go: the prompt with "os" imported
        "solution": PROMPTS[lang][STRLEN].replace("import (\n", 'import (\n    "os"\n', 1) + "    os.Exit(0)\n"
                    + RIGHT[lang][STRLEN]}
    return {**attacks, "early exit": {"task_id": task, **early}}


# right answers that exit with status 0 before the tests run (MultiPL-E's own harness passes them)
EARLY_EXIT = {
    "js": {"completion": "  process.exit(0);\n" + RIGHT["js"][STRLEN]},
    "cpp": {"completion": "    exit(0);\n" + RIGHT["cpp"][STRLEN]},
    "java": {"completion": "        System.exit(0);\n" + RIGHT["java"][STRLEN]},
    "rs": {"completion": "    std::process::exit(0);\n" + RIGHT["rs"][STRLEN]},  # the rest: a warning only
    "php": {"completion": "    exit(0);\n" + RIGHT["php"][ADD]},
}


def _attacks(lang: str, port: int, outside: str) -> dict[str, dict]:
    ok = RIGHT[lang][ADD if lang == "php" else STRLEN]
    if lang == "js":
        guard = "  try {{ {} }} catch (e) {{ return -1; }}\n"
        return {
            # connected: the socket closes and node exits 0 after the tests; refused: exit status 3
            "connect": {"solution": f"function strlen(string){{\n{ok}\nconst s = require('net').connect("
                                    f"{{host: '127.0.0.1', port: {port}}}); s.on('connect', () => s.end());"
                                    " s.on('error', () => process.exit(3));\n"},
            "write": {"completion": guard.format(f"require('fs').writeFileSync({outside!r}, 'x');") + ok},
            "read": {"completion": guard.format("console.log(require('fs').readFileSync('/etc/shadow', 'utf8'));")
                     + ok},
            "process": {"completion": guard.format("require('child_process').execFileSync('/bin/true');") + ok},
        }
    if lang == "cpp":
        net = ("#include <sys/socket.h>\n#include <netinet/in.h>\n#include <arpa/inet.h>\n#include <unistd.h>\n")
        return {
            "include": {"solution": '#include "/etc/shadow"\n' + PROMPTS[lang][STRLEN] + ok},
            "connect": {"solution": net + PROMPTS[lang][STRLEN]
                        + "    int s = socket(AF_INET, SOCK_STREAM, 0); if (s < 0) return -1;\n"
                          "    sockaddr_in a{}; a.sin_family = AF_INET; a.sin_port = htons(" + str(port) + ");\n"
                          "    a.sin_addr.s_addr = inet_addr(\"127.0.0.1\");\n"
                          "    if (connect(s, (sockaddr *)&a, sizeof a) != 0) return -1;\n" + ok},
            "write": {"completion": f'    FILE *f = fopen("{outside}", "w"); if (!f) return -1; fclose(f);\n' + ok},
            "process": {"solution": "#include <unistd.h>\n" + PROMPTS[lang][STRLEN] + "    if (fork() < 0) return -1;\n"
                        + ok},
        }
    if lang == "rs":
        return {
            "include": {"completion": '    let _s = include_str!("/etc/shadow");\n' + ok},
            "connect": {"completion": f'    if std::net::TcpStream::connect(("127.0.0.1", {port})).is_err() '
                                      "{ return -1; }\n" + ok},
            "write": {"completion": f'    if std::fs::write("{outside}", "x").is_err() {{ return -1; }}\n' + ok},
            "process": {"completion": '    if std::process::Command::new("/bin/true").status().is_err() '
                                      "{ return -1; }\n" + ok},
        }
    if lang == "java":
        guard = "        try {{ {} }} catch (Exception e) {{ return -1; }}\n"
        return {
            "connect": {"completion": guard.format(f'new java.net.Socket("127.0.0.1", {port}).close();') + ok},
            "write": {"completion": guard.format(f'java.nio.file.Files.writeString(java.nio.file.Path.of("{outside}"),'
                                                 ' "x");') + ok},
            "read": {"completion": guard.format('System.out.println(java.nio.file.Files.readString('
                                                'java.nio.file.Path.of("/etc/shadow")));') + ok},
            "process": {"completion": guard.format('new ProcessBuilder("/bin/true").start().waitFor();') + ok},
        }
    if lang == "go":
        def with_import(package: str, body: str) -> dict:  # Go refuses unused imports: one attack, one import
            prompt = PROMPTS[lang][STRLEN].replace("import (\n", f'import (\n    "{package}"\n', 1)
            return {"solution": prompt + body + ok}
        return {
            "connect": with_import("net", f'    if _, err := net.Dial("tcp", "127.0.0.1:{port}"); err != nil '
                                          "{ return -1 }\n"),
            "write": with_import("os", f'    if os.WriteFile("{outside}", []byte("x"), 0644) != nil {{ return -1 }}\n'),
            "read": with_import("os", '    b, err := os.ReadFile("/etc/shadow")\n    if err != nil { return -1 }\n'
                                      "    fmt.Println(string(b))\n"),
            "process": with_import("os/exec", '    if exec.Command("/bin/true").Run() != nil { return -1 }\n'),
        }
    if lang == "php":
        return {
            "connect": {"completion": f'    if (@fsockopen("127.0.0.1", {port}) === false) {{ return -1; }}\n' + ok},
            "write": {"completion": f'    if (@file_put_contents("{outside}", "x") === false) {{ return -1; }}\n' + ok},
            "read": {"completion": '    $s = @file_get_contents("/etc/shadow"); if ($s === false) { return -1; }\n'
                                   "    echo $s;\n" + ok},
            "process": {"completion": '    if (@exec("/bin/echo hi") !== "hi") { return -1; }\n' + ok},
        }
    raise ValueError(lang)


PROMPTS = {lang: {json.loads(line)["name"]: json.loads(line)["prompt"]
                  for line in open(os.path.join(DATA, f"humaneval-{lang}.jsonl"))} for lang in RIGHT}


def _shadow_lines() -> list[str]:
    """/etc/shadow's entries when this test may read them (root), to look for in the results."""
    try:
        with open("/etc/shadow") as f:
            return [line.strip() for line in f if line.count(":") >= 8]
    except OSError:
        return []


class Listener:
    """A TCP listener on the host's loopback that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port, self.hits, self.stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                self.sock.accept()[0].close()
                self.hits += 1
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def available(lang: str) -> bool:
    try:
        languages.toolchain(lang)
        return True
    except languages.Missing:
        return False


def score(lang: str, tmp_path, samples: dict[str, dict], timeout: float | None = None) -> dict[str, dict]:
    """Evaluate named samples (each a dict with task_id and completion or solution); {name: results row}."""
    names = list(samples)
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(samples[n]) + "\n" for n in names))
    out = tmp_path / "out"
    evaluate(f"humaneval-{lang}", str(path), str(out), data=os.path.join(DATA, f"humaneval-{lang}.jsonl"), ks=(1,),
             workers=2, timeout=timeout, progress=False)
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    return {names[r["sample"]]: r for r in rows}


SLOW = pytest.mark.slow  # the JVM starts twice a sample; go builds its standard library into an empty cache


@pytest.mark.parametrize("lang", [pytest.param(lang, marks=SLOW if lang in ("java", "go") else ())
                                  for lang in RIGHT])
def test_language(lang, tmp_path):
    if not available(lang):
        pytest.skip(f"{lang}: {get_benchmark(f'humaneval-{lang}').unavailable()}")
    listener = Listener()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)  # uid permissions alone would not stop the write: the sandbox must
    target = outside / "pwned"
    samples = {f"right {t}": {"task_id": t, "completion": c} for t, c in RIGHT[lang].items()}
    samples.update({"wrong": {"task_id": ADD, "completion": WRONG[lang]},
                    "empty": {"task_id": ADD, "completion": ""},
                    "broken": {"task_id": ADD, "completion": BROKEN[lang]}})
    attacks = hostile(lang, listener.port, str(target))
    samples.update({f"hostile {n}": s for n, s in attacks.items()})
    if lang == "js":  # an instruction answer: fenced, repeating the signature, with prose after it
        samples["response"] = {"task_id": ADD, "response": "Sure:\n```javascript\nfunction add(x, y) {\n  return x + y;"
                                                           "\n}\n```\nThis adds them."}
    try:
        rows = score(lang, tmp_path, samples)
    finally:
        listener.close()
    verdicts = {n: (r["status"], r["error"][:200]) for n, r in rows.items()}
    for n, r in rows.items():
        right = n.startswith("right") or n == "response"
        assert r["passed"] == right, (n, verdicts[n])
    assert rows["wrong"]["status"] == "failed", verdicts["wrong"]
    assert rows["broken"]["status"] == ("syntax_error" if lang in COMPILED else "failed"), verdicts["broken"]
    early = verdicts["hostile early exit"]  # failed, and saying why
    assert early[0] == "failed" and ("os.Exit(0)" in early[1] if lang == "go" else
                                     "before the tests ended" in early[1]), early
    if "hostile include" in rows:
        assert rows["hostile include"]["status"] == "syntax_error", verdicts["hostile include"]
    assert listener.hits == 0
    assert not target.exists()
    text = (tmp_path / "out" / "results.jsonl").read_text()
    for line in _shadow_lines():
        assert line not in text


def test_missing_toolchain_is_skipped(tmp_path, monkeypatch):
    """No node on PATH (nor in ~/.cargo/bin): humaneval-js is skipped with the reason, never scored 0%."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    bench = get_benchmark("humaneval-js")
    assert "skipped: toolchain missing" in bench.unavailable() and "node" in bench.unavailable()
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": ADD, "completion": RIGHT["js"][ADD]}) + "\n")
    summary = evaluate(bench, str(samples), str(tmp_path / "out"), data=os.path.join(DATA, "humaneval-js.jsonl"),
                       ks=(1,), workers=1, progress=False)
    assert summary["skipped"] == bench.unavailable() and "pass@1" not in summary
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"] == summary["skipped"]
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_missing_toolchain_is_reported_skipped_by_the_verb(tmp_path, monkeypatch, capsys):
    """Through `wizardcoder evaluate`: the report and the JSON line say skipped and why, with no pass@k."""
    from wizardcoder.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": ADD, "completion": RIGHT["js"][ADD]}) + "\n")
    assert main(["evaluate", "--task", "humaneval-js", "--samples", str(samples), "--out", str(tmp_path / "out"),
                 "--data", os.path.join(DATA, "humaneval-js.jsonl"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    line = json.loads(out.strip().splitlines()[-1])
    assert line["skipped"].startswith("skipped: toolchain missing") and "node" in line["skipped"]
    assert not any(k.startswith("pass@") for k in line)
    assert "skipped: toolchain missing" in err and "pass@1" not in err


def test_tasks_registered():
    """One task per language, with the record's stop tokens for completion models and the ids of the file."""
    for lang in RIGHT:
        bench = get_benchmark(f"humaneval-{lang}")
        problems = bench.load(os.path.join(DATA, f"humaneval-{lang}.jsonl"))
        assert ADD in problems
        assert bench.stop_words("plain") == problems[ADD].raw["stop_tokens"]
        assert bench.prompt(problems[ADD], "plain") == problems[ADD].prompt
        assert languages.TITLES[lang] in bench.prompt(problems[ADD])


def test_time_limits(tmp_path):
    """The run step's CPU limit (--timeout) stops a busy loop, its wall-clock limit a program that sleeps."""
    if not available("js"):
        pytest.skip("node is missing")
    rows = score("js", tmp_path, {
        "busy": {"task_id": ADD, "completion": "  while (true) {}\n}\n"},
        "sleep": {"task_id": ADD, "completion": "  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);\n}\n"},
    }, timeout=1)
    assert rows["busy"]["status"] == "timeout" and "CPU time limit" in rows["busy"]["error"], rows["busy"]
    assert rows["sleep"]["status"] == "timeout" and "wall time limit" in rows["sleep"]["error"], rows["sleep"]


# The evaluator under reduced privileges (as tests/test_eval_hostile.py): no view or namespaces, the sandbox uid
# keeping CAP_DAC_READ_SEARCH (passed on to the steps) to reach a toolchain under /root; or no capability at all.
PRIVILEGES = {"no CAP_SYS_ADMIN": ("setpriv", "--bounding-set=-sys_admin"),
              "no capabilities": ("setpriv", "--bounding-set=-all", "--inh-caps=-all")}


@pytest.mark.parametrize("privileges", list(PRIVILEGES))
def test_reduced_privileges(tmp_path, privileges):
    """Through the CLI under setpriv: a right Rust (else C++) solution still compiles and passes, the compile-time
    read of /etc/shadow and a write outside the folder still fail."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop capabilities")
    lang = next((lang for lang in ("rs", "cpp") if available(lang)), None)
    if lang is None:
        pytest.skip("neither rustc nor g++ is installed")
    target = tmp_path / "outside" / "pwned"
    target.parent.mkdir()
    os.chmod(target.parent, 0o777)
    attacks = hostile(lang, 9, str(target))
    samples = {"right": {"task_id": ADD, "completion": RIGHT[lang][ADD]}, "include": attacks["include"],
               "write": attacks["write"]}
    path, out = tmp_path / "samples.jsonl", tmp_path / "out"
    path.write_text("".join(json.dumps(samples[n]) + "\n" for n in samples))
    r = subprocess.run([*PRIVILEGES[privileges], PYTHON, "-m", "wizardcoder", "evaluate", "--task", f"humaneval-{lang}",
                        "--samples", str(path), "--data", os.path.join(DATA, f"humaneval-{lang}.jsonl"),
                        "--out", str(out), "--workers", "2", "--k", "1", "--no-progress"],
                       capture_output=True, text=True, env=repo_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {name: json.loads(line) for name, line in zip(samples, open(out / "results.jsonl"))}
    assert rows["right"]["passed"], rows["right"]
    assert rows["include"]["status"] == "syntax_error", rows["include"]
    assert rows["write"]["status"] == "failed", rows["write"]
    assert not target.exists()
    text = (out / "results.jsonl").read_text()
    assert not any(line in text for line in _shadow_lines())
