/*
 * Concurrency and process life (issue 5): many threads moving at once,
 * racing movers onto one name (threads and processes), fork in a
 * multithreaded parent, signals interrupting a long move, rename() from a
 * signal handler on the fast path, and exec keeping the shim.
 *
 * Needs no link flag: pthread lives in libc since glibc 2.34.
 *
 * Helpers that run in several threads at once use their own buffers: the
 * write_pattern_file/hash_file helpers of common.h keep static ones.
 */
#include "common.h"

#include <pthread.h>
#include <semaphore.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/time.h>
#include <time.h>

#define MIB (1u << 20)

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

/* errno name, never NULL */
static const char *ename(int e)
{
    const char *n = strerrorname_np(e);
    return n ? n : "?";
}

/* Watchdog: a timeout (never synchronisation). Fails the test if it fires. */
static char wd_msg[512];

static void wd_fire(int sig)
{
    (void)sig;
    ssize_t r = write(1, wd_msg, strlen(wd_msg));
    (void)r;
    _exit(1);
}

/*
 * Arms a CLOCK_MONOTONIC timer delivering SIGUSR2 after `seconds` (a
 * separate timer from ITIMER_REAL/alarm, which some tests use themselves).
 */
static void watchdog(int seconds, const char *what)
{
    snprintf(wd_msg, sizeof wd_msg,
             "FAIL %s: watchdog: still running after %d s (%s) - deadlock or hang\n",
             xt_name, seconds, what);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = wd_fire;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR2;
    timer_t t;
    CHECK(timer_create(CLOCK_MONOTONIC, &sev, &t) == 0, "timer_create: %s", strerror(errno));
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = seconds;
    CHECK(timer_settime(t, 0, &its, NULL) == 0, "timer_settime: %s", strerror(errno));
}

/* Thread-safe: writes `size` pattern bytes (seed) to path; 0 or errno. */
static int ts_write_pattern(const char *path, size_t size, uint64_t seed)
{
    unsigned char buf[16384];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return errno;
    for (size_t off = 0; off < size;) {
        size_t n = size - off < sizeof buf ? size - off : sizeof buf;
        fill_pattern(buf, n, seed, off);
        size_t w = 0;
        while (w < n) {
            ssize_t r = write(fd, buf + w, n - w);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                int e = r < 0 ? errno : EIO;
                close(fd);
                return e;
            }
            w += (size_t)r;
        }
        off += n;
    }
    return close(fd) == 0 ? 0 : errno;
}

/*
 * Compares the file at path with `size` pattern bytes of `seed`.
 * Returns 0 if identical; otherwise fills `why`.
 */
static int pattern_differs(const char *path, size_t size, uint64_t seed, char *why,
                           size_t whylen)
{
    unsigned char got[16384], want[16384];
    struct stat st;
    if (lstat(path, &st) != 0) {
        snprintf(why, whylen, "%s is missing (%s)", path, strerror(errno));
        return 1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s is not a regular file (mode %o)", path, st.st_mode);
        return 1;
    }
    if ((size_t)st.st_size != size) {
        snprintf(why, whylen, "%s has %lld bytes, expected %zu", path,
                 (long long)st.st_size, size);
        return 1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "open %s: %s", path, strerror(errno));
        return 1;
    }
    size_t off = 0;
    for (;;) {
        ssize_t r = read(fd, got, sizeof got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whylen, "read %s: %s", path, strerror(errno));
            close(fd);
            return 1;
        }
        if (r == 0)
            break;
        if (off + (size_t)r > size) {
            snprintf(why, whylen, "%s is longer than %zu bytes", path, size);
            close(fd);
            return 1;
        }
        fill_pattern(want, (size_t)r, seed, off);
        if (memcmp(got, want, (size_t)r) != 0) {
            size_t i = 0;
            while (got[i] == want[i])
                i++;
            snprintf(why, whylen, "%s differs from the expected content at byte %zu",
                     path, off + i);
            close(fd);
            return 1;
        }
        off += (size_t)r;
    }
    close(fd);
    if (off != size) {
        snprintf(why, whylen, "%s: read %zu bytes, expected %zu", path, off, size);
        return 1;
    }
    return 0;
}

