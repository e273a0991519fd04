/*
 * Error parity (issue 4): a program under xrename must not be able to tell
 * from return values and errno that a cross-device rename was emulated,
 * except that it succeeds.
 *
 * Table-driven oracle: every case is built twice,
 *   - "same":  source and destination directory on ONE filesystem (XT_TMPFS);
 *              the call is made with the raw system call, so the answer is
 *              the kernel's own;
 *   - "cross": source directory on XT_TMPFS, destination directory on
 *              XT_EXT4; the call is made through the hooked libc function.
 * Return value, errno and the resulting state of both directories (a
 * recursive listing with types, modes, file contents and link targets) must
 * agree.  A failing call must change nothing and leave no extra entry.
 *
 * Documented exception: RENAME_EXCHANGE across devices keeps the kernel's
 * answer for the cross-device call (EXDEV whenever the parents resolve), so
 * for EXCHANGE the expected value is the raw cross-device system call, and
 * whenever the same-fs oracle would succeed it must be -1/EXDEV.
 *
 * Mismatches are printed as table rows ("  | ...") and the test fails with
 * their count.
 */
#include "common.h"

/* ------------------------------------------------------------------ */
/* Small local helpers                                                 */

/* Remove everything inside `dir` (which stays), without a shell. */
static void clear_dir(const char *dir)
{
    CHECK(remove_below(dir) == 0, "could not empty %s", dir);
}

static void make_symlink(const char *target, const char *path)
{
    CHECK(symlink(target, path) == 0, "symlink %s: %s", path, strerror(errno));
}

/* A snapshot entry: escaped name, type, mode, contents or link target. */
static void snap_entry(struct sbuf *sb, const char *p, const char *r, const struct stat *st)
{
    sb_add(sb, " ");
    sb_bytes(sb, (const unsigned char *)r, strlen(r));
    if (S_ISDIR(st->st_mode)) {
        sb_add(sb, "/(%04o)", st->st_mode & 07777);
    } else if (S_ISLNK(st->st_mode)) {
        char t[PATH_MAX];
        ssize_t k = readlink(p, t, sizeof t);
        CHECK(k >= 0, "readlink %s: %s", p, strerror(errno));
        sb_add(sb, "->");
        sb_bytes(sb, (unsigned char *)t, (size_t)k);
    } else if (S_ISREG(st->st_mode)) {
        size_t len;
        unsigned char *c = read_file(p, &len);
        sb_add(sb, "(%04o)=\"", st->st_mode & 07777);
        sb_bytes(sb, c, len > 64 ? 64 : len);
        sb_add(sb, "\"");
        free(c);
    } else {
        sb_add(sb, "?(%o)", st->st_mode);
    }
}

/* Recursive description of everything below S and D. */
static char *snapshot2(const char *S, const char *D)
{
    return snapshot2_with(S, D, 512, snap_entry);
}

static int open_dir(const char *p)
{
    int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(fd >= 0, "open %s: %s", p, strerror(errno));
    return fd;
}

#define ERRNO_SENTINEL 12345

/* ------------------------------------------------------------------ */
/* The two sides                                                       */

struct side {
    char *S, *D;
};
static struct side same_side, cross_side;

static int reverse; /* cross-device from XT_EXT4 to XT_TMPFS instead */

static void setup_sides(void)
{
    char *t = test_dir("XT_TMPFS", "same");
    same_side.S = path_of("%s/S", t);
    same_side.D = path_of("%s/D", t);
    mkdir1(same_side.S);
    mkdir1(same_side.D);
    t = test_dir(reverse ? "XT_EXT4" : "XT_TMPFS", "cross-src");
    cross_side.S = path_of("%s/S", t);
    mkdir1(cross_side.S);
    t = test_dir(reverse ? "XT_TMPFS" : "XT_EXT4", "cross-dst");
    cross_side.D = path_of("%s/D", t);
    mkdir1(cross_side.D);
    require_kernel_exdev(cross_side.S, cross_side.D);
}

/* ------------------------------------------------------------------ */
/* Sources and destinations                                            */

enum { SRC_FILE, SRC_SYMLINK, SRC_SYMLINK_DIR, SRC_DIR, SRC_EMPTY_DIR, SRC_MISSING, NSRC };
static const char *const src_labels[] = {"file", "symlink", "symlink->dir", "dir+content",
                                         "empty-dir", "missing"};

static void make_src(int kind, const char *S)
{
    switch (kind) {
    case SRC_FILE:
        write_str(path_of("%s/a", S), "source file\n");
        break;
    case SRC_SYMLINK:
        make_symlink("dangling/source/target", path_of("%s/a", S));
        break;
    case SRC_SYMLINK_DIR:
        mkdir1(path_of("%s/realdir", S));
        make_symlink("realdir", path_of("%s/a", S));
        break;
    case SRC_DIR:
        mkdir1(path_of("%s/a", S));
        write_str(path_of("%s/a/f", S), "inner file\n");
        mkdir1(path_of("%s/a/sub", S));
        write_str(path_of("%s/a/sub/g", S), "deeper file\n");
        make_symlink("../f", path_of("%s/a/sub/l", S));
        break;
    case SRC_EMPTY_DIR:
        mkdir1(path_of("%s/a", S));
        break;
    case SRC_MISSING:
        break;
    }
}

