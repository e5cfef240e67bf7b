/* harness.c - integration-test harness: starts nats-server, PostgreSQL and the service as child processes on
 * loopback ports in /tmp dirs, gives tests small HTTP/libpq/nats.c clients, and kills everything it started at
 * exit or on a fatal signal (see harness.h for the contract).
 *
 * Invariants worth knowing before changing this file:
 *  - Every process and temp dir is recorded in `reg[]` together with the pid of the process that created it.
 *    Cleanup only touches entries owned by getpid(): a test that fork()s a child which starts its own servers
 *    must not have the child kill the parent's servers at its exit, nor the parent the child's.
 *  - The cleanup path that runs from signal handlers (`stop_all`) is async-signal-safe: kill/waitpid/open/read/
 *    getdents64/unlinkat/nanosleep only, no malloc, no stdio.
 *  - This process is a child subreaper, so the postmaster (daemonised by pg_ctl) is re-parented to us: we can
 *    waitpid() it, and CTest's process-tree kill on timeout reaches it too.
 *  - nats-server and the service get PR_SET_PDEATHSIG=SIGKILL, so they die with the thread that started them
 *    even when we are SIGKILLed. Start servers from the main thread.
 *  - Server readiness of nats-server is probed with the raw NATS protocol, not nats.c, so a forked child can
 *    start servers even when the parent already initialised nats.c (nats.c does not survive fork()).
 *  - Leftovers of a test process that was SIGKILLed (dirs /tmp/mes-h-<pid>-*) are swept by the next harness
 *    process that starts, once <pid> is gone. */
#include "harness.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

extern char **environ;

#define READY_LINE "Both consumers started successfully"
#define NATS_START_TIMEOUT_MS 20000
#define PG_START_TIMEOUT_MS 90000
#define STOP_GRACE_MS 5000
#define DEFAULT_DEADLINE_S 280

/* ------------------------------------------------------------------------------------------------------------ */
/* Registry of what this process started.                                                                       */

enum reg_kind { REG_NATS = 1, REG_PG, REG_SVC, REG_DIR };

struct reg_entry {
    volatile sig_atomic_t used; /* set last when adding, cleared first when removing */
    int kind;
    pid_t owner; /* getpid() of the process that registered it */
    pid_t pid;
    volatile sig_atomic_t exited;
    int status; /* exit code, or 128+signal, once exited */
    char path[256];
};

#define REG_MAX 128
static struct reg_entry reg[REG_MAX];
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;

static int reg_add(int kind, pid_t pid, const char *path)
{
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < REG_MAX; i++) {
        if (reg[i].used)
            continue;
        reg[i].kind = kind;
        reg[i].owner = getpid();
        reg[i].pid = pid;
        reg[i].exited = 0;
        reg[i].status = 0;
        snprintf(reg[i].path, sizeof reg[i].path, "%s", path ? path : "");
        __atomic_store_n(&reg[i].used, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&reg_mu);
        return i;
    }
    pthread_mutex_unlock(&reg_mu);
    fprintf(stderr, "harness: registry full (%d entries)\n", REG_MAX);
    return -1;
}

static struct reg_entry *reg_find(int kind, pid_t pid)
{
    pid_t me = getpid();
    for (int i = 0; i < REG_MAX; i++)
        if (reg[i].used && reg[i].owner == me && reg[i].kind == kind && reg[i].pid == pid)
            return &reg[i];
    return NULL;
}

