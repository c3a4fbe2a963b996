/* wizardcoder._sandbox: the kernel mechanisms the evaluation sandbox needs and Python's os module lacks.
 *
 * Each function wraps one mechanism and raises OSError (with errno) when the kernel refuses it, so the Python side
 * (wizardcoder/eval/sandbox.py) can probe what this machine permits once, fall back to the next best layer, and
 * report what isolation was in force (docs/sandbox.md is the threat model):
 *
 *   unshare(flags)           unshare(2) with CLONE_NEW* flags (the constants are exported).
 *   mount(source, target, fstype, flags, data) / umount(target, flags) / pivot_root(new_root, put_old)
 *                            the calls that build the worker's minimal filesystem view.
 *   no_new_privs()           prctl(PR_SET_NO_NEW_PRIVS): no setuid binaries, no file capabilities; needed by
 *                            seccomp and Landlock for an unprivileged process.
 *   bound(keep_read)         the bounding set emptied (but CAP_DAC_READ_SEARCH with keep_read), the calling
 *                            process's own capabilities kept: a worker's children then have nothing to drop there.
 *   drop_to(uid, gid, keep_read)
 *                            for good: empty bounding set, no ambient capabilities, no groups, setresgid/setresuid
 *                            to an unprivileged id, then inheritable/permitted/effective emptied and checked. With
 *                            keep_read (a fallback when the filesystem view could not be built) exactly one
 *                            capability stays, CAP_DAC_READ_SEARCH, which Landlock's read rules then confine.
 *   ambient_read()           CAP_DAC_READ_SEARCH into the inheritable and ambient sets, so a process holding it
 *                            (drop_to's keep_read) keeps it across execve: the compile and run steps of another
 *                            language then read the toolchain as the Python program would, under the same
 *                            Landlock read rules.
 *   caps()                   (permitted, effective, inheritable, bounding set) of the calling thread, as bit masks.
 *   subreaper()              prctl(PR_SET_CHILD_SUBREAPER): orphans of our children are reparented to us, so the
 *                            worker can reap (and count) everything a program left behind.
 *   pdeathsig(sig)           prctl(PR_SET_PDEATHSIG): the kernel sends `sig` when the parent thread dies. A uid
 *                            change clears it, so the child sets it after drop_to.
 *   enter(output, owner_uid, owner_gid, result_fd, nonce_fd, limits, folder[, keep_lo, keep_hi])
 *                            a forked program's first steps in one call: setsid, its descriptors (0 /dev/null,
 *                            1 and 2 a new output file, 3 and 4 the result and nonce pipes, keep_lo..keep_hi (the
 *                            Landlock rule paths' descriptors, closed once the rules are in force), nothing else
 *                            open), its rlimits, its working folder.
 *   seccomp(pid, block_fork, block_net)
 *                            a seccomp-BPF filter: signals only to `pid` itself or its own process group (kill,
 *                            tgkill, rt_sigqueueinfo), no tkill / pidfd signals / pidfd_getfd / ptrace /
 *                            process_vm_* / unshare / setns / mount / io_uring / bpf / userfaultfd / perf events /
 *                            keyrings / System V IPC; with block_fork no new processes (fork, vfork, clone without
 *                            CLONE_THREAD; clone3 answers ENOSYS so threads fall back to clone); with block_net no
 *                            socket() of any address family and socketpair() only for AF_UNIX (an unnamed,
 *                            already-connected pair reaches nothing outside the process). Refused calls return an
 *                            errno, never kill the process.
 *   landlock_abi()           the kernel's Landlock ABI version, or 0 when Landlock is unavailable.
 *   landlock(read_paths, write_paths, block_tcp, scope)
 *                            Landlock: reads (open for reading, list, execute) only beneath read_paths and
 *                            write_paths; writes (create, remove, rename, truncate, write-open) only beneath
 *                            write_paths; with block_tcp (ABI >= 4) no TCP bind/connect; with scope (ABI >= 6) no
 *                            signals to, and no abstract-socket connections with, processes outside this domain.
 *                            Paths may be given as O_PATH descriptors (ints) opened once by the worker.
 *                            Returns the ABI used.
 *
 * Tested on Linux 6.18 x86_64 (root and unprivileged). Syscall numbers come from <sys/syscall.h>, so aarch64 builds
 * too (it has no fork/vfork syscalls, only clone).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- namespaces, mounts, prctl */