struct dstkind {
    const char *label, *name;
    void (*make)(const char *D);
};

static void d_none(const char *D)
{
    (void)D;
}
static void d_file(const char *D)
{
    write_str(path_of("%s/b", D), "old destination\n");
}
static void d_symlink(const char *D)
{
    make_symlink("dangling/dest/target", path_of("%s/b", D));
}
static void d_symlink_dir(const char *D)
{
    mkdir1(path_of("%s/realdir", D));
    make_symlink("realdir", path_of("%s/b", D));
}
static void d_empty_dir(const char *D)
{
    mkdir1(path_of("%s/b", D));
}
static void d_full_dir(const char *D)
{
    mkdir1(path_of("%s/b", D));
    write_str(path_of("%s/b/x", D), "occupant\n");
}
static void d_nondir_parent(const char *D)
{
    write_str(path_of("%s/f", D), "a plain file\n");
}

static const struct dstkind dsts[] = {
    {"absent", "b", d_none},
    {"file", "b", d_file},
    {"symlink", "b", d_symlink},
    {"symlink->dir", "b", d_symlink_dir},
    {"empty-dir", "b", d_empty_dir},
    {"nonempty-dir", "b", d_full_dir},
    {"absent+slash", "b/", d_none},
    {"empty-dir+slash", "b/", d_empty_dir},
    {"file+slash", "b/", d_file},
    {"symlink->dir+slash", "b/", d_symlink_dir},
    {"under-file", "f/x", d_nondir_parent},
    {"missing-dir", "nodir/x", d_none},
};
#define NDST (sizeof dsts / sizeof dsts[0])

/* Calls: rename (absolute paths), renameat and renameat2 (dirfds, relative names). */
enum { FN_RENAME, FN_RENAMEAT, FN_RENAMEAT2 };
struct call {
    int fn;
    unsigned flags;
    const char *label;
};
static const struct call calls[] = {
    {FN_RENAME, 0, "rename"},
    {FN_RENAMEAT, 0, "renameat"},
    {FN_RENAMEAT2, 0, "renameat2"},
    {FN_RENAMEAT2, RENAME_NOREPLACE, "renameat2/NOREPLACE"},
    {FN_RENAMEAT2, RENAME_EXCHANGE, "renameat2/EXCHANGE"},
};
#define NCALL (sizeof calls / sizeof calls[0])

/* Make the call: raw system call (oracle) or hooked libc function. */
static struct res do_call(const struct call *c, const struct side *sd, const char *sname,
                          const char *dname, int raw)
{
    struct res r;
    int sfd = -1, dfd = -1;
    char *sp = path_of("%s/%s", sd->S, sname), *dp = path_of("%s/%s", sd->D, dname);
    if (c->fn != FN_RENAME) {
        sfd = open_dir(sd->S);
        dfd = open_dir(sd->D);
    }
    errno = ERRNO_SENTINEL;
    if (raw) {
        if (c->fn == FN_RENAME)
            r.rc = (int)syscall(SYS_renameat2, AT_FDCWD, sp, AT_FDCWD, dp, 0);
        else
            r.rc = (int)syscall(SYS_renameat2, sfd, sname, dfd, dname, c->flags);
    } else if (c->fn == FN_RENAME) {
        r.rc = rename(sp, dp);
    } else if (c->fn == FN_RENAMEAT) {
        r.rc = renameat(sfd, sname, dfd, dname);
    } else {
        r.rc = renameat2(sfd, sname, dfd, dname, c->flags);
    }
    r.err = errno;
    if (sfd >= 0)
        close(sfd);
    if (dfd >= 0)
        close(dfd);
    free(sp);
    free(dp);
    return r;
}

static int mismatches;

static void row(const char *call, const char *src, const char *sname, const char *dst,
                const char *dname, const char *expected, const char *got, const char *why)
{
    if (mismatches == 0)
        printf("  | %-20s | %-12s | %-5s | %-15s | %-8s | %-14s | %-14s | %s\n", "call",
               "source", "sname", "destination", "dname", "expected", "got", "problem");
    mismatches++;
    printf("  | %-20s | %-12s | %-5s | %-15s | %-8s | %-14s | %-14s | %s\n", call, src,
           sname, dst, dname, expected, got, why);
}

/*
 * One case: build it on both sides, call, compare.  `mk_src`/`mk_dst` fill
 * the S and D directories; sname/dname are the last components.
 */