static void reg_del(struct reg_entry *e)
{
    if (e)
        __atomic_store_n(&e->used, 0, __ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Async-signal-safe process and directory helpers.                                                             */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int decode_status(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

static void record_exit(pid_t pid, int st)
{
    pid_t me = getpid();
    for (int i = 0; i < REG_MAX; i++)
        if (reg[i].used && reg[i].owner == me && reg[i].pid == pid && reg[i].kind != REG_DIR) {
            reg[i].status = decode_status(st);
            reg[i].exited = 1;
        }
}

/* Writes the decimal form of v into buf (AS-safe itoa); returns the end. */
static char *put_num(char *buf, long v)
{
    char tmp[24];
    int n = 0;
    bool neg = v < 0;
    unsigned long u = neg ? (unsigned long)(-v) : (unsigned long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (neg)
        *buf++ = '-';
    while (n)
        *buf++ = tmp[--n];
    *buf = '\0';
    return buf;
}

static char *put_str(char *buf, const char *s)
{
    while (*s)
        *buf++ = *s++;
    *buf = '\0';
    return buf;
}

/* Reads /proc/<pid>/stat into buf; returns the state char and the parent pid (AS-safe). 0 if unreadable. */
static char proc_state(pid_t pid, pid_t *ppid)
{
    char path[48], buf[512];
    put_num(put_str(path, "/proc/"), pid);
    put_str(path + strlen(path), "/stat");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2])
        return 0;
    if (ppid) {
        long v = 0;
        const char *q = p + 4;
        while (*q == ' ')
            q++;
        while (*q >= '0' && *q <= '9')
            v = v * 10 + (*q++ - '0');
        *ppid = (pid_t)v;
    }
    return p[2];
}

/* True once pid has exited: reaped by us, gone, or a zombie someone else has to reap. AS-safe. */
static bool proc_gone(pid_t pid)
{
    if (pid <= 0)
        return true;
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
        record_exit(pid, st);
        return true;
    }
    if (r == 0)
        return false; /* our child, not reapable yet (a multi-threaded leader shows 'Z' before it is) */
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return true;
    char s = proc_state(pid, NULL); /* not our child: a zombie is someone else's to reap */
    return s == 0 || s == 'Z' || s == 'X';
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Sends sig to every process whose parent is ppid (postgres backends of a postmaster). AS-safe. */
static void kill_children_of(pid_t ppid, int sig)
{
    int fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[4096] __attribute__((aligned(8)));
    long n;
    while ((n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0) {
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            off += d->d_reclen;
            if (d->d_name[0] < '1' || d->d_name[0] > '9')
                continue;
            long v = 0;
            for (const char *q = d->d_name; *q >= '0' && *q <= '9'; q++)
                v = v * 10 + (*q - '0');
            pid_t parent = 0;
            if (proc_state((pid_t)v, &parent) && parent == ppid)
                kill((pid_t)v, sig);
        }
    }
    close(fd);
}

/* rm -rf without malloc (usable from a signal handler). Returns true when name is gone. */
static bool rm_tree_at(int parent_fd, const char *name, int depth)
{
    if (unlinkat(parent_fd, name, 0) == 0 || errno == ENOENT)
        return true;
    if (errno != EISDIR || depth > 48)
        return false;
    int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    char buf[2048] __attribute__((aligned(8)));
    for (;;) {
        int seen = 0, removed = 0;
        long n;
        lseek(fd, 0, SEEK_SET);
        while ((n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0) {
            for (long off = 0; off < n;) {
                struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
                off += d->d_reclen;
                if (d->d_name[0] == '.' && (d->d_name[1] == '\0' || (d->d_name[1] == '.' && d->d_name[2] == '\0')))
                    continue;
                seen++;
                if (rm_tree_at(fd, d->d_name, depth + 1))
                    removed++;
            }
        }
        if (seen == 0 || removed == 0)
            break;
    }
    close(fd);
    return unlinkat(parent_fd, name, AT_REMOVEDIR) == 0 || errno == ENOENT;
}

static bool rm_tree(const char *path)
{
    return path[0] && rm_tree_at(AT_FDCWD, path, 0);
}

/* Kills every process this process started and removes its temp dirs. AS-safe: runs in signal handlers. */
static void stop_all(void)
{
    pid_t me = getpid();
    for (int i = 0; i < REG_MAX; i++) {
        struct reg_entry *e = &reg[i];
        if (!e->used || e->owner != me || e->kind == REG_DIR || e->exited)
            continue;
        if (e->kind == REG_SVC) {
            kill(-e->pid, SIGKILL);
            kill(e->pid, SIGKILL);
        } else if (e->kind == REG_NATS) {
            kill(e->pid, SIGTERM);
        } else if (e->kind == REG_PG) {
            kill(e->pid, SIGQUIT); /* what pg_ctl stop -m immediate sends */
        }
    }
    for (int round = 0; round < 2; round++) {
        int64_t deadline = clock_mono_ms() + (round == 0 ? STOP_GRACE_MS : 2000);
        for (;;) {
            bool all_gone = true;
            for (int i = 0; i < REG_MAX; i++) {
                struct reg_entry *e = &reg[i];
                if (e->used && e->owner == me && e->kind != REG_DIR && !e->exited && !proc_gone(e->pid))
                    all_gone = false;
            }
            if (all_gone || clock_mono_ms() > deadline)
                break;
            sleep_ms(10);
        }
        if (round == 1)
            break;
        for (int i = 0; i < REG_MAX; i++) {
            struct reg_entry *e = &reg[i];
            if (!e->used || e->owner != me || e->kind == REG_DIR || e->exited || proc_gone(e->pid))
                continue;
            if (e->kind == REG_PG)
                kill_children_of(e->pid, SIGKILL);
            else
                kill(-e->pid, SIGKILL);
            kill(e->pid, SIGKILL);
        }
    }
    for (int i = 0; i < REG_MAX; i++)
        if (reg[i].used && reg[i].owner == me && reg[i].kind != REG_DIR)
            reg_del(&reg[i]);
    for (int i = 0; i < REG_MAX; i++)
        if (reg[i].used && reg[i].owner == me && reg[i].kind == REG_DIR) {
            rm_tree(reg[i].path);
            reg_del(&reg[i]);
        }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Process-wide setup: signal handlers, atexit, deadline alarm, subreaper, sweep of leftovers.                    */

static pid_t init_pid;
static volatile sig_atomic_t in_signal;
static const int fatal_sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGALRM, SIGABRT, SIGSEGV, SIGBUS};
#define NFATAL ((int)(sizeof fatal_sigs / sizeof fatal_sigs[0]))
static struct sigaction old_actions[NFATAL];
static int deadline_s = DEFAULT_DEADLINE_S;

static void on_fatal_signal(int sig)
{
    int saved_errno = errno;
    if (__atomic_exchange_n(&in_signal, 1, __ATOMIC_SEQ_CST)) {
        errno = saved_errno; /* another thread is already cleaning up and will end the process */
        return;
    }
    char msg[160], *p = msg;
    if (sig == SIGALRM) {
        p = put_str(p, "harness: per-process deadline of ");
        p = put_num(p, deadline_s);
        p = put_str(p, " s reached (MES_HARNESS_DEADLINE_S); stopping servers\n");
    } else {
        p = put_str(p, "harness: caught signal ");
        p = put_num(p, sig);
        p = put_str(p, "; stopping servers\n");
    }
    ssize_t w = write(2, msg, (size_t)(p - msg));
    (void)w;
    stop_all();
    for (int i = 0; i < NFATAL; i++) {
        if (fatal_sigs[i] != sig)
            continue;
        if (sig == SIGSEGV || sig == SIGBUS) {
            /* Return and let the faulting instruction hit the previous handler (ASan's) or the default. */
            sigaction(sig, &old_actions[i], NULL);
            return;
        }
    }
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    raise(sig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    _exit(128 + sig);
}

static pid_t nats_used_by; /* process that opened nats.c: state inherited through fork() is not the child's */

static void at_exit_cleanup(void)
{
    h_cleanup();
    if (nats_used_by == getpid())
        nats_CloseAndWait(2000); /* frees nats.c's globals so LeakSanitizer stays quiet */
}

static void sweep_stale_dirs(void);

static void h_init(void)
{
    if (init_pid == getpid())
        return;
    bool first = init_pid == 0;
    init_pid = getpid();
    const char *d = getenv("MES_HARNESS_DEADLINE_S");
    if (d && *d)
        deadline_s = atoi(d);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (first) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_fatal_signal;
        sigemptyset(&sa.sa_mask);
        for (int i = 0; i < NFATAL; i++)
            sigaddset(&sa.sa_mask, fatal_sigs[i]);
        for (int i = 0; i < NFATAL; i++)
            sigaction(fatal_sigs[i], &sa, &old_actions[i]);
        signal(SIGPIPE, SIG_IGN);
        /* nats.c registers its own atexit teardown when first opened; open it before registering ours so ours
         * runs first (atexit is LIFO) and can still destroy connections. */
        if (nats_Open(-1) == NATS_OK)
            nats_used_by = init_pid;
        atexit(at_exit_cleanup);
        sweep_stale_dirs();
    }
    if (deadline_s > 0)
        alarm((unsigned)deadline_s);
}

int64_t h_now_ms(void)
{
    return clock_mono_ms();
}

void h_sleep_ms(int ms)
{
    if (ms > 0)
        sleep_ms(ms);
}

bool h_pid_alive(pid_t pid)
{
    return !proc_gone(pid);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Small utilities.                                                                                             */

static char *read_file(const char *path, size_t *len_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    if (len_out)
        *len_out = len;
    return buf;
}

/* Prints the last `lines` lines of a file to stderr (for failure diagnostics). */
static void print_tail(const char *path, int lines)
{
    size_t len;
    char *s = read_file(path, &len);
    if (!s) {
        fprintf(stderr, "harness: (no %s)\n", path);
        return;
    }
    size_t i = len;
    int seen = 0;
    while (i > 0 && seen <= lines) {
        i--;
        if (s[i] == '\n' && i + 1 < len)
            seen++;
    }
    if (seen > lines)
        i++;
    fprintf(stderr, "harness: --- last lines of %s ---\n%s%s", path, s + i, len && s[len - 1] != '\n' ? "\n" : "");
    free(s);
}

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    if (!rng_state) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rng_state =
            ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ 0x9e3779b97f4a7c15ULL;
    }
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Creates /tmp/mes-h-<pid>-XXXXXX with mode, registered for removal at exit. */
static bool make_tmpdir(char *out, size_t outlen, mode_t mode)
{
    h_init();
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "/tmp/mes-h-%d-XXXXXX", (int)getpid());
    if (!mkdtemp(tmpl)) {
        fprintf(stderr, "harness: mkdtemp(%s): %s\n", tmpl, strerror(errno));
        return false;
    }
    chmod(tmpl, mode);
    reg_add(REG_DIR, 0, tmpl);
    snprintf(out, outlen, "%s", tmpl);
    return true;
}

bool h_tmpdir(char *out, size_t outlen)
{
    return make_tmpdir(out, outlen, 0755);
}

/* Sweeps /tmp/mes-h-<pid>-* dirs whose creator no longer exists (it was SIGKILLed): kills the servers whose
 * pid files are inside (only when their command line names that dir) and removes the dir. */
static void sweep_stale_dirs(void)
{
    DIR *d = opendir("/tmp");
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "mes-h-", 6) != 0)
            continue;
        char *end;
        long owner = strtol(de->d_name + 6, &end, 10);
        if (owner <= 0 || *end != '-' || owner == getpid() || kill((pid_t)owner, 0) == 0 || errno != ESRCH)
            continue;
        char dir[300];
        snprintf(dir, sizeof dir, "/tmp/%s", de->d_name);
        static const char *const pidfiles[] = {"postmaster.pid", "nats.pid"};
        for (size_t i = 0; i < 2; i++) {
            char pf[400], cmdpath[64];
            snprintf(pf, sizeof pf, "%s/%s", dir, pidfiles[i]);
            char *txt = read_file(pf, NULL);
            long pid = txt ? atol(txt) : 0;
            free(txt);
            if (pid <= 0)
                continue;
            snprintf(cmdpath, sizeof cmdpath, "/proc/%ld/cmdline", pid);
            size_t len;
            char *cmd = read_file(cmdpath, &len);
            if (cmd) {
                for (size_t k = 0; k < len; k++)
                    if (cmd[k] == '\0')
                        cmd[k] = ' ';
                if (strstr(cmd, dir)) {
                    fprintf(stderr, "harness: killing leftover server %ld of dead test process %ld\n", pid, owner);
                    kill_children_of((pid_t)pid, SIGKILL);
                    kill((pid_t)pid, SIGKILL);
                    for (int64_t dl = clock_mono_ms() + 3000; !proc_gone((pid_t)pid) && clock_mono_ms() < dl;)
                        sleep_ms(10);
                }
                free(cmd);
            }
        }
        rm_tree(dir);
    }
    closedir(d);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Spawning.                                                                                                    */

static void strv_free_null(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static bool key_in(const char *kv, const char *const *list)
{
    size_t klen = strcspn(kv, "=");
    for (const char *const *p = list; p && *p; p++)
        if (strncmp(*p, kv, klen) == 0 && ((*p)[klen] == '=' || (*p)[klen] == '\0'))
            return true;
    return false;
}

/* environ, minus keys named in a or b, plus a's entries (unless b overrides them), plus b's entries. An entry
 * without '=' only removes that key. Caller frees with strv_free_null. */
static char **env_merge(const char *const *a, const char *const *b)
{
    size_t n = 0;
    for (char **e = environ; e && *e; e++)
        n++;
    for (const char *const *p = a; p && *p; p++)
        n++;
    for (const char *const *p = b; p && *p; p++)
        n++;
    char **out = calloc(n + 1, sizeof *out);
    size_t k = 0;
    for (char **e = environ; e && *e; e++)
        if (!key_in(*e, a) && !key_in(*e, b))
            out[k++] = strdup(*e);
    for (const char *const *p = a; p && *p; p++)
        if (strchr(*p, '=') && !key_in(*p, b))
            out[k++] = strdup(*p);
    for (const char *const *p = b; p && *p; p++)
        if (strchr(*p, '='))
            out[k++] = strdup(*p);
    out[k] = NULL;
    return out;
}

static bool find_exe(const char *name, char *out, size_t outlen)
{
    if (strchr(name, '/')) {
        snprintf(out, outlen, "%s", name);
        return access(out, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", path ? path : "");
    for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        snprintf(out, outlen, "%s/%s", dir, name);
        if (access(out, X_OK) == 0)
            return true;
    }
    return false;
}

/* fork+exec in a new process group with stdin=/dev/null and stdout+stderr=out_fd; all other fds closed.
 * pdeath: the child gets SIGKILL when the forking thread dies. envp NULL = our environment. */
static pid_t spawn(const char *const *argv, char *const *envp, int out_fd, const char *cwd, bool pdeath)
{
    char exe[1024];
    if (!find_exe(argv[0], exe, sizeof exe)) {
        fprintf(stderr, "harness: executable not found: %s\n", argv[0]);
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        if (pdeath) {
            prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
            if (getppid() != parent)
                _exit(127);
        }
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0 && nul != 0) {
            dup2(nul, 0);
            close(nul);
        }
        if (out_fd >= 0) {
            dup2(out_fd, 1);
            dup2(out_fd, 2);
        }
        if (close_range(3, ~0U, 0) != 0)
            for (int fd = 3; fd < 4096; fd++)
                close(fd);
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        execve(exe, (char *const *)argv, envp ? envp : environ);
        static const char m[] = "harness: execve failed\n";
        ssize_t w = write(2, m, sizeof m - 1);
        (void)w;
        _exit(127);
    }
    setpgid(pid, pid); /* both sides, so no race with a kill(-pid) right after */
    return pid;
}

/* Runs argv (env merged over ours; NULL = ours) to completion, capturing stdout+stderr. */
static int run_capture(const char *const *argv, const char *const *env, const char *cwd, int timeout_ms, char **out)
{
    h_init();
    if (out)
        *out = NULL;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return -1;
    char **envp = env ? env_merge(env, NULL) : NULL;
    pid_t pid = spawn(argv, envp, pfd[1], cwd, true);
    strv_free_null(envp);
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        return -1;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int64_t deadline = clock_mono_ms() + timeout_ms;
    int status = -1;
    bool exited = false, eof = false;
    while (!eof) {
        int64_t left = deadline - clock_mono_ms();
        if (left <= 0)
            break;
        struct pollfd pf = {pfd[0], POLLIN, 0};
        int pr = poll(&pf, 1, exited ? 0 : (int)(left < 50 ? left : 50));
        if (pr > 0) {
            if (len + 4097 > cap) {
                cap = cap * 2 + 4096;
                buf = realloc(buf, cap);
            }
            ssize_t n = read(pfd[0], buf + len, cap - len - 1);
            if (n > 0)
                len += (size_t)n;
            else if (n == 0 || errno != EINTR)
                eof = true;
            continue;
        }
        if (exited)
            break; /* child is gone and nothing more is buffered; a daemonised grandchild may hold the pipe */
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            exited = true;
            status = decode_status(st);
        }
    }
    while (!exited && clock_mono_ms() < deadline) { /* stdout closed; the process may still be finishing */
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            status = decode_status(st);
            exited = true;
        } else {
            sleep_ms(10);
        }
    }
    if (!exited) {
        int st;
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        status = -1;
    }
    close(pfd[0]);
    buf[len] = '\0';
    if (out)
        *out = buf;
    else
        free(buf);
    return status;
}