static PyObject *sb_unshare(PyObject *self, PyObject *args) {
    int flags;
    if (!PyArg_ParseTuple(args, "i", &flags)) return NULL;
    if (unshare(flags) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *sb_mount(PyObject *self, PyObject *args) {
    const char *source, *target, *fstype, *data;
    unsigned long flags;
    if (!PyArg_ParseTuple(args, "zszkz", &source, &target, &fstype, &flags, &data)) return NULL;
    if (mount(source, target, fstype, flags, data) != 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, target);
    Py_RETURN_NONE;
}

static PyObject *sb_umount(PyObject *self, PyObject *args) {
    const char *target;
    int flags;
    if (!PyArg_ParseTuple(args, "si", &target, &flags)) return NULL;
    if (umount2(target, flags) != 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, target);
    Py_RETURN_NONE;
}

static PyObject *sb_pivot_root(PyObject *self, PyObject *args) {
    const char *new_root, *put_old;
    if (!PyArg_ParseTuple(args, "ss", &new_root, &put_old)) return NULL;
    if (syscall(SYS_pivot_root, new_root, put_old) != 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, new_root);
    Py_RETURN_NONE;
}

static PyObject *sb_no_new_privs(PyObject *self, PyObject *noargs) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static int capget2(struct __user_cap_data_struct data[2]) {
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    return (int)syscall(SYS_capget, &hdr, data);
}

/* The bounding set as a mask (PR_CAPBSET_READ per capability, up to the kernel's last). */
static uint64_t bounding_set(void) {
    uint64_t mask = 0;
    for (int cap = 0; cap < 64; cap++) {
        int r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (r < 0) break; /* EINVAL: past the kernel's last capability */
        if (r) mask |= 1ULL << cap;
    }
    return mask;
}

/* Become uid/gid for good (real, effective, saved), no supplementary groups, and no capability in any set:
 * bounding (so nothing can be regained by exec), ambient, inheritable, permitted, effective. With keep_read, keep
 * exactly CAP_DAC_READ_SEARCH in permitted+effective (read any file, write none): only used when the worker could not
 * give the sandbox uid a view of the Python installation, and then Landlock's read rules still confine it. */
/* Empty the bounding set (but CAP_DAC_READ_SEARCH with keep_read). Only capabilities still in it are dropped: each
 * drop commits a new set of credentials, and a worker that emptied its own set once (bound) spares its children the
 * ~40 commits. */
static int drop_bounding(int keep_read) {
    for (int cap = 0; cap < 64; cap++) {
        if (keep_read && cap == CAP_DAC_READ_SEARCH) continue;
        int in = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (in < 0) {
            if (errno == EINVAL) break; /* past the kernel's last capability */
            return -1;
        }
        if (in && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return -1;
    }
    return 0;
}

static PyObject *sb_bound(PyObject *self, PyObject *args) {
    int keep_read;
    if (!PyArg_ParseTuple(args, "p", &keep_read)) return NULL;
    if (drop_bounding(keep_read) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* drop_to's steps: 0; -1 with errno set; -2 when a capability or id survived them */
static int drop_to_core(int uid, int gid, int keep_read) {
    if (drop_bounding(keep_read) != 0) return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    if (keep_read && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return -1;
    if (setgroups(0, NULL) != 0) return -1;
    if (setresgid(gid, gid, gid) != 0) return -1;
    if (setresuid(uid, uid, uid) != 0) return -1;
    /* A uid change clears permitted and effective (without KEEPCAPS) but not inheritable: set all three. */
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (keep_read) data[0].effective = data[0].permitted = 1u << CAP_DAC_READ_SEARCH;
    if (syscall(SYS_capset, &hdr, data) != 0) return -1;
    if (keep_read) prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    /* check, rather than trust, that nothing is left */
    struct __user_cap_data_struct got[2];
    if (capget2(got) != 0) return -1;
    uint32_t allowed = keep_read ? 1u << CAP_DAC_READ_SEARCH : 0;
    if ((got[0].permitted | got[0].effective | got[0].inheritable) & ~allowed ||
        got[1].permitted | got[1].effective | got[1].inheritable ||
        (bounding_set() & ~(uint64_t)allowed) || getuid() != (uid_t)uid || geteuid() != (uid_t)uid)
        return -2;
    return 0;
}

static PyObject *sb_drop_to(PyObject *self, PyObject *args) {
    int uid, gid, keep_read;
    if (!PyArg_ParseTuple(args, "iip", &uid, &gid, &keep_read)) return NULL;
    int r = drop_to_core(uid, gid, keep_read);
    if (r == -1) return PyErr_SetFromErrno(PyExc_OSError);
    if (r == -2) {
        PyErr_SetString(PyExc_RuntimeError, "capabilities or ids survived drop_to");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *sb_ambient_read(PyObject *self, PyObject *noargs) {
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (capget2(data) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    data[0].inheritable |= 1u << CAP_DAC_READ_SEARCH;
    if (syscall(SYS_capset, &hdr, data) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *sb_caps(PyObject *self, PyObject *noargs) {
    struct __user_cap_data_struct d[2];
    if (capget2(d) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(KKKK)", (unsigned long long)d[0].permitted | ((unsigned long long)d[1].permitted << 32),
                         (unsigned long long)d[0].effective | ((unsigned long long)d[1].effective << 32),
                         (unsigned long long)d[0].inheritable | ((unsigned long long)d[1].inheritable << 32),
                         (unsigned long long)bounding_set());
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

/* The forked child's first steps in one call (each Python-level call in a fresh fork writes to pages shared with the
 * worker, a copy-on-write fault each): its own session; fd 0 = /dev/null, fds 1 and 2 = a new output file (0600,
 * chowned to owner_uid:owner_gid unless owner_uid < 0), 3 = result_fd, 4 = nonce_fd, every other descriptor closed;
 * then each (resource, soft, hard) of `limits` in order, then chdir(folder). Parsed before anything changes. With
 * keep_lo..keep_hi (optional, above 4) those descriptors stay open too: the worker's O_PATH descriptors of the Landlock
 * rule paths, which the child closes once its rules are in force. */
#define SB_MAX_LIMITS 16
#define SB_MAX_RULE_FDS 64 /* Landlock rule descriptors a child plan may keep */

/* close descriptors lo..hi (hi < 0: all from lo) */
static void close_from(int lo, int hi) {
    if (hi >= 0 && hi < lo) return;
    if (syscall(SYS_close_range, (unsigned)lo, hi < 0 ? ~0u : (unsigned)hi, 0u) != 0) { /* before 5.9: one by one */
        long max = sysconf(_SC_OPEN_MAX);
        int end = hi < 0 ? (max > 0 ? (int)max : 1 << 16) : hi + 1;
        for (int fd = lo; fd < end; fd++) close(fd);
    }
}

/* enter's steps once parsed: 0, or -1 with errno set (nothing is undone: the caller is a child that then exits) */
static int enter_core(const char *output, int owner_uid, int owner_gid, int result_fd, int nonce_fd, int n_limits,
                      const int *which, const struct rlimit *rl, const char *folder, int keep_lo, int keep_hi) {
    if (setsid() < 0) return -1;
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0) return -1;
    int out = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) return -1;
    if (owner_uid >= 0 && fchown(out, (uid_t)owner_uid, (gid_t)owner_gid) != 0) return -1;
    if (dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0 || dup2(result_fd, 3) < 0 || dup2(nonce_fd, 4) < 0)
        return -1;
    if (keep_lo < 0) close_from(5, -1);
    else {
        close_from(5, keep_lo - 1);
        close_from(keep_hi + 1, -1);
    }
    for (int i = 0; i < n_limits; i++)
        if (setrlimit(which[i], &rl[i]) != 0) return -1;
    return chdir(folder);
}

/* limits, a sequence of (resource, soft, hard), into which/rl: their number, or -1 with an exception set */
static int parse_limits(PyObject *limits, int *which, struct rlimit *rl, int room) {
    Py_ssize_t n = PySequence_Length(limits);
    if (n < 0) return -1;
    if (n > room) {
        PyErr_SetString(PyExc_ValueError, "too many limits");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_GetItem(limits, i);
        if (item == NULL) return -1;
        unsigned long long soft, hard;
        int ok = PyArg_ParseTuple(item, "iKK", &which[i], &soft, &hard);
        Py_DECREF(item);
        if (!ok) return -1;
        rl[i].rlim_cur = (rlim_t)soft;
        rl[i].rlim_max = (rlim_t)hard;
    }
    return (int)n;
}

static PyObject *sb_enter(PyObject *self, PyObject *args) {
    const char *output, *folder;
    int owner_uid, owner_gid, result_fd, nonce_fd;
    PyObject *limits;
    int keep_lo = -1, keep_hi = -1;
    if (!PyArg_ParseTuple(args, "siiiiOs|ii", &output, &owner_uid, &owner_gid, &result_fd, &nonce_fd, &limits, &folder,
                          &keep_lo, &keep_hi))
        return NULL;
    if (keep_lo >= 0 && (keep_lo < 5 || keep_hi < keep_lo)) {
        PyErr_SetString(PyExc_ValueError, "the kept descriptors must be a range above 4");
        return NULL;
    }
    int which[SB_MAX_LIMITS];
    struct rlimit rl[SB_MAX_LIMITS];
    int n = parse_limits(limits, which, rl, SB_MAX_LIMITS);
    if (n < 0) return NULL;
    if (enter_core(output, owner_uid, owner_gid, result_fd, nonce_fd, n, which, rl, folder, keep_lo, keep_hi) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
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

#define SB_MAX_INSNS 512
#define SB_MAX_RULES 96
#define SB_LEAF 4 /* rules tested one by one at a leaf of the search tree */

/* One syscall the filter does not simply allow. The filter is a binary search over the sorted syscall numbers
 * (JGE nodes, then up to SB_LEAF JEQ tests at a leaf), not a chain of tests: the kernel, when it installs a filter,
 * runs it once per syscall number to find the ones it allows whatever their arguments (it then skips the filter for
 * those), and a chain made that about 450 walks of the whole program per forked program; a tree takes a few steps. */
enum { SB_DENY, SB_ARG0_IN, SB_ARG0_NOT, SB_THREAD_ONLY };
struct rule {
    uint32_t nr;
    int kind;
    uint32_t ret;     /* what a refused call returns */
    uint32_t ok[3];   /* SB_ARG0_IN: the allowed low 32 bits of arg0; SB_ARG0_NOT: ok[0] is the refused one */
    int n_ok;
};

struct prog {
    struct sock_filter f[SB_MAX_INSNS];
    int n;
    struct rule rules[SB_MAX_RULES];
    int n_rules;
};

static void emit(struct prog *p, struct sock_filter s) {
    if (p->n < SB_MAX_INSNS) p->f[p->n++] = s;
    else p->n = SB_MAX_INSNS + 1; /* overflow: caught before install */
}

static void rule(struct prog *p, long nr, int kind, uint32_t ret, const uint32_t *ok, int n_ok) {
    if (p->n_rules >= SB_MAX_RULES) {
        p->n = SB_MAX_INSNS + 1;
        return;
    }
    struct rule *r = &p->rules[p->n_rules++];
    *r = (struct rule){.nr = (uint32_t)nr, .kind = kind, .ret = ret, .n_ok = n_ok};
    for (int i = 0; i < n_ok && i < 3; i++) r->ok[i] = ok[i];
}

static void deny_nr(struct prog *p, long nr, uint32_t ret) { rule(p, nr, SB_DENY, ret, NULL, 0); }

/* allowed only when the low 32 bits of arg0 equal one of `ok` (n_ok <= 3), else `ret` */
static void arg0_in(struct prog *p, long nr, const uint32_t *ok, int n_ok, uint32_t ret) {
    rule(p, nr, SB_ARG0_IN, ret, ok, n_ok);
}

/* `ret` when the low 32 bits of arg0 equal `bad`, else allowed */
static void arg0_not(struct prog *p, long nr, uint32_t bad, uint32_t ret) { rule(p, nr, SB_ARG0_NOT, ret, &bad, 1); }

static int body_len(const struct rule *r) { return r->kind == SB_DENY ? 1 : r->kind == SB_ARG0_IN ? r->n_ok + 3 : 4; }

/* the decision for one rule's syscall (the accumulator holds nr on entry; every path returns) */
static void emit_body(struct prog *p, const struct rule *r) {
    if (r->kind == SB_DENY) {
        emit(p, (struct sock_filter)SB_RET(r->ret));
        return;
    }
    emit(p, (struct sock_filter)SB_LOAD_ARG0_LO);
    if (r->kind == SB_ARG0_IN) {
        for (int i = 0; i < r->n_ok; i++)
            emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, r->ok[i], (uint8_t)(r->n_ok - i), 0));
        emit(p, (struct sock_filter)SB_RET(r->ret));
        emit(p, (struct sock_filter)SB_RET(SECCOMP_RET_ALLOW));
    } else if (r->kind == SB_ARG0_NOT) {
        emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, r->ok[0], 0, 1));
        emit(p, (struct sock_filter)SB_RET(r->ret));
        emit(p, (struct sock_filter)SB_RET(SECCOMP_RET_ALLOW));
    } else { /* clone: a thread (CLONE_THREAD), not a process */
        emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1));
        emit(p, (struct sock_filter)SB_RET(SECCOMP_RET_ALLOW));
        emit(p, (struct sock_filter)SB_RET(r->ret));
    }
}

/* rules[lo, hi) (sorted by nr): below the middle rule's nr the left half, else the right; a call no rule names is
 * allowed. Jump offsets are 8 bits: a longer left half marks the program as overflowing. */
static void emit_tree(struct prog *p, int lo, int hi) {
    if (hi - lo <= SB_LEAF) {
        for (int i = lo; i < hi; i++) {
            emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, p->rules[i].nr, 0,
                                                 (uint8_t)body_len(&p->rules[i])));
            emit_body(p, &p->rules[i]);
        }
        emit(p, (struct sock_filter)SB_RET(SECCOMP_RET_ALLOW));
        return;
    }
    int mid = (lo + hi) / 2, at = p->n;
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, p->rules[mid].nr, 0, 0));
    emit_tree(p, lo, mid);
    int skip = p->n - at - 1;
    if (skip > 255) p->n = SB_MAX_INSNS + 1;
    else if (at < SB_MAX_INSNS) p->f[at].jt = (uint8_t)skip;
    emit_tree(p, mid, hi);
}

/* rules sorted by nr in place: an insertion sort of ~60 rules, not qsort, whose merge sort mallocs (in a forked
 * child every page malloc touches is a copy-on-write fault) */
static void sort_rules(struct rule *r, int n) {
    for (int i = 1; i < n; i++) {
        struct rule x = r[i];
        int j = i;
        for (; j > 0 && r[j - 1].nr > x.nr; j--) r[j] = r[j - 1];
        r[j] = x;
    }
}

/* seccomp's filter built and installed: 0; -1 with errno set; -2 with *why (a fault in the rules themselves) */
static int seccomp_core(int pid, int block_fork, int block_net, const char **why) {
    if (SB_AUDIT_ARCH == 0) {
        errno = ENOSYS;
        return -1;
    }
    struct prog p;
    p.n = p.n_rules = 0;
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
    /* calls that take a pid act on that process: only on itself (0 or pid). Same-uid processes outside the sandbox
     * (the worker, the evaluator, anything of the user's when not root) must not get new limits, affinity or
     * scheduling from a program: prlimit(ppid, RLIMIT_NOFILE, 16) broke the worker. */
    static const long self_only[] = {SYS_prlimit64, SYS_sched_setaffinity, SYS_sched_setparam, SYS_sched_setscheduler,
#ifdef SYS_sched_setattr
                                     SYS_sched_setattr,
#endif
                                     SYS_migrate_pages, SYS_move_pages, SYS_get_robust_list};
    uint32_t self_pid[2] = {0u, (uint32_t)pid};
    for (size_t i = 0; i < sizeof(self_only) / sizeof(self_only[0]); i++)
        arg0_in(&p, self_only[i], self_pid, 2, SB_ERRNO(EPERM));
    /* PDEATHSIG is the program's only tie to its worker's life when not root: it may not clear or change it */
    arg0_not(&p, SYS_prctl, PR_SET_PDEATHSIG, SB_ERRNO(EPERM));
    /* priorities (setpriority's PRIO_USER reaches every process of the uid) and handles on other processes */
    deny_nr(&p, SYS_setpriority, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_ioprio_set, SB_ERRNO(EPERM));
    deny_nr(&p, SYS_kcmp, SB_ERRNO(EPERM));
#ifdef SYS_pidfd_open
    deny_nr(&p, SYS_pidfd_open, SB_ERRNO(EPERM));
#endif
#ifdef SYS_process_madvise
    deny_nr(&p, SYS_process_madvise, SB_ERRNO(EPERM));
#endif
#ifdef SYS_process_mrelease
    deny_nr(&p, SYS_process_mrelease, SB_ERRNO(EPERM));
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
    /* io_uring runs socket/open operations that seccomp never sees; the rest reach shared kernel state (BPF maps,
     * the uid's keyrings, System V IPC objects of the whole IPC namespace, other processes' descriptors). */
    static const long refused[] = {
#ifdef SYS_io_uring_setup
        SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
#endif
#ifdef SYS_pidfd_getfd
        SYS_pidfd_getfd,
#endif
        SYS_bpf, SYS_userfaultfd, SYS_perf_event_open, SYS_keyctl, SYS_add_key, SYS_request_key,
        SYS_open_by_handle_at, SYS_name_to_handle_at,
        SYS_shmget, SYS_shmat, SYS_shmctl, SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_semget, SYS_semop,
        SYS_semctl, SYS_semtimedop,
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) deny_nr(&p, refused[i], SB_ERRNO(ENOSYS));

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
        rule(&p, SYS_clone, SB_THREAD_ONLY, SB_ERRNO(EAGAIN), NULL, 0);
    }
    if (block_net) {
        /* no socket of any family (AF_UNIX paths and abstract names, netlink, packet, raw, inet...); an unnamed
         * AF_UNIX pair (asyncio's self-pipe, multiprocessing.Pipe) connects only its own two ends */
        deny_nr(&p, SYS_socket, SB_ERRNO(EACCES));
        uint32_t unix_only[1] = {AF_UNIX};
        arg0_in(&p, SYS_socketpair, unix_only, 1, SB_ERRNO(EACCES));
    }
    sort_rules(p.rules, p.n_rules);
    for (int i = 1; i < p.n_rules; i++)
        if (p.rules[i].nr == p.rules[i - 1].nr) {
            *why = "a syscall named twice in the seccomp rules";
            return -2;
        }
    emit_tree(&p, 0, p.n_rules);
    if (p.n > SB_MAX_INSNS) {
        *why = "seccomp program too long";
        return -2;
    }
    struct sock_fprog fprog = {.len = (unsigned short)p.n, .filter = p.f};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) != 0 ? -1 : 0;
}