static void run_case(const struct call *c, int src_kind, const char *sname,
                     const struct dstkind *dk, const char *dname)
{
    /* the kernel's answer on one filesystem */
    clear_dir(same_side.S);
    clear_dir(same_side.D);
    make_src(src_kind, same_side.S);
    dk->make(same_side.D);
    char *pre_same = snapshot2(same_side.S, same_side.D);
    struct res want = do_call(c, &same_side, sname, dname, 1);
    char *post_same = snapshot2(same_side.S, same_side.D);

    /* the emulated answer across devices */
    clear_dir(cross_side.S);
    clear_dir(cross_side.D);
    make_src(src_kind, cross_side.S);
    dk->make(cross_side.D);
    char *pre_cross = snapshot2(cross_side.S, cross_side.D);
    CHECK(strcmp(pre_same, pre_cross) == 0, "setup differs: [%s] vs [%s]", pre_same,
          pre_cross);
    struct res raw_cross = {0, 0};
    int exchange = (c->flags & RENAME_EXCHANGE) != 0;
    if (exchange) {
        raw_cross = do_call(c, &cross_side, sname, dname, 1);
        CHECK(raw_cross.rc == -1, "raw cross-device EXCHANGE succeeded?");
    }
    struct res got = do_call(c, &cross_side, sname, dname, 0);
    char *post_cross = snapshot2(cross_side.S, cross_side.D);

    const char *sl = src_labels[src_kind];
    char why[256] = "";
    struct res expect = exchange ? raw_cross : want;
    if (exchange && want.rc == 0 && !(raw_cross.rc == -1 && raw_cross.err == EXDEV))
        snprintf(why, sizeof why, "raw cross EXCHANGE gave %s, not EXDEV", res_str(raw_cross));
    if (!res_eq(got, expect)) {
        snprintf(why, sizeof why, "%s", exchange ? "differs from the raw cross-device answer"
                                                 : "differs from the same-fs kernel");
        row(c->label, sl, sname, dk->label, dname, res_str(expect), res_str(got), why);
        return;
    }
    if (got.rc == 0 && got.err != ERRNO_SENTINEL) {
        snprintf(why, sizeof why, "errno changed on success: %d -> %d (%s)", ERRNO_SENTINEL,
                 got.err, err_name(got.err));
        row(c->label, sl, sname, dk->label, dname, res_str(expect), res_str(got), why);
        return;
    }
    if (got.rc != 0 && strcmp(post_cross, pre_cross) != 0) {
        row(c->label, sl, sname, dk->label, dname, res_str(expect), res_str(got),
            "failed call changed the directories");
        printf("  |   before: %s\n  |   after:  %s\n", pre_cross, post_cross);
        return;
    }
    if (got.rc == 0 && strcmp(post_cross, post_same) != 0) {
        row(c->label, sl, sname, dk->label, dname, res_str(expect), res_str(got),
            "result differs from the same-fs rename");
        printf("  |   same-fs: %s\n  |   cross:   %s\n", post_same, post_cross);
        return;
    }
    if (why[0])
        row(c->label, sl, sname, dk->label, dname, "EXDEV", res_str(raw_cross), why);
    free(pre_same);
    free(post_same);
    free(pre_cross);
    free(post_cross);
}

static int cases_run;

static void run_source_table(int src_kind, const char *const *snames, size_t nsn)
{
    setup_sides();
    for (size_t s = 0; s < nsn; s++)
        for (size_t d = 0; d < NDST; d++)
            for (size_t c = 0; c < NCALL; c++) {
                run_case(&calls[c], src_kind, snames[s], &dsts[d], dsts[d].name);
                cases_run++;
            }
    printf("  %s: %d cases compared\n", xt_name, cases_run);
    CHECK(mismatches == 0, "%d of %d cases differ from the kernel (table above)", mismatches,
          cases_run);
}

static const char *const plain_and_slash[] = {"a", "a/"};

static void regular_file_source_errors_match_kernel(void)
{
    run_source_table(SRC_FILE, plain_and_slash, 2);
}

static void symlink_source_errors_match_kernel(void)
{
    run_source_table(SRC_SYMLINK, plain_and_slash, 2);
}

static void symlink_to_directory_source_errors_match_kernel(void)
{
    run_source_table(SRC_SYMLINK_DIR, plain_and_slash, 2);
}

static void directory_with_content_source_errors_match_kernel(void)
{
    run_source_table(SRC_DIR, plain_and_slash, 2);
}

static void empty_directory_source_errors_match_kernel(void)
{
    run_source_table(SRC_EMPTY_DIR, plain_and_slash, 2);
}

static void missing_source_errors_match_kernel(void)
{
    static const char *const names[] = {"a", "a/", "nodir/a"};
    run_source_table(SRC_MISSING, names, 3);
}

