"""Compilers and runtimes of the MultiPL-E languages: how one program is built and run inside the sandbox.

    tc = toolchain("cpp", cache)     # a Toolchain, found on this machine (evaluator side, trusted)
    tc.spec(run_cpu=3.0)             # the task data of a `command` job: file name, steps, environment
    tc.read_paths                    # folders outside the sandbox's allowlist the steps must read (rustc's sysroot)
    toolchain("go")                  # raises Missing("go not found ...") where Go is not installed

A program is a `command` job (checks.command_job): the sandboxed child writes the source file into its own folder
and runs each step as a process of its own, each confined like a Python program (Landlock, seccomp, rlimits, see
sandbox.py), compile first, then run. Steps that start processes (compiler drivers: g++ -> cc1plus, as, ld; rustc
-> cc; go) are the only ones allowed to fork; the program itself never is. Limits are per step: CPU seconds (all
threads and processes of the step, user + system: RLIMIT_CPU), address space, and a wall clock of 3x the CPU + 1 s.

| language | steps (in the program's folder)                                              | run limits besides CPU    |
|----------|------------------------------------------------------------------------------|---------------------------|
| js       | node main.js                                                                 | 4 GiB address space       |
| cpp      | g++ -std=c++17 -include <precompiled header> main.cpp -o main; ./main        | compile 30 s, 2 GiB       |
| java     | javac -cp javatuples Problem.java; java -ea -cp .:javatuples Problem         | JVM: serial GC, 1 CPU     |
| rs       | rustc --edition 2021 main.rs -o main; ./main                                 | compile 30 s              |
| go       | go test -c -o main.test main_test.go; ./main.test                            | compile 60 s, own caches  |
| php      | php main.php                                                                 |                           |

Cached across samples, never shared between them: C++'s precompiled header of the two includes every MultiPL-E C++
prompt starts with (built once per compiler, outside the sandbox, from no sample's text; read-only inside it; about
5x less compile time). Nothing a program produces outlives its folder.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

from ..errors import UserError
from .checks import END_OF_TESTS

COMPILE_CPU = 30.0  # CPU seconds of a compile step (bits/stdc++.h alone is ~1.5 s at -O0; a loaded machine)
WALL_FACTOR = 3.0  # a step's wall clock: this times its CPU seconds, plus 1 s
GiB = 1 << 30
JAVATUPLES = ("/usr/share/java/javatuples.jar",)  # Debian's libjavatuples-java
# The JVM's own reservations (heap, code cache, class space) must fit the address-space limit; one CPU keeps its
# thread count (GC, JIT) small and its CPU time close to the program's own
JVM = ("-XX:+UseSerialGC", "-XX:ActiveProcessorCount=1", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
       "-Xmx512m", "-Xss8m", "-XX:ReservedCodeCacheSize=64m", "-XX:CompressedClassSpaceSize=128m")


class Missing(UserError):
    """This machine lacks the language's toolchain: the language is skipped (never scored 0%)."""


@dataclasses.dataclass(frozen=True)
class Toolchain:
    language: str
    file: str  # the source file's name in the program's folder
    compile: tuple[str, ...] | None  # argv of the compile step (None: interpreted)
    run: tuple[str, ...]
    run_memory: int = 4 * GiB  # RLIMIT_AS of the run step
    compile_memory: int = 4 * GiB
    compile_cpu: float = COMPILE_CPU
    env: tuple[tuple[str, str], ...] = ()  # added to the sandbox's minimal one; "./x" is x in the program's folder
    read_paths: tuple[str, ...] = ()  # outside the sandbox's allowlist: bound into its view, allowed by Landlock

    def spec(self, run_cpu: float) -> dict:
        """The task data of this language's `command` jobs with `run_cpu` CPU seconds for the program."""
        steps = []
        if self.compile:
            steps.append(_step("compile", self.compile, self.compile_cpu, self.compile_memory, True))
        steps.append(_step("run", self.run, run_cpu, self.run_memory, False))  # the program never forks
        return {"file": self.file, "steps": steps, "env": dict(self.env)}

    def cpu(self, run_cpu: float) -> float:
        """CPU seconds of the whole job (the worker's limits scale with it)."""
        return run_cpu + (self.compile_cpu if self.compile else 0.0)