static PyObject *sb_seccomp(PyObject *self, PyObject *args) {
    int pid, block_fork, block_net;
    if (!PyArg_ParseTuple(args, "ipp", &pid, &block_fork, &block_net)) return NULL;
    const char *why = NULL;
    int r = seccomp_core(pid, block_fork, block_net, &why);
    if (r == -1) return PyErr_SetFromErrno(PyExc_OSError);
    if (r == -2) {
        PyErr_SetString(PyExc_RuntimeError, why);
        return NULL;
    }
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
#define SB_FS_EXECUTE (1ULL << 0)
#define SB_FS_WRITE_FILE (1ULL << 1)
#define SB_FS_READ_FILE (1ULL << 2)
#define SB_FS_READ_DIR (1ULL << 3)
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

/* A Landlock rule's path: fd >= 0, an O_PATH descriptor the worker opened once for every program (not closed here; the
 * path lookups were a third of the cost per program), else `path`, opened here. */
struct ll_item {
    int fd;
    const char *path;
};

/* One path-beneath rule per item with `rights` (only the file rights for a non-directory). A path this process cannot
 * reach (missing, or a parent it may not search) gets no rule: it stays denied. 0, or -1 with errno set and *bad the
 * path ("" for a descriptor). */
static int add_rules(int rfd, const struct ll_item *items, int n, uint64_t rights, const char **bad) {
    const uint64_t file_rights = SB_FS_EXECUTE | SB_FS_WRITE_FILE | SB_FS_READ_FILE | SB_FS_TRUNCATE;
    for (int i = 0; i < n; i++) {
        int given = items[i].fd >= 0, pfd = given ? items[i].fd : open(items[i].path, O_PATH | O_CLOEXEC);
        *bad = given ? "" : items[i].path;
        if (pfd < 0) {
            if (errno == ENOENT || errno == EACCES) continue; /* no rule: stays denied, the safe direction */
            return -1;
        }
        struct sb_path_beneath_attr rule = {.allowed_access = rights, .parent_fd = pfd};
        struct stat st;
        if (fstat(pfd, &st) == 0 && !S_ISDIR(st.st_mode)) rule.allowed_access = rights & file_rights;
        long r = syscall(SYS_landlock_add_rule, rfd, SB_LL_RULE_PATH_BENEATH, &rule, 0);
        int e = errno;
        if (!given) close(pfd);
        if (r != 0) {
            errno = e;
            return -1;
        }
    }
    return 0;
}

/* landlock's ruleset made and enforced: the ABI used, or -1 with errno set and *bad the path at fault ("" if none) */
static int landlock_core(const struct ll_item *reads, int n_reads, const struct ll_item *writes, int n_writes,
                         int block_tcp, int scope, const char **bad) {
    *bad = "";
    int abi = ll_abi();
    if (abi <= 0) {
        errno = EOPNOTSUPP;
        return -1;
    }
    uint64_t read_rights = SB_FS_EXECUTE | SB_FS_READ_FILE | SB_FS_READ_DIR;
    uint64_t write_rights = SB_FS_WRITE_FILE | SB_FS_REMOVE_DIR | SB_FS_REMOVE_FILE | SB_FS_MAKE_CHAR | SB_FS_MAKE_DIR |
                            SB_FS_MAKE_REG | SB_FS_MAKE_SOCK | SB_FS_MAKE_FIFO | SB_FS_MAKE_BLOCK | SB_FS_MAKE_SYM;
    if (abi >= 2) write_rights |= SB_FS_REFER;
    if (abi >= 3) write_rights |= SB_FS_TRUNCATE;
    struct sb_ruleset_attr attr = {.handled_access_fs = read_rights | write_rights};
    size_t attr_size = offsetof(struct sb_ruleset_attr, handled_access_net);
    if (abi >= 4) {
        attr_size = offsetof(struct sb_ruleset_attr, scoped);
        if (block_tcp) attr.handled_access_net = SB_NET_BIND_TCP | SB_NET_CONNECT_TCP;
    }
    if (abi >= 6) {
        attr_size = sizeof(attr);
        if (scope) attr.scoped = SB_SCOPE_SIGNAL | SB_SCOPE_ABSTRACT_UNIX_SOCKET;
    }
    int rfd = (int)syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0);
    if (rfd < 0) return -1;
    int ok = add_rules(rfd, reads, n_reads, read_rights, bad) == 0 &&
             add_rules(rfd, writes, n_writes, read_rights | write_rights, bad) == 0;
    if (ok) {
        *bad = "";
        ok = syscall(SYS_landlock_restrict_self, rfd, 0) == 0;
    }
    int e = errno;
    close(rfd);
    errno = e;
    return ok ? abi : -1;
}

/* the items of `seq` (str or int) into a new array (*out; its paths live as long as seq): their number, or -1 */
static int ll_items(PyObject *seq, struct ll_item **out) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    *out = PyMem_Calloc(n ? (size_t)n : 1, sizeof(struct ll_item));
    if (!*out) return PyErr_NoMemory(), -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyLong_Check(item)) {
            long fd = PyLong_AsLong(item);
            if (fd < 0) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a negative descriptor");
                return -1;
            }
            (*out)[i] = (struct ll_item){.fd = (int)fd, .path = ""};
        } else {
            const char *path = PyUnicode_AsUTF8(item);
            if (!path) return -1;
            (*out)[i] = (struct ll_item){.fd = -1, .path = path};
        }
    }
    return (int)n;
}

static PyObject *sb_landlock(PyObject *self, PyObject *args) {
    PyObject *read_paths, *write_paths, *result = NULL;
    int block_tcp, scope;
    if (!PyArg_ParseTuple(args, "OOpp", &read_paths, &write_paths, &block_tcp, &scope)) return NULL;
    PyObject *rseq = PySequence_Fast(read_paths, "read_paths must be a sequence of str or int");
    if (!rseq) return NULL;
    PyObject *wseq = PySequence_Fast(write_paths, "write_paths must be a sequence of str or int");
    struct ll_item *reads = NULL, *writes = NULL;
    int n_reads, n_writes;
    const char *bad = "";
    if (wseq && (n_reads = ll_items(rseq, &reads)) >= 0 && (n_writes = ll_items(wseq, &writes)) >= 0) {
        int abi = landlock_core(reads, n_reads, writes, n_writes, block_tcp, scope, &bad);
        if (abi >= 0) result = PyLong_FromLong(abi);
        else if (*bad) PyErr_SetFromErrnoWithFilename(PyExc_OSError, bad);
        else PyErr_SetFromErrno(PyExc_OSError);
    }
    PyMem_Free(reads);
    PyMem_Free(writes);
    Py_DECREF(rseq);
    Py_XDECREF(wseq);
    return result;
}