#define CHECK_PATTERN(path, size, seed, what)                                  \
    do {                                                                       \
        char xt_why_[PATH_MAX + 200];                                          \
        CHECK(!pattern_differs((path), (size), (seed), xt_why_, sizeof xt_why_), \
              "%s: %s", (what), xt_why_);                                      \
    } while (0)

/*
 * `dir` must hold exactly the names expected[0..n-1] (any order); names
 * found that are not expected (a `.xrename-*` leftover, say) are listed.
 */
static void check_dir_exactly(const char *dir, char *const *expected, size_t n,
                              const char *what)
{
    DIR *d = opendir(dir);
    CHECK(d, "%s: opendir %s: %s", what, dir, strerror(errno));
    unsigned char *seen = calloc(n + 1, 1);
    char extra[1024] = "";
    size_t nextra = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        size_t i;
        for (i = 0; i < n; i++)
            if (strcmp(expected[i], e->d_name) == 0)
                break;
        if (i < n) {
            seen[i] = 1;
        } else {
            if (nextra++ < 8 && strlen(extra) + strlen(e->d_name) + 2 < sizeof extra) {
                strcat(extra, " ");
                strcat(extra, e->d_name);
            }
        }
    }
    closedir(d);
    CHECK(nextra == 0, "%s: %zu unexpected entr%s in %s:%s", what, nextra,
          nextra == 1 ? "y" : "ies", dir, extra);
    for (size_t i = 0; i < n; i++)
        CHECK(seen[i], "%s: %s/%s is missing", what, dir, expected[i]);
    free(seen);
}

/* ------------------------------------------------------------------ */
/* 8 threads x 100 files                                               */

#define NTHREADS 8
#define NFILES 100

struct bulk {
    int t;
    const char *src_dir, *dst_dir;
    pthread_barrier_t *start;
    int rc[NFILES], err[NFILES];
};

static size_t bulk_size(int t, int i)
{
    if (i % 25 == 0)
        return 0; /* a few empty files too */
    return ((size_t)(t * NFILES + i) * 7919u) % (96u * 1024) + (size_t)(i % 7);
}

static uint64_t bulk_seed(int t, int i)
{
    return 1000u + (uint64_t)t * NFILES + (uint64_t)i;
}

static void *bulk_thread(void *arg)
{
    struct bulk *b = arg;
    enum op op = (enum op)(b->t % 3);
    pthread_barrier_wait(b->start);
    for (int i = 0; i < NFILES; i++) {
        char src[PATH_MAX], dst[PATH_MAX];
        snprintf(src, sizeof src, "%s/t%d-f%03d", b->src_dir, b->t, i);
        snprintf(dst, sizeof dst, "%s/t%d-f%03d", b->dst_dir, b->t, i);
        errno = 0;
        b->rc[i] = do_op(op, src, dst);
        b->err[i] = errno;
    }
    return NULL;
}

