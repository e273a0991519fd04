/*
 * Shared helpers for the xrename C tests.
 *
 * Every test program is started by c-tests/run.sh with LD_PRELOAD pointing at
 * libxrename.so and these environment variables describing its private mounts:
 *
 *   XT_TMPFS     a tmpfs
 *   XT_EXT4      an ext4 filesystem (or, as a fallback, a directory on the
 *                disk filesystem of the work dir; XT_EXT4_KIND says which)
 *   XT_SMALL     a tmpfs with size=1m (for ENOSPC)
 *   XT_BIND_SRC  a directory D on XT_EXT4 ...
 *   XT_BIND_DST  ... bind-mounted here (same fs, different mount: EXDEV)
 *   XT_RO_SRC    a writable directory on XT_EXT4 ...
 *   XT_RO        ... bind-mounted here read-only
 *   XT_LIB       absolute path of libxrename.so
 *   XT_LIBDIR    directory holding helper shared libraries built by run.sh
 *   XT_REAL_ROOT 1 when really root (not just uid 0 in a user namespace)
 *
 * Each test is a void function; it runs in its own forked process, so a
 * failed CHECK simply prints "FAIL name: reason" and exits.  A test that
 * returns prints "ok name".  SKIP() prints "skip name: reason".
 *
 * Every program also has a "--child" mode used by tests that must exec the
 * program with a modified environment or under strace:
 *
 *   prog --child OP SRC DST [OP SRC DST ...]
 *
 * OP is rename, renameat (AT_FDCWD) or renameat2 (flags 0).  The child prints
 * nothing; it exits 0 if every call returned 0, otherwise with the errno of
 * the last failing call (255 if that errno was 0 or does not fit).
 */
#ifndef XT_COMMON_H
#define XT_COMMON_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#define XT_FN static __attribute__((unused))

extern char **environ;

static const char *xt_name = "?";
static char xt_self[PATH_MAX]; /* absolute path of this test program */

/* ------------------------------------------------------------------ */
/* Reporting                                                           */

XT_FN __attribute__((noreturn, format(printf, 3, 4))) void
xt_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    printf("FAIL %s: ", xt_name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(" [%s:%d]\n", file, line);
    fflush(stdout);
    _exit(1);
}

/* CHECK(condition, printf-style message) */
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond))                                                           \
            xt_fail(__FILE__, __LINE__, __VA_ARGS__);                          \
    } while (0)

#define FAILF(...) xt_fail(__FILE__, __LINE__, __VA_ARGS__)

/* Check that a rename-like call returned 0. */
#define CHECK_RC0(rc, what)                                                    \
    do {                                                                       \
        int xt_e_ = errno;                                                     \
        CHECK((rc) == 0, "%s returned %d, errno %d (%s); expected 0", (what), \
              (rc), xt_e_, strerror(xt_e_));                                   \
    } while (0)

/* Check that a call returned -1 with the given errno. */
#define CHECK_FAILS_WITH(rc, err, what)                                        \
    do {                                                                       \
        int xt_e_ = errno;                                                     \
        CHECK((rc) == -1 && xt_e_ == (err),                                    \
              "%s returned %d, errno %d (%s); expected -1 with %s", (what),    \
              (rc), xt_e_, strerror(xt_e_), #err);                             \
    } while (0)

XT_FN __attribute__((noreturn, format(printf, 1, 2))) void
SKIP(const char *fmt, ...)
{
    va_list ap;
    printf("skip %s: ", xt_name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    _exit(77);
}

/* ------------------------------------------------------------------ */
/* Results of calls                                                    */

/* The symbolic name of an errno value ("?" if unknown). */
XT_FN const char *err_name(int e)
{
    const char *n = strerrorname_np(e);
    return n ? n : "?";
}

/* What a rename-like call returned: rc, and errno when rc != 0. */
struct res {
    int rc, err;
};

/* "0" or "-1 ENOENT"; the last four results stay valid. */
XT_FN const char *res_str(struct res r)
{
    static char buf[4][48];
    static int k;
    char *b = buf[k++ % 4];
    if (r.rc == 0)
        snprintf(b, 48, "0");
    else
        snprintf(b, 48, "%d %s", r.rc, err_name(r.err));
    return b;
}

/* Same return value, and the same errno if it failed. */
XT_FN int res_eq(struct res a, struct res b)
{
    return a.rc == b.rc && (a.rc == 0 || a.err == b.err);
}

/* ------------------------------------------------------------------ */
/* Environment and paths                                               */

XT_FN const char *env_path(const char *var)
{
    const char *v = getenv(var);
    CHECK(v && *v, "environment variable %s is not set (run via c-tests/run.sh)",
          var);
    return v;
}

XT_FN int real_root(void)
{
    const char *v = getenv("XT_REAL_ROOT");
    return v && strcmp(v, "1") == 0;
}

XT_FN void require_real_root(const char *why)
{
    if (!real_root())
        SKIP("needs real root (%s); running in a user namespace", why);
}

XT_FN __attribute__((format(printf, 1, 2))) char *path_of(const char *fmt, ...)
{
    char *p;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&p, fmt, ap) < 0)
        abort();
    va_end(ap);
    return p;
}

