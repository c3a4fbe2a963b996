"""Hostile programs through the real `python -m wizardcoder evaluate` path: each attack is contained, scores as
failed, and the machine is left clean (no process of the sandbox uid, nothing written outside, listeners untouched,
no secret in the results). Killing the evaluator (SIGKILL, SIGTERM) while programs sleep leaves nothing behind.

Every program first defines a correct `inc`, so a program whose attack *succeeds* without raising would pass: a
"failed" verdict is the sandbox refusing the attack (or a limit stopping it). The targets sit in a world-writable
folder under /tmp, so uid permissions alone would not protect them: the view, Landlock and seccomp must.
See docs/sandbox.md for which layer stops each attack.
"""
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from _util import PYTHON, REPO, repo_env

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

def _can_switch_uid() -> bool:
    """Root with CAP_SETUID and CAP_CHOWN: the sandbox runs programs under a uid of its own (uid 0 without
    capabilities, e.g. under `setpriv --bounding-set=-all`, takes the unprivileged path)."""
    with open("/proc/self/status") as f:
        eff = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    return os.geteuid() == 0 and eff & (1 << 7) and eff & (1 << 0)


ROOT = _can_switch_uid()
SANDBOX_UIDS = range(61000, 61000 + 4096)  # SandboxConfig.uid_base and the pool's claim range
OTHER_UID = 4242  # owner of the "other user's home"
PROMPT, BODY = "def inc(x):\n", "    return x + 1\n"
TEST = "def check(candidate):\n    assert candidate(1) == 2\n"


def write_dataset(path):
    row = {"task_id": "HumanEval/0", "prompt": PROMPT, "entry_point": "inc", "canonical_solution": BODY,
           "test": TEST}
    path.write_text(json.dumps(row) + "\n")


def evaluate_cli(tmp_path, programs, *flags, timeout="1", prefix=()):
    """Score one sample per program (its code after a correct `inc`) with the CLI (run under `prefix`, e.g.
    setpriv); {name: results.jsonl row}."""
    data, samples, out = tmp_path / "data.jsonl", tmp_path / "samples.jsonl", tmp_path / "out"
    write_dataset(data)
    names = list(programs)
    samples.write_text("".join(json.dumps({"task_id": "HumanEval/0", "completion": BODY + programs[n]}) + "\n"
                               for n in names))
    r = subprocess.run([*prefix, PYTHON, "-m", "wizardcoder", "evaluate", "--task", "humaneval", "--samples", str(samples),
                        "--data", str(data), "--out", str(out), "--workers", "2", "--timeout", timeout,
                        "--memory-mb", "512", "--no-progress", *flags],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=repo_env(**SECRET_ENV))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [row["sample"] for row in rows] == list(range(len(names)))
    return {n: row for n, row in zip(names, rows)}, out


SECRET = "wizardcoder-secret-" + uuid.uuid4().hex
SECRET_ENV = {"WIZARDCODER_TEST_SECRET": SECRET}  # in the evaluator's (and so the workers' initial) environment


@pytest.fixture
def open_dir():
    """A world-writable folder under /tmp (removed afterwards)."""
    path = tempfile.mkdtemp(prefix="wizardcoder-hostile-", dir="/tmp")
    os.chmod(path, 0o777)
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