# the statement that prints END_OF_TESTS, and where it goes: after the tests' last line (js, php: top-level calls),
# or before the closing brace of the tests' main (cpp, rs: the file's last brace; java: the one before the class's)
END_LINES = {"js": ('console.log("{}");', 0), "php": ('echo "{}\\n";', 0), "cpp": ('std::puts("{}");', 1),
             "rs": ('println!("{}");', 1), "java": ('System.out.println("{}");', 2)}


def with_end_of_tests(language: str, tests: str) -> str:
    """MultiPL-E's `tests` made to print END_OF_TESTS once every check has run, so a program that exits 0 before
    its tests end (process.exit(0), exit(0), System.exit(0), std::process::exit(0)) fails (checks.command_job).
    Go needs none: its test binary runs with -test.paniconexit0. Tests not shaped as MultiPL-E writes them are
    returned unchanged (then the exit status alone decides, as in MultiPL-E's harness)."""
    if language not in END_LINES:
        return tests
    line, braces = END_LINES[language]
    line = line.format(END_OF_TESTS)
    if braces == 0:
        return tests.rstrip() + "\n" + line + "\n"
    head, tail = tests.rstrip(), ""
    for _ in range(braces):  # peel the closing braces after the tests' last statement
        if not head.endswith("}"):
            return tests
        head, tail = head[:-1].rstrip(), "\n}" + tail
    return head + "\n    " + line + tail + "\n"


def _step(what: str, argv, cpu: float, memory: int, forks: bool) -> dict:
    return {"what": what, "argv": list(argv), "cpu": cpu, "wall": cpu * WALL_FACTOR + 1.0, "memory": memory,
            "forks": forks}


def which(name: str) -> str | None:
    """`name` on PATH, else in ~/.cargo/bin (rustup's default, often not on a service's PATH). Links are kept:
    rustup's proxies are one binary that tells the tools apart by the name it was started by."""
    return shutil.which(name) or shutil.which(name, path=os.path.expanduser("~/.cargo/bin"))


def _need(name: str, package: str) -> str:
    path = which(name)
    if path is None:
        raise Missing(f"{name} not found on PATH or in ~/.cargo/bin; install {package}")
    return path


def _js(cache: str | None) -> Toolchain:
    # node reads OpenSSL's configuration at start and stops when it is unreadable (Landlock without the view)
    return Toolchain("js", "main.js", None, (os.path.realpath(_need("node", "nodejs")), "main.js"),
                     env=(("OPENSSL_CONF", "/dev/null"),))


CPP_FLAGS = ("-std=c++17", "-O0")
PCH_HEADER = "#include<assert.h>\n#include<bits/stdc++.h>\n"  # the first two lines of every MultiPL-E C++ prompt


def _cpp(cache: str | None) -> Toolchain:
    gxx = os.path.realpath(_need("g++", "g++"))
    pch = _precompiled(gxx, cache) if cache else None
    flags, read = (("-Winvalid-pch", "-include", pch), (os.path.dirname(pch),)) if pch else ((), ())
    return Toolchain("cpp", "main.cpp", (gxx, *CPP_FLAGS, *flags, "main.cpp", "-o", "main"), ("./main",),
                     run_memory=2 * GiB, read_paths=read)


def _precompiled(gxx: str, cache: str) -> str | None:
    """The header PCH_HEADER, precompiled for this compiler and CPP_FLAGS under `cache` (built on first use; the
    compiler picks <header>.gch up through `-include <header>`); None when it cannot be built (then every sample
    compiles the headers itself)."""
    version = subprocess.run([gxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([gxx, version, *CPP_FLAGS, PCH_HEADER]).encode()).hexdigest()[:16]
    folder = os.path.join(cache, "multipl-e-pch", key)
    header = os.path.join(folder, "multipl-e.h")
    if os.path.exists(header + ".gch"):
        return header
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False) as f:
            f.write(PCH_HEADER)
        os.chmod(f.name, 0o644)
        os.replace(f.name, header)
        gch = f"{header}.{os.getpid()}.tmp"
        r = subprocess.run([gxx, *CPP_FLAGS, "-x", "c++-header", header, "-o", gch], capture_output=True,
                           timeout=600)
        if r.returncode != 0:
            return None
        os.chmod(gch, 0o644)
        os.replace(gch, header + ".gch")  # atomic: a concurrent evaluator sees the old state or the whole file
        return header
    except (OSError, subprocess.SubprocessError):
        return None