XT_FN int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

XT_FN void rm_rf(const char *path)
{
    char *cmd = path_of("rm -rf -- '%s'", path);
    if (system(cmd) != 0)
        FAILF("could not remove %s", path);
    free(cmd);
}

/* Remove everything inside `dir` (e.g. leftovers of an earlier failed test). */
XT_FN void empty_dir(const char *dir)
{
    char *cmd = path_of("find '%s' -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +", dir);
    if (system(cmd) != 0)
        FAILF("could not empty %s", dir);
    free(cmd);
}

static int xt_remove_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    if (f->level == 0)
        return 0;
    if (remove(p) != 0 && errno != ENOENT) {
        printf("  cannot remove %s: %s\n", p, strerror(errno));
        return -1;
    }
    return 0;
}

/* Remove everything inside `dir` (which stays), without a shell: 0, or -1. */
XT_FN int remove_below(const char *dir)
{
    return nftw(dir, xt_remove_cb, 32, FTW_DEPTH | FTW_PHYS);
}

/*
 * A fresh empty directory for the running test below the filesystem whose
 * root is in environment variable `var`.  `tag` distinguishes several
 * directories of one test on the same filesystem.
 */
XT_FN char *test_dir(const char *var, const char *tag)
{
    char *d = path_of("%s/%s%s%s", env_path(var), xt_name, *tag ? "." : "", tag);
    rm_rf(d);
    CHECK(mkdir(d, 0755) == 0, "mkdir %s: %s", d, strerror(errno));
    return d;
}

XT_FN void mkdir1(const char *path)
{
    CHECK(mkdir(path, 0755) == 0, "mkdir %s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------ */
/* Content                                                             */

/* Deterministic pseudo-random bytes (xorshift64*), never all zeros. */
XT_FN void fill_pattern(unsigned char *buf, size_t len, uint64_t seed, uint64_t offset)
{
    /* each 8-byte word depends only on (seed, word index) */
    for (size_t i = 0; i < len; i++) {
        uint64_t idx = (offset + i) / 8;
        uint64_t x = seed * 0x9E3779B97F4A7C15ull + idx + 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x *= 0x2545F4914F6CDD1Dull;
        buf[i] = (unsigned char)(x >> (8 * ((offset + i) % 8)));
    }
}

/* FNV-1a 64 over a buffer, continuing from h. */
XT_FN uint64_t hash_update(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define HASH_INIT 0xcbf29ce484222325ull

XT_FN void write_all(int fd, const void *buf, size_t len, const char *what)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "write %s: %s", what, strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

XT_FN void write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0, "create %s: %s", path, strerror(errno));
    write_all(fd, buf, len, path);
    CHECK(close(fd) == 0, "close %s: %s", path, strerror(errno));
}

XT_FN void write_str(const char *path, const char *s)
{
    write_file(path, s, strlen(s));
}

/* Write `size` pattern bytes; returns their hash. */
XT_FN uint64_t write_pattern_file(const char *path, size_t size, uint64_t seed)
{
    static unsigned char buf[1 << 20];
    uint64_t h = HASH_INIT;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0, "create %s: %s", path, strerror(errno));
    for (size_t off = 0; off < size;) {
        size_t n = size - off < sizeof buf ? size - off : sizeof buf;
        fill_pattern(buf, n, seed, off);
        h = hash_update(h, buf, n);
        write_all(fd, buf, n, path);
        off += n;
    }
    CHECK(close(fd) == 0, "close %s: %s", path, strerror(errno));
    return h;
}

/* Whole file into a malloc'd buffer (NUL-terminated for convenience). */
XT_FN unsigned char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "read %s: %s", path, strerror(errno));
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