int h_run(const char *const *argv, const char *const *env, int timeout_ms, char **out)
{
    return run_capture(argv, env, NULL, timeout_ms, out);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Ports.                                                                                                       */

static int given_ports[512];
static int n_given_ports;
static pthread_mutex_t port_mu = PTHREAD_MUTEX_INITIALIZER;

static bool port_bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static bool port_given(int port)
{
    for (int i = 0; i < n_given_ports; i++)
        if (given_ports[i] == port)
            return true;
    return false;
}

/* Ports are drawn at random from below the kernel's ephemeral range (and checked by binding 127.0.0.1): a port
 * from bind(0) is an ephemeral port, which any outgoing connection may take as its local port while a server
 * is down between a stop and a restart on that same port. Falls back to bind(0). */
int h_free_port(void)
{
    int lo = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");
    if (f) {
        if (fscanf(f, "%d", &lo) != 1)
            lo = 32768;
        fclose(f);
    }
    int range_lo = lo > 12000 ? lo - 12000 : 1024, range_hi = lo > 12000 ? lo - 1 : lo;
    pthread_mutex_lock(&port_mu);
    int port = -1;
    for (int tries = 0; tries < 200 && port < 0; tries++) {
        int cand = range_lo + (int)(rng_next() % (uint64_t)(range_hi - range_lo));
        if (!port_given(cand) && port_bindable(cand))
            port = cand;
    }
    for (int tries = 0; tries < 50 && port < 0; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {0};
        socklen_t al = sizeof a;
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
            getsockname(fd, (struct sockaddr *)&a, &al) == 0 && !port_given(ntohs(a.sin_port)))
            port = ntohs(a.sin_port);
        if (fd >= 0)
            close(fd);
    }
    if (port > 0 && n_given_ports < (int)(sizeof given_ports / sizeof given_ports[0]))
        given_ports[n_given_ports++] = port;
    pthread_mutex_unlock(&port_mu);
    return port;
}

static int tcp_connect(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const char *s, size_t len)
{
    while (len) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        s += n;
        len -= (size_t)n;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* nats-server.                                                                                                 */

/* One raw-protocol round trip: CONNECT, then a request to $JS.API.INFO. True when JetStream answered without an
 * error, i.e. the server accepts clients and JetStream is enabled and ready. */
static bool nats_probe(int port)
{
    int fd = tcp_connect(port, 500);
    if (fd < 0)
        return false;
    char buf[8192];
    size_t len = 0;
    bool ok = false, sent = false;
    int64_t deadline = clock_mono_ms() + 1000;
    while (clock_mono_ms() < deadline && len < sizeof buf - 1) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        if (!sent && strstr(buf, "\r\n")) {
            if (strncmp(buf, "INFO ", 5) != 0)
                break;
            static const char req[] = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,"
                                      "\"no_responders\":true,\"protocol\":1,\"name\":\"harness-probe\"}\r\n"
                                      "SUB _HPROBE.r 1\r\nPUB $JS.API.INFO _HPROBE.r 0\r\n\r\nPING\r\n";
            if (!send_all(fd, req, sizeof req - 1))
                break;
            sent = true;
        }
        if (sent && strstr(buf, "-ERR"))
            break;
        char *resp = sent ? strstr(buf, "MSG _HPROBE.r 1") : NULL;
        if (resp) {
            char *payload = strstr(resp, "\r\n");
            char *payload_end = payload ? strstr(payload + 2, "\r\n") : NULL;
            if (!payload_end)
                continue;
            /* HMSG = no-responders status (JetStream not up yet); MSG = the JSON answer. */
            ok = resp == buf || resp[-1] != 'H';
            if (ok) {
                *payload_end = '\0';
                ok = strstr(payload, "account_info_response") && !strstr(payload, "\"error\"");
            }
            break;
        }
    }
    close(fd);
    return ok;
}

/* True once the server's log says it accepts clients ("Server is ready"): for servers the raw probe cannot talk to
 * (TLS required, authentication required). */
static bool nats_log_ready(const char *log_path)
{
    size_t len = 0;
    char *log = read_file(log_path, &len);
    bool ok = log && memmem(log, len, "Server is ready", 15) != NULL;
    free(log);
    return ok;
}

static bool nats_ready(const h_nats_t *n, const char *log_path)
{
    switch (n->wait) {
    case H_NATS_WAIT_LOG: return nats_log_ready(log_path);
    case H_NATS_WAIT_NONE: return true;
    default: return nats_probe(n->port);
    }
}

static bool nats_spawn(h_nats_t *n, char *log_path, size_t log_len)
{
    char store[300], port[16], pidfile[300];
    snprintf(store, sizeof store, "%s/store", n->dir);
    snprintf(pidfile, sizeof pidfile, "%s/nats.pid", n->dir);
    snprintf(log_path, log_len, "%s/nats.log", n->dir);
    snprintf(port, sizeof port, "%d", n->port);
    const char *bin = getenv("MES_NATS_SERVER");
    if (!bin || !*bin)
        bin = "nats-server";
    const char *argv_plain[] = {bin, "-js", "-a", "127.0.0.1", "-p", port, "-sd", store, "-P", pidfile, NULL};
    const char *argv_conf[] = {bin, "-c", n->conf, "-P", pidfile, NULL};
    const char *const *argv = n->conf[0] ? argv_conf : argv_plain;
    /* A restart appends to the same log: readiness is judged on what this run writes, so start a fresh file. */
    if (n->wait == H_NATS_WAIT_LOG) {
        char old[340];
        snprintf(old, sizeof old, "%s.prev", log_path);
        rename(log_path, old);
    }
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "harness: open %s: %s\n", log_path, strerror(errno));
        return false;
    }
    pid_t pid = spawn((const char **)argv, NULL, fd, n->dir, true);
    close(fd);
    if (pid < 0)
        return false;
    reg_add(REG_NATS, pid, n->dir);
    n->pid = pid;
    if (n->wait == H_NATS_WAIT_NONE)
        return true;
    int64_t deadline = clock_mono_ms() + NATS_START_TIMEOUT_MS;
    while (clock_mono_ms() < deadline) {
        if (nats_ready(n, log_path))
            return true;
        struct reg_entry *e = reg_find(REG_NATS, pid);
        if (proc_gone(pid)) {
            fprintf(stderr, "harness: nats-server on port %d exited during startup (status %d)\n", n->port,
                    e ? e->status : -1);
            reg_del(e);
            return false;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "harness: nats-server on port %d not ready after %d ms\n", n->port, NATS_START_TIMEOUT_MS);
    h_nats_stop(n);
    return false;
}