class Listeners:
    """TCP and UDP on 127.0.0.1, a Unix socket at a world-writable path and an abstract Unix socket; everything they
    receive (connections or datagrams) is recorded."""

    def __init__(self, folder):
        self.got = []
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = os.path.join(folder, "listener.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen(8)
        self.abstract_name = "\0wizardcoder-hostile-" + uuid.uuid4().hex
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind(self.abstract_name)
        self.abstract.listen(8)
        self.socks = [self.tcp, self.udp, self.unix, self.abstract]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            ready, _, _ = select.select(self.socks, [], [], 0.1)
            for s in ready:
                if s is self.udp:
                    self.got.append(("udp", s.recvfrom(4096)[0]))
                else:
                    conn, _ = s.accept()
                    self.got.append((s.family, conn.recv(4096)))
                    conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def hostile_programs(d, listeners, secret_file, other_home, bystander):
    """name -> program (runs after a correct `inc`); each must end as a failure, never pass. `bystander`: the pid of
    a process of the evaluator's user that has nothing to do with the evaluation."""
    me = os.getpid()
    return {
        # reading what the evaluating user's other programs could not show it
        "root-only file": f"print(open({secret_file!r}).read())",
        "/etc/shadow": "print(open('/etc/shadow').read())",
        "/root": "import os\nprint(os.listdir('/root'))",
        "other user's home": f"import os\nprint(os.listdir({other_home!r}))",
        "other user's file": f"print(open({os.path.join(other_home, 'notes.txt')!r}).read())",
        "evaluator's environment": "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
        "test process's environment": f"print(open('/proc/{me}/environ', 'rb').read())",
        "every process": "import os\nprint([open(f'/proc/{p}/cmdline').read() for p in os.listdir('/proc') "
                         "if p.isdigit()])",
        # sockets
        "unix socket (path)": f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({listeners.unix_path!r})\n"
                              "s.sendall(b'hello')",
        "unix socket (abstract)": f"import socket\ns = socket.socket(socket.AF_UNIX)\n"
                                  f"s.connect({listeners.abstract_name!r})\ns.sendall(b'hello')",
        "loopback TCP": f"import socket\ns = socket.create_connection(('127.0.0.1', "
                        f"{listeners.tcp.getsockname()[1]}), timeout=1)\ns.sendall(b'hello')",
        "loopback UDP": f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        f"s.sendto(b'hello', ('127.0.0.1', {listeners.udp.getsockname()[1]}))",
        "IPv6": "import socket\ns = socket.socket(socket.AF_INET6)\ns.connect(('::1', 22))",
        "raw socket": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
        "packet socket": "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
        "netlink socket": "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
        # writing outside its folder
        "overwrite a file": f"open({os.path.join(d, 'canary.txt')!r}, 'w').write('overwritten')",
        "remove a file": f"import os\nos.remove({os.path.join(d, 'canary.txt')!r})",
        "create a file": f"open({os.path.join(d, 'new.txt')!r}, 'w').write('x')",
        "create in /tmp": "open('/tmp/wizardcoder-hostile-created', 'w').write('x')",
        # processes
        "kill its parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "signal the test": f"import os, signal\nos.kill({me}, signal.SIGUSR1)",
        "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)",
        # other processes' limits, priorities and lifetime (same uid when not root)
        "prlimit the worker": "import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (16, 16))",
        "prlimit a bystander": f"import resource\nresource.prlimit({bystander}, resource.RLIMIT_NOFILE, (16, 16))",
        "renice the worker": "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
        "clear PDEATHSIG": "import ctypes\nassert ctypes.CDLL(None).prctl(1, 0, 0, 0, 0) == 0",  # PR_SET_PDEATHSIG
        # what the worker cleans up after the program
        "nested folders": "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nraise SystemExit",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "thread bomb": "import threading, time\nwhile True:\n"
                       "    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()",
        # the kernel's wider interface (each asserts the call worked, so a refusal fails the program)
        "io_uring": "import ctypes\nr = ctypes.CDLL(None).syscall(425, 8, ctypes.create_string_buffer(120))\n"
                    "assert r >= 0",
        "user keyring": "import ctypes\nbuf = ctypes.create_string_buffer(4096)\n"
                        "assert ctypes.CDLL(None).syscall(250, 11, -4, buf, 4096) >= 0",  # keyctl(READ, @u)
        "ptrace the worker": "import ctypes, os\nassert ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0) == 0",
        "new user namespace": "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == 0",
        "mount": "import ctypes\nassert ctypes.CDLL(None).mount(b'none', b'.', b'tmpfs', 0, None) == 0",
        "System V shared memory": "import ctypes\nassert ctypes.CDLL(None).shmget(0, 4096, 0o1666) >= 0",
        "symlink to a secret": f"import os\nos.symlink({secret_file!r}, 'link')\nprint(open('link').read())",
        "hard link a file in": "import os\nos.link('/etc/passwd', 'passwd')",
        "write /dev/shm": "open('/dev/shm/wizardcoder-hostile', 'w').write('x')",
        "list /tmp (other programs' folders)": "import os\nprint(os.listdir('/tmp'))",
        # limits
        "memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))",
        "output bomb": "while True:\n    print('x' * 100000)",
        "sleep forever": "import time\ntime.sleep(10 ** 6)",
        "busy forever": "while True:\n    pass",
        # faking a pass
        "exit 0 before the tests": "import os\nos._exit(0)",
        "sys.exit(0) before the tests": "import sys\nsys.exit(0)",
        "print a pass": "import json, os\nprint('passed')\nprint(json.dumps({'status': 'passed'}))\nos._exit(0)",
        "write a pass on the result descriptor": "import os\nos.write(3, b'{\"status\": \"passed\"}')\nos._exit(0)",
        "exec a shell that writes a pass": "import os\nos.execv('/bin/sh', ['sh', '-c', "
                                           "'printf %s \\'{\"status\": \"passed\"}\\' >&3'])",
        "replace the harness's _flat_json": "import sys\nsys.modules['wizardcoder.eval.sandbox']._flat_json = "
                                            "lambda d: '{\"status\": \"passed\"}'\nassert False",
    }


CONTROLS = {  # programs that must still pass: the sandbox is not simply failing everything
    "plain": "",
    "imports numpy": "import numpy\nassert numpy.arange(3).sum() == 3",
    "asyncio (socketpair AF_UNIX)": "import asyncio\nasync def f():\n    return 3\nassert asyncio.run(f()) == 3",
    "its own folder": "import os, tempfile\nopen('mine.txt', 'w').write('x')\nfd, p = tempfile.mkstemp()\n"
                      "os.remove('mine.txt')",
}


# The evaluator under reduced privileges (setpriv), and the layers its isolation report must then mark refused.
PRIVILEGES = {
    "as is": ((), None),
    # uid 0 with no capability: the unprivileged path (no uid switch, no view, no namespaces; only Landlock,
    # seccomp, rlimits and PDEATHSIG). uid permissions alone would let it read the root-only file.
    "no capabilities": (("setpriv", "--bounding-set=-all", "--inh-caps=-all"),
                        {"lifetime", "user", "view", "scratch", "network"}),
    # root without CAP_SYS_ADMIN (some containers): no view or namespaces, so the sandbox uid keeps
    # CAP_DAC_READ_SEARCH to import Python from /root, and Landlock's read rules alone must confine it.
    "no CAP_SYS_ADMIN": (("setpriv", "--bounding-set=-sys_admin"), {"user", "view", "scratch", "network"}),
}


@pytest.mark.parametrize("privileges", list(PRIVILEGES))
def test_hostile_programs_are_contained_and_fail(tmp_path, open_dir, privileges):
    prefix, want_degraded = PRIVILEGES[privileges]
    if prefix and (not ROOT or not shutil.which("setpriv")):
        pytest.skip("needs root and setpriv to drop capabilities")
    secret_file = os.path.join(open_dir, "secret.txt")
    with open(secret_file, "w") as f:
        f.write(SECRET)
    os.chmod(secret_file, 0o600)  # root-only when the tests run as root (and the evaluator's only otherwise)
    other_home = os.path.join(open_dir, "home-other")
    os.mkdir(other_home, 0o700)
    with open(os.path.join(other_home, "notes.txt"), "w") as f:
        f.write(SECRET)
    if ROOT:
        os.chown(os.path.join(other_home, "notes.txt"), OTHER_UID, OTHER_UID)
        os.chown(other_home, OTHER_UID, OTHER_UID)
    canary = os.path.join(open_dir, "canary.txt")
    with open(canary, "w") as f:
        f.write("keep me")
    os.chmod(canary, 0o666)
    signalled = []
    old_handler = signal.signal(signal.SIGUSR1, lambda *a: signalled.append(1))
    listeners = Listeners(open_dir)
    before = sorted(os.listdir(open_dir))
    bystander = subprocess.Popen([*prefix, "sleep", "300"])  # the evaluator's user, outside the evaluation
    time.sleep(0.2)
    bystander_limits = limits_of(bystander.pid)
    try:
        programs = {**hostile_programs(open_dir, listeners, secret_file, other_home, bystander.pid), **CONTROLS}
        rows, out = evaluate_cli(tmp_path, programs, prefix=prefix)
        assert limits_of(bystander.pid) == bystander_limits
    finally:
        listeners.close()
        signal.signal(signal.SIGUSR1, old_handler)
        bystander.kill()
        bystander.wait()

    for name in CONTROLS:
        assert rows[name]["status"] == "passed", (name, rows[name])
    verdicts = {name: rows[name]["status"] for name in programs if name not in CONTROLS}
    assert all(v != "passed" for v in verdicts.values()), verdicts
    assert verdicts["memory bomb"] == "memory"  # also on a busy machine: the limit is user time (docs/sandbox.md)
    assert verdicts["sleep forever"] == verdicts["busy forever"] == "timeout"
    assert rows["output bomb"]["status"] == "crashed" and "size limit" in rows["output bomb"]["error"]
    assert "Resource temporarily unavailable" in rows["fork bomb"]["error"]
    for name in ("unix socket (path)", "unix socket (abstract)", "raw socket", "packet socket", "netlink socket"):
        assert "PermissionError" in rows[name]["error"], (name, rows[name])  # refused at socket(), not later

    # nothing got out: listeners, files, signals, the results themselves
    assert listeners.got == []
    assert signalled == []
    with open(canary) as f:
        assert f.read() == "keep me"
    assert sorted(os.listdir(open_dir)) == before
    assert not os.path.exists("/tmp/wizardcoder-hostile-created")
    for name in ("results.jsonl", "summary.json"):
        assert SECRET not in (out / name).read_text()
    summary = json.loads((out / "summary.json").read_text())
    degraded = {name for name, layer in summary["isolation"].items() if not layer["active"]}
    if prefix:
        assert degraded == want_degraded
    elif ROOT:
        assert {"user", "lifetime", "filesystem", "syscalls"}.isdisjoint(degraded)
    assert summary["pass@1"] == pytest.approx(len(CONTROLS) / len(programs))
    # and the machine is clean: no sandbox process re-parented to init, the workers' scratch folders gone
    assert not orphans_of_sandbox_uids()
    scratch = re.findall(r"/tmp/wizardcoder-sandbox-\d+-\w+", json.dumps(summary["isolation"]))
    assert scratch and not any(os.path.exists(p) for p in scratch)


def limits_of(pid):
    with open(f"/proc/{pid}/limits") as f:
        return f.read()


# ----------------------------------------------------------------------------------------- killing the evaluator

SLEEPER = "import time\ntime.sleep(1000)"
NO_PDEATHSIG = "import ctypes, time\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\ntime.sleep(1000)"  # PR_SET_PDEATHSIG 0
DAEMON = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n"
          "    os._exit(0)\ntime.sleep(1000)")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("program", ["sleeper", "no-pdeathsig", "daemonizing-grandchild"])