XT_FN uint64_t hash_file(const char *path, off_t *size)
{
    static unsigned char buf[1 << 20];
    uint64_t h = HASH_INIT;
    off_t total = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "read %s: %s", path, strerror(errno));
        if (r == 0)
            break;
        h = hash_update(h, buf, (size_t)r);
        total += r;
    }
    close(fd);
    *size = total;
    return h;
}

/* The file at `path` must exist and hold exactly `len` bytes `want`. */
XT_FN void check_content(const char *path, const void *want, size_t len, const char *what)
{
    struct stat st;
    CHECK(lstat(path, &st) == 0, "%s: %s is missing (%s)", what, path, strerror(errno));
    CHECK(S_ISREG(st.st_mode), "%s: %s is not a regular file (mode %o)", what,
          path, st.st_mode);
    size_t n;
    unsigned char *got = read_file(path, &n);
    CHECK(n == len, "%s: %s has %zu bytes, expected %zu", what, path, n, len);
    if (len > 0 && memcmp(got, want, len) != 0) {
        size_t i = 0;
        while (got[i] == ((const unsigned char *)want)[i])
            i++;
        FAILF("%s: %s differs from the expected content at byte %zu", what, path, i);
    }
    free(got);
}

XT_FN void check_content_str(const char *path, const char *want, const char *what)
{
    check_content(path, want, strlen(want), what);
}

XT_FN void check_absent(const char *path, const char *what)
{
    struct stat st;
    CHECK(lstat(path, &st) != 0 && errno == ENOENT,
          "%s: %s should not exist but does (mode %o, size %lld)", what, path,
          st.st_mode, (long long)st.st_size);
}

/* ------------------------------------------------------------------ */
/* Directory listings                                                  */

static int xt_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The names in `dir` (without . and ..), sorted, in a malloc'd array of
 * malloc'd strings; more than `max` entries fail the test.
 */
XT_FN char **sorted_names(const char *dir, size_t max, size_t *count)
{
    DIR *d = opendir(dir);
    CHECK(d, "opendir %s: %s", dir, strerror(errno));
    char **names = malloc((max ? max : 1) * sizeof *names);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        CHECK(n < max, "too many entries in %s", dir);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], xt_cmp_str);
    *count = n;
    return names;
}

/* Sorted, space-separated names in `dir` (without . and ..). */
XT_FN char *list_dir(const char *dir)
{
    size_t n;
    char **names = sorted_names(dir, 4096, &n);
    size_t total = 1;
    for (size_t i = 0; i < n; i++)
        total += strlen(names[i]) + 1;
    char *out = calloc(1, total);
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(out, " ");
        strcat(out, names[i]);
        free(names[i]);
    }
    free(names);
    return out;
}

/* `dir` must contain exactly the names in `expected` (sorted, space-separated). */
#define CHECK_DIR(dir, expected, what)                                         \
    do {                                                                       \
        char *xt_l_ = list_dir(dir);                                           \
        CHECK(strcmp(xt_l_, (expected)) == 0,                                  \
              "%s: directory %s contains [%s], expected exactly [%s]", (what), \
              (dir), xt_l_, (expected));                                       \
        free(xt_l_);                                                           \
    } while (0)

/* ------------------------------------------------------------------ */
/* Tree snapshots                                                      */

/* A growing string. */
struct sbuf {
    char *p;
    size_t len, cap;
};