bool h_nats_start_conf(h_nats_t *n, int port, const char *extra_conf, int wait)
{
    h_init();
    memset(n, 0, sizeof *n);
    if (!make_tmpdir(n->dir, sizeof n->dir, 0755))
        return false;
    n->port = port > 0 ? port : h_free_port();
    n->wait = wait;
    snprintf(n->url, sizeof n->url, "nats://127.0.0.1:%d", n->port);
    snprintf(n->server_name, sizeof n->server_name, "n%d", n->port);
    snprintf(n->conf, sizeof n->conf, "%s/nats.conf", n->dir);
    FILE *f = fopen(n->conf, "w");
    if (!f)
        return false;
    fprintf(f, "server_name: \"%s\"\nlisten: \"127.0.0.1:%d\"\njetstream {\n  store_dir: \"%s/store\"\n}\n%s\n",
            n->server_name, n->port, n->dir, extra_conf ? extra_conf : "");
    fclose(f);
    char log_path[320];
    if (nats_spawn(n, log_path, sizeof log_path))
        return true;
    print_tail(log_path, 20);
    return false;
}

bool h_nats_wait_ready(h_nats_t *n, int timeout_ms)
{
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/nats.log", n->dir);
    int mode = n->wait == H_NATS_WAIT_NONE ? H_NATS_WAIT_JS : n->wait;
    h_nats_t probe = *n;
    probe.wait = mode;
    for (int64_t deadline = clock_mono_ms() + timeout_ms; clock_mono_ms() < deadline; sleep_ms(50)) {
        if (nats_ready(&probe, log_path))
            return true;
        if (proc_gone(n->pid))
            return false;
    }
    return false;
}

void h_nats_kill(h_nats_t *n)
{
    struct reg_entry *e = reg_find(REG_NATS, n->pid);
    if (!e)
        return;
    kill(n->pid, SIGKILL);
    while (!proc_gone(n->pid))
        sleep_ms(5);
    reg_del(e);
}

bool h_nats_start(h_nats_t *n)
{
    h_init();
    memset(n, 0, sizeof *n);
    if (!make_tmpdir(n->dir, sizeof n->dir, 0755))
        return false;
    char log_path[320];
    for (int attempt = 0; attempt < 3; attempt++) {
        n->port = h_free_port();
        snprintf(n->url, sizeof n->url, "nats://127.0.0.1:%d", n->port);
        if (nats_spawn(n, log_path, sizeof log_path))
            return true;
        print_tail(log_path, 20); /* most likely a port taken by a parallel test: try another */
    }
    return false;
}

void h_nats_stop(h_nats_t *n)
{
    struct reg_entry *e = reg_find(REG_NATS, n->pid);
    if (!e)
        return;
    if (!proc_gone(n->pid)) {
        kill(n->pid, SIGTERM);
        int64_t deadline = clock_mono_ms() + STOP_GRACE_MS;
        while (!proc_gone(n->pid) && clock_mono_ms() < deadline)
            sleep_ms(10);
        if (!proc_gone(n->pid)) {
            fprintf(stderr, "harness: nats-server %d ignored SIGTERM for %d ms; SIGKILL\n", (int)n->pid, STOP_GRACE_MS);
            kill(-n->pid, SIGKILL);
            kill(n->pid, SIGKILL);
            while (!proc_gone(n->pid))
                sleep_ms(5);
        }
    }
    reg_del(e);
}

bool h_nats_restart(h_nats_t *n)
{
    h_init();
    h_nats_stop(n);
    char log_path[320];
    /* The port was ours a moment ago; retry briefly in case a socket still holds it. */
    for (int64_t deadline = clock_mono_ms() + 10000;;) {
        if (nats_spawn(n, log_path, sizeof log_path))
            return true;
        if (clock_mono_ms() > deadline) {
            print_tail(log_path, 20);
            return false;
        }
        sleep_ms(200);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* PostgreSQL server.                                                                                           */

static char pg_bindir[256];

static const char *pg_bin(void)
{
    if (pg_bindir[0])
        return pg_bindir;
    const char *env = getenv("MES_PG_BINDIR");
    if (env && *env) {
        snprintf(pg_bindir, sizeof pg_bindir, "%s", env);
        return pg_bindir;
    }
    int best = 0;
    DIR *d = opendir("/usr/lib/postgresql");
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            int v = atoi(de->d_name);
            char probe[300];
            snprintf(probe, sizeof probe, "/usr/lib/postgresql/%s/bin/pg_ctl", de->d_name);
            if (v > best && access(probe, X_OK) == 0)
                best = v;
        }
        closedir(d);
    }
    if (best)
        snprintf(pg_bindir, sizeof pg_bindir, "/usr/lib/postgresql/%d/bin", best);
    else
        snprintf(pg_bindir, sizeof pg_bindir, "/usr/lib/postgresql/15/bin");
    return pg_bindir;
}

static bool chown_postgres(const char *path);

/* Runs a PostgreSQL binary as the postgres user (PostgreSQL refuses root), cwd = a dir that user can read. */
static int run_as_postgres(const char *const *pg_argv, const char *cwd, int timeout_ms, char **out)
{
    const char *argv[32];
    int k = 0;
    bool root = geteuid() == 0;
    if (root) {
        argv[k++] = "runuser";
        argv[k++] = "-u";
        argv[k++] = "postgres";
        argv[k++] = "--";
    }
    for (int i = 0; pg_argv[i] && k < 31; i++)
        argv[k++] = pg_argv[i];
    argv[k] = NULL;
    return run_capture(argv, NULL, cwd, timeout_ms, out);
}

static int nftw_chown_uid, nftw_chown_gid;

static int chown_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return lchown(path, (uid_t)nftw_chown_uid, (gid_t)nftw_chown_gid) == 0 ? 0 : -1;
}

static bool chown_postgres(const char *path)
{
    if (geteuid() != 0)
        return true; /* already running as the owner */
    struct passwd *pw = getpwnam("postgres");
    if (!pw) {
        fprintf(stderr, "harness: no 'postgres' user (install the postgresql package)\n");
        return false;
    }
    nftw_chown_uid = (int)pw->pw_uid;
    nftw_chown_gid = (int)pw->pw_gid;
    if (nftw(path, chown_one, 32, FTW_PHYS) != 0) {
        fprintf(stderr, "harness: chown -R postgres %s: %s\n", path, strerror(errno));
        return false;
    }
    return true;
}

static bool copy_tree(const char *from, const char *to)
{
    char *out = NULL;
    const char *argv[] = {"cp", "-a", from, to, NULL};
    int st = run_capture(argv, NULL, NULL, 60000, &out);
    if (st != 0)
        fprintf(stderr, "harness: cp -a %s %s failed (%d): %s\n", from, to, st, out ? out : "");
    free(out);
    return st == 0;
}

/* Ensures an initdb'd template cluster exists (once per build dir; flock'ed because ctest -j runs test processes
 * in parallel) and returns its path. The template is created elsewhere and renamed into place, so its presence
 * means it is complete. */
static bool pg_template(char *out, size_t outlen)
{
    const char *bdir = getenv("MES_BUILD_DIR");
    if (bdir && *bdir && access(bdir, W_OK) == 0)
        snprintf(out, outlen, "%s/pg-template", bdir);
    else
        snprintf(out, outlen, "/tmp/mes-pg-template-%u", (unsigned)getuid());
    char lock[300], version_file[300], want_version[16];
    snprintf(lock, sizeof lock, "%s.lock", out);
    snprintf(version_file, sizeof version_file, "%s/PG_VERSION", out);
    const char *bin = pg_bin();
    const char *vpos = strstr(bin, "/postgresql/");
    snprintf(want_version, sizeof want_version, "%d", vpos ? atoi(vpos + 12) : 0);

    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lfd < 0 || flock(lfd, LOCK_EX) != 0) {
        fprintf(stderr, "harness: lock %s: %s\n", lock, strerror(errno));
        if (lfd >= 0)
            close(lfd);
        return false;
    }
    bool ok = false;
    char *have = read_file(version_file, NULL);
    if (have && atoi(have) == atoi(want_version) && atoi(have) > 0) {
        ok = true;
        goto done;
    }
    rm_tree(out);
    char work[256], data[300], initdb[300], staged[320];
    if (!make_tmpdir(work, sizeof work, 0700) || !chown_postgres(work))
        goto done;
    snprintf(data, sizeof data, "%s/data", work);
    snprintf(initdb, sizeof initdb, "%s/initdb", bin);
    const char *argv[] = {initdb,     "-D",        data, "-A",   "trust",      "-U",
                          "postgres", "--no-sync", "-E", "UTF8", "--locale=C", NULL};
    char *log = NULL;
    int st = run_as_postgres(argv, work, 120000, &log);
    if (st != 0) {
        fprintf(stderr, "harness: initdb failed (%d):\n%s\n", st, log ? log : "");
        free(log);
        goto done;
    }
    free(log);
    snprintf(staged, sizeof staged, "%s.tmp.%d", out, (int)getpid());
    rm_tree(staged);
    if (!copy_tree(data, staged))
        goto done;
    if (rename(staged, out) != 0) {
        fprintf(stderr, "harness: rename %s -> %s: %s\n", staged, out, strerror(errno));
        rm_tree(staged);
        goto done;
    }
    ok = true;
done:
    free(have);
    flock(lfd, LOCK_UN);
    close(lfd);
    return ok;
}

static bool pg_answers(const char *dsn, char *err, size_t errlen)
{
    char conninfo[320];
    snprintf(conninfo, sizeof conninfo, "%s connect_timeout=2", dsn);
    PGconn *c = PQconnectdb(conninfo);
    bool ok = false;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, "SELECT 1");
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
    }
    if (!ok && err)
        snprintf(err, errlen, "%s", PQerrorMessage(c));
    PQfinish(c);
    return ok;
}