/* ---------------------------------------------------------------- the verdict */

#define SB_NONCE_LEN 16
#define SB_MAX_ERROR 1000 /* code points of the error text kept */

static int judging = 0;

struct buf {
    char b[SB_MAX_ERROR * 12 + 256];
    size_t n;
};

static void put(struct buf *o, const char *s) {
    size_t k = strlen(s);
    if (o->n + k < sizeof(o->b)) {
        memcpy(o->b + o->n, s, k);
        o->n += k;
    }
}

/* `text` as a JSON string, ASCII only, at most SB_MAX_ERROR code points (a non-str gives ""). */
static void put_json_str(struct buf *o, PyObject *text) {
    put(o, "\"");
    if (text && PyUnicode_Check(text)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(text);
        if (n > SB_MAX_ERROR) n = SB_MAX_ERROR;
        int kind = PyUnicode_KIND(text);
        const void *data = PyUnicode_DATA(text);
        char esc[16];
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
                esc[0] = (char)c;
                esc[1] = 0;
            } else if (c > 0xffff) {
                c -= 0x10000;
                snprintf(esc, sizeof(esc), "\\u%04x\\u%04x", 0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
            } else {
                snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)c);
            }
            put(o, esc);
        }
    }
    put(o, "\"");
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* judge(result_fd, nonce_fd, run, describe): never returns. Reads the job's nonce (which the worker wrote after the
 * fork) from nonce_fd into this C frame and closes it, then calls run(), the program and its tests. The verdict is
 * decided here: "passed" only when run() returned (an int: the number of tests, or None); when it raised, describe(exc)
 * gives (status, error, failed_test) and any status but "passed" is kept. nonce + the JSON verdict go to result_fd,
 * then _exit(0). A nested call (the program calling judge itself) is refused, so the only way to a "passed" verdict
 * is run() returning; the worker accepts a verdict only behind the nonce, which no Python object holds. */
static void judge_core(int rfd, int nfd, PyObject *run, PyObject *describe) {
    judging = 1;
    unsigned char nonce[SB_NONCE_LEN];
    size_t got = 0;
    while (got < SB_NONCE_LEN) {
        ssize_t k = read(nfd, nonce + got, SB_NONCE_LEN - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) _exit(103);
        got += (size_t)k;
    }
    close(nfd);
    fcntl(rfd, F_SETFD, FD_CLOEXEC); /* an exec'd program does not inherit it */

    static struct buf out; /* static: large; judge runs once per process */
    out.n = 0;
    memcpy(out.b, nonce, SB_NONCE_LEN);
    out.n = SB_NONCE_LEN;
    memset(nonce, 0, sizeof(nonce));
    PyObject *r = PyObject_CallNoArgs(run);
    char num[64];
    if (r != NULL) {
        put(&out, "{\"status\": \"passed\"");
        if (PyLong_Check(r)) {
            long tests = PyLong_AsLong(r);
            if (tests >= 0 && !PyErr_Occurred()) {
                snprintf(num, sizeof(num), ", \"tests\": %ld", tests);
                put(&out, num);
            }
            PyErr_Clear();
        }
        put(&out, "}");
    } else {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb && value) PyException_SetTraceback(value, tb);
        const char *status = PyErr_GivenExceptionMatches(type, PyExc_MemoryError) ? "memory" : "failed";
        PyObject *d = value ? PyObject_CallOneArg(describe, value) : NULL;
        PyObject *error = NULL;
        long failed_test = -1;
        if (d && PyTuple_Check(d) && PyTuple_GET_SIZE(d) == 3) {
            PyObject *st = PyTuple_GET_ITEM(d, 0);
            static const char *const not_passed[] = {"failed", "timeout", "memory", "syntax_error", "crashed"};
            for (size_t i = 0; i < sizeof(not_passed) / sizeof(not_passed[0]); i++)
                if (PyUnicode_Check(st) && PyUnicode_CompareWithASCIIString(st, not_passed[i]) == 0)
                    status = not_passed[i];
            error = PyTuple_GET_ITEM(d, 1);
            PyObject *ft = PyTuple_GET_ITEM(d, 2);
            if (PyLong_CheckExact(ft)) failed_test = PyLong_AsLong(ft);
        }
        PyErr_Clear();
        put(&out, "{\"status\": \"");
        put(&out, status);
        put(&out, "\", \"error\": ");
        put_json_str(&out, error);
        if (failed_test >= 0) {
            snprintf(num, sizeof(num), ", \"failed_test\": %ld", failed_test);
            put(&out, num);
        }
        put(&out, "}");
    }
    _exit(write_all(rfd, out.b, out.n) == 0 ? 0 : 102);
}

static PyObject *sb_judge(PyObject *self, PyObject *args) {
    int rfd, nfd;
    PyObject *run, *describe;
    if (!PyArg_ParseTuple(args, "iiOO", &rfd, &nfd, &run, &describe)) return NULL;
    if (judging) {
        PyErr_SetString(PyExc_RuntimeError, "a verdict is already being judged");
        return NULL;
    }
    judge_core(rfd, nfd, run, describe);
    return NULL; /* not reached */
}

/* ---------------------------------------------------------------- exact values (plus jobs' outputs)
 *
 * encode(obj, max_items, leaves, counter[, sink]) -> bytes | None and decode(data, max_items, counter, leaf) -> obj: the
 * codec of
 * wizardcoder/eval/values.py (its docstring has the format; encode_reference and decode_reference are the Python
 * references, held to the same bytes and values by tests). encode walks only exact types (no subclass, so no
 * overridden __eq__, __hash__ or __len__ runs) and calls no Python code but int.to_bytes on a big int and numpy's
 * buffer export of a numpy scalar; None when obj holds anything else, or more than max_items values, or nests deeper
 * than SB_MAX_DEPTH. decode trusts nothing: every length is checked against what is left, ValueError on anything
 * malformed, and the only objects it builds are of those types (numpy scalars through np.frombuffer, done by the
 * caller's `leaves` types). */

#define SB_MAX_DEPTH 100

struct enc {
    char *b;
    size_t n, cap;
    Py_ssize_t left;
    PyObject *leaves;  /* a tuple of numpy's scalar types allowed (index k: tag n, k) */
    PyObject *counter; /* collections.Counter (tag C), taken before the program ran */
    PyObject *sink;    /* NULL, or a callable given the encoding in pieces of about SB_SINK_CHUNK bytes */
    int nan;           /* set when a NaN (float, complex, numpy float or complex) was encoded */
};

#define SB_SINK_CHUNK (1 << 20)

static int enc_flush(struct enc *e) {
    if (!e->n) return 0;
    PyObject *r = PyObject_CallFunction(e->sink, "y#", e->b, (Py_ssize_t)e->n);
    e->n = 0;
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static int enc_grow(struct enc *e, size_t k) {
    if (e->n + k <= e->cap) return 0;
    size_t cap = e->cap ? e->cap : 256;
    while (cap < e->n + k) cap *= 2;
    char *b = PyMem_Realloc(e->b, cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    e->b = b;
    e->cap = cap;
    return 0;
}

static int enc_put(struct enc *e, char tag, const void *p, size_t k) {
    if (enc_grow(e, 1 + k)) return -1;
    e->b[e->n++] = tag;
    memcpy(e->b + e->n, p, k);
    e->n += k;
    return 0;
}

static int enc_sized(struct enc *e, char tag, const void *p, size_t k) {
    if (k > UINT32_MAX) return 1;
    uint32_t n = (uint32_t)k;
    if (enc_put(e, tag, &n, 4) || enc_grow(e, k)) return -1;
    memcpy(e->b + e->n, p, k);
    e->n += k;
    return 0;
}

/* 0: encoded; 1: not a value of the allowed types, or past the bounds; -1: a Python error (memory) */
static int enc_value(struct enc *e, PyObject *o, int depth) {
    if (--e->left < 0 || depth > SB_MAX_DEPTH) return 1;
    if (e->sink && e->n >= SB_SINK_CHUNK && enc_flush(e)) return -1;
    PyTypeObject *t = Py_TYPE(o);
    if (o == Py_None) return enc_put(e, 'N', NULL, 0);
    if (t == &PyBool_Type) return enc_put(e, o == Py_True ? 'T' : 'F', NULL, 0);
    if (t == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow) {
            int64_t w = v;
            return enc_put(e, 'i', &w, 8);
        }
        size_t nb = _PyLong_NumBits(o) / 8 + 1; /* bytes of its two's complement, sign bit included */
        if (nb > UINT32_MAX) return 1;
        uint32_t k = (uint32_t)nb;
        if (enc_put(e, 'I', &k, 4) || enc_grow(e, nb)) return -1;
#if PY_VERSION_HEX >= 0x030d0000
        if (_PyLong_AsByteArray((PyLongObject *)o, (unsigned char *)e->b + e->n, nb, 1, 1, 1) < 0) return -1;
#else
        if (_PyLong_AsByteArray((PyLongObject *)o, (unsigned char *)e->b + e->n, nb, 1, 1) < 0) return -1;
#endif
        e->n += nb;
        return 0;
    }
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(o);
        e->nan |= isnan(d);
        return enc_put(e, 'f', &d, 8);
    }
    if (t == &PyComplex_Type) {
        Py_complex c = PyComplex_AsCComplex(o);
        double d[2] = {c.real, c.imag};
        e->nan |= isnan(c.real) || isnan(c.imag);
        return enc_put(e, 'c', d, 16);
    }
    if (t == &PyUnicode_Type || t == &PyBytes_Type) {
        PyObject *raw = t == &PyBytes_Type ? (Py_INCREF(o), o) : PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass");
        if (!raw) return -1;
        int r = enc_sized(e, t == &PyBytes_Type ? 'b' : 's', PyBytes_AS_STRING(raw), (size_t)PyBytes_GET_SIZE(raw));
        Py_DECREF(raw);
        return r;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        /* a list may change under us only by our own calls, and no program code runs here */
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        uint32_t k = (uint32_t)n;
        if (n > e->left) return 1;
        if (enc_put(e, t == &PyList_Type ? 'l' : 't', &k, 4)) return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            int r = enc_value(e, PySequence_Fast_GET_ITEM(o, i), depth + 1);
            if (r) return r;
        }
        return 0;
    }
    if (t == &PySet_Type || t == &PyFrozenSet_Type) {
        Py_ssize_t n = PySet_GET_SIZE(o), pos = 0;
        uint32_t k = (uint32_t)n;
        if (n > e->left) return 1;
        if (enc_put(e, t == &PySet_Type ? 'S' : 'z', &k, 4)) return -1;
        PyObject *v;
        Py_hash_t h;
        while (_PySet_NextEntry(o, &pos, &v, &h)) {
            int r = enc_value(e, v, depth + 1);
            if (r) return r;
        }
        return 0;
    }
    int is_counter = (PyObject *)t == e->counter && PyDict_Check(o);
    if (t == &PyDict_Type || is_counter) {
        Py_ssize_t n = PyDict_GET_SIZE(o), pos = 0;
        uint32_t k = (uint32_t)n;
        if (2 * n > e->left) return 1;
        if (enc_put(e, is_counter ? 'C' : 'd', &k, 4)) return -1;
        PyObject *key, *v;
        while (PyDict_Next(o, &pos, &key, &v)) {
            int r = enc_value(e, key, depth + 1);
            if (!r) r = enc_value(e, v, depth + 1);
            if (r) return r;
        }
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(e->leaves) && i < 256; i++) {
        if ((PyObject *)t != PyTuple_GET_ITEM(e->leaves, i)) continue;
        Py_buffer view;
        PyObject *raw = NULL;
        const char *p;
        Py_ssize_t len;
        if (PyUnicode_Check(o)) {
            if (!(raw = PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass"))) return -1;
        } else if (PyBytes_Check(o)) {
            Py_INCREF(o);
            raw = o;
        }
        if (raw) {
            p = PyBytes_AS_STRING(raw);
            len = PyBytes_GET_SIZE(raw);
        } else {
            /* a numpy float or complex: NaN is the one value not equal to itself (numpy's own comparison) */
            PyObject *ne = PyObject_RichCompare(o, o, Py_NE);
            int is_nan = ne ? PyObject_IsTrue(ne) : -1;
            Py_XDECREF(ne);
            if (is_nan < 0) return -1;
            e->nan |= is_nan;
            if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE)) return -1;
            p = view.buf;
            len = view.len;
        }
        uint8_t idx = (uint8_t)i;
        uint32_t k = (uint32_t)len;
        int r = enc_put(e, 'n', &idx, 1) || enc_grow(e, 4 + (size_t)len) ? -1 : 0;
        if (!r) {
            memcpy(e->b + e->n, &k, 4);
            memcpy(e->b + e->n + 4, p, (size_t)len);
            e->n += 4 + (size_t)len;
        }
        if (raw) Py_DECREF(raw);
        else PyBuffer_Release(&view);
        return r;
    }
    return 1;
}

