/* wizardcoder._sandbox: the kernel mechanisms the evaluation sandbox needs and Python's os module lacks.
 *
 * Each function wraps one mechanism and raises OSError (with errno) when the kernel refuses it, so the Python side
 * (wizardcoder/eval/sandbox.py) can probe what this machine permits once, fall back to the next best layer, and
 * report what isolation was in force:
 *
 *   unshare_net()            unshare(CLONE_NEWNET): a network namespace with only a downed loopback (needs
 *                            CAP_SYS_ADMIN, or an unprivileged user namespace).
 *   private_tmpfs(path, size)
 *                            unshare(CLONE_NEWNS) and mount a size-capped tmpfs on `path` (the scratch area).
 *   private_tmpfs(path, size)
 *                            unshare(CLONE_NEWNS) and mount a size-capped tmpfs on `path` (the scratch area).
 *   no_new_privs()           prctl(PR_SET_NO_NEW_PRIVS): no setuid binaries, no file capabilities; needed by
 *                            seccomp and Landlock for an unprivileged process.
 *   drop_to(uid, gid, keep_read)
 *                            setresgid/setresuid to an unprivileged id, no groups; keep_read keeps only
 *                            CAP_DAC_READ_SEARCH (read any file, write none) for an interpreter under /root.
 *   subreaper()              prctl(PR_SET_CHILD_SUBREAPER): orphans of our children are reparented to us, so the
 *                            worker can reap (and count) everything a program left behind.
 *   pdeathsig(sig)           prctl(PR_SET_PDEATHSIG): the kernel sends `sig` when the parent thread dies.
 *   seccomp(pid, block_fork, block_net)
 *                            a seccomp-BPF filter: signals only to `pid` itself or its own process group (kill,
 *                            tgkill, rt_sigqueueinfo), no tkill / pidfd signals / ptrace / process_vm_* /
 *                            unshare / setns / mount; with block_fork no new processes (fork, vfork, clone without
 *                            CLONE_THREAD; clone3 answers ENOSYS so threads fall back to clone); with block_net
 *                            socket() only for AF_UNIX. Refused calls return an errno, never kill the process.
 *   landlock_abi()           the kernel's Landlock ABI version, or 0 when Landlock is unavailable.
 *   landlock(paths, block_tcp, scope_signals)
 *                            Landlock: writes (create, remove, rename, truncate, write-open) only beneath `paths`;
 *                            with block_tcp (ABI >= 4) no TCP bind/connect; with scope_signals (ABI >= 6) no
 *                            signals to processes outside this domain. Returns the ABI used.
 *
 * Tested on Linux 6.x x86_64 (root and unprivileged). Syscall numbers come from <sys/syscall.h>, so aarch64 builds
 * too (it has no fork/vfork syscalls, only clone).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---------------------------------------------------------------- namespaces, prctl */