XT_FN __attribute__((format(printf, 2, 3))) void sb_add(struct sbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (sb->len + (size_t)n + 1 > sb->cap) {
        sb->cap = (sb->len + (size_t)n + 1) * 2;
        sb->p = realloc(sb->p, sb->cap);
    }
    va_start(ap, fmt);
    vsnprintf(sb->p + sb->len, sb->cap - sb->len, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

/* Printable ASCII as is, anything else (and backslash) as \xNN. */
XT_FN void sb_bytes(struct sbuf *sb, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\')
            sb_add(sb, "%c", s[i]);
        else
            sb_add(sb, "\\x%02x", s[i]);
    }
}

/* Describes one entry (`path`, display name `rel`) of a snapshot into sb. */
typedef void (*snap_entry_fn)(struct sbuf *sb, const char *path, const char *rel,
                              const struct stat *st);

/*
 * Recursive description of everything below `path` (`rel` its display name),
 * in name order: `entry` for each entry, then for a directory what is in it.
 * More than `max` entries in one directory fail the test.
 */
XT_FN void snap_tree(struct sbuf *sb, const char *path, const char *rel, size_t max,
                     snap_entry_fn entry)
{
    size_t n;
    char **names = sorted_names(path, max, &n);
    for (size_t i = 0; i < n; i++) {
        char *p = path_of("%s/%s", path, names[i]);
        char *r = path_of("%s/%s", rel, names[i]);
        struct stat st;
        CHECK(lstat(p, &st) == 0, "lstat %s: %s", p, strerror(errno));
        entry(sb, p, r, &st);
        if (S_ISDIR(st.st_mode))
            snap_tree(sb, p, r, max, entry);
        free(p);
        free(r);
        free(names[i]);
    }
    free(names);
}

/* "S: <snapshot of S> | D: <snapshot of D>", malloc'd. */
XT_FN char *snapshot2_with(const char *S, const char *D, size_t max, snap_entry_fn entry)
{
    struct sbuf sb = {0};
    sb_add(&sb, "S:");
    snap_tree(&sb, S, "", max, entry);
    sb_add(&sb, " | D:");
    snap_tree(&sb, D, "", max, entry);
    return sb.p;
}

/* ------------------------------------------------------------------ */
/* Cross-device sanity                                                 */

/*
 * Prove with the raw system call (bypassing the preloaded library) that the
 * kernel refuses a rename from src_dir to dst_dir with EXDEV; otherwise the
 * test would not exercise xrename at all.  The probe file is created in
 * create_dir, which is src_dir itself or a writable path to it.
 */
XT_FN void require_kernel_exdev_via(const char *create_dir, const char *src_dir,
                                    const char *dst_dir)
{
    char *c = path_of("%s/.xt-probe", create_dir);
    char *a = path_of("%s/.xt-probe", src_dir);
    char *b = path_of("%s/.xt-probe", dst_dir);
    write_str(c, "probe");
    long rc = syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, 0);
    int e = errno;
    unlink(c);
    unlink(b);
    CHECK(rc == -1 && e == EXDEV,
          "setup: kernel rename %s -> %s gave %ld/%s, expected EXDEV", src_dir,
          dst_dir, rc, strerror(e));
    free(a);
    free(b);
    free(c);
}

XT_FN void require_kernel_exdev(const char *src_dir, const char *dst_dir)
{
    require_kernel_exdev_via(src_dir, src_dir, dst_dir);
}

/*
 * Fresh directories for the running test on XT_TMPFS (*sd) and XT_EXT4 (*dd),
 * both named after `tag`, between which the kernel's rename gives EXDEV.
 */
XT_FN void xdev_dirs(const char *tag, char **sd, char **dd)
{
    *sd = test_dir("XT_TMPFS", tag);
    *dd = test_dir("XT_EXT4", tag);
    require_kernel_exdev(*sd, *dd);
}

/* The mounts a cross-device move is tried between. */
struct mount_pair {
    const char *label, *src_env, *dst_env;
};
static const struct mount_pair mount_pairs[] __attribute__((unused)) = {
    {"tmpfs->ext4", "XT_TMPFS", "XT_EXT4"},
    {"ext4->tmpfs", "XT_EXT4", "XT_TMPFS"},
    {"bind D->B", "XT_BIND_SRC", "XT_BIND_DST"},
};

/* ------------------------------------------------------------------ */
/* The three hooked entry points, selectable by name                   */

enum op { OP_RENAME, OP_RENAMEAT, OP_RENAMEAT2 };
static const char *const op_names[] = {"rename", "renameat", "renameat2"};

XT_FN int do_op(enum op op, const char *src, const char *dst)
{
    switch (op) {
    case OP_RENAME:
        return rename(src, dst);
    case OP_RENAMEAT:
        return renameat(AT_FDCWD, src, AT_FDCWD, dst);
    case OP_RENAMEAT2:
        return renameat2(AT_FDCWD, src, AT_FDCWD, dst, 0);
    }
    abort();
}

XT_FN int op_from_name(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(s, op_names[i]) == 0)
            return i;
    return -1;
}

/* ------------------------------------------------------------------ */
/* Child processes                                                     */

/*
 * Run argv with the current environment, modified:
 *   set     NULL-terminated "NAME=value" entries replacing/adding variables
 *   unset   NULL-terminated names to remove
 * cwd, out_path, err_path may be NULL (inherit; stdout is then sent to
 * stderr so that a child can never forge this program's result lines).
 * Returns the exit code, or 1000 + signal number if killed.
 */