static bool pg_ctl_start(h_pg_t *p, bool quiet)
{
    char ctl[300], logf[300], opts[2600], pidfile[300];
    snprintf(ctl, sizeof ctl, "%s/pg_ctl", pg_bin());
    snprintf(logf, sizeof logf, "%s/pg.log", p->dir);
    snprintf(pidfile, sizeof pidfile, "%s/postmaster.pid", p->dir);
    /* MES_HARNESS_PG_OPTS adds server options, e.g. auto_explain for profiling a benchmark's statements. */
    const char *extra = getenv("MES_HARNESS_PG_OPTS");
    snprintf(opts, sizeof opts,
             "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off -c synchronous_commit=off "
             "-c full_page_writes=off -c max_connections=200 %s %s",
             p->port, p->dir, extra ? extra : "", p->opts);
    snprintf(p->dsn, sizeof p->dsn, "host=127.0.0.1 port=%d user=postgres dbname=postgres", p->port);
    const char *argv[] = {ctl, "-D", p->dir, "-l", logf, "-o", opts, "-w", "-t", "60", "start", NULL};
    char *out = NULL;
    int st = run_as_postgres(argv, p->dir, PG_START_TIMEOUT_MS, &out);
    if (st != 0) {
        if (!quiet) {
            fprintf(stderr, "harness: pg_ctl start (port %d) failed (%d): %s\n", p->port, st, out ? out : "");
            print_tail(logf, 20);
        }
        free(out);
        /* pg_ctl may have timed out with a postmaster still starting: do not leave it behind. */
        char *pidtxt = read_file(pidfile, NULL);
        pid_t pm = pidtxt ? (pid_t)atol(pidtxt) : 0;
        free(pidtxt);
        if (pm > 0) {
            char cmdpath[64];
            snprintf(cmdpath, sizeof cmdpath, "/proc/%d/cmdline", (int)pm);
            size_t len;
            char *cmd = read_file(cmdpath, &len);
            for (size_t i = 0; cmd && i < len; i++)
                if (!cmd[i])
                    cmd[i] = ' ';
            if (cmd && strstr(cmd, p->dir)) {
                kill_children_of(pm, SIGKILL);
                kill(pm, SIGKILL);
                for (int64_t dl = clock_mono_ms() + 3000; !proc_gone(pm) && clock_mono_ms() < dl;)
                    sleep_ms(10);
            }
            free(cmd);
        }
        return false;
    }
    free(out);
    char *pidtxt = read_file(pidfile, NULL);
    p->pid = pidtxt ? (pid_t)atol(pidtxt) : 0;
    free(pidtxt);
    if (p->pid <= 0) {
        fprintf(stderr, "harness: no postmaster.pid in %s after pg_ctl start\n", p->dir);
        return false;
    }
    reg_add(REG_PG, p->pid, p->dir);
    char err[512] = "";
    for (int64_t deadline = clock_mono_ms() + 20000;;) {
        if (pg_answers(p->dsn, err, sizeof err))
            return true;
        if (clock_mono_ms() > deadline || proc_gone(p->pid))
            break;
        sleep_ms(50);
    }
    fprintf(stderr, "harness: PostgreSQL on port %d does not answer: %s\n", p->port, err);
    print_tail(logf, 20);
    h_pg_stop(p);
    return false;
}

bool h_pg_start(h_pg_t *p)
{
    return h_pg_start_opts(p, NULL);
}

bool h_pg_start_opts(h_pg_t *p, const char *server_opts)
{
    h_init();
    memset(p, 0, sizeof *p);
    if (server_opts && strlen(server_opts) >= sizeof p->opts) {
        fprintf(stderr, "harness: server options too long (%zu bytes)\n", strlen(server_opts));
        return false;
    }
    snprintf(p->opts, sizeof p->opts, "%s", server_opts ? server_opts : "");
    char tmpl[256], from[300];
    if (!pg_template(tmpl, sizeof tmpl))
        return false;
    if (!make_tmpdir(p->dir, sizeof p->dir, 0700))
        return false;
    snprintf(from, sizeof from, "%s/.", tmpl);
    if (!copy_tree(from, p->dir) || !chown_postgres(p->dir))
        return false;
    chmod(p->dir, 0700);
    for (int attempt = 0; attempt < 3; attempt++) {
        p->port = h_free_port();
        if (pg_ctl_start(p, attempt < 2))
            return true;
        /* most likely a port taken by a parallel test: try another */
    }
    return false;
}

void h_pg_stop(h_pg_t *p)
{
    struct reg_entry *e = reg_find(REG_PG, p->pid);
    if (!e)
        return;
    if (!proc_gone(p->pid)) {
        char ctl[300];
        snprintf(ctl, sizeof ctl, "%s/pg_ctl", pg_bin());
        const char *argv[] = {ctl, "-D", p->dir, "-m", "fast", "-w", "-t", "20", "stop", NULL};
        char *out = NULL;
        int st = run_as_postgres(argv, p->dir, 25000, &out);
        if (st != 0)
            fprintf(stderr, "harness: pg_ctl stop (port %d) failed (%d): %s\n", p->port, st, out ? out : "");
        free(out);
        int64_t deadline = clock_mono_ms() + STOP_GRACE_MS;
        while (!proc_gone(p->pid) && clock_mono_ms() < deadline)
            sleep_ms(10);
        if (!proc_gone(p->pid)) {
            fprintf(stderr, "harness: postmaster %d still alive after pg_ctl stop; SIGKILL\n", (int)p->pid);
            kill_children_of(p->pid, SIGKILL);
            kill(p->pid, SIGKILL);
            while (!proc_gone(p->pid))
                sleep_ms(5);
        }
    }
    reg_del(e);
}

bool h_pg_start_standby(h_pg_t *s, const h_pg_t *primary, const char *app_name, const char *server_opts)
{
    h_init();
    memset(s, 0, sizeof *s);
    if (server_opts && strlen(server_opts) >= sizeof s->opts) {
        fprintf(stderr, "harness: server options too long (%zu bytes)\n", strlen(server_opts));
        return false;
    }
    snprintf(s->opts, sizeof s->opts, "%s", server_opts ? server_opts : "");
    if (!make_tmpdir(s->dir, sizeof s->dir, 0700) || !chown_postgres(s->dir))
        return false;
    char bb[300], port[16], conf[300], logf[300];
    snprintf(bb, sizeof bb, "%s/pg_basebackup", pg_bin());
    snprintf(port, sizeof port, "%d", primary->port);
    /* -c fast: do not wait for a spread checkpoint; -N: the copy need not be fsynced (fsync=off everywhere). */
    const char *argv[] = {bb,     "-h", "127.0.0.1", "-p",     port, "-U",   "postgres", "-D",
                          s->dir, "-R", "-X",        "stream", "-c", "fast", "-N",       NULL};
    char *out = NULL;
    int st = run_as_postgres(argv, s->dir, 120000, &out);
    if (st != 0) {
        fprintf(stderr, "harness: pg_basebackup from port %d failed (%d): %s\n", primary->port, st, out ? out : "");
        free(out);
        return false;
    }
    free(out);
    chmod(s->dir, 0700);
    /* The copy carries the primary's log; the standby writes its own. */
    snprintf(logf, sizeof logf, "%s/pg.log", s->dir);
    unlink(logf);
    /* -R wrote a primary_conninfo without application_name; a later line of the same file wins. */
    snprintf(conf, sizeof conf, "%s/postgresql.auto.conf", s->dir);
    FILE *f = fopen(conf, "a");
    if (!f) {
        fprintf(stderr, "harness: %s: %s\n", conf, strerror(errno));
        return false;
    }
    fprintf(f, "primary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=%s'\n", primary->port,
            app_name);
    fclose(f);
    bool started = false;
    for (int attempt = 0; attempt < 3 && !started; attempt++) {
        s->port = h_free_port();
        started = pg_ctl_start(s, attempt < 2);
    }
    if (!started)
        return false;
    long long streaming = h_pg_wait_int(primary, 1, 30000,
                                        "SELECT count(*) FROM pg_stat_replication WHERE application_name = '%s'"
                                        " AND state = 'streaming'",
                                        app_name);
    if (streaming != 1) {
        fprintf(stderr, "harness: standby %s (port %d) does not stream from port %d\n", app_name, s->port,
                primary->port);
        return false;
    }
    return true;
}

bool h_pg_promote(h_pg_t *p)
{
    h_init();
    char ctl[300];
    snprintf(ctl, sizeof ctl, "%s/pg_ctl", pg_bin());
    const char *argv[] = {ctl, "-D", p->dir, "-w", "-t", "60", "promote", NULL};
    char *out = NULL;
    int st = run_as_postgres(argv, p->dir, 70000, &out);
    if (st != 0) {
        fprintf(stderr, "harness: pg_ctl promote (port %d) failed (%d): %s\n", p->port, st, out ? out : "");
        free(out);
        return false;
    }
    free(out);
    return h_pg_wait_int(p, 0, 30000, "SELECT pg_is_in_recovery()::int") == 0;
}

void h_pg_stop_immediate(h_pg_t *p)
{
    struct reg_entry *e = reg_find(REG_PG, p->pid);
    if (!e)
        return;
    kill(p->pid, SIGQUIT);
    int64_t deadline = clock_mono_ms() + STOP_GRACE_MS;
    while (!proc_gone(p->pid) && clock_mono_ms() < deadline)
        sleep_ms(5);
    if (!proc_gone(p->pid)) {
        kill_children_of(p->pid, SIGKILL);
        kill(p->pid, SIGKILL);
        while (!proc_gone(p->pid))
            sleep_ms(5);
    }
    reg_del(e);
}