def _java(cache: str | None) -> Toolchain:
    javac, java = (os.path.realpath(_need(n, "a JDK (openjdk-17-jdk-headless)")) for n in ("javac", "java"))
    jar = next((j for j in JAVATUPLES if os.path.exists(j)), None)
    if jar is None:  # every MultiPL-E Java prompt imports org.javatuples
        raise Missing(f"the org.javatuples jar ({', '.join(JAVATUPLES)}) is missing and every Java prompt imports it; "
                      "install libjavatuples-java")
    home = os.path.dirname(os.path.dirname(java))  # .../jvm/java-17-openjdk-amd64
    # Debian links the files of home/conf to /etc/java-17-openjdk: that folder too
    links = [os.path.realpath(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(home, "conf")) for f in fs
             if os.path.islink(os.path.join(d, f))]
    conf = (os.path.commonpath(links),) if links else ()
    return Toolchain("java", "Problem.java",
                     (javac, *(f"-J{o}" for o in JVM), "-cp", jar, "-d", ".", "Problem.java"),
                     (java, *JVM, "-ea", "-cp", f".:{jar}", "Problem"),
                     read_paths=(home, *conf, os.path.realpath(jar)))


def _rs(cache: str | None) -> Toolchain:
    proxy = _need("rustc", "rustc (rustup or Debian's rustc)")
    # rustup's proxy reads ~/.rustup; the sandbox runs the toolchain's own rustc and sees only its sysroot
    sysroot = subprocess.run([proxy, "--print", "sysroot"], capture_output=True, text=True, timeout=60).stdout.strip()
    rustc = os.path.join(sysroot, "bin", "rustc")
    if not sysroot or not os.path.exists(rustc):
        raise Missing(f"{proxy} --print sysroot gave no usable sysroot ({sysroot!r})")
    # the linker by its real path: /usr/bin/cc is a link through /etc/alternatives, which the sandbox does not show
    cc = os.path.realpath(_need("cc", "gcc (rustc links with it)"))
    read = () if sysroot.startswith("/usr/") else (os.path.realpath(sysroot),)
    return Toolchain("rs", "main.rs", (rustc, "--edition=2021", "-C", "opt-level=0", "-C", "debuginfo=0",
                                       "-C", f"linker={cc}", "main.rs", "-o", "main"), ("./main",), read_paths=read)


def _go(cache: str | None) -> Toolchain:
    go = os.path.realpath(_need("go", "golang-go"))
    root = os.path.dirname(os.path.dirname(go))  # GOROOT: .../go/bin/go
    # caches in the program's folder ("./": made absolute there), standard library only, nothing downloaded
    env = (("GOCACHE", "./.gocache"), ("GOPATH", "./gopath"), ("GO111MODULE", "off"), ("GOTOOLCHAIN", "local"),
           ("GOTELEMETRY", "off"), ("GOPROXY", "off"), ("CGO_ENABLED", "0"))
    read = tuple(p for p in {os.path.realpath(root)} if not p.startswith("/usr/"))
    # -test.paniconexit0 (what `go test` passes): os.Exit(0) inside a test is a failure, not a pass
    return Toolchain("go", "main_test.go", (go, "test", "-c", "-o", "main.test", "main_test.go"),
                     ("./main.test", "-test.paniconexit0"), compile_cpu=60.0, env=env, read_paths=read)


def _php(cache: str | None) -> Toolchain:
    php = os.path.realpath(_need("php", "php-cli"))
    # php.ini and conf.d, whose files link into mods-available: the whole /etc/php/<version>
    confs = tuple(p for p in glob.glob("/etc/php/*") if os.path.isdir(p))
    return Toolchain("php", "main.php", None, (php, "main.php"), read_paths=confs)


FINDERS = {"js": _js, "cpp": _cpp, "java": _java, "rs": _rs, "go": _go, "php": _php}
TITLES = {"js": "JavaScript", "cpp": "C++", "java": "Java", "rs": "Rust", "go": "Go", "php": "PHP"}


def toolchain(language: str, cache: str | None = None) -> Toolchain:
    """The toolchain of `language` on this machine; raises Missing (saying what to install) when it is absent.
    `cache`: a folder for what is built once and read by every sample (C++'s precompiled header)."""
    return FINDERS[language](cache)