XT_FN int spawn(char *const argv[], const char *const set[], const char *const unset[],
                const char *cwd, const char *out_path, const char *err_path,
                pid_t *pid_out)
{
    size_t n = 0;
    while (environ[n])
        n++;
    size_t ns = 0;
    while (set && set[ns])
        ns++;
    char **envp = calloc(n + ns + 1, sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int drop = 0;
        size_t len = strcspn(environ[i], "=");
        for (size_t j = 0; set && set[j]; j++)
            if (strncmp(set[j], environ[i], len) == 0 && set[j][len] == '=')
                drop = 1;
        for (size_t j = 0; unset && unset[j]; j++)
            if (strlen(unset[j]) == len && strncmp(unset[j], environ[i], len) == 0)
                drop = 1;
        if (!drop)
            envp[k++] = environ[i];
    }
    for (size_t j = 0; j < ns; j++)
        envp[k++] = (char *)set[j];
    envp[k] = NULL;

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        int fd;
        if (out_path) {
            fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || dup2(fd, 1) < 0)
                _exit(126);
            close(fd);
        } else if (dup2(2, 1) < 0) {
            _exit(126);
        }
        if (err_path) {
            fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || dup2(fd, 2) < 0)
                _exit(126);
            close(fd);
        }
        execvpe(argv[0], argv, envp);
        _exit(127);
    }
    free(envp);
    if (pid_out)
        *pid_out = pid;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        CHECK(errno == EINTR, "waitpid: %s", strerror(errno));
    if (WIFSIGNALED(status))
        return 1000 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

XT_FN const char *describe_status(int st)
{
    static char buf[64];
    if (st >= 1000)
        snprintf(buf, sizeof buf, "killed by signal %d (%s)", st - 1000,
                 strsignal(st - 1000));
    else if (st == 0)
        snprintf(buf, sizeof buf, "exit 0 (success)");
    else
        snprintf(buf, sizeof buf, "exit %d (errno %s?)", st, err_name(st));
    return buf;
}

static int xt_child_main(int argc, char **argv)
{
    /* argv: prog --child [OP SRC DST]... */
    int result = 0;
    if ((argc - 2) % 3 != 0)
        return 254;
    for (int i = 2; i < argc; i += 3) {
        int op = op_from_name(argv[i]);
        if (op < 0)
            return 253;
        if (do_op((enum op)op, argv[i + 1], argv[i + 2]) != 0)
            result = (errno > 0 && errno < 253) ? errno : 255;
    }
    return result;
}

/* ------------------------------------------------------------------ */
/* Test runner                                                         */

struct xt_test {
    const char *name;
    void (*fn)(void);
};
#define TEST(fn) {#fn, fn}

static int xt_main(int argc, char **argv, const struct xt_test *tests, size_t ntests)
{
    if (argc > 1 && strcmp(argv[1], "--child") == 0)
        return xt_child_main(argc, argv);

    ssize_t n = readlink("/proc/self/exe", xt_self, sizeof xt_self - 1);
    if (n <= 0) {
        printf("FAIL %s: readlink /proc/self/exe: %s\n", argv[0], strerror(errno));
        return 1;
    }
    xt_self[n] = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    umask(022);

    int failed = 0;
    for (size_t i = 0; i < ntests; i++) {
        if (argc > 1) { /* optional filter: run only the named tests */
            int want = 0;
            for (int a = 1; a < argc; a++)
                if (strcmp(argv[a], tests[i].name) == 0)
                    want = 1;
            if (!want)
                continue;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            printf("FAIL %s: fork: %s\n", tests[i].name, strerror(errno));
            failed = 1;
            continue;
        }
        if (pid == 0) {
            xt_name = tests[i].name;
            alarm(120); /* a hung test is killed and reported, not waited for */
            tests[i].fn();
            printf("ok %s\n", xt_name);
            fflush(stdout);
            _exit(0);
        }
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (WIFSIGNALED(status)) {
            printf("FAIL %s: test process killed by signal %d (%s)%s\n",
                   tests[i].name, WTERMSIG(status), strsignal(WTERMSIG(status)),
                   WTERMSIG(status) == SIGALRM ? " - timed out after 120 s" : "");
            failed = 1;
        } else if (WEXITSTATUS(status) == 1) {
            failed = 1; /* the test printed its FAIL line */
        } else if (WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 77) {
            printf("FAIL %s: test process exited with status %d\n", tests[i].name,
                   WEXITSTATUS(status));
            failed = 1;
        }
    }
    return failed;
}

#define XT_MAIN(...)                                                           \
    int main(int argc, char **argv)                                            \
    {                                                                          \
        static const struct xt_test tests[] = {__VA_ARGS__};                   \
        return xt_main(argc, argv, tests, sizeof tests / sizeof tests[0]);     \
    }

#endif