/* The same tables in the other direction, ext4 -> tmpfs (file and tree sources). */
static void errors_match_kernel_from_ext4_to_tmpfs(void)
{
    reverse = 1;
    setup_sides();
    for (int k = 0; k < NSRC; k++)
        for (size_t d = 0; d < NDST; d++)
            for (size_t c = 0; c < NCALL; c++) {
                run_case(&calls[c], k, "a", &dsts[d], dsts[d].name);
                cases_run++;
            }
    printf("  %s: %d cases compared\n", xt_name, cases_run);
    CHECK(mismatches == 0, "%d of %d cases differ from the kernel (table above)", mismatches,
          cases_run);
}

/* source below a regular file ("a/x" with a a file): ENOTDIR from the parent lookup */
static void source_path_under_non_directory_matches_kernel(void)
{
    setup_sides();
    for (size_t c = 0; c < NCALL; c++) {
        const struct dstkind dk = dsts[0];
        run_case(&calls[c], SRC_FILE, "a/x", &dk, "b");
        run_case(&calls[c], SRC_FILE, "a/.", &dk, "b");
        run_case(&calls[c], SRC_DIR, "a/f/x", &dk, "b");
        cases_run += 3;
    }
    CHECK(mismatches == 0, "%d of %d cases differ from the kernel (table above)", mismatches,
          cases_run);
}

/* "." and ".." as the last component of the source, the destination or both. */
static void dot_and_dotdot_components_match_kernel(void)
{
    setup_sides();
    static const char *const dots[] = {".", "..", "a/.", "a/..", "./", "../"};
    for (size_t c = 0; c < NCALL; c++) {
        for (size_t i = 0; i < sizeof dots / sizeof dots[0]; i++) {
            for (size_t d = 0; d < NDST; d += 4) /* absent, empty-dir, file+slash */
                run_case(&calls[c], SRC_DIR, dots[i], &dsts[d], dsts[d].name);
            for (int s = 0; s < NSRC; s++)
                run_case(&calls[c], s, "a", &dsts[4], dots[i]);
            run_case(&calls[c], SRC_DIR, dots[i], &dsts[4], dots[i]);
            cases_run += 3 + NSRC + 1;
        }
    }
    CHECK(mismatches == 0, "%d of %d cases differ from the kernel (table above)", mismatches,
          cases_run);
}

/* "./a", "a//", ".//a/" and the like resolve as the kernel resolves them. */
static void redundant_slashes_and_dot_segments_match_kernel(void)
{
    setup_sides();
    static const char *const snames[] = {"./a", "a//", ".//a/", "../S/a", "a/./"};
    static const char *const dnames[] = {"./b", "b//", ".//b/", "../D/b", "b/./"};
    static const int kinds[] = {SRC_FILE, SRC_DIR, SRC_SYMLINK};
    static const int dks[] = {0, 1, 4}; /* absent, file, empty dir */
    for (size_t c = 0; c < NCALL; c++)
        for (size_t k = 0; k < 3; k++)
            for (size_t d = 0; d < 3; d++)
                for (size_t i = 0; i < 5; i++) {
                    run_case(&calls[c], kinds[k], snames[i], &dsts[dks[d]], "b");
                    run_case(&calls[c], kinds[k], "a", &dsts[dks[d]], dnames[i]);
                    cases_run += 2;
                }
    printf("  %s: %d cases compared\n", xt_name, cases_run);
    CHECK(mismatches == 0, "%d of %d cases differ from the kernel (table above)", mismatches,
          cases_run);
}

/* Whenever EXCHANGE would succeed on one fs, across devices it is -1/EXDEV, nothing changed. */
static void rename_exchange_across_devices_gives_exdev_and_changes_nothing(void)
{
    setup_sides();
    static const int kinds[] = {SRC_FILE, SRC_SYMLINK, SRC_DIR, SRC_EMPTY_DIR};
    static const int dks[] = {1, 2, 4, 5};
    for (int fdmode = 0; fdmode < 2; fdmode++)
        for (size_t k = 0; k < 4; k++)
            for (size_t d = 0; d < 4; d++) {
                const struct dstkind *dk = &dsts[dks[d]];
                clear_dir(same_side.S);
                clear_dir(same_side.D);
                make_src(kinds[k], same_side.S);
                dk->make(same_side.D);
                long orc = syscall(SYS_renameat2, AT_FDCWD, path_of("%s/a", same_side.S),
                                   AT_FDCWD, path_of("%s/b", same_side.D), RENAME_EXCHANGE);
                CHECK(orc == 0, "same-fs EXCHANGE %s <-> %s failed: %s", src_labels[kinds[k]],
                      dk->label, strerror(errno));
                clear_dir(cross_side.S);
                clear_dir(cross_side.D);
                make_src(kinds[k], cross_side.S);
                dk->make(cross_side.D);
                char *pre = snapshot2(cross_side.S, cross_side.D);
                int rc;
                if (fdmode) {
                    int sfd = open_dir(cross_side.S), dfd = open_dir(cross_side.D);
                    rc = renameat2(sfd, "a", dfd, "b", RENAME_EXCHANGE);
                    int e = errno;
                    close(sfd);
                    close(dfd);
                    errno = e;
                } else {
                    rc = renameat2(AT_FDCWD, path_of("%s/a", cross_side.S), AT_FDCWD,
                                   path_of("%s/b", cross_side.D), RENAME_EXCHANGE);
                }
                char *what = path_of("renameat2(%s, RENAME_EXCHANGE) of %s with %s",
                                     fdmode ? "dirfds" : "AT_FDCWD", src_labels[kinds[k]],
                                     dk->label);
                CHECK_FAILS_WITH(rc, EXDEV, what);
                char *post = snapshot2(cross_side.S, cross_side.D);
                CHECK(strcmp(pre, post) == 0, "%s changed the directories: [%s] -> [%s]", what,
                      pre, post);
            }
}