static void eight_threads_move_a_hundred_files_each(void)
{
    watchdog(60, "8 threads moving 100 files each");
    /* even threads tmpfs -> ext4, odd threads ext4 -> tmpfs, all at once */
    char *tmpfs_src = test_dir("XT_TMPFS", "src"), *tmpfs_dst = test_dir("XT_TMPFS", "dst");
    char *ext4_src = test_dir("XT_EXT4", "src"), *ext4_dst = test_dir("XT_EXT4", "dst");
    require_kernel_exdev(tmpfs_src, ext4_dst);
    require_kernel_exdev(ext4_src, tmpfs_dst);

    static struct bulk b[NTHREADS];
    pthread_t th[NTHREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, NTHREADS);
    for (int t = 0; t < NTHREADS; t++) {
        b[t].t = t;
        b[t].src_dir = t % 2 ? ext4_src : tmpfs_src;
        b[t].dst_dir = t % 2 ? tmpfs_dst : ext4_dst;
        b[t].start = &start;
        for (int i = 0; i < NFILES; i++) {
            char *p = path_of("%s/t%d-f%03d", b[t].src_dir, t, i);
            int e = ts_write_pattern(p, bulk_size(t, i), bulk_seed(t, i));
            CHECK(e == 0, "setup: writing %s: %s", p, strerror(e));
            free(p);
        }
    }
    for (int t = 0; t < NTHREADS; t++)
        CHECK(pthread_create(&th[t], NULL, bulk_thread, &b[t]) == 0, "pthread_create");
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);

    int failures = 0;
    char first[256] = "";
    for (int t = 0; t < NTHREADS; t++)
        for (int i = 0; i < NFILES; i++)
            if (b[t].rc[i] != 0 && failures++ == 0)
                snprintf(first, sizeof first, "thread %d (%s) file %d: returned %d, errno %s",
                         t, op_names[t % 3], i, b[t].rc[i], ename(b[t].err[i]));
    CHECK(failures == 0, "%d of %d concurrent cross-device moves failed; first: %s",
          failures, NTHREADS * NFILES, first);

    char **names_t = calloc(NTHREADS * NFILES / 2, sizeof(char *));
    char **names_e = calloc(NTHREADS * NFILES / 2, sizeof(char *));
    size_t nt = 0, ne = 0;
    for (int t = 0; t < NTHREADS; t++) {
        for (int i = 0; i < NFILES; i++) {
            char *what = path_of("thread %d file %d (%s)", t, i,
                                 t % 2 ? "ext4->tmpfs" : "tmpfs->ext4");
            char *name = path_of("t%d-f%03d", t, i);
            CHECK_PATTERN(path_of("%s/%s", b[t].dst_dir, name), bulk_size(t, i),
                          bulk_seed(t, i), what);
            check_absent(path_of("%s/%s", b[t].src_dir, name), what);
            if (t % 2)
                names_t[nt++] = name;
            else
                names_e[ne++] = name;
        }
    }
    check_dir_exactly(tmpfs_src, NULL, 0, "source dir on tmpfs after the moves");
    check_dir_exactly(ext4_src, NULL, 0, "source dir on ext4 after the moves");
    check_dir_exactly(ext4_dst, names_e, ne, "destination dir on ext4 after the moves");
    check_dir_exactly(tmpfs_dst, names_t, nt, "destination dir on tmpfs after the moves");
}

/* ------------------------------------------------------------------ */
/* Racing movers onto one name                                         */

#define NRACERS 8
#define NROUNDS 3

struct racer {
    const char *src, *dst;
    enum op op;
    pthread_barrier_t *start;
    int rc, err;
};

static size_t racer_size(int i)
{
    return MIB + (size_t)i * 393216u + (size_t)i * 4093u; /* 1 .. ~3.7 MiB */
}

static uint64_t racer_seed(int round, int i)
{
    return 50000u + (uint64_t)round * 100 + (uint64_t)i;
}

static void *racer_thread(void *arg)
{
    struct racer *r = arg;
    pthread_barrier_wait(r->start);
    errno = 0;
    r->rc = do_op(r->op, r->src, r->dst);
    r->err = errno;
    return NULL;
}

static const char OLD_DST[] = "old destination content\n";

/*
 * After a race: every mover that returned 0 has no source left; every one
 * that failed has its source byte-identical; the destination is exactly the
 * content of one mover that returned 0; no extra entries anywhere.
 */
static void check_race_outcome(const char *label, int round, int had_old,
                               const char *sd, const char *dd, char *const *srcs,
                               const char *dst, const int *rc, const int *err)
{
    char what[160];
    int winners = 0;
    char errs[512] = "";
    char **left = calloc(NRACERS, sizeof(char *));
    size_t nleft = 0;
    for (int i = 0; i < NRACERS; i++) {
        snprintf(what, sizeof what, "%s round %d: mover %d (%s)", label, round, i,
                 op_names[i % 3]);
        if (rc[i] == 0) {
            winners++;
            check_absent(srcs[i], what);
        } else {
            CHECK(rc[i] == -1 && err[i] != 0,
                  "%s returned %d with errno %d; expected 0, or -1 with an errno", what,
                  rc[i], err[i]);
            char *w2 = path_of("%s failed with %s, but its source is not intact", what,
                               ename(err[i]));
            CHECK_PATTERN(srcs[i], racer_size(i), racer_seed(round, i), w2);
            left[nleft++] = strrchr(srcs[i], '/') + 1;
            size_t l = strlen(errs);
            snprintf(errs + l, sizeof errs - l, " %d:%s", i, ename(err[i]));
        }
    }
    snprintf(what, sizeof what, "%s round %d", label, round);
    CHECK(winners > 0,
          "%s: every mover failed (%s)%s; expected at least one to move its file",
          what, errs, had_old ? " and the old destination stayed" : "");

    /* the destination is byte-identical to exactly one mover that returned 0 */
    struct stat st;
    CHECK(lstat(dst, &st) == 0, "%s: destination %s is missing: %s", what, dst,
          strerror(errno));
    int match = -1;
    for (int i = 0; i < NRACERS; i++)
        if ((size_t)st.st_size == racer_size(i))
            match = i; /* sizes are distinct */
    CHECK(match >= 0, "%s: destination has %lld bytes, which is no mover's size%s",
          what, (long long)st.st_size,
          (size_t)st.st_size == sizeof OLD_DST - 1 ? " (it is the old destination)" : "");
    char *w3 = path_of("%s: destination has mover %d's size but", what, match);
    CHECK_PATTERN(dst, racer_size(match), racer_seed(round, match), w3);
    CHECK(rc[match] == 0,
          "%s: the destination holds mover %d's file, but that mover's rename "
          "returned %d (errno %s)",
          what, match, rc[match], ename(err[match]));

    char *target = "target";
    check_dir_exactly(dd, &target, 1, what);
    check_dir_exactly(sd, left, nleft, what);
    if (nleft)
        printf("  note: %s: %d mover(s) failed:%s (allowed: sources intact)\n", what,
               NRACERS - winners, errs);
    free(left);
}