static PyObject *sb_unshare_net(PyObject *self, PyObject *noargs) {
    if (unshare(CLONE_NEWNET) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* A mount namespace of our own (mounts private, so nothing propagates back) with a size-capped tmpfs on `path`:
 * the scratch space for programs' temporary folders, fast (no disk) and bounded (a program cannot fill the disk). */
static PyObject *sb_private_tmpfs(PyObject *self, PyObject *args) {
    const char *path;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "sK", &path, &size)) return NULL;
    if (unshare(CLONE_NEWNS) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    char opts[64];
    snprintf(opts, sizeof(opts), "size=%llu,mode=0711", size);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    Py_RETURN_NONE;
}

static PyObject *sb_no_new_privs(PyObject *self, PyObject *noargs) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* Switch to uid/gid for good (real, effective, saved), no supplementary groups. With keep_read, keep exactly one
 * capability, CAP_DAC_READ_SEARCH, so the program can still read (never write) an interpreter installed under a
 * private home such as /root; every other capability is dropped. */
static PyObject *sb_drop_to(PyObject *self, PyObject *args) {
    int uid, gid, keep_read;
    if (!PyArg_ParseTuple(args, "iip", &uid, &gid, &keep_read)) return NULL;
    if (keep_read && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (setgroups(0, NULL) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (setresgid(gid, gid, gid) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (setresuid(uid, uid, uid) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (keep_read) {
        struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof(data));
        data[0].effective = data[0].permitted = 1u << CAP_DAC_READ_SEARCH;
        if (syscall(SYS_capset, &hdr, data) != 0) return PyErr_SetFromErrno(PyExc_OSError);
        prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    Py_RETURN_NONE;
}

static PyObject *sb_subreaper(PyObject *self, PyObject *noargs) {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *sb_pdeathsig(PyObject *self, PyObject *args) {
    int sig;
    if (!PyArg_ParseTuple(args, "i", &sig)) return NULL;
    if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- seccomp */

#if defined(__x86_64__)
#define SB_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SB_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#define SB_AUDIT_ARCH 0
#endif

#define SB_LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define SB_LOAD_ARG0_LO BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]))
#define SB_RET(v) BPF_STMT(BPF_RET | BPF_K, (v))
#define SB_ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))

#define SB_MAX_INSNS 160

struct prog {
    struct sock_filter f[SB_MAX_INSNS];
    int n;
};

static void emit(struct prog *p, struct sock_filter s) {
    if (p->n < SB_MAX_INSNS) p->f[p->n++] = s;
    else p->n = SB_MAX_INSNS + 1; /* overflow: caught before install */
}

/* if nr == `nr` return `ret` (reloads nr afterwards is not needed: accumulator still holds nr on the false path) */
static void deny_nr(struct prog *p, long nr, uint32_t ret) {
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 0, 1));
    emit(p, (struct sock_filter)SB_RET(ret));
}

/* if nr == `nr`: allow when the low 32 bits of arg0 equal one of `ok` (n_ok <= 3), else return `ret`. The accumulator
 * is reloaded with nr on the way out so the chain can go on. */
static void arg0_in(struct prog *p, long nr, const uint32_t *ok, int n_ok, uint32_t ret) {
    /* jeq nr ? next : skip the whole block (2 + 2 * n_ok + 1 insns) */
    int block = 1 + n_ok + 2;
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 0, block));
    emit(p, (struct sock_filter)SB_LOAD_ARG0_LO);
    for (int i = 0; i < n_ok; i++)
        emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ok[i], (uint8_t)(n_ok - i), 0));
    emit(p, (struct sock_filter)SB_RET(ret));
    emit(p, (struct sock_filter)SB_RET(SECCOMP_RET_ALLOW));
    /* landing point of the skip: accumulator still holds nr because the block was not entered */
}

static PyObject *sb_seccomp(PyObject *self, PyObject *args) {
    int pid, block_fork, block_net;
    if (!PyArg_ParseTuple(args, "ipp", &pid, &block_fork, &block_net)) return NULL;
    if (SB_AUDIT_ARCH == 0) {
        errno = ENOSYS;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct prog p = {.n = 0};
    emit(&p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SB_AUDIT_ARCH, 1, 0));
    emit(&p, (struct sock_filter)SB_RET(SECCOMP_RET_KILL_PROCESS));
    emit(&p, (struct sock_filter)SB_LOAD_NR);
#if defined(__x86_64__)
    /* x32 syscalls (nr | 0x40000000) would bypass the number checks */
    emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));
    emit(&p, (struct sock_filter)SB_RET(SB_ERRNO(ENOSYS)));
#endif

    /* signals: only to itself (pid), its own group (0 or -pid as kill's argument) */
    uint32_t self_targets[3] = {(uint32_t)pid, 0u, (uint32_t)(-pid)};
    arg0_in(&p, SYS_kill, self_targets, 3, SB_ERRNO(EPERM));
    arg0_in(&p, SYS_tgkill, self_targets, 1, SB_ERRNO(EPERM));
    arg0_in(&p, SYS_rt_sigqueueinfo, self_targets, 1, SB_ERRNO(EPERM));
    arg0_in(&p, SYS_rt_tgsigqueueinfo, self_targets, 1, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_tkill, SB_ERRNO(EPERM));
#ifdef SYS_pidfd_send_signal
    deny_nr(&p, SYS_pidfd_send_signal, SB_ERRNO(EPERM));