/* Invalid flag combinations are refused by the kernel first, on both sides. */
static void invalid_renameat2_flags_give_kernel_answer(void)
{
    setup_sides();
    static const unsigned bad[] = {RENAME_NOREPLACE | RENAME_EXCHANGE, 1u << 20, 0x80000000u,
                                   RENAME_EXCHANGE | (1u << 2)};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        clear_dir(same_side.S);
        clear_dir(cross_side.S);
        make_src(SRC_FILE, same_side.S);
        make_src(SRC_FILE, cross_side.S);
        errno = 0;
        long orc = syscall(SYS_renameat2, AT_FDCWD, path_of("%s/a", same_side.S), AT_FDCWD,
                           path_of("%s/b", same_side.D), bad[i]);
        struct res want = {(int)orc, errno};
        errno = 0;
        int rc = renameat2(AT_FDCWD, path_of("%s/a", cross_side.S), AT_FDCWD,
                           path_of("%s/b", cross_side.D), bad[i]);
        struct res got = {rc, errno};
        CHECK(res_eq(want, got), "renameat2 flags %#x: same-fs kernel %s, cross-device %s",
              bad[i], res_str(want), res_str(got));
        CHECK(want.rc == -1 && want.err == EINVAL, "flags %#x: kernel gave %s, expected EINVAL",
              bad[i], res_str(want));
        CHECK_DIR(cross_side.S, "a", "invalid flags");
        CHECK_DIR(cross_side.D, "", "invalid flags");
    }
}

/* ------------------------------------------------------------------ */
/* Directory file descriptors                                          */

static void bad_dirfd_with_relative_path_gives_ebadf(void)
{
    setup_sides();
    make_src(SRC_FILE, cross_side.S);
    int sfd = open_dir(cross_side.S), dfd = open_dir(cross_side.D);
    int closed = open_dir(cross_side.S);
    close(closed);
    int fds[] = {9999, closed, -5};
    for (int i = 0; i < 3; i++) {
        for (int side = 0; side < 2; side++) {
            int o = side == 0 ? fds[i] : sfd, n = side == 0 ? dfd : fds[i];
            for (int f = 0; f < 4; f++) {
                unsigned flags = f == 2 ? RENAME_NOREPLACE : f == 3 ? RENAME_EXCHANGE : 0;
                errno = 0;
                int rc = f == 0 ? renameat(o, "a", n, "b") : renameat2(o, "a", n, "b", flags);
                char *what = path_of("%s(%d, \"a\", %d, \"b\", %#x)",
                                     f == 0 ? "renameat" : "renameat2", o, n, flags);
                CHECK_FAILS_WITH(rc, EBADF, what);
                long orc = syscall(SYS_renameat2, o, "a", n, "b", flags);
                CHECK(orc == -1 && errno == EBADF, "kernel: %s gave %ld %s", what, orc,
                      strerror(errno));
            }
        }
    }
    CHECK_DIR(cross_side.S, "a", "bad dirfds");
    CHECK_DIR(cross_side.D, "", "bad dirfds");
}

/* A dirfd that is not a directory, with a relative path: ENOTDIR. */
static void non_directory_dirfd_gives_enotdir(void)
{
    setup_sides();
    make_src(SRC_FILE, cross_side.S);
    write_str(path_of("%s/plain", cross_side.D), "x");
    int ffd = open(path_of("%s/plain", cross_side.D), O_RDONLY | O_CLOEXEC);
    int sfd = open_dir(cross_side.S);
    CHECK(ffd >= 0, "open: %s", strerror(errno));
    int rc = renameat(sfd, "a", ffd, "b");
    CHECK_FAILS_WITH(rc, ENOTDIR, "renameat(dir, \"a\", regular-file fd, \"b\")");
    rc = renameat2(ffd, "a", sfd, "b", 0);
    CHECK_FAILS_WITH(rc, ENOTDIR, "renameat2(regular-file fd, \"a\", dir, \"b\")");
    CHECK_DIR(cross_side.S, "a", "non-directory dirfd");
    CHECK_DIR(cross_side.D, "plain", "non-directory dirfd");
}