struct race_setup {
    char *sd, *dd, *dst;
    char *srcs[NRACERS];
};

static void race_prepare(struct race_setup *s, const char *label, int round, int had_old)
{
    char tag[64];
    snprintf(tag, sizeof tag, "%s-%d", label, round);
    s->sd = test_dir("XT_TMPFS", tag);
    s->dd = test_dir("XT_EXT4", tag);
    require_kernel_exdev(s->sd, s->dd);
    s->dst = path_of("%s/target", s->dd);
    for (int i = 0; i < NRACERS; i++) {
        s->srcs[i] = path_of("%s/src%d", s->sd, i);
        int e = ts_write_pattern(s->srcs[i], racer_size(i), racer_seed(round, i));
        CHECK(e == 0, "setup: %s: %s", s->srcs[i], strerror(e));
    }
    if (had_old)
        write_str(s->dst, OLD_DST);
}

static void race_threads(int round, int had_old)
{
    struct race_setup s;
    race_prepare(&s, "threads", round, had_old);
    struct racer r[NRACERS];
    pthread_t th[NRACERS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, NRACERS);
    for (int i = 0; i < NRACERS; i++) {
        r[i] = (struct racer){s.srcs[i], s.dst, (enum op)(i % 3), &start, -2, 0};
        CHECK(pthread_create(&th[i], NULL, racer_thread, &r[i]) == 0, "pthread_create");
    }
    int rc[NRACERS], err[NRACERS];
    for (int i = 0; i < NRACERS; i++) {
        pthread_join(th[i], NULL);
        rc[i] = r[i].rc;
        err[i] = r[i].err;
    }
    pthread_barrier_destroy(&start);
    check_race_outcome(had_old ? "8 threads onto an existing name" : "8 threads onto one new name",
                       round, had_old, s.sd, s.dd, s.srcs, s.dst, rc, err);
}

static void race_processes(int round, int had_old)
{
    struct race_setup s;
    race_prepare(&s, "procs", round, had_old);
    int go[2];
    CHECK(pipe(go) == 0, "pipe: %s", strerror(errno));
    pid_t pid[NRACERS];
    fflush(stdout);
    for (int i = 0; i < NRACERS; i++) {
        pid[i] = fork();
        CHECK(pid[i] >= 0, "fork: %s", strerror(errno));
        if (pid[i] == 0) {
            close(go[1]);
            char c;
            while (read(go[0], &c, 1) < 0 && errno == EINTR)
                ; /* EOF: the parent closed its end, everybody starts */
            errno = 0;
            int rc = do_op((enum op)(i % 3), s.srcs[i], s.dst);
            _exit(rc == 0 ? 0 : (errno > 0 && errno < 250) ? errno : 250);
        }
    }
    close(go[0]);
    close(go[1]); /* start */
    int rc[NRACERS], err[NRACERS];
    for (int i = 0; i < NRACERS; i++) {
        int status;
        while (waitpid(pid[i], &status, 0) < 0)
            CHECK(errno == EINTR, "waitpid: %s", strerror(errno));
        CHECK(WIFEXITED(status), "round %d: mover process %d killed by signal %d", round,
              i, WTERMSIG(status));
        rc[i] = WEXITSTATUS(status) == 0 ? 0 : -1;
        err[i] = WEXITSTATUS(status);
    }
    check_race_outcome(had_old ? "8 processes onto an existing name"
                               : "8 processes onto one new name",
                       round, had_old, s.sd, s.dd, s.srcs, s.dst, rc, err);
}