static PyObject *sb_encode(PyObject *self, PyObject *args) {
    PyObject *o, *leaves, *counter, *sink = NULL;
    Py_ssize_t max_items;
    if (!PyArg_ParseTuple(args, "OnO!O|O", &o, &max_items, &PyTuple_Type, &leaves, &counter, &sink)) return NULL;
    struct enc e = {NULL, 0, 0, max_items, leaves, counter, sink == Py_None ? NULL : sink, 0};
    int r = enc_value(&e, o, 0);
    if (!r && e.sink) r = enc_flush(&e);
    PyObject *out = r < 0   ? NULL
                    : r > 0 ? Py_NewRef(Py_None)
                    : e.sink ? Py_NewRef(Py_True)
                             : PyBytes_FromStringAndSize(e.b, (Py_ssize_t)e.n);
    PyMem_Free(e.b);
    return out;
}

/* encode_nan(obj, max_items, leaves, counter) -> (encode's answer, whether it holds a NaN) */
static PyObject *sb_encode_nan(PyObject *self, PyObject *args) {
    PyObject *o, *leaves, *counter;
    Py_ssize_t max_items;
    if (!PyArg_ParseTuple(args, "OnO!O", &o, &max_items, &PyTuple_Type, &leaves, &counter)) return NULL;
    struct enc e = {NULL, 0, 0, max_items, leaves, counter, NULL, 0};
    int r = enc_value(&e, o, 0);
    PyObject *out = r < 0 ? NULL
                    : r > 0 ? Py_BuildValue("(OO)", Py_None, Py_False)
                            : Py_BuildValue("(y#O)", e.b, (Py_ssize_t)e.n, e.nan ? Py_True : Py_False);
    PyMem_Free(e.b);
    return out;
}

struct dec {
    const unsigned char *p, *end;
    Py_ssize_t left;
    PyObject *counter, *leaf;
};

static PyObject *bad(const char *why) {
    PyErr_SetString(PyExc_ValueError, why);
    return NULL;
}

static int dec_take(struct dec *d, void *out, size_t k) {
    if ((size_t)(d->end - d->p) < k) {
        PyErr_SetString(PyExc_ValueError, "truncated value");
        return -1;
    }
    if (out) memcpy(out, d->p, k);
    d->p += k;
    return 0;
}

static PyObject *dec_value(struct dec *d, int depth) {
    if (--d->left < 0 || depth > SB_MAX_DEPTH) return bad("too many values or nested too deep");
    unsigned char tag;
    uint32_t n;
    if (dec_take(d, &tag, 1)) return NULL;
    switch (tag) {
    case 'N': return Py_NewRef(Py_None);
    case 'T': return Py_NewRef(Py_True);
    case 'F': return Py_NewRef(Py_False);
    case 'i': {
        int64_t v;
        return dec_take(d, &v, 8) ? NULL : PyLong_FromLongLong(v);
    }
    case 'f': {
        double v;
        return dec_take(d, &v, 8) ? NULL : PyFloat_FromDouble(v);
    }
    case 'c': {
        double v[2];
        return dec_take(d, v, 16) ? NULL : PyComplex_FromDoubles(v[0], v[1]);
    }
    case 'I': case 's': case 'b': {
        if (dec_take(d, &n, 4)) return NULL;
        const unsigned char *p = d->p;
        if (dec_take(d, NULL, n)) return NULL;
        if (tag == 'I') return _PyLong_FromByteArray(p, n, 1, 1);
        if (tag == 'b') return PyBytes_FromStringAndSize((const char *)p, n);
        PyObject *r = PyUnicode_DecodeUTF8((const char *)p, n, "surrogatepass");
        if (!r && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return bad("a str that is not UTF-8");
        }
        return r;
    }
    case 'l': case 't': case 'S': case 'z': {
        if (dec_take(d, &n, 4)) return NULL;
        if ((Py_ssize_t)n > d->left) return bad("too many values");
        PyObject *c = tag == 'l' ? PyList_New(n) : tag == 't' ? PyTuple_New(n) : tag == 'S' ? PySet_New(NULL)
                                                                                          : PyFrozenSet_New(NULL);
        if (!c) return NULL;
        for (uint32_t i = 0; i < n; i++) {
            PyObject *v = dec_value(d, depth + 1);
            if (!v) goto fail_seq;
            if (tag == 'l') PyList_SET_ITEM(c, i, v);
            else if (tag == 't') PyTuple_SET_ITEM(c, i, v);
            else {
                int r = PySet_Add(c, v);
                Py_DECREF(v);
                if (r) goto fail_seq;
            }
        }
        return c;
    fail_seq:
        Py_DECREF(c);
        if (PyErr_ExceptionMatches(PyExc_TypeError)) { /* an unhashable set member */
            PyErr_Clear();
            return bad("an unhashable set member");
        }
        return NULL;
    }
    case 'd': case 'C': {
        if (dec_take(d, &n, 4)) return NULL;
        if (2 * (Py_ssize_t)n > d->left) return bad("too many values");
        PyObject *m = tag == 'd' ? PyDict_New() : PyObject_CallNoArgs(d->counter);
        if (!m) return NULL;
        if (!PyDict_Check(m)) {
            Py_DECREF(m);
            return bad("collections.Counter is not a dict");
        }
        for (uint32_t i = 0; i < n; i++) {
            PyObject *k = dec_value(d, depth + 1);
            PyObject *v = k ? dec_value(d, depth + 1) : NULL;
            int r = v ? PyDict_SetItem(m, k, v) : -1;
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (r) {
                Py_DECREF(m);
                if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                    PyErr_Clear();
                    return bad("an unhashable dict key");
                }
                return NULL;
            }
        }
        return m;
    }
    case 'n': {
        uint8_t k;
        if (dec_take(d, &k, 1) || dec_take(d, &n, 4)) return NULL;
        const unsigned char *p = d->p;
        if (dec_take(d, NULL, n)) return NULL;
        return PyObject_CallFunction(d->leaf, "iy#", (int)k, (const char *)p, (Py_ssize_t)n);
    }
    }
    return bad("unknown tag");
}

static PyObject *sb_decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t max_items;
    PyObject *counter, *leaf;
    if (!PyArg_ParseTuple(args, "y*nOO", &data, &max_items, &counter, &leaf)) return NULL;
    struct dec d = {data.buf, (const unsigned char *)data.buf + data.len, max_items, counter, leaf};
    PyObject *r = dec_value(&d, 0);
    if (r && d.p != d.end) {
        Py_CLEAR(r);
        bad("trailing bytes after the value");
    }
    PyBuffer_Release(&data);
    return r;
}

/* ---------------------------------------------------------------- module */