/* The kernel ignores the dirfd of an absolute path, however bad: so must xrename. */
static void absolute_paths_ignore_bad_dirfd(void)
{
    setup_sides();
    int closed = open_dir(cross_side.S);
    close(closed);
    int fds[] = {9999, closed, -5, AT_FDCWD};
    for (int i = 0; i < 4; i++) {
        for (int f = 0; f < 3; f++) {
            clear_dir(cross_side.S);
            clear_dir(cross_side.D);
            write_str(path_of("%s/a", cross_side.S), "absolute\n");
            char *src = path_of("%s/a", cross_side.S), *dst = path_of("%s/b", cross_side.D);
            errno = ERRNO_SENTINEL;
            int rc = f == 0   ? renameat(fds[i], src, fds[i], dst)
                     : f == 1 ? renameat2(fds[i], src, fds[i], dst, 0)
                              : renameat2(fds[i], src, fds[i], dst, RENAME_NOREPLACE);
            char *what = path_of("%s(%d, absolute, %d, absolute%s)",
                                 f == 0 ? "renameat" : "renameat2", fds[i], fds[i],
                                 f == 2 ? ", NOREPLACE" : "");
            CHECK_RC0(rc, what);
            CHECK(errno == ERRNO_SENTINEL, "%s: errno changed to %d on success", what, errno);
            check_content_str(dst, "absolute\n", what);
            CHECK_DIR(cross_side.S, "", what);
            CHECK_DIR(cross_side.D, "b", what);
        }
    }
    /* one side absolute (bad fd), the other relative to a good fd */
    clear_dir(cross_side.S);
    clear_dir(cross_side.D);
    write_str(path_of("%s/a", cross_side.S), "mixed\n");
    int dfd = open_dir(cross_side.D);
    int rc = renameat(9999, path_of("%s/a", cross_side.S), dfd, "b");
    CHECK_RC0(rc, "renameat(9999, absolute, dirfd, \"b\")");
    check_content_str(path_of("%s/b", cross_side.D), "mixed\n", "mixed dirfds");
    close(dfd);
}

/* AT_FDCWD with relative paths (on each side) and absolute paths. */
static void at_fdcwd_with_relative_and_absolute_paths_moves(void)
{
    setup_sides();
    for (int mode = 0; mode < 4; mode++) {
        for (int f = 0; f < 3; f++) {
            clear_dir(cross_side.S);
            clear_dir(cross_side.D);
            write_str(path_of("%s/a", cross_side.S), "cwd\n");
            const char *src, *dst;
            const char *cwd = mode == 0 ? cross_side.S : mode == 1 ? cross_side.D : "/";
            CHECK(chdir(cwd) == 0, "chdir %s: %s", cwd, strerror(errno));
            switch (mode) {
            case 0: /* cwd = S */
                src = "a";
                dst = path_of("%s/b", cross_side.D);
                break;
            case 1: /* cwd = D */
                src = path_of("%s/a", cross_side.S);
                dst = "./b";
                break;
            case 2: /* cwd = /, both relative */
                src = path_of("%s/a", cross_side.S + 1);
                dst = path_of("%s/b", cross_side.D + 1);
                break;
            default: /* both absolute */
                src = path_of("%s/a", cross_side.S);
                dst = path_of("%s/b", cross_side.D);
                break;
            }
            int rc = f == 0   ? rename(src, dst)
                     : f == 1 ? renameat(AT_FDCWD, src, AT_FDCWD, dst)
                              : renameat2(AT_FDCWD, src, AT_FDCWD, dst, 0);
            char *what = path_of("%s(AT_FDCWD \"%s\" -> \"%s\") in %s", op_names[f], src, dst,
                                 cwd);
            CHECK_RC0(rc, what);
            check_content_str(path_of("%s/b", cross_side.D), "cwd\n", what);
            CHECK_DIR(cross_side.S, "", what);
            CHECK_DIR(cross_side.D, "b", what);
        }
    }
    CHECK(chdir("/") == 0, "chdir /");
}

/* O_PATH descriptors are valid dirfds for the kernel: also for xrename. */
static void o_path_dirfds_move_across_devices(void)
{
    setup_sides();
    for (int k = 0; k < 3; k++) {
        clear_dir(cross_side.S);
        clear_dir(cross_side.D);
        make_src(k == 0 ? SRC_FILE : k == 1 ? SRC_DIR : SRC_SYMLINK, cross_side.S);
        clear_dir(same_side.S);
        clear_dir(same_side.D);
        make_src(k == 0 ? SRC_FILE : k == 1 ? SRC_DIR : SRC_SYMLINK, same_side.S);
        CHECK(syscall(SYS_renameat2, AT_FDCWD, path_of("%s/a", same_side.S), AT_FDCWD,
                      path_of("%s/b", same_side.D), 0) == 0,
              "same-fs rename: %s", strerror(errno));
        int sfd = open(cross_side.S, O_PATH | O_DIRECTORY | O_CLOEXEC);
        int dfd = open(cross_side.D, O_PATH | O_DIRECTORY | O_CLOEXEC);
        CHECK(sfd >= 0 && dfd >= 0, "open O_PATH: %s", strerror(errno));
        int rc = renameat(sfd, "a", dfd, "b");
        char *what = path_of("renameat(O_PATH fd, \"a\", O_PATH fd, \"b\") of a %s",
                             src_labels[k == 0 ? SRC_FILE : k == 1 ? SRC_DIR : SRC_SYMLINK]);
        CHECK_RC0(rc, what);
        char *a = snapshot2(same_side.S, same_side.D), *b = snapshot2(cross_side.S, cross_side.D);
        CHECK(strcmp(a, b) == 0, "%s: result [%s], same-fs rename gives [%s]", what, b, a);
        close(sfd);
        close(dfd);
    }
}