static void racing_movers_to_one_name_leave_exactly_one_complete_winner(void)
{
    watchdog(60, "racing movers");
    for (int round = 0; round < NROUNDS; round++) {
        race_threads(round, round % 2);
        race_processes(round, round % 2);
    }
}

/* ------------------------------------------------------------------ */
/* fork in a multithreaded parent                                      */

static atomic_int busy_stop;
static atomic_int busy_errors;
static atomic_int busy_moved, busy_writer_exdev;
static char busy_first_error[256];
static pthread_barrier_t busy_ready;

struct busy {
    int kind;
    char *a, *b; /* two names: moved back and forth */
    pthread_mutex_t *mutex;
};

static void busy_error(const char *what, int e)
{
    if (atomic_fetch_add(&busy_errors, 1) == 0)
        snprintf(busy_first_error, sizeof busy_first_error, "%s: %s", what,
                 ename(e));
}

static void *busy_thread(void *arg)
{
    struct busy *b = arg;
    int first = 1, at_b = 0;
    for (unsigned long n = 0; first || !atomic_load(&busy_stop); n++) {
        if (b->kind == 2) {
            /* hold a mutex and the allocator as much as possible */
            pthread_mutex_lock(b->mutex);
            void *p = malloc(1 + (n * 977) % 70000);
            memset(p, (int)n, 1);
            free(p);
            pthread_mutex_unlock(b->mutex);
        } else {
            /* 0, 1: same-fs renames; 3: cross-device moves (inside xrename) */
            const char *from = at_b ? b->b : b->a, *to = at_b ? b->a : b->b;
            if (rename(from, to) == 0) {
                at_b = !at_b;
                if (b->kind == 3)
                    atomic_fetch_add(&busy_moved, 1);
            } else if (b->kind == 3 && errno == EXDEV) {
                /* A child forked during the previous move inherited the
                 * mover's descriptor of the file, open for writing, and
                 * holds it until it exits: the file has a writer, and the
                 * kernel's EXDEV is the right answer. Nothing moved. */
                atomic_fetch_add(&busy_writer_exdev, 1);
            } else {
                busy_error(b->kind == 3 ? "busy thread's cross-device rename"
                                        : "busy thread's same-fs rename",
                           errno);
            }
        }
        if (first) {
            first = 0;
            pthread_barrier_wait(&busy_ready);
        }
    }
    return NULL;
}