#else
    deny_nr(&p, 424, SB_ERRNO(EPERM));
#endif
    deny_nr(&p, SYS_ptrace, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_process_vm_readv, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_process_vm_writev, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_unshare, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_setns, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_mount, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_umount2, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_pivot_root, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_chroot, SB_ERRNO(EPERM));

    if (block_fork) {
#ifdef SYS_fork
        deny_nr(&p, SYS_fork, SB_ERRNO(EAGAIN));
#endif
#ifdef SYS_vfork
        deny_nr(&p, SYS_vfork, SB_ERRNO(EAGAIN));
#endif
#ifdef SYS_clone3
        deny_nr(&p, SYS_clone3, SB_ERRNO(ENOSYS));
#else
        deny_nr(&p, 435, SB_ERRNO(ENOSYS));
#endif
        /* clone: allowed only with CLONE_THREAD (a thread, not a process) */
        emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 4));
        emit(&p, (struct sock_filter)SB_LOAD_ARG0_LO);
        emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1));
        emit(&p, (struct sock_filter)SB_RET(SECCOMP_RET_ALLOW));
        emit(&p, (struct sock_filter)SB_RET(SB_ERRNO(EAGAIN)));
    }
    if (block_net) {
        uint32_t unix_only[1] = {AF_UNIX};
        arg0_in(&p, SYS_socket, unix_only, 1, SB_ERRNO(EACCES));
    }
    emit(&p, (struct sock_filter)SB_RET(SECCOMP_RET_ALLOW));
    if (p.n > SB_MAX_INSNS) {
        PyErr_SetString(PyExc_RuntimeError, "seccomp program too long");
        return NULL;
    }
    struct sock_fprog fprog = {.len = (unsigned short)p.n, .filter = p.f};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- Landlock */

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

/* Our own copies of the uapi structs and flags, so an older <linux/landlock.h> still builds. */
struct sb_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net; /* ABI >= 4 */
    uint64_t scoped;             /* ABI >= 6 */
};
struct sb_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#define SB_LL_CREATE_RULESET_VERSION (1U << 0)
#define SB_LL_RULE_PATH_BENEATH 1
#define SB_FS_WRITE_FILE (1ULL << 1)
#define SB_FS_REMOVE_DIR (1ULL << 4)
#define SB_FS_REMOVE_FILE (1ULL << 5)
#define SB_FS_MAKE_CHAR (1ULL << 6)
#define SB_FS_MAKE_DIR (1ULL << 7)
#define SB_FS_MAKE_REG (1ULL << 8)
#define SB_FS_MAKE_SOCK (1ULL << 9)
#define SB_FS_MAKE_FIFO (1ULL << 10)
#define SB_FS_MAKE_BLOCK (1ULL << 11)
#define SB_FS_MAKE_SYM (1ULL << 12)
#define SB_FS_REFER (1ULL << 13)    /* ABI 2 */
#define SB_FS_TRUNCATE (1ULL << 14) /* ABI 3 */
#define SB_NET_BIND_TCP (1ULL << 0)    /* ABI 4 */
#define SB_NET_CONNECT_TCP (1ULL << 1) /* ABI 4 */
#define SB_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0) /* ABI 6 */
#define SB_SCOPE_SIGNAL (1ULL << 1)               /* ABI 6 */

static int ll_abi(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, SB_LL_CREATE_RULESET_VERSION);
    return abi < 0 ? 0 : (int)abi;
}

static PyObject *sb_landlock_abi(PyObject *self, PyObject *noargs) { return PyLong_FromLong(ll_abi()); }