/* ---------------------------------------------------------------- the worker's job loop
 *
 * A worker forks one child per program, and every fork write-protects all of the worker's memory: each page the
 * worker then touches costs a page fault (a copy while the child lives). Python touching its objects between two
 * forks (unpickling the job, the bookkeeping, pickling the reply) was ~170 faults and ~0.3 ms a program. This loop
 * does the worker's part of script and plus jobs in C: read the job's frame, make the folder and pipes, fork, hand the
 * child its nonce, watch it (pipe, exit, user CPU time, wall clock), decide the worker's half of the verdict, clean
 * the folder. A script job's reply is written here too, with no Python object made or touched between forks; a plus
 * job calls Python only for its comparison (compare.Comparison: made before the fork, fed the child's bytes as they
 * come, its verdict then sent by Python). It mirrors Worker.run_job / _watch / _cleanup in sandbox.py (the reference,
 * which runs every other kind of job), and tests hold the two to the same replies.
 *
 * Frames on both pipes are an 8-byte little-endian length and a payload. A script job's payload: 'S', the CPU
 * seconds as a little-endian double (0: the worker's default), the program's source in UTF-8 (surrogatepass). A plus
 * job's: 'P', the CPU seconds, the split ('b' base, 'p' plus), the task key's length (2 bytes) and UTF-8, the source.
 * A script job's reply: 'R', the wall seconds (double), then 0 and the judge's JSON verdict (the nonce checked and
 * cut off), or 1 + the index of the worker's status in VERDICTS + the error text. Any other payload (a pickle) goes
 * to Python. */

#define SB_SCRIPT_CAP (1 << 20) /* bytes of a script job's result channel kept (Worker._watch's cap) */
#define SB_CPU_POLL 0.05        /* seconds between reads of the program's user CPU time (sandbox.CPU_POLL) */
#define SB_TIMEOUT 2            /* indices in VERDICTS (checks.py) */
#define SB_CRASHED 5
enum { SB_WHY_NONE, SB_WHY_WALL, SB_WHY_CPU, SB_WHY_VERDICT };

struct loop_buf {
    char *b;
    size_t n, cap;
};

static int lb_reserve(struct loop_buf *o, size_t k) {
    if (o->n + k <= o->cap) return 0;
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->n + k) cap *= 2;
    char *b = realloc(o->b, cap);
    if (!b) return -1;
    o->b = b;
    o->cap = cap;
    return 0;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 0: read n bytes; 1: end of file (a partial frame counts as the end, as Channel.recv's EOFError); -1: a Python
 * exception is set (a signal handler raised, or read failed). */
static int read_exact(int fd, char *p, size_t n) {
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) return -1;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (k == 0) return 1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* User CPU seconds of a process from /proc/<pid>/stat (field 14, utime); 0 when it cannot be read. */
static double user_seconds(pid_t pid) {
    char path[64], s[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0.0;
    ssize_t n = read(fd, s, sizeof(s) - 1);
    close(fd);
    if (n <= 0) return 0.0;
    s[n] = 0;
    char *p = strrchr(s, ')');
    if (!p) return 0.0;
    for (int field = 2; field < 14; field++) { /* p is at the end of field 2 (the command's name) */
        p = strchr(p + 1, ' ');
        if (!p) return 0.0;
    }
    return (double)strtoull(p + 1, NULL, 10) / (double)sysconf(_SC_CLK_TCK);
}

struct loop_policy {
    const char *folder, *output; /* the job's folder and its output file (the same path every job) */
    int owner_uid, owner_gid;    /* the folder's owner when root, else -1 */
    double timeout, cpu_timeout, wall_factor;
    long max_output;
    PyObject *prepare; /* prepare(task_key, "base" or "plus") -> a plus job's compare.Comparison */
};

/* One job as read from its frame. */
struct loop_job {
    char kind;        /* 'S' or 'P' */
    double cpu;       /* CPU seconds (0: the worker's default) */
    char split;       /* 'b' or 'p' (plus) */
    const char *key;  /* the task key (plus), not terminated */
    size_t key_n;
    const char *code; /* the source */
    size_t code_n;
};

static int parse_job(const char *p, size_t n, char kind, struct loop_job *j) {
    j->kind = kind;
    if (n < 8) goto bad;
    memcpy(&j->cpu, p, 8);
    p += 8, n -= 8;
    j->key = NULL, j->key_n = 0, j->split = 0;
    if (kind == 'P') {
        uint16_t k;
        if (n < 3) goto bad;
        j->split = p[0];
        memcpy(&k, p + 1, 2);
        p += 3, n -= 3;
        if (n < k || (j->split != 'b' && j->split != 'p')) goto bad;
        j->key = p, j->key_n = k;
        p += k, n -= k;
    }
    j->code = p, j->code_n = n;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "a malformed job frame");
    return -1;
}

/* The worker's own verdict on a finished child (Worker._watch): -1 when it has none (the child's verdict counts),
 * else the index in VERDICTS, `text` its error. */
static int worker_verdict(int why, int status, size_t got, long limit, double wall, long max_output, char *text,
                          size_t size) {
    if (why == SB_WHY_WALL) return snprintf(text, size, "wall time limit %gs", wall), SB_TIMEOUT;
    if (why == SB_WHY_CPU) return snprintf(text, size, "CPU time limit %lds", limit), SB_TIMEOUT;
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        if (sig == SIGXCPU)
            return snprintf(text, size, "CPU time limit %lds (user and system time)", limit), SB_TIMEOUT;
        if (sig == SIGXFSZ) return snprintf(text, size, "output/file size limit %ld MiB", max_output >> 20), SB_CRASHED;
        const char *name = sigabbrev_np(sig);
        if (name) snprintf(text, size, "killed by SIG%s", name);
        else snprintf(text, size, "killed by signal %d", sig);
        return SB_CRASHED;
    }
    if (WEXITSTATUS(status) != 0 || got == 0) {
        snprintf(text, size, "exited with status %d before reporting a result", WEXITSTATUS(status));
        return SB_CRASHED;
    }
    return -1;
}

/* A script job's reply frame: 'R' + seconds + 0 + the verdict behind the nonce, or 1 + status + error. */
static int script_reply(struct loop_buf *rep, double seconds, int verdict, const char *text,
                        const unsigned char *nonce, const char *data, size_t got) {
    if (verdict < 0 && (got < SB_NONCE_LEN || memcmp(data, nonce, SB_NONCE_LEN) != 0)) {
        verdict = SB_CRASHED;
        text = "no verdict from the harness: the program wrote on its result channel or exited before its tests "
               "ended";
    }
    size_t body = verdict < 0 ? got - SB_NONCE_LEN : strlen(text) + 1;
    uint64_t len = 1 + 8 + 1 + body;
    rep->n = 0;
    if (lb_reserve(rep, 8 + len) != 0) return -1;
    memcpy(rep->b, &len, 8);
    rep->b[8] = 'R';
    memcpy(rep->b + 9, &seconds, 8);
    if (verdict < 0) {
        rep->b[17] = 0;
        memcpy(rep->b + 18, data + SB_NONCE_LEN, body);
    } else {
        rep->b[17] = 1;
        rep->b[18] = (char)verdict;
        memcpy(rep->b + 19, text, body - 1);
    }
    rep->n = 8 + len;
    return 0;
}

/* A plus job's reply from the worker's side (what Worker._watch returns with a feed): {} when the comparison decided,
 * a status and error, or {"raw": b""}; Comparison.verdict makes the job's verdict of it. */
static PyObject *plus_reply(int why, int verdict, const char *text) {
    if (why == SB_WHY_VERDICT) return PyDict_New();
    if (verdict < 0) return Py_BuildValue("{s:y}", "raw", "");
    return Py_BuildValue("{s:s,s:s}", "status", verdict == SB_TIMEOUT ? "timeout" : "crashed", "error", text);
}

/* One read of the child's result pipe: kept in `data` (a script job's, up to SB_SCRIPT_CAP; past it read and
 * dropped, so the child never blocks) or given to `feed` (a plus job's comparison, which decides as the outputs come).
 * Returns what read() did (0 at the end, < 0 when nothing could be read); *stop is 1 once the feed decided, -1 when
 * it raised. */
static ssize_t take(int fd, PyObject *feed, struct loop_buf *data, int *stop) {
    static char sink[1 << 16];
    char *into = sink;
    size_t room = sizeof(sink);
    if (!feed && data->n < SB_SCRIPT_CAP && lb_reserve(data, sizeof(sink)) == 0) {
        into = data->b + data->n;
        room = SB_SCRIPT_CAP - data->n < sizeof(sink) ? SB_SCRIPT_CAP - data->n : sizeof(sink);
    }
    ssize_t r = read(fd, into, room);
    if (r > 0 && into != sink) data->n += (size_t)r;
    if (r > 0 && feed) {
        PyObject *v = PyObject_CallFunction(feed, "y#", into, (Py_ssize_t)r);
        *stop = v ? PyObject_IsTrue(v) : -1;
        Py_XDECREF(v);
    }
    return r;
}

/* What a forked child does before its program, in C (Worker._child's steps for script and plus jobs, in its order):
 * each Python-level step in a fresh fork writes to pages it shares with the worker, and the ~20 lines of Python
 * between the fork and the program cost ~100 copy-on-write faults, a third of a trivial program's. Given to job_loop
 * by Worker._child_plan when Landlock takes the worker's rule descriptors; without it the child returns to Python. */
struct child_plan {
    PyObject *script, *plus;  /* script(code) / plus(code, task_key, split) -> (run, describe), then judged here */
    PyObject *freeze;         /* gc.freeze: the collector never walks the worker's objects in the child */
    PyObject *signal, *resets; /* _signal.signal and the (signal, SIG_DFL) pairs it is called with */
    int n_limits;             /* which/rl[1..]: the limits but the CPU time, which is per job (rl[0]) */
    int which[SB_MAX_LIMITS];
    struct rlimit rl[SB_MAX_LIMITS];
    int keep_lo, keep_hi;     /* the worker's O_PATH rule descriptors: keep_lo /dev/null (written), the rest read */
    int root, uid, gid, keep_read;
    int block_fork, block_net;
};