static void move_in_child_after_fork_in_multithreaded_parent(void)
{
    watchdog(60, "forking while threads are busy");
    char *sd = test_dir("XT_TMPFS", "");
    char *dd = test_dir("XT_EXT4", "");
    char *bd = test_dir("XT_TMPFS", "busy");
    char *be = test_dir("XT_EXT4", "busy");
    require_kernel_exdev(sd, dd);
    pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
    struct busy b[4];
    for (int k = 0; k < 4; k++) {
        b[k].kind = k;
        b[k].mutex = &mutex;
        b[k].a = path_of("%s/busy%d.a", bd, k);
        b[k].b = k == 3 ? path_of("%s/busy%d.b", be, k) : path_of("%s/busy%d.b", bd, k);
        write_file(b[k].a, "busy", 4);
    }
    pthread_barrier_init(&busy_ready, NULL, 5);
    pthread_t th[4];
    for (int k = 0; k < 4; k++)
        CHECK(pthread_create(&th[k], NULL, busy_thread, &b[k]) == 0, "pthread_create");
    pthread_barrier_wait(&busy_ready); /* every thread has done one round */

    enum { NFORKS = 24 };
    for (int k = 0; k < NFORKS; k++) {
        char *src = path_of("%s/f%d", sd, k), *dst = path_of("%s/f%d", dd, k);
        size_t size = 20000 + (size_t)k * 1111;
        int e = ts_write_pattern(src, size, 7000 + (uint64_t)k);
        CHECK(e == 0, "setup: %s: %s", src, strerror(e));
        fflush(stdout);
        pid_t pid = fork();
        CHECK(pid >= 0, "fork: %s", strerror(errno));
        if (pid == 0) {
            /* timeout only: default SIGALRM kills the child if it hangs */
            signal(SIGALRM, SIG_DFL);
            alarm(10);
            errno = 0;
            int rc = rename(src, dst);
            _exit(rc == 0 ? 0 : (errno > 0 && errno < 250) ? errno : 250);
        }
        int status;
        while (waitpid(pid, &status, 0) < 0)
            CHECK(errno == EINTR, "waitpid: %s", strerror(errno));
        CHECK(!(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM),
              "fork %d: the child's cross-device rename hung for 10 s (deadlock on a "
              "lock held by another thread of the parent at fork time?)",
              k);
        CHECK(WIFEXITED(status), "fork %d: child killed by signal %d (%s)", k,
              WTERMSIG(status), strsignal(WTERMSIG(status)));
        CHECK(WEXITSTATUS(status) == 0,
              "fork %d: the child's cross-device rename failed: errno %d (%s)", k,
              WEXITSTATUS(status), ename(WEXITSTATUS(status)));
        char *what = path_of("move in child of fork %d", k);
        CHECK_PATTERN(dst, size, 7000 + (uint64_t)k, what);
        check_absent(src, what);
    }
    atomic_store(&busy_stop, 1);
    for (int k = 0; k < 4; k++)
        pthread_join(th[k], NULL);
    CHECK(atomic_load(&busy_errors) == 0, "%d rename(s) of the busy threads failed; first: %s",
          atomic_load(&busy_errors), busy_first_error);
    CHECK(atomic_load(&busy_moved) > 0, "the busy thread never moved its file across devices (%d EXDEV)",
          atomic_load(&busy_writer_exdev));
    CHECK(access(b[3].a, F_OK) == 0 || access(b[3].b, F_OK) == 0, "the busy thread's file is at neither name");
    check_dir_exactly(sd, NULL, 0, "source dir after the children's moves");
}

/* ------------------------------------------------------------------ */
/* SIGALRM every millisecond                                           */

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

static void set_interval_us(long us)
{
    struct itimerval it;
    memset(&it, 0, sizeof it);
    it.it_interval.tv_usec = us;
    it.it_value.tv_usec = us;
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer: %s", strerror(errno));
}

static void move_survives_sigalrm_every_millisecond_without_sa_restart(void)
{
    /* setitimer replaces the runner's alarm(120): keep a separate watchdog */
    watchdog(50, "moving 200 MiB under SIGALRM every ms");
    const size_t size = 200u * MIB;
    char *td, *ed;
    xdev_dirs("", &td, &ed);
    char *a = path_of("%s/big", td), *b = path_of("%s/big", ed);
    uint64_t want = write_pattern_file(a, size, 4242);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: interrupted syscalls return EINTR */
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction: %s", strerror(errno));

    enum { MOVES = 4 };
    for (int m = 0; m < MOVES; m++) {
        const char *from = m % 2 ? b : a, *to = m % 2 ? a : b;
        enum op op = (enum op)(m % 3);
        char *what = path_of("move %d (%s, %s) of 200 MiB under SIGALRM every 1 ms", m,
                             op_names[op], m % 2 ? "ext4->tmpfs" : "tmpfs->ext4");
        sig_atomic_t before = alarms;
        set_interval_us(1000);
        errno = 0;
        int rc = do_op(op, from, to);
        int e = errno;
        set_interval_us(0);
        sig_atomic_t during = alarms - before;
        errno = e;
        CHECK_RC0(rc, what);
        CHECK(during > 0, "%s: setup: no SIGALRM was delivered during the move", what);
        off_t got_size;
        uint64_t got = hash_file(to, &got_size);
        CHECK(got_size == (off_t)size && got == want,
              "%s: destination has %lld bytes (expected %zu), checksum %s", what,
              (long long)got_size, size, got == want ? "same" : "differs");
        check_absent(from, what);
        printf("  note: move %d: %d SIGALRM delivered during the move\n", m, (int)during);
    }
    check_dir_exactly(ed, NULL, 0, "ext4 dir after the moves");
}

/* ------------------------------------------------------------------ */
/* rename() from a signal handler (fast path)                          */

static char h_a[PATH_MAX], h_b[PATH_MAX];
static volatile sig_atomic_t h_calls, h_failures, h_last_errno;
static sem_t h_done;
static pthread_t main_thread;
static atomic_int sender_finished;
enum { NSIGNALS = 3000 };

