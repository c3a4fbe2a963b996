"""What a sandboxed program may read: one allowlist, enforced twice (see docs/sandbox.md).

- `build_view` (when root): the worker's own mount namespace gets a new root, a small tmpfs holding only the
  allowlist bind-mounted read-only at the same paths, a proc that hides other users' processes (hidepid=invisible)
  and the scratch tmpfs. /root, /home, the rest of /etc, /var, /run, /tmp, /work ... do not exist in it. The
  directories leading to a bound path are 0755 in the view, so an interpreter installed under /root is readable by
  the sandbox uid without any capability.
- `read_paths` (any user, Landlock): the same allowlist as Landlock read rules, applied by every program's process
  on top of whatever view it has; the only read layer that holds without root.

The allowlist: the Python installation (prefixes, every importable sys.path directory, this package), the system
directories shared libraries and locales come from (/usr, /lib*, /bin, /sbin), six /etc files the C library reads,
the harmless devices, and CPU topology (/sys/devices/system/cpu, /proc/cpuinfo) that numpy/torch read at import.
"""
from __future__ import annotations

import os
import sys

try:
    from .. import _sandbox
except ImportError:  # not built: no view (sandbox.py reports it); the read allowlist still feeds nothing
    _sandbox = None

SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/passwd", "/etc/group",
             "/etc/nsswitch.conf")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
CPU_INFO = ("/sys/devices/system/cpu", "/proc/cpuinfo")
VIEW_SIZE = 1 << 20  # the view's own tmpfs holds only empty directories and mount points


def python_dirs() -> list[str]:
    """Folders the interpreter imports from: its prefixes, this package, every existing sys.path folder but "/", the
    working folder and the folder holding this package when that is a source checkout (the pool puts it on
    PYTHONPATH only to find this package; binding it would show the whole checkout). Nested entries are dropped
    (their parent is bound already)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    checkout = os.path.dirname(package)
    skip = {"/", os.getcwd()} | (set() if _under_any(checkout, prefixes, strict=False) else {checkout})
    cands = [*prefixes, package, *(p for p in sys.path if p and os.path.isabs(p))]
    return _outermost({os.path.normpath(p) for p in cands if os.path.isdir(p)} - skip)


def read_paths(pydirs: list[str], in_view: bool = False) -> list[str]:
    """Every existing path of the allowlist (Landlock opens each, following symlinks such as /lib -> usr/lib).
    Inside the view /etc and /dev hold only the allowed files, so one rule each covers them (each rule costs every
    program's process some microseconds)."""
    etc, dev = (("/etc",), ("/dev",)) if in_view else (ETC_FILES, DEVICES)
    return [p for p in (*pydirs, *SYSTEM_DIRS, *etc, *dev, *CPU_INFO) if os.path.exists(p)]


def build_view(new_root: str, scratch: str, scratch_size: int, pydirs: list[str]) -> None:
    """Pivot the calling process (root, already in its own mount namespace) into a minimal root built on
    `new_root` (an empty folder). `scratch` (a path under the old root, e.g. the worker's temp folder) becomes a
    size-capped tmpfs at the same path inside the view. Raises OSError when the kernel refuses a step."""
    s = _sandbox
    ro = s.MS_BIND | s.MS_REMOUNT | s.MS_RDONLY | s.MS_NOSUID
    s.mount(None, "/", None, s.MS_REC | s.MS_PRIVATE, None)  # nothing we mount propagates back to the host
    s.mount("tmpfs", new_root, "tmpfs", s.MS_NOSUID | s.MS_NODEV, f"size={VIEW_SIZE},mode=0755")
    old_umask = os.umask(0o022)
    try:
        def bind(path: str, dev: bool = False) -> None:
            target = new_root + path
            if os.path.islink(path):  # e.g. /lib -> usr/lib, /etc/localtime -> /usr/share/zoneinfo/...
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.symlink(os.readlink(path), target)
                return
            if os.path.isdir(path):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
            s.mount(path, target, None, s.MS_BIND | s.MS_REC, None)
            s.mount(None, target, None, ro if dev else ro | s.MS_NODEV, None)

        for path in bound(pydirs):
            bind(path)
        for dev in DEVICES:
            if os.path.exists(dev):
                bind(dev, dev=True)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{new_root}/dev/{name}")
        os.makedirs(new_root + "/proc")
        flags = s.MS_NOSUID | s.MS_NODEV | s.MS_NOEXEC
        try:
            s.mount("proc", new_root + "/proc", "proc", flags, "hidepid=invisible")
        except OSError:  # kernels before 5.8 know only the number
            s.mount("proc", new_root + "/proc", "proc", flags, "hidepid=2")
        os.makedirs(new_root + scratch)
        s.mount("tmpfs", new_root + scratch, "tmpfs", s.MS_NOSUID | s.MS_NODEV, f"size={scratch_size},mode=0711")
        os.mkdir(new_root + "/.old-root")
    finally:
        os.umask(old_umask)
    s.pivot_root(new_root, new_root + "/.old-root")
    os.chdir("/")
    s.umount("/.old-root", s.MNT_DETACH)
    os.rmdir("/.old-root")
    s.mount(None, "/", None, s.MS_REMOUNT | s.MS_RDONLY | s.MS_NOSUID | s.MS_NODEV, None)


def bound(pydirs: list[str]) -> list[str]:
    """The host paths build_view binds, each with everything beneath it."""
    return _outermost(p for p in (*pydirs, *SYSTEM_DIRS, *ETC_FILES, CPU_INFO[0]) if os.path.lexists(p))


def _outermost(paths) -> list[str]:
    out: list[str] = []
    for p in sorted(paths):
        if not _under_any(p, out, strict=False):
            out.append(p)
    return out


def _under_any(path: str, parents, strict: bool) -> bool:
    """Is `path` equal to (unless strict) or beneath one of `parents`?"""
    for q in parents:
        if path.startswith(q.rstrip("/") + "/") or (not strict and path == q):
            return True
    return False