static int parse_plan(PyObject *t, struct child_plan *c) {
    PyObject *limits;
    if (!PyArg_ParseTuple(t, "OOOOO!Oiipiippp", &c->script, &c->plus, &c->freeze, &c->signal, &PyTuple_Type,
                          &c->resets, &limits, &c->keep_lo, &c->keep_hi, &c->root, &c->uid, &c->gid, &c->keep_read,
                          &c->block_fork, &c->block_net))
        return -1;
    if (c->keep_lo < 5 || c->keep_hi < c->keep_lo || c->keep_hi - c->keep_lo > SB_MAX_RULE_FDS) {
        PyErr_SetString(PyExc_ValueError, "the kept descriptors must be a range above 4, of at most 65");
        return -1;
    }
    int n = parse_limits(limits, c->which + 1, c->rl + 1, SB_MAX_LIMITS - 1);
    if (n < 0) return -1;
    c->n_limits = n + 1;
    c->which[0] = RLIMIT_CPU;
    return 0;
}

/* The child's steps, then its program (never returns: a step that fails exits 101, as Worker._child's exceptions do).
 * `backstop`: the kernel's CPU-time limit in seconds (the user-time limit is the worker's). */
static void child_steps(struct child_plan *c, const struct loop_policy *pol, const struct loop_job *j, int res_w,
                        int non_r, long backstop, pid_t worker) {
    PyObject *r = PyObject_CallNoArgs(c->freeze);
    if (!r) _exit(101);
    Py_DECREF(r);
    c->rl[0].rlim_cur = (rlim_t)backstop, c->rl[0].rlim_max = (rlim_t)backstop + 1;
    if (enter_core(pol->output, pol->owner_uid, pol->owner_gid, res_w, non_r, c->n_limits, c->which, c->rl,
                   pol->folder, c->keep_lo, c->keep_hi) != 0)
        _exit(101);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(c->resets); i++) {
        r = PyObject_Call(c->signal, PyTuple_GET_ITEM(c->resets, i), NULL);
        if (!r) _exit(101);
        Py_DECREF(r);
    }
    if (c->root && drop_to_core(c->uid, c->gid, c->keep_read) != 0) _exit(101);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) _exit(101); /* after the uid switch, which clears it */
    if (getppid() != worker) _exit(1); /* the worker died before that: nothing would kill us */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(101);
    /* Landlock (Worker._confine): reads beneath the rule descriptors and this process's /proc folder, writes in the
     * job's folder and /dev/null; the descriptors closed once the rules are in force; then seccomp */
    struct ll_item reads[SB_MAX_RULE_FDS + 1], writes[2] = {{.fd = -1, .path = pol->folder}, {.fd = c->keep_lo}};
    int n_reads = 0;
    for (int fd = c->keep_lo + 1; fd <= c->keep_hi; fd++)
        reads[n_reads++] = (struct ll_item){.fd = fd, .path = ""};
    reads[n_reads++] = (struct ll_item){.fd = -1, .path = "/proc/self"};
    const char *why;
    if (landlock_core(reads, n_reads, writes, 2, c->block_net, 1, &why) < 0) _exit(101);
    close_from(c->keep_lo, c->keep_hi);
    if (seccomp_core((int)getpid(), c->block_fork, c->block_net, &why) != 0) _exit(101);
    PyObject *code = PyUnicode_DecodeUTF8(j->code, (Py_ssize_t)j->code_n, "surrogatepass");
    if (!code) _exit(101);
    if (j->kind == 'S') r = PyObject_CallOneArg(c->script, code);
    else r = PyObject_CallFunction(c->plus, "ONC", code, PyUnicode_DecodeUTF8(j->key, (Py_ssize_t)j->key_n, "strict"),
                                   (int)j->split);
    if (!r || !PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2) _exit(101);
    judge_core(3, 4, PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1));
}

/* Run one job; returns 0 in the worker (a script job's reply frame in `rep`; a plus job's (comparison, reply,
 * seconds) in *out; *leftover set when the folder could not be removed), 1 in the child without a `plan` (*out its
 * tuple for Python; with one the child never returns: child_steps), -1 with a Python exception set. */
static int run_job(const struct loop_policy *pol, const struct loop_job *j, struct loop_buf *rep, int *leftover,
                   PyObject **out, struct child_plan *plan) {
    double cpu = j->cpu;
    if (pol->cpu_timeout > 0) cpu = pol->cpu_timeout;
    else if (!(cpu > 0)) cpu = pol->timeout;
    double wall = cpu * pol->wall_factor + 1.0;
    long limit = (long)ceil(cpu);
    if (limit < 1) limit = 1;
    PyObject *comp = NULL, *feed = NULL;
    if (j->kind == 'P') { /* the comparison, made before the fork (what it allocates later is copied on write) */
        const char *split = j->split == 'b' ? "base" : "plus";
        comp = PyObject_CallFunction(pol->prepare, "s#s", j->key, (Py_ssize_t)j->key_n, split);
        if (!comp) return -1;
        feed = PyObject_GetAttrString(comp, "feed");
        if (!feed) {
            Py_DECREF(comp);
            return -1;
        }
    }
    int res[2] = {-1, -1}, non[2] = {-1, -1};
    if (mkdir(pol->folder, 0700) != 0 ||
        (pol->owner_uid >= 0 && chown(pol->folder, (uid_t)pol->owner_uid, (gid_t)pol->owner_gid) != 0)) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, pol->folder);
        goto fail;
    }
    if (pipe2(res, O_CLOEXEC) != 0 || pipe2(non, O_CLOEXEC) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        rmdir(pol->folder);
        goto fail;
    }
    double t0 = mono();
    pid_t worker = getpid();
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        close(res[0]);
        close(non[1]);
        Py_XDECREF(feed);
        Py_XDECREF(comp);
        if (plan) {
            long backstop = (long)ceil(wall);
            child_steps(plan, pol, j, res[1], non[0], backstop < 1 ? 1 : backstop, worker);
        }
        *out = Py_BuildValue("(CNdiiNC)", (int)j->kind,
                             PyUnicode_DecodeUTF8(j->code, (Py_ssize_t)j->code_n, "surrogatepass"), cpu, res[1],
                             non[0], j->key ? PyUnicode_DecodeUTF8(j->key, (Py_ssize_t)j->key_n, "strict")
                                            : Py_NewRef(Py_None), j->split ? (int)j->split : ' ');
        return *out ? 1 : -1;
    }
    PyOS_AfterFork_Parent();
    close(res[1]);
    close(non[0]);
    if (pid < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(res[0]);
        close(non[1]);
        rmdir(pol->folder);
        res[0] = non[1] = -1;
        goto fail;
    }
    /* the verdict's key, made after the fork: the child's copy of our memory never held it */
    unsigned char nonce[SB_NONCE_LEN];
    if (getrandom(nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce)) memset(nonce, 0, sizeof(nonce));
    (void)!write(non[1], nonce, sizeof(nonce)); /* 16 bytes into an empty pipe; the child may be gone already */
    close(non[1]);
    int status = 0, why = SB_WHY_NONE, done = 0, failed = 0;
    if (comp) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)nonce, SB_NONCE_LEN);
        if (!b || PyObject_SetAttrString(comp, "nonce", b) != 0) failed = 1;
        Py_XDECREF(b);
    }

    static struct loop_buf data;
    data.n = 0;
    size_t got = 0;
    int pidfd = failed ? -1 : (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 && !failed) { /* Linux < 5.3: os.pidfd_open would fail the same way in Worker._watch */
        PyErr_SetFromErrno(PyExc_OSError);
        failed = 1;
    }
    struct pollfd fds[2] = {{.fd = pidfd, .events = POLLIN}, {.fd = res[0], .events = POLLIN}};
    double next_poll = t0 + SB_CPU_POLL;
    while (!done && !failed) {
        double now = mono(), left = wall - (now - t0);
        if (now >= next_poll) {
            next_poll = now + SB_CPU_POLL;
            if (user_seconds(pid) >= (double)limit) why = SB_WHY_CPU;
        }
        if (left <= 0 || why) {
            if (!why) why = SB_WHY_WALL;
            break;
        }
        double wait = left < next_poll - now ? left : next_poll - now;
        int k = poll(fds, 2, (int)ceil(wait * 1000));
        if (k < 0) {
            if (errno == EINTR && PyErr_CheckSignals() < 0) failed = 1;
            continue;
        }
        if (fds[1].fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            int stop = 0;
            ssize_t r = take(res[0], feed, &data, &stop);
            if (r == 0) fds[1].fd = -1; /* poll skips it; the child's exit ends the wait */
            if (r > 0) got += (size_t)r;
            if (stop < 0) failed = 1;
            else if (stop) why = SB_WHY_VERDICT, done = 1; /* the comparison decided: the child is stopped */
        }
        if (fds[0].revents & POLLIN) done = 1;
    }
    if (why || failed) killpg(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (pidfd >= 0) close(pidfd);
    /* what is still in the pipe (a grandchild could hold it open: no blocking) */
    fcntl(res[0], F_SETFL, O_NONBLOCK);
    for (int stop = 0; !failed && !stop && why != SB_WHY_VERDICT && (feed || data.n < SB_SCRIPT_CAP);) {
        ssize_t r = take(res[0], feed, &data, &stop);
        if (r <= 0) break;
        got += (size_t)r;
        if (stop < 0) failed = 1;
    }
    close(res[0]);
    /* Worker._cleanup: the program's group killed, orphans reaped, its folder removed */
    killpg(pid, SIGKILL);
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    *leftover = !((unlink(pol->output) == 0 || errno == ENOENT) && rmdir(pol->folder) == 0);
    double seconds = mono() - t0;
    if (failed) goto fail;
    char text[160];
    int verdict = worker_verdict(why, status, got, limit, wall, pol->max_output, text, sizeof(text));
    if (!comp) {
        int r = script_reply(rep, seconds, verdict, text, nonce, data.b, data.n);
        memset(nonce, 0, sizeof(nonce));
        return r == 0 ? 0 : (PyErr_NoMemory(), -1);
    }
    Py_DECREF(feed);
    *out = Py_BuildValue("(NNd)", comp, plus_reply(why, verdict, text), seconds);
    return *out ? 0 : -1;
fail:
    Py_XDECREF(feed);
    Py_XDECREF(comp);
    return -1;
}