static PyObject *sb_landlock(PyObject *self, PyObject *args) {
    PyObject *paths;
    int block_tcp, scope_signals;
    if (!PyArg_ParseTuple(args, "Opp", &paths, &block_tcp, &scope_signals)) return NULL;
    PyObject *seq = PySequence_Fast(paths, "paths must be a sequence of str");
    if (!seq) return NULL;
    int abi = ll_abi();
    if (abi <= 0) {
        Py_DECREF(seq);
        errno = EOPNOTSUPP;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    uint64_t write_rights = SB_FS_WRITE_FILE | SB_FS_REMOVE_DIR | SB_FS_REMOVE_FILE | SB_FS_MAKE_CHAR | SB_FS_MAKE_DIR |
                            SB_FS_MAKE_REG | SB_FS_MAKE_SOCK | SB_FS_MAKE_FIFO | SB_FS_MAKE_BLOCK | SB_FS_MAKE_SYM;
    if (abi >= 2) write_rights |= SB_FS_REFER;
    if (abi >= 3) write_rights |= SB_FS_TRUNCATE;
    struct sb_ruleset_attr attr = {.handled_access_fs = write_rights};
    size_t attr_size = offsetof(struct sb_ruleset_attr, handled_access_net);
    if (abi >= 4) {
        attr_size = offsetof(struct sb_ruleset_attr, scoped);
        if (block_tcp) attr.handled_access_net = SB_NET_BIND_TCP | SB_NET_CONNECT_TCP;
    }
    if (abi >= 6) {
        attr_size = sizeof(attr);
        if (scope_signals) attr.scoped = SB_SCOPE_SIGNAL | SB_SCOPE_ABSTRACT_UNIX_SOCKET;
    }
    int rfd = (int)syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0);
    if (rfd < 0) {
        Py_DECREF(seq);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *path = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (!path) {
            close(rfd);
            Py_DECREF(seq);
            return NULL;
        }
        int pfd = open(path, O_PATH | O_CLOEXEC);
        if (pfd < 0) {
            int e = errno;
            close(rfd);
            Py_DECREF(seq);
            errno = e;
            return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        }
        struct sb_path_beneath_attr rule = {.allowed_access = write_rights, .parent_fd = pfd};
        /* a non-directory may carry only file rights */
        struct stat st;
        if (fstat(pfd, &st) == 0 && !S_ISDIR(st.st_mode))
            rule.allowed_access = write_rights & (SB_FS_WRITE_FILE | SB_FS_TRUNCATE);
        long r = syscall(SYS_landlock_add_rule, rfd, SB_LL_RULE_PATH_BENEATH, &rule, 0);
        int e = errno;
        close(pfd);
        if (r != 0) {
            close(rfd);
            Py_DECREF(seq);
            errno = e;
            return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        }
    }
    Py_DECREF(seq);
    long r = syscall(SYS_landlock_restrict_self, rfd, 0);
    int e = errno;
    close(rfd);
    if (r != 0) {
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(abi);
}

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"unshare_net", sb_unshare_net, METH_NOARGS, "unshare(CLONE_NEWNET); raises OSError when not permitted."},
    {"private_tmpfs", sb_private_tmpfs, METH_VARARGS,
     "private_tmpfs(path, size): own mount namespace with a tmpfs of `size` bytes on path."},
    {"no_new_privs", sb_no_new_privs, METH_NOARGS, "prctl(PR_SET_NO_NEW_PRIVS, 1)."},
    {"drop_to", sb_drop_to, METH_VARARGS,
     "drop_to(uid, gid, keep_read): become uid/gid for good; keep_read keeps CAP_DAC_READ_SEARCH only."},
    {"subreaper", sb_subreaper, METH_NOARGS, "prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants come back to us."},
    {"pdeathsig", sb_pdeathsig, METH_VARARGS, "pdeathsig(sig): prctl(PR_SET_PDEATHSIG, sig)."},
    {"seccomp", sb_seccomp, METH_VARARGS,
     "seccomp(pid, block_fork, block_net): install the sandbox's seccomp-BPF filter (needs no_new_privs or root)."},
    {"landlock_abi", sb_landlock_abi, METH_NOARGS, "Landlock ABI version of the running kernel (0: unavailable)."},
    {"landlock", sb_landlock, METH_VARARGS,
     "landlock(paths, block_tcp, scope_signals) -> abi: allow writes only beneath paths (needs no_new_privs or root)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sandbox",
                                    "Kernel isolation mechanisms for wizardcoder's evaluation sandbox.", -1, methods};

PyMODINIT_FUNC PyInit__sandbox(void) { return PyModule_Create(&module); }