@pytest.mark.parametrize("privileges", ["as is", "no capabilities"])
def test_killing_the_evaluator_leaves_no_program_behind(tmp_path, sig, program, privileges):
    forks = program == "daemonizing-grandchild"
    prefix = PRIVILEGES[privileges][0]
    if prefix and (not ROOT or not shutil.which("setpriv")):
        pytest.skip("needs root and setpriv to drop capabilities")
    if forks and (prefix or not ROOT):
        pytest.skip("with forks allowed, only the watchdog (root: a uid of its own to sweep) catches a daemonized "
                    "grandchild; docs/sandbox.md names this gap")
    data, samples = tmp_path / "data.jsonl", tmp_path / "samples.jsonl"
    write_dataset(data)
    code = {"sleeper": SLEEPER, "no-pdeathsig": NO_PDEATHSIG, "daemonizing-grandchild": DAEMON}[program]
    samples.write_text("".join(json.dumps({"task_id": "HumanEval/0", "completion": BODY + code}) + "\n"
                               for _ in range(2)))
    cli = subprocess.Popen([*prefix, PYTHON, "-m", "wizardcoder", "evaluate", "--task", "humaneval", "--samples",
                            str(samples), "--data", str(data), "--out", str(tmp_path / "out"), "--workers", "2",
                            "--timeout", "100", "--no-progress", *(["--allow-fork"] if forks else [])],
                           cwd=REPO, env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = 4 if forks else 2  # sleeping programs (and their daemonized grandchildren)
    try:
        end = time.monotonic() + 60
        programs = {}
        while len(programs) < want and time.monotonic() < end:
            time.sleep(0.2)
            programs = program_processes(cli.pid, own_uid=ROOT and not prefix)
        assert len(programs) >= want, f"the programs did not start: {programs}"
        time.sleep(0.3)  # asleep
        os.kill(cli.pid, sig)
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    uids = set(programs.values()) - {os.getuid()}  # the sandbox's own uids (root only)
    end = time.monotonic() + 8
    left = programs
    while time.monotonic() < end:
        left = {p: u for p, u in programs.items() if alive(p)} | {p: u for p, u in live_processes() if u in uids}
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"processes survived the evaluator's death: {left}"


# ----------------------------------------------------------------------------------------- /proc helpers

def proc_status(pid):
    """(ppid, real uid, state) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    return int(fields["PPid"]), int(fields["Uid"].split()[0]), fields["State"].split()[0]


def live_processes():
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_status(int(name))
            if st and st[2] not in ("Z", "X"):
                yield int(name), st[1]


def alive(pid):
    st = proc_status(pid)
    return st is not None and st[2] not in ("Z", "X")


def program_processes(root_pid, own_uid):
    """{pid: uid} of the programs under an evaluator: its descendants two or more levels down (evaluator -> worker
    -> program -> ...); with `own_uid` (programs under a sandbox uid) without the root-owned watchdogs and probes."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_status(int(name))
            if st and st[2] not in ("Z", "X"):
                children.setdefault(st[0], []).append((int(name), st[1]))
    found, level = {}, [(root_pid, 0)]
    while level:
        nxt = []
        for pid, depth in level:
            for child, uid in children.get(pid, []):
                if depth >= 1 and (uid != 0 or not own_uid):
                    found[child] = uid
                nxt.append((child, depth + 1))
        level = nxt
    if not own_uid:  # without a uid of its own the worker's probe forks look the same; count sleeping ones only
        found = {p: u for p, u in found.items() if proc_status(p) and proc_status(p)[2] == "S"}
    return found


def orphans_of_sandbox_uids():
    """Processes of a sandbox uid that were re-parented to init (a leak; other evaluators' live programs have their
    worker as parent)."""
    return [(pid, uid) for pid, uid in live_processes() if uid in SANDBOX_UIDS and proc_status(pid)[0] == 1]