/* job_loop(cmd_fd, reply_fd, folder, output, owner_uid, owner_gid, timeout, cpu_timeout, wall_factor, max_output,
 *          prepare[, plan]) -> ("message", payload) | ("eof", None) | ("leftover", None) | ("plus", (comparison,
 *          reply, seconds, leftover)) | in a forked child without a plan ("child", (kind, code, cpu, result_fd,
 *          nonce_fd, task_key, split)): serves script jobs, and plus jobs up to their verdict, until something needs
 *          Python. plan (struct child_plan, parse_plan): a child takes its steps in C, asks the plan's script or plus
 *          for its run and describe, and is judged (judge_core). */
static PyObject *sb_job_loop(PyObject *self, PyObject *args) {
    int cmd, reply;
    struct loop_policy pol;
    PyObject *plan_args = Py_None;
    if (!PyArg_ParseTuple(args, "iissiidddlO|O", &cmd, &reply, &pol.folder, &pol.output, &pol.owner_uid,
                          &pol.owner_gid, &pol.timeout, &pol.cpu_timeout, &pol.wall_factor, &pol.max_output,
                          &pol.prepare, &plan_args))
        return NULL;
    struct child_plan plan;
    if (plan_args != Py_None && parse_plan(plan_args, &plan) != 0) return NULL;
    static struct loop_buf frame, rep;
    for (;;) {
        uint64_t n;
        char tag;
        int r = read_exact(cmd, (char *)&n, 8);
        if (r == 0 && n == 0) r = 1; /* an empty frame: nothing the evaluator sends */
        if (r == 0) r = read_exact(cmd, &tag, 1);
        if (r < 0) return NULL;
        if (r > 0) return Py_BuildValue("(sO)", "eof", Py_None);
        if (tag != 'S' && tag != 'P') { /* a pickle for Python (task data may be hundreds of MB: read into the bytes) */
            PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
            if (!b) return NULL;
            PyBytes_AS_STRING(b)[0] = tag;
            r = read_exact(cmd, PyBytes_AS_STRING(b) + 1, n - 1);
            if (r != 0) {
                Py_DECREF(b);
                return r < 0 ? NULL : Py_BuildValue("(sO)", "eof", Py_None);
            }
            return Py_BuildValue("(sN)", "message", b);
        }
        frame.n = 0;
        if (lb_reserve(&frame, n - 1) != 0) return PyErr_NoMemory();
        r = read_exact(cmd, frame.b, n - 1);
        if (r < 0) return NULL;
        if (r > 0) return Py_BuildValue("(sO)", "eof", Py_None);
        struct loop_job job;
        if (parse_job(frame.b, n - 1, tag, &job) != 0) return NULL;
        int leftover = 0;
        PyObject *out = NULL;
        r = run_job(&pol, &job, &rep, &leftover, &out, plan_args != Py_None ? &plan : NULL);
        if (r == 1) return Py_BuildValue("(sN)", "child", out);
        if (r < 0) return NULL;
        if (out) { /* a plus job: its verdict and reply are Python's */
            PyObject *t = Py_BuildValue("(s(OOOi))", "plus", PyTuple_GET_ITEM(out, 0), PyTuple_GET_ITEM(out, 1),
                                        PyTuple_GET_ITEM(out, 2), leftover);
            Py_DECREF(out);
            return t;
        }
        if (write_all(reply, rep.b, rep.n) != 0) return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0) return NULL; /* a Ctrl-C during the write: write_all went on */
        if (leftover) return Py_BuildValue("(sO)", "leftover", Py_None);
    }
}

static PyMethodDef methods[] = {
    {"unshare", sb_unshare, METH_VARARGS, "unshare(flags): unshare(2); raises OSError when not permitted."},
    {"mount", sb_mount, METH_VARARGS, "mount(source, target, fstype, flags, data): mount(2); None for NULL."},
    {"umount", sb_umount, METH_VARARGS, "umount(target, flags): umount2(2)."},
    {"pivot_root", sb_pivot_root, METH_VARARGS, "pivot_root(new_root, put_old)."},
    {"no_new_privs", sb_no_new_privs, METH_NOARGS, "prctl(PR_SET_NO_NEW_PRIVS, 1)."},
    {"bound", sb_bound, METH_VARARGS,
     "bound(keep_read): empty the bounding set (keep_read: but CAP_DAC_READ_SEARCH); capabilities held stay."},
    {"drop_to", sb_drop_to, METH_VARARGS,
     "drop_to(uid, gid, keep_read): become uid/gid for good with no capability in any set (keep_read: "
     "CAP_DAC_READ_SEARCH only)."},
    {"ambient_read", sb_ambient_read, METH_NOARGS,
     "ambient_read(): keep CAP_DAC_READ_SEARCH (held) across execve (inheritable + ambient)."},
    {"caps", sb_caps, METH_NOARGS, "caps() -> (permitted, effective, inheritable, bounding) bit masks."},
    {"subreaper", sb_subreaper, METH_NOARGS, "prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants come back to us."},
    {"pdeathsig", sb_pdeathsig, METH_VARARGS, "pdeathsig(sig): prctl(PR_SET_PDEATHSIG, sig)."},
    {"enter", sb_enter, METH_VARARGS,
     "enter(output, owner_uid, owner_gid, result_fd, nonce_fd, limits, folder[, keep_lo, keep_hi]): a forked "
     "child's session, file descriptors (0 /dev/null, 1-2 output, 3 result, 4 nonce, keep_lo..keep_hi, no other), "
     "[(resource, soft, hard)] limits and cwd."},
    {"seccomp", sb_seccomp, METH_VARARGS,
     "seccomp(pid, block_fork, block_net): install the sandbox's seccomp-BPF filter (needs no_new_privs or root)."},
    {"judge", sb_judge, METH_VARARGS,
     "judge(result_fd, nonce_fd, run, describe): run the program and write its verdict behind the job's nonce; "
     "never returns."},
    {"encode", sb_encode, METH_VARARGS,
     "encode(obj, max_items, leaves, counter[, sink]) -> bytes, or None when obj is not built of exact builtin value "
     "types, `leaves` or `counter` within max_items values and depth 100 (wizardcoder/eval/values.py); with sink, "
     "the bytes go to sink(piece) as they are made and the answer is True."},
    {"encode_nan", sb_encode_nan, METH_VARARGS,
     "encode_nan(obj, max_items, leaves, counter) -> (encode's answer, whether the value holds a NaN)."},
    {"decode", sb_decode, METH_VARARGS,
     "decode(data, max_items, counter, leaf) -> the value encode wrote; ValueError when malformed or past the "
     "bounds; leaf(k, raw) builds a numpy scalar."},
    {"job_loop", sb_job_loop, METH_VARARGS,
     "job_loop(cmd_fd, reply_fd, folder, output, owner_uid, owner_gid, timeout, cpu_timeout, wall_factor, "
     "max_output, prepare[, plan]) -> (what, value): serve script jobs, and plus jobs up to their verdict, in C "
     "until something needs Python: ('message', payload), ('eof', None), ('leftover', None) (the job's folder was "
     "not emptied), ('plus', (comparison, reply, seconds, leftover)), or in a forked child without a plan ('child', "
     "(kind, code, cpu, result_fd, nonce_fd, task_key, split)). With plan (script, plus, gc.freeze, _signal.signal, "
     "((signal, SIG_DFL), ...), limits but RLIMIT_CPU, keep_lo, keep_hi, root, uid, gid, keep_read, block_fork, "
     "block_net) the child confines itself in C, then script(code) or plus(code, task_key, split) gives its (run, "
     "describe) and it is judged as by judge(3, 4, run, describe)."},
    {"landlock_abi", sb_landlock_abi, METH_NOARGS, "Landlock ABI version of the running kernel (0: unavailable)."},
    {"landlock", sb_landlock, METH_VARARGS,
     "landlock(read_paths, write_paths, block_tcp, scope) -> abi: reads only beneath read_paths + write_paths, "
     "writes only beneath write_paths (paths, or O_PATH descriptors as ints; needs no_new_privs or root)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sandbox",
                                    "Kernel isolation mechanisms for wizardcoder's evaluation sandbox.", -1, methods};

PyMODINIT_FUNC PyInit__sandbox(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    static const struct {
        const char *name;
        unsigned long value;
    } consts[] = {
        {"CLONE_NEWNS", CLONE_NEWNS},   {"CLONE_NEWNET", CLONE_NEWNET}, {"CLONE_NEWIPC", CLONE_NEWIPC},
        {"CLONE_NEWPID", CLONE_NEWPID}, {"CLONE_NEWUTS", CLONE_NEWUTS}, {"MS_RDONLY", MS_RDONLY},
        {"MS_NOSUID", MS_NOSUID},       {"MS_NODEV", MS_NODEV},         {"MS_NOEXEC", MS_NOEXEC},
        {"MS_REMOUNT", MS_REMOUNT},     {"MS_BIND", MS_BIND},           {"MS_REC", MS_REC},
        {"MS_PRIVATE", MS_PRIVATE},     {"MNT_DETACH", MNT_DETACH},
        {"FD_RULES", 1}, /* landlock takes O_PATH descriptors and enter keeps them: sandbox.py asks before using */
        /* the limits enter applies, so a worker need not load the resource module (5 mappings more in every fork) */
        {"RLIMIT_CPU", RLIMIT_CPU},     {"RLIMIT_CORE", RLIMIT_CORE},   {"RLIMIT_FSIZE", RLIMIT_FSIZE},
        {"RLIMIT_NOFILE", RLIMIT_NOFILE}, {"RLIMIT_AS", RLIMIT_AS},     {"RLIMIT_NPROC", RLIMIT_NPROC},
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++)
        if (PyModule_AddObject(m, consts[i].name, PyLong_FromUnsignedLong(consts[i].value)) != 0) {
            Py_DECREF(m);
            return NULL;
        }
    return m;
}