static void on_usr1(int sig)
{
    (void)sig;
    int saved = errno;
    const char *from = h_calls % 2 ? h_b : h_a, *to = h_calls % 2 ? h_a : h_b;
    if (rename(from, to) != 0) {
        h_failures++;
        h_last_errno = errno;
    }
    h_calls++;
    sem_post(&h_done); /* async-signal-safe */
    errno = saved;
}

static void *signal_sender(void *arg)
{
    (void)arg;
    for (int i = 0; i < NSIGNALS; i++) {
        pthread_kill(main_thread, SIGUSR1);
        while (sem_wait(&h_done) != 0 && errno == EINTR)
            ; /* the handler has run and renamed */
    }
    atomic_store(&sender_finished, 1);
    return NULL;
}

static void rename_from_signal_handler_on_fast_path_works(void)
{
    watchdog(50, "rename() in a signal handler while the main thread renames and allocates");
    char *d, *ed;
    xdev_dirs("", &d, &ed);
    snprintf(h_a, sizeof h_a, "%s/handler.a", d);
    snprintf(h_b, sizeof h_b, "%s/handler.b", d);
    write_str(h_a, "moved by the signal handler\n");
    char *m_a = path_of("%s/main.a", d), *m_b = path_of("%s/main.b", d);
    write_str(m_a, "moved by the main thread\n");
    char *x_a = path_of("%s/cross", d), *x_b = path_of("%s/cross", ed);
    write_str(x_a, "moved across devices by the main thread\n");

    CHECK(sem_init(&h_done, 0, 0) == 0, "sem_init: %s", strerror(errno));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* and no SA_RESTART: the main thread's calls see EINTR */
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
    main_thread = pthread_self();

    pthread_t sender;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old); /* the sender inherits the block */
    CHECK(pthread_create(&sender, NULL, signal_sender, NULL) == 0, "pthread_create");
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    unsigned long iter = 0, same = 0, cross = 0;
    while (!atomic_load(&sender_finished)) {
        void *p = malloc(1 + (iter * 37) % 5000);
        CHECK(p, "malloc");
        memset(p, 1, 1);
        void *q = realloc(p, 1 + (iter * 53) % 9000);
        CHECK(q, "realloc");
        free(q);
        const char *from = same % 2 ? m_b : m_a, *to = same % 2 ? m_a : m_b;
        errno = 0;
        int rc = rename(from, to);
        CHECK_RC0(rc, "main thread's same-fs rename while signals arrive");
        same++;
        if (iter % 8 == 0) {
            from = cross % 2 ? x_b : x_a;
            to = cross % 2 ? x_a : x_b;
            errno = 0;
            rc = rename(from, to);
            CHECK_RC0(rc, "main thread's cross-device rename while signals arrive");
            cross++;
        }
        iter++;
    }
    pthread_join(sender, NULL);
    CHECK(h_calls == NSIGNALS, "the handler ran %d times, expected %d", (int)h_calls,
          NSIGNALS);
    CHECK(h_failures == 0, "%d of %d rename() calls in the signal handler failed; last errno %s",
          (int)h_failures, NSIGNALS, ename(h_last_errno));
    check_content_str(NSIGNALS % 2 ? h_b : h_a, "moved by the signal handler\n",
                      "file renamed by the handler");
    check_content_str(same % 2 ? m_b : m_a, "moved by the main thread\n",
                      "file renamed by the main thread");
    check_content_str(cross % 2 ? x_b : x_a, "moved across devices by the main thread\n",
                      "file moved across devices by the main thread");
    printf("  note: %d handler renames during %lu main-thread iterations (%lu cross-device)\n",
           (int)h_calls, iter, cross);
}

/* ------------------------------------------------------------------ */
/* exec                                                                */

