"""Removing a program's folder, whatever the program left in it.

A program may leave folders nested thousands deep, folders without read, write or search permission, symlinks to
anything, names of any bytes. `shutil.rmtree` recurses once per level (RecursionError past ~1000 levels on Python
3.11) and its error hook cannot repair a folder it cannot list; one RecursionError in the worker killed the worker,
and the leftover tree then crashed every later evaluation at its start. `remove_tree` walks with directory
descriptors, one level open at a time and no recursion, never follows a symlink, gives itself the permissions it needs
on what it owns, and never raises.

    remove_tree("/tmp/wizardcoder-sandbox-123-abcd/job7")   # True when it is gone
"""
from __future__ import annotations

import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str) -> bool:
    """Remove `path` (a folder and everything beneath it, or a single file or link, never followed); True when
    nothing is left there. Whatever cannot be removed stays, and the answer is False; it never raises."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return True
        _empty(path)
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.lexists(path)


def _open_dir(name: str, dir_fd: int | None) -> int:
    """A descriptor on folder `name` (never through a symlink), after making it ours to list and change when it was
    not (mode 0700: the program's folders are the sandbox uid's, or ours)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{handle}", 0o700)  # chmod through an O_PATH descriptor: no symlink race
        finally:
            os.close(handle)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o700)  # write and search rights to remove what is inside
    except OSError:
        pass
    return fd


def _first_subfolder(fd: int, stuck: set) -> str | None:
    """Unlink every entry of the folder `fd` that is not a folder; return the name of one subfolder not in
    `stuck` ((st_dev, st_ino) of folders that could not be removed), or None when none is left."""
    sub = None
    dev = os.fstat(fd).st_dev
    with os.scandir(fd) as entries:
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if sub is None and (dev, e.inode()) not in stuck:
                        sub = e.name
                else:
                    os.unlink(e.name, dir_fd=fd)
            except OSError:
                pass
    return sub


def _empty(path: str) -> None:
    """Remove everything beneath folder `path`, depth first, holding one descriptor at a time: down into the first
    subfolder, back up through ".." (checked to be the folder we came from) once it is empty."""
    fd = _open_dir(path, None)
    above: list[tuple[str, tuple[int, int], tuple[int, int]]] = []  # (name, parent id, own id) of each level
    stuck: set[tuple[int, int]] = set()
    try:
        while True:
            sub = _first_subfolder(fd, stuck)
            here = os.fstat(fd)
            if sub is not None:
                try:
                    child = _open_dir(sub, fd)
                except OSError:
                    st = os.stat(sub, dir_fd=fd, follow_symlinks=False)
                    stuck.add((st.st_dev, st.st_ino))
                    continue
                own = os.fstat(child)
                above.append((sub, (here.st_dev, here.st_ino), (own.st_dev, own.st_ino)))
                os.close(fd)
                fd = child
                continue
            if not above:
                return
            name, parent_id, own_id = above.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != parent_id:
                raise OSError(f"{path}: a folder moved during its removal")
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                stuck.add(own_id)
    finally:
        os.close(fd)