/* A dirfd whose directory was removed: nothing can be created there (ENOENT). */
static void removed_directory_dirfds_match_kernel(void)
{
    setup_sides();
    for (int which = 0; which < 2; which++) {
        struct res r[2];
        char *post[2], *pre[2];
        for (int x = 0; x < 2; x++) {
            const struct side *sd = x ? &cross_side : &same_side;
            clear_dir(sd->S);
            clear_dir(sd->D);
            write_str(path_of("%s/a", sd->S), "alive\n");
            char *gone = path_of("%s/gone", which ? sd->D : sd->S);
            mkdir1(gone);
            int gfd = open_dir(gone);
            CHECK(rmdir(gone) == 0, "rmdir: %s", strerror(errno));
            int sfd = which ? open_dir(sd->S) : gfd, dfd = which ? gfd : open_dir(sd->D);
            pre[x] = snapshot2(sd->S, sd->D);
            errno = 0;
            r[x].rc = x ? renameat(sfd, "a", dfd, "b")
                        : (int)syscall(SYS_renameat2, sfd, "a", dfd, "b", 0);
            r[x].err = errno;
            post[x] = snapshot2(sd->S, sd->D);
            close(sfd);
            close(dfd);
        }
        const char *what = which ? "renameat(dir, \"a\", removed dir, \"b\")"
                                 : "renameat(removed dir, \"a\", dir, \"b\")";
        CHECK(res_eq(r[0], r[1]), "%s: same-fs kernel %s, cross-device %s", what,
              res_str(r[0]), res_str(r[1]));
        CHECK(r[1].rc == 0 || strcmp(pre[1], post[1]) == 0, "%s changed [%s] into [%s]", what,
              pre[1], post[1]);
    }
}

/* ------------------------------------------------------------------ */
/* Bind mounts: one filesystem, two mounts (the kernel says EXDEV)     */

static void bind_case(const char *label, void (*mk)(const char *D), const char *sname,
                      const char *dname, unsigned flags)
{
    const char *B = env_path("XT_BIND_DST");
    char *d = test_dir("XT_BIND_SRC", "");
    char *b = path_of("%s/%s", B, xt_name);
    mk(d);
    char *pre = snapshot2(d, d);
    errno = 0;
    /* oracle: both paths through the same mount */
    long orc = syscall(SYS_renameat2, AT_FDCWD, path_of("%s/%s", d, sname), AT_FDCWD,
                       path_of("%s/%s", d, dname), flags);
    struct res want = {(int)orc, errno};
    char *post_same = snapshot2(d, d);
    rm_rf(d);
    d = test_dir("XT_BIND_SRC", "");
    mk(d);
    errno = ERRNO_SENTINEL;
    int rc = renameat2(AT_FDCWD, path_of("%s/%s", d, sname), AT_FDCWD,
                       path_of("%s/%s", b, dname), flags);
    struct res got = {rc, errno};
    char *post = snapshot2(d, d);
    if (flags & RENAME_EXCHANGE) {
        CHECK(got.rc == -1 && got.err == EXDEV, "%s with EXCHANGE: got %s, expected EXDEV", label,
              res_str(got));
        return;
    }
    CHECK(res_eq(want, got), "%s: same-mount kernel %s, across bind mounts %s", label,
          res_str(want), res_str(got));
    if (got.rc == 0)
        CHECK(strcmp(post, post_same) == 0, "%s: result [%s], kernel gives [%s]", label, post,
              post_same);
    else
        CHECK(strcmp(post, pre) == 0, "%s: failed but changed [%s] into [%s]", label, pre, post);
}

static void mk_tree(const char *d)
{
    mkdir1(path_of("%s/t", d));
    mkdir1(path_of("%s/t/sub", d));
    write_str(path_of("%s/t/sub/f", d), "in tree\n");
}

static void mk_links(const char *d)
{
    write_str(path_of("%s/a", d), "one inode\n");
    CHECK(link(path_of("%s/a", d), path_of("%s/b", d)) == 0, "link: %s", strerror(errno));
}