static void exec_keeps_the_shim_active(void)
{
    const char *preload = getenv("LD_PRELOAD");
    CHECK(preload && strstr(preload, "libxrename"),
          "setup: LD_PRELOAD is \"%s\", expected the library", preload ? preload : "(unset)");
    for (int how = 0; how < 2; how++) {
        char *sd, *dd;
        xdev_dirs(how ? "posix_spawn" : "fork-exec", &sd, &dd);
        char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
        write_str(src, "moved by an exec'd child\n");
        char *argv[] = {xt_self, "--child", "rename", src, dst, NULL};
        const char *what = how ? "posix_spawn of this program, --child rename"
                               : "fork + execvpe of this program, --child rename";
        int st;
        if (how == 0) {
            st = spawn(argv, NULL, NULL, NULL, NULL, NULL, NULL);
        } else {
            pid_t pid;
            int e = posix_spawn(&pid, xt_self, NULL, NULL, argv, environ);
            CHECK(e == 0, "posix_spawn: %s", strerror(e));
            int status;
            while (waitpid(pid, &status, 0) < 0)
                CHECK(errno == EINTR, "waitpid: %s", strerror(errno));
            st = WIFSIGNALED(status) ? 1000 + WTERMSIG(status) : WEXITSTATUS(status);
        }
        CHECK(st == 0, "%s: child %s (the kernel gives EXDEV: without the shim the "
                       "child's rename fails)",
              what, describe_status(st));
        check_content_str(dst, "moved by an exec'd child\n", what);
        check_absent(src, what);
        CHECK_DIR(sd, "", what);
        CHECK_DIR(dd, "b", what);
    }
}

/* ------------------------------------------------------------------ */
/* Deferred pthread cancellation during a move                         */

struct cancel_arg {
    const char *src, *dst;
    atomic_int ready;
    int rc, err;
};

static void *cancelled_mover(void *arg)
{
    struct cancel_arg *a = arg;
    /* Deferred cancellation (the default). Neither the atomic store nor
     * rename() is a cancellation point, and xrename disables cancellation
     * during a move, so a cancel that arrives now takes effect only at the
     * read() below. */
    atomic_store(&a->ready, 1);
    a->rc = rename(a->src, a->dst);
    a->err = errno;
    char c;
    int never[2];
    if (pipe(never) == 0)
        (void)!read(never[0], &c, 1); /* a cancellation point: the thread ends here */
    return NULL;
}

static void cancel_during_a_tree_move_never_leaves_it_half_done(void)
{
    watchdog(60, "pthread_cancel during a tree move");
    for (int round = 0; round < 4; round++) {
        char *sd, *dd;
        xdev_dirs(path_of("cancel%d", round), &sd, &dd);
        char *src = path_of("%s/tree", sd), *dst = path_of("%s/tree", dd);
        CHECK(mkdir(src, 0755) == 0, "mkdir: %s", strerror(errno));
        for (int i = 0; i < 300; i++) {
            int e = ts_write_pattern(path_of("%s/f%03d", src, i), 32768 + i, 1000 + i);
            CHECK(e == 0, "setup: %s", strerror(e));
        }
        struct cancel_arg a = {src, dst, 0, -2, 0};
        pthread_t th;
        CHECK(pthread_create(&th, NULL, cancelled_mover, &a) == 0, "pthread_create");
        while (!atomic_load(&a.ready))
            ; /* the mover is about to call rename(): cancel it now */
        CHECK(pthread_cancel(th) == 0, "pthread_cancel");
        void *res;
        CHECK(pthread_join(th, &res) == 0, "pthread_join");
        CHECK(res == PTHREAD_CANCELED, "the thread was not cancelled");
        CHECK(a.rc == 0, "round %d: rename returned %d (%s): the cancel stopped the move", round, a.rc,
              ename(a.err));
        for (int i = 0; i < 300; i++)
            CHECK_PATTERN(path_of("%s/f%03d", dst, i), 32768 + (size_t)i, 1000 + (uint64_t)i,
                          "file of a tree moved by a cancelled thread");
        check_absent(src, "source of a tree moved by a cancelled thread");
        char *only[] = {"tree"};
        check_dir_exactly(dd, only, 1, "destination dir after a cancelled thread's move");
        check_dir_exactly(sd, NULL, 0, "source dir after a cancelled thread's move");
    }
}

XT_MAIN(TEST(eight_threads_move_a_hundred_files_each),
        TEST(racing_movers_to_one_name_leave_exactly_one_complete_winner),
        TEST(move_in_child_after_fork_in_multithreaded_parent),
        TEST(move_survives_sigalrm_every_millisecond_without_sa_restart),
        TEST(rename_from_signal_handler_on_fast_path_works),
        TEST(exec_keeps_the_shim_active),
        TEST(cancel_during_a_tree_move_never_leaves_it_half_done))