bool h_pg_restart(h_pg_t *p)
{
    h_init();
    h_pg_stop(p);
    for (int64_t deadline = clock_mono_ms() + 10000;;) {
        if (pg_ctl_start(p, clock_mono_ms() < deadline))
            return true;
        if (clock_mono_ms() > deadline)
            return false;
        sleep_ms(200);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* The service under test.                                                                                      */

bool h_svc_start(h_svc_t *s, const char *company, const h_nats_t *n, const h_pg_t *p, const char *const *env)
{
    h_init();
    memset(s, 0, sizeof *s);
    const char *bin = getenv("MES_SERVICE_BIN");
    if (!bin || !*bin) {
        fprintf(stderr, "harness: MES_SERVICE_BIN is not set (ctest sets it; run the test through ctest or export "
                        "MES_SERVICE_BIN=build/message-event-service)\n");
        return false;
    }
    snprintf(s->company, sizeof s->company, "%s", company);
    char dir[200];
    if (!make_tmpdir(dir, sizeof dir, 0755))
        return false;
    snprintf(s->log_path, sizeof s->log_path, "%s/service.log", dir);
    s->http_port = h_free_port();
    char v_co[128], v_nats[320], v_pg[320], v_port[32];
    snprintf(v_co, sizeof v_co, "COMPANY_ID=%s", company);
    snprintf(v_nats, sizeof v_nats, "NATS_URL=%s", n ? n->url : "");
    snprintf(v_pg, sizeof v_pg, "POSTGRES_DSN=%s", p ? p->dsn : "");
    snprintf(v_port, sizeof v_port, "SERVER_PORT=%d", s->http_port);
    const char *ours[] = {v_co, v_nats, v_pg, v_port, "SERVER_ADDRESS=127.0.0.1", "LOG_LEVEL=info", NULL};
    char **envp = env_merge(ours, env);
    int fd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        strv_free_null(envp);
        return false;
    }
    const char *argv[] = {bin, NULL};
    pid_t pid = spawn(argv, envp, fd, dir, true);
    close(fd);
    strv_free_null(envp);
    if (pid < 0)
        return false;
    s->pid = pid;
    reg_add(REG_SVC, pid, dir);
    return true;
}

/* Searches the log for needle, reading only what was appended since the last look. */
bool h_svc_wait_log(h_svc_t *s, const char *needle, int timeout_ms)
{
    size_t nlen = strlen(needle), have = 0, cap = 65536;
    char *win = malloc(cap);
    off_t off = 0;
    int64_t deadline = clock_mono_ms() + timeout_ms;
    bool found = false;
    for (;;) {
        struct reg_entry *e = reg_find(REG_SVC, s->pid);
        bool gone = !e || e->exited || proc_gone(s->pid);
        int fd = open(s->log_path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            for (;;) {
                if (have + 4096 > cap) {
                    /* keep only the tail that could still be the start of a match */
                    size_t keep = nlen > have ? have : nlen;
                    memmove(win, win + have - keep, keep);
                    have = keep;
                    if (have + 4096 > cap) {
                        cap = have + 65536;
                        win = realloc(win, cap);
                    }
                }
                ssize_t r = pread(fd, win + have, cap - have - 1, off);
                if (r <= 0)
                    break;
                off += r;
                have += (size_t)r;
                win[have] = '\0';
                if (memmem(win, have, needle, nlen)) {
                    found = true;
                    break;
                }
            }
            close(fd);
        }
        if (found || gone || clock_mono_ms() >= deadline)
            break;
        sleep_ms(20);
    }
    free(win);
    return found;
}

bool h_svc_wait_ready(h_svc_t *s, int timeout_ms)
{
    bool ok = h_svc_wait_log(s, READY_LINE, timeout_ms);
    if (!ok) {
        struct reg_entry *e = reg_find(REG_SVC, s->pid);
        if (!e || e->exited || proc_gone(s->pid))
            fprintf(stderr, "harness: service (%s) exited with status %d before it was ready\n", s->company,
                    e ? e->status : -1);
        else
            fprintf(stderr, "harness: service (%s) not ready within %d ms\n", s->company, timeout_ms);
        print_tail(s->log_path, 30);
    }
    return ok;
}

int h_svc_signal(h_svc_t *s, int sig, int timeout_ms)
{
    struct reg_entry *e = reg_find(REG_SVC, s->pid);
    if (!e)
        return -1;
    if (e->exited || proc_gone(s->pid)) {
        int st = e->status;
        reg_del(e);
        return st;
    }
    if (sig == SIGKILL) {
        kill(-s->pid, SIGKILL);
        kill(s->pid, SIGKILL);
        while (!proc_gone(s->pid))
            sleep_ms(5);
        int st = e->status;
        reg_del(e);
        return st;
    }
    if (kill(s->pid, sig) != 0)
        return -1;
    if (sig != SIGTERM && sig != SIGINT)
        return 0;
    int64_t deadline = clock_mono_ms() + timeout_ms;
    while (!proc_gone(s->pid)) {
        if (clock_mono_ms() >= deadline) {
            fprintf(stderr, "harness: service did not exit within %d ms of signal %d; SIGKILL\n", timeout_ms, sig);
            kill(-s->pid, SIGKILL);
            kill(s->pid, SIGKILL);
            while (!proc_gone(s->pid))
                sleep_ms(5);
            reg_del(e);
            return -1;
        }
        sleep_ms(10);
    }
    int st = e->status;
    reg_del(e);
    return st;
}

int h_svc_wait_exit(h_svc_t *s, int timeout_ms)
{
    struct reg_entry *e = reg_find(REG_SVC, s->pid);
    if (!e)
        return -1;
    int64_t deadline = clock_mono_ms() + timeout_ms;
    while (!e->exited && !proc_gone(s->pid)) {
        if (clock_mono_ms() >= deadline)
            return -1;
        sleep_ms(10);
    }
    int st = e->status;
    reg_del(e);
    return st;
}

char *h_svc_log(const h_svc_t *s)
{
    char *txt = read_file(s->log_path, NULL);
    return txt ? txt : strdup("");
}

/* ------------------------------------------------------------------------------------------------------------ */
/* HTTP client.                                                                                                 */

static char *dechunk(const char *p, const char *end, size_t *outlen)
{
    char *out = malloc((size_t)(end - p) + 1);
    size_t len = 0;
    while (p < end) {
        char *q;
        unsigned long n = strtoul(p, &q, 16);
        const char *eol = strstr(q, "\r\n");
        if (!eol || eol >= end)
            break;
        p = eol + 2;
        if (n == 0 || (size_t)(end - p) < n)
            break;
        memcpy(out + len, p, n);
        len += n;
        p += n + 2;
    }
    out[len] = '\0';
    *outlen = len;
    return out;
}

int h_http(int port, const char *method, const char *path, char **body)
{
    if (body)
        *body = NULL;
    int fd = tcp_connect(port, 10000);
    if (fd < 0)
        return -1;
    char req[1024];
    int rl = snprintf(req, sizeof req,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: mes-harness\r\nAccept: */*\r\n"
                      "Content-Length: 0\r\nConnection: close\r\n\r\n",
                      method, path, port);
    if (!send_all(fd, req, (size_t)rl)) {
        close(fd);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    int64_t deadline = clock_mono_ms() + 10000;
    for (;;) {
        if (len + 4097 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || clock_mono_ms() > deadline)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    int status = -1;
    char *hdr_end = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) == 0 && hdr_end && sscanf(buf + 8, " %d", &status) == 1) {
        *hdr_end = '\0';
        const char *b = hdr_end + 4, *end = buf + len;
        size_t blen = (size_t)(end - b);
        char *out;
        long clen = -1;
        bool chunked = false;
        for (char *line = strstr(buf, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
            if (strncasecmp(line + 2, "Content-Length:", 15) == 0)
                clen = atol(line + 17);
            else if (strncasecmp(line + 2, "Transfer-Encoding:", 18) == 0 && strcasestr(line + 20, "chunked"))
                chunked = true;
        }
        if (chunked) {
            out = dechunk(b, end, &blen);
        } else {
            if (clen >= 0 && (size_t)clen < blen)
                blen = (size_t)clen;
            out = malloc(blen + 1);
            memcpy(out, b, blen);
            out[blen] = '\0';
        }
        if (body)
            *body = out;
        else
            free(out);
    }
    free(buf);
    return status;
}

double h_metric(int port, const char *series)
{
    char *body = NULL;
    int st = h_http(port, "GET", "/metrics", &body);
    double v = -1;
    size_t sl = strlen(series);
    if (st == 200 && body) {
        for (char *line = body; line && *line;) {
            char *nl = strchr(line, '\n');
            if (line[0] != '#' && strncmp(line, series, sl) == 0 && (line[sl] == ' ' || line[sl] == '\t')) {
                v = strtod(line + sl + 1, NULL);
                break;
            }
            line = nl ? nl + 1 : NULL;
        }
    }
    free(body);
    return v;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* libpq client, one cached connection per DSN per process.                                                     */

struct pg_cache {
    pid_t owner;
    char dsn[256];
    PGconn *conn;
};
static struct pg_cache pgc[16];
static pthread_mutex_t pg_mu = PTHREAD_MUTEX_INITIALIZER;

static void quiet_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

PGconn *h_pg_conn(const h_pg_t *p)
{
    pid_t me = getpid();
    pthread_mutex_lock(&pg_mu);
    struct pg_cache *slot = NULL, *free_slot = NULL;
    for (size_t i = 0; i < sizeof pgc / sizeof pgc[0]; i++) {
        if (pgc[i].conn && pgc[i].owner == me && strcmp(pgc[i].dsn, p->dsn) == 0)
            slot = &pgc[i];
        else if (!free_slot && (!pgc[i].conn || pgc[i].owner != me))
            free_slot = &pgc[i];
    }
    if (!slot && free_slot) {
        slot = free_slot;
        slot->owner = me;
        snprintf(slot->dsn, sizeof slot->dsn, "%s", p->dsn);
        slot->conn = PQconnectdb(p->dsn); /* an inherited (forked) PGconn is leaked on purpose, never used */
        PQsetNoticeProcessor(slot->conn, quiet_notice, NULL);
    } else if (slot && PQstatus(slot->conn) != CONNECTION_OK) {
        PQreset(slot->conn); /* the server was restarted since we last used it */
    }
    PGconn *c = slot ? slot->conn : NULL;
    pthread_mutex_unlock(&pg_mu);
    if (c && PQstatus(c) != CONNECTION_OK)
        return NULL;
    return c;
}

static PGresult *pg_query(const h_pg_t *p, const char *sql, bool quiet, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *c = h_pg_conn(p);
        if (!c) {
            if (err)
                snprintf(err, errlen, "cannot connect to %s", p->dsn);
            if (!quiet)
                fprintf(stderr, "harness: cannot connect to %s\n", p->dsn);
            return NULL;
        }
        PGresult *r = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
            return r;
        PQclear(r);
        if (PQstatus(c) == CONNECTION_BAD && attempt == 0)
            continue; /* connection died (server restart): reconnect once and retry */
        if (err)
            snprintf(err, errlen, "%s", PQerrorMessage(c));
        if (!quiet)
            fprintf(stderr, "harness: SQL failed: %s\n  %s", sql, PQerrorMessage(c));
        return NULL;
    }
    return NULL;
}

static char *vfmt(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        return NULL;
    return s;
}

static long long result_int(PGresult *r)
{
    long long v = -1;
    if (r && PQntuples(r) > 0 && PQnfields(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    return v;
}

long long h_pg_int(const h_pg_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = vfmt(fmt, ap);
    va_end(ap);
    PGresult *r = sql ? pg_query(p, sql, false, NULL, 0) : NULL;
    long long v = result_int(r);
    PQclear(r);
    free(sql);
    return v;
}

char *h_pg_str(const h_pg_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = vfmt(fmt, ap);
    va_end(ap);
    PGresult *r = sql ? pg_query(p, sql, false, NULL, 0) : NULL;
    char *v = NULL;
    if (r && PQntuples(r) > 0 && PQnfields(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    free(sql);
    return v;
}

bool h_pg_exec(const h_pg_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = vfmt(fmt, ap);
    va_end(ap);
    PGresult *r = sql ? pg_query(p, sql, false, NULL, 0) : NULL;
    bool ok = r != NULL;
    PQclear(r);
    free(sql);
    return ok;
}

long long h_pg_wait_int(const h_pg_t *p, long long want, int timeout_ms, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = vfmt(fmt, ap);
    va_end(ap);
    if (!sql)
        return -1;
    long long v = -1;
    char err[512] = "";
    for (int64_t deadline = clock_mono_ms() + timeout_ms;;) {
        PGresult *r = pg_query(p, sql, true, err, sizeof err);
        v = result_int(r);
        if (r)
            err[0] = '\0';
        PQclear(r);
        if (v == want || clock_mono_ms() >= deadline)
            break;
        sleep_ms(50);
    }
    if (v != want)
        fprintf(stderr, "harness: waited %d ms for %lld, last %lld: %s%s%s", timeout_ms, want, v, sql,
                err[0] ? "\n  last error: " : "", err[0] ? err : "\n");
    free(sql);
    return v;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* nats.c client, one cached connection per URL per process, reconnecting forever (tests restart nats).         */

struct nats_cache {
    pid_t owner;
    char url[256];
    natsConnection *nc;
    jsCtx *js;
};
static struct nats_cache natc[8];
static pthread_mutex_t nats_mu = PTHREAD_MUTEX_INITIALIZER;

#define JS_WAIT_MS 5000

static jsCtx *nats_js(const h_nats_t *n)
{
    pid_t me = getpid();
    pthread_mutex_lock(&nats_mu);
    struct nats_cache *slot = NULL, *free_slot = NULL;
    for (size_t i = 0; i < sizeof natc / sizeof natc[0]; i++) {
        if (natc[i].nc && natc[i].owner == me && strcmp(natc[i].url, n->url) == 0)
            slot = &natc[i];
        else if (!free_slot && (!natc[i].nc || natc[i].owner != me))
            free_slot = &natc[i];
    }
    if (slot && natsConnection_IsClosed(slot->nc)) {
        jsCtx_Destroy(slot->js);
        natsConnection_Destroy(slot->nc);
        memset(slot, 0, sizeof *slot);
        free_slot = slot;
        slot = NULL;
    }
    if (!slot && free_slot) {
        natsOptions *o = NULL;
        natsConnection *nc = NULL;
        jsCtx *js = NULL;
        jsOptions jo;
        natsStatus s = natsOptions_Create(&o);
        /* n->url may be a comma list (a cluster): nats.c 3.4.1 connects to lists only through SetServers. */
        char urls[sizeof n->url], *items[8];
        int nitems = 0;
        snprintf(urls, sizeof urls, "%s", n->url);
        for (char *save = NULL, *t = strtok_r(urls, ", ", &save); t && nitems < 8; t = strtok_r(NULL, ", ", &save))
            items[nitems++] = t;
        if (s == NATS_OK)
            s = natsOptions_SetServers(o, (const char **)items, nitems);
        if (s == NATS_OK)
            s = natsOptions_SetMaxReconnect(o, -1);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectWait(o, 50);
        if (s == NATS_OK)
            s = natsOptions_SetTimeout(o, 2000);
        if (s == NATS_OK)
            s = natsOptions_SetName(o, "mes-harness");
        if (s == NATS_OK)
            s = natsConnection_Connect(&nc, o);
        if (s == NATS_OK)
            s = jsOptions_Init(&jo);
        if (s == NATS_OK) {
            jo.Wait = JS_WAIT_MS;
            s = natsConnection_JetStream(&js, nc, &jo);
        }
        natsOptions_Destroy(o);
        if (s != NATS_OK) {
            fprintf(stderr, "harness: connect %s: %s\n", n->url, natsStatus_GetText(s));
            natsConnection_Destroy(nc);
        } else {
            /* a slot inherited through fork() belongs to the parent's nats.c threads: abandon it */
            free_slot->owner = me;
            snprintf(free_slot->url, sizeof free_slot->url, "%s", n->url);
            free_slot->nc = nc;
            free_slot->js = js;
            slot = free_slot;
        }
    }
    jsCtx *js = slot ? slot->js : NULL;
    pthread_mutex_unlock(&nats_mu);
    return js;
}

jsCtx *h_nats_jsctx(const h_nats_t *n)
{
    return nats_js(n);
}

static bool transient(natsStatus s)
{
    return s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS || s == NATS_CONNECTION_CLOSED ||
           s == NATS_CONNECTION_DISCONNECTED || s == NATS_NO_SERVER || s == NATS_IO_ERROR || s == NATS_STALE_CONNECTION;
}

bool h_publish(const h_nats_t *n, const char *subject, const char *data, size_t len, const char *msg_id)
{
    int64_t start = clock_mono_ms(), deadline = start + 30000, no_resp_since = 0;
    /* A cluster (a URL list) answers "no responders" while it elects a stream leader: 5-15 s under the sanitizers. */
    int64_t no_resp_limit = strchr(n->url, ',') ? 30000 : 5000;
    natsStatus s = NATS_ERR;
    jsErrCode jerr = 0;
    for (;;) {
        jsCtx *js = nats_js(n);
        if (js) {
            natsMsg *m = NULL;
            jsPubAck *pa = NULL;
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = JS_WAIT_MS;
            po.MsgId = msg_id;
            jerr = 0;
            s = natsMsg_Create(&m, subject, NULL, data, (int)len);
            if (s == NATS_OK)
                s = js_PublishMsg(&pa, js, m, &po, &jerr);
            natsMsg_Destroy(m);
            jsPubAck_Destroy(pa);
            if (s == NATS_OK)
                return true;
            if (!transient(s))
                break;
            if (s == NATS_NO_RESPONDERS) {
                /* A just-restarted JetStream answers after a moment; a subject no stream covers never does. */
                if (!no_resp_since)
                    no_resp_since = clock_mono_ms();
                else if (clock_mono_ms() - no_resp_since > no_resp_limit)
                    break;
            } else {
                no_resp_since = 0;
            }
        }
        if (clock_mono_ms() >= deadline)
            break;
        sleep_ms(100);
    }
    fprintf(stderr, "harness: publish to %s failed: %s (jerr %d)%s\n", subject, natsStatus_GetText(s), (int)jerr,
            s == NATS_NO_RESPONDERS ? " - no stream covers this subject? (h_streams_create)" : "");
    return false;
}

static int stream_replicas = 1; /* h_streams_create_replicas */

static bool ensure_stream(jsCtx *js, const char *name, const char **subjects, int nsubj, int max_age_days)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = JS_WAIT_MS;
    natsStatus s = NATS_ERR;
    jsErrCode jerr = 0;
    for (int64_t deadline = clock_mono_ms() + 20000;;) {
        jsStreamInfo *si = NULL;
        s = js_GetStreamInfo(&si, js, name, &jo, &jerr);
        jsStreamInfo_Destroy(si);
        if (s == NATS_OK)
            return true;
        if (s == NATS_NOT_FOUND) {
            jsStreamConfig cfg;
            jsStreamConfig_Init(&cfg);
            cfg.Name = name;
            cfg.Subjects = subjects;
            cfg.SubjectsLen = nsubj;
            cfg.Storage = js_FileStorage;
            cfg.Retention = js_LimitsPolicy;
            cfg.MaxAge = (int64_t)max_age_days * 86400LL * 1000000000LL;
            cfg.Replicas = stream_replicas;
            si = NULL;
            jerr = 0;
            s = js_AddStream(&si, js, &cfg, &jo, &jerr);
            jsStreamInfo_Destroy(si);
            if (s == NATS_OK || jerr == JSStreamNameExistErr)
                return true; /* or created by the service at the same moment */
        }
        if (!transient(s) || clock_mono_ms() >= deadline)
            break;
        sleep_ms(100);
    }
    fprintf(stderr, "harness: create stream %s: %s (jerr %d) %s\n", name, natsStatus_GetText(s), (int)jerr,
            nats_GetLastError(NULL));
    return false;
}

bool h_streams_create(const h_nats_t *n)
{
    jsCtx *js = nats_js(n);
    if (!js)
        return false;
    const char *rt[] = {"v1.chats.upsert.*",    "v1.chats.update.*",    "v1.messages.upsert.*",  "v1.messages.update.*",
                        "v1.contacts.upsert.*", "v1.contacts.update.*", "v1.connection.update.*"};
    const char *hist[] = {"v1.history.chats.*", "v1.history.messages.*", "v1.history.contacts.*"};
    const char *dlq[] = {"v1.dlq.>"};
    return ensure_stream(js, "wa_events_stream", rt, 7, 30) &&
           ensure_stream(js, "wa_history_events_stream", hist, 3, 30) && ensure_stream(js, "dlq_stream", dlq, 1, 7);
}

bool h_streams_create_replicas(const h_nats_t *n, int replicas)
{
    stream_replicas = replicas;
    bool ok = h_streams_create(n);
    stream_replicas = 1;
    return ok;
}

bool h_nats_cluster_start(h_nats_t node[3], h_nats_t *all)
{
    int port[3], cport[3];
    for (int i = 0; i < 3; i++) {
        port[i] = h_free_port();
        cport[i] = h_free_port();
    }
    for (int i = 0; i < 3; i++) {
        char conf[600];
        snprintf(conf, sizeof conf,
                 "cluster {\n  name: mes\n  listen: \"127.0.0.1:%d\"\n  routes: [\n"
                 "    \"nats-route://127.0.0.1:%d\"\n    \"nats-route://127.0.0.1:%d\"\n"
                 "    \"nats-route://127.0.0.1:%d\"\n  ]\n}\n",
                 cport[i], cport[0], cport[1], cport[2]);
        if (!h_nats_start_conf(&node[i], port[i], conf, H_NATS_WAIT_NONE)) /* each needs its peers to be ready */
            return false;
    }
    for (int i = 0; i < 3; i++)
        if (!h_nats_wait_ready(&node[i], 60000)) {
            fprintf(stderr, "harness: cluster node %s did not become ready\n", node[i].server_name);
            return false;
        }
    memset(all, 0, sizeof *all);
    snprintf(all->url, sizeof all->url, "%.80s,%.80s, %.80s", node[0].url, node[1].url, node[2].url);
    all->port = node[0].port;
    return true;
}

long long h_stream_count(const h_nats_t *n, const char *stream, const char *subject)
{
    natsStatus s = NATS_ERR;
    for (int64_t deadline = clock_mono_ms() + 20000;;) {
        jsCtx *js = nats_js(n);
        if (js) {
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Wait = JS_WAIT_MS;
            jo.Stream.Info.SubjectsFilter = subject;
            jsStreamInfo *si = NULL;
            jsErrCode jerr = 0;
            s = js_GetStreamInfo(&si, js, stream, &jo, &jerr);
            if (s == NATS_OK) {
                long long total = 0;
                jsStreamStateSubjects *subs = si->State.Subjects;
                for (int i = 0; subs && i < subs->Count; i++)
                    total += (long long)subs->List[i].Msgs;
                jsStreamInfo_Destroy(si);
                return total;
            }
            if (!transient(s))
                break;
        }
        if (clock_mono_ms() >= deadline)
            break;
        sleep_ms(100);
    }
    fprintf(stderr, "harness: stream info %s (%s): %s\n", stream, subject, natsStatus_GetText(s));
    return -1;
}

int h_stream_read(const h_nats_t *n, const char *stream, const char *subject, int max, char ***out)
{
    *out = NULL;
    long long avail = h_stream_count(n, stream, subject);
    if (avail < 0)
        return -1;
    int want = avail < max ? (int)avail : max;
    if (want <= 0)
        return 0;
    jsCtx *js = nats_js(n);
    if (!js)
        return -1;
    /* An ordered push consumer is ephemeral, unacknowledged and filtered: it never touches the durables the
     * service consumes from, and the server removes it after we unsubscribe. */
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = JS_WAIT_MS;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_SubscribeSync(&sub, js, subject, &jo, &so, &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "harness: ordered consumer on %s/%s: %s (jerr %d)\n", stream, subject, natsStatus_GetText(s),
                (int)jerr);
        return -1;
    }
    char **v = calloc((size_t)want, sizeof *v);
    int got = 0;
    while (got < want) {
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, sub, 5000);
        if (s != NATS_OK) {
            fprintf(stderr, "harness: reading %s/%s: %s after %d of %d\n", stream, subject, natsStatus_GetText(s), got,
                    want);
            break;
        }
        int len = natsMsg_GetDataLength(m);
        v[got] = malloc((size_t)len + 1);
        memcpy(v[got], natsMsg_GetData(m), (size_t)len);
        v[got][len] = '\0';
        got++;
        jsMsgMetaData *meta = NULL;
        bool last = natsMsg_GetMetaData(&meta, m) == NATS_OK && meta->NumPending == 0;
        jsMsgMetaData_Destroy(meta);
        natsMsg_Destroy(m);
        if (last)
            break;
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    if (got == 0) {
        free(v);
        v = NULL;
    }
    *out = v;
    return got;
}

void h_strv_free(char **v, int n)
{
    if (!v)
        return;
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* ------------------------------------------------------------------------------------------------------------ */

static void close_clients(void)
{
    pid_t me = getpid();
    pthread_mutex_lock(&pg_mu);
    for (size_t i = 0; i < sizeof pgc / sizeof pgc[0]; i++)
        if (pgc[i].conn && pgc[i].owner == me) {
            PQfinish(pgc[i].conn);
            memset(&pgc[i], 0, sizeof pgc[i]);
        }
    pthread_mutex_unlock(&pg_mu);
    pthread_mutex_lock(&nats_mu);
    for (size_t i = 0; i < sizeof natc / sizeof natc[0]; i++)
        if (natc[i].nc && natc[i].owner == me) {
            jsCtx_Destroy(natc[i].js);
            natsConnection_Destroy(natc[i].nc);
            memset(&natc[i], 0, sizeof natc[i]);
        }
    pthread_mutex_unlock(&nats_mu);
}

/* Services still running at the end of a test are stopped the way operators stop them (SIGTERM) and must exit 0:
 * so every integration test also checks a clean shutdown, and in the sanitizer build LeakSanitizer's exit report
 * (or any ASan/UBSan abort during shutdown) fails the test. Returns false when a service did not exit 0. */
static bool stop_services_gracefully(void)
{
    bool ok = true;
    pid_t me = getpid();
    for (int i = 0; i < REG_MAX; i++) {
        struct reg_entry *e = &reg[i];
        if (!e->used || e->owner != me || e->kind != REG_SVC || e->exited || proc_gone(e->pid))
            continue;
        kill(e->pid, SIGTERM);
        int64_t deadline = clock_mono_ms() + 30000;
        while (!e->exited && !proc_gone(e->pid) && clock_mono_ms() < deadline)
            sleep_ms(10);
        if (!e->exited && !proc_gone(e->pid)) {
            fprintf(stderr, "harness: service pid %d did not exit within 30 s of SIGTERM at cleanup\n", (int)e->pid);
            ok = false;
        } else if (e->status != 0) {
            char log[300];
            snprintf(log, sizeof log, "%s/service.log", e->path);
            fprintf(stderr, "harness: service pid %d exited with status %d on SIGTERM at cleanup\n", (int)e->pid,
                    e->status);
            print_tail(log, 40);
            ok = false;
        }
    }
    return ok;
}

void h_cleanup(void)
{
    if (in_signal)
        return;
    close_clients();
    bool ok = getenv("MES_HARNESS_NO_GRACEFUL_STOP") ? true : stop_services_gracefully();
    stop_all();
    if (!ok)
        _exit(1);
}