static void destination_inside_source_via_bind_mount_gives_einval(void)
{
    bind_case("rename(D/t, B/t/sub/x)", mk_tree, "t", "t/sub/x", 0);
    bind_case("rename(D/t, B/t/sub/x, NOREPLACE)", mk_tree, "t", "t/sub/x", RENAME_NOREPLACE);
    bind_case("rename(D/t, B/t/new)", mk_tree, "t", "t/new", 0);
}

static void destination_ancestor_of_source_via_bind_mount_gives_kernel_errno(void)
{
    bind_case("rename(D/t/sub, B/t)", mk_tree, "t/sub", "t", 0);
    bind_case("rename(D/t/sub, B/t, NOREPLACE)", mk_tree, "t/sub", "t", RENAME_NOREPLACE);
}

static void hard_links_of_one_inode_via_bind_mount_are_left_alone(void)
{
    bind_case("rename(D/a, B/b) with a, b hard links", mk_links, "a", "b", 0);
    bind_case("rename(D/a, B/b, NOREPLACE) with a, b hard links", mk_links, "a", "b",
              RENAME_NOREPLACE);
    bind_case("rename(D/a, B/a) same name", mk_links, "a", "a", 0);
    bind_case("rename(D/t, B/t) same directory", mk_tree, "t", "t", 0);
    bind_case("rename(D/t, B/t/) same directory", mk_tree, "t", "t/", 0);
}

/* A mount point as the source (or the destination) of a rename: EBUSY. */
static void mount_point_source_or_destination_gives_ebusy(void)
{
    const char *B = env_path("XT_BIND_DST"); /* a mount point, child of XT_WORK */
    const char *W = env_path("XT_WORK");
    char *dd = test_dir("XT_EXT4", "");
    char *sentinel = path_of("%s/%s.keep", env_path("XT_BIND_SRC"), xt_name);
    write_str(sentinel, "must stay\n");
    /* oracle: same parent (XT_WORK), B is busy there */
    errno = 0;
    long orc = syscall(SYS_renameat2, AT_FDCWD, B, AT_FDCWD, path_of("%s/moved-bind", W), 0);
    struct res want = {(int)orc, errno};
    CHECK(want.rc == -1 && want.err == EBUSY, "kernel: rename of a mount point gave %s",
          res_str(want));
    for (int f = 0; f < 3; f++) {
        errno = 0;
        int rc = do_op((enum op)f, B, path_of("%s/moved", dd));
        struct res got = {rc, errno};
        CHECK(res_eq(want, got), "%s(mount point, other fs): got %s, kernel gives %s",
              op_names[f], res_str(got), res_str(want));
        check_content_str(sentinel, "must stay\n", "mount point source");
        CHECK_DIR(dd, "", "mount point source");
    }
    /* the mount point as the destination: a directory over it */
    char *sd = test_dir("XT_TMPFS", "");
    mkdir1(path_of("%s/d", sd));
    errno = 0;
    mkdir1(path_of("%s/empty", W));
    orc = syscall(SYS_renameat2, AT_FDCWD, path_of("%s/empty", W), AT_FDCWD, env_path("XT_RO"), 0);
    want = (struct res){(int)orc, errno};
    rmdir(path_of("%s/empty", W));
    for (int f = 0; f < 3; f++) {
        errno = 0;
        int rc = do_op((enum op)f, path_of("%s/d", sd), env_path("XT_RO"));
        struct res got = {rc, errno};
        CHECK(res_eq(want, got), "%s(dir, mount point on another fs): got %s, kernel gives %s",
              op_names[f], res_str(got), res_str(want));
        CHECK_DIR(sd, "d", "mount point destination");
    }
}

XT_MAIN(TEST(regular_file_source_errors_match_kernel), TEST(symlink_source_errors_match_kernel),
        TEST(symlink_to_directory_source_errors_match_kernel),
        TEST(directory_with_content_source_errors_match_kernel),
        TEST(empty_directory_source_errors_match_kernel), TEST(missing_source_errors_match_kernel),
        TEST(errors_match_kernel_from_ext4_to_tmpfs),
        TEST(source_path_under_non_directory_matches_kernel),
        TEST(dot_and_dotdot_components_match_kernel),
        TEST(redundant_slashes_and_dot_segments_match_kernel),
        TEST(rename_exchange_across_devices_gives_exdev_and_changes_nothing),
        TEST(invalid_renameat2_flags_give_kernel_answer),
        TEST(bad_dirfd_with_relative_path_gives_ebadf), TEST(non_directory_dirfd_gives_enotdir),
        TEST(absolute_paths_ignore_bad_dirfd),
        TEST(at_fdcwd_with_relative_and_absolute_paths_moves),
        TEST(o_path_dirfds_move_across_devices), TEST(removed_directory_dirfds_match_kernel),
        TEST(destination_inside_source_via_bind_mount_gives_einval),
        TEST(destination_ancestor_of_source_via_bind_mount_gives_kernel_errno),
        TEST(hard_links_of_one_inode_via_bind_mount_are_left_alone),
        TEST(mount_point_source_or_destination_gives_ebusy))
