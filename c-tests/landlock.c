/*
 * Landlock (issue 4).  A sandbox that handles LANDLOCK_ACCESS_FS_REFER but
 * does not grant it makes the kernel answer EXDEV even for a rename between
 * two directories of one filesystem; a sandbox that denies MAKE_REG (or
 * REMOVE_FILE) makes it answer EACCES.  Under xrename:
 *   (a) a right that is missing must give the kernel's EACCES and change
 *       nothing (xrename must not get around the sandbox by copying);
 *   (b) with every right except REFER, the EXDEV that comes from Landlock
 *       (not from mounts) is emulated: the move succeeds.
 *
 * The sandbox is applied in a forked child (raw syscalls, after
 * PR_SET_NO_NEW_PRIVS); the preloaded library is already loaded then.  The
 * child only makes the calls and records their results in shared memory;
 * setup and checks happen in the unrestricted parent.
 */
#include "common.h"

#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1

#define LL_EXECUTE (1ULL << 0)
#define LL_WRITE_FILE (1ULL << 1)
#define LL_READ_FILE (1ULL << 2)
#define LL_READ_DIR (1ULL << 3)
#define LL_REMOVE_DIR (1ULL << 4)
#define LL_REMOVE_FILE (1ULL << 5)
#define LL_MAKE_CHAR (1ULL << 6)
#define LL_MAKE_DIR (1ULL << 7)
#define LL_MAKE_REG (1ULL << 8)
#define LL_MAKE_SOCK (1ULL << 9)
#define LL_MAKE_FIFO (1ULL << 10)
#define LL_MAKE_BLOCK (1ULL << 11)
#define LL_MAKE_SYM (1ULL << 12)
#define LL_REFER (1ULL << 13)
#define LL_TRUNCATE (1ULL << 14)
#define LL_IOCTL_DEV (1ULL << 15)

struct ll_ruleset_attr {
    uint64_t handled_access_fs;
};

struct __attribute__((packed)) ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
};

static int landlock_abi(void)
{
    long v = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    return v < 0 ? -errno : (int)v;
}

static int abi;

/* Every filesystem right this kernel knows. */
static uint64_t all_fs_rights(void)
{
    uint64_t all = (1ULL << 13) - 1;
    if (abi >= 2)
        all |= LL_REFER;
    if (abi >= 3)
        all |= LL_TRUNCATE;
    if (abi >= 5)
        all |= LL_IOCTL_DEV;
    return all;
}

static void require_landlock(void)
{
    abi = landlock_abi();
    if (abi < 0)
        SKIP("Landlock is not available (%s)", strerror(-abi));
    if (abi < 2)
        SKIP("Landlock ABI %d has no LANDLOCK_ACCESS_FS_REFER (needs >= 2)", abi);
}

static void require_landlock_truncate(void)
{
    require_landlock();
    if (abi < 3)
        SKIP("Landlock ABI %d has no LANDLOCK_ACCESS_FS_TRUNCATE (needs >= 3)", abi);
}

/*
 * In the calling (child) process: handle every right, allow `rights[i]`
 * beneath `dirs[i]`, and restrict.  Returns 0 or an errno.
 */
static int sandbox(const char *const *dirs, const uint64_t *rights, int n)
{
    struct ll_ruleset_attr attr = {all_fs_rights()};
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rs < 0)
        return errno;
    for (int i = 0; i < n; i++) {
        struct ll_path_beneath_attr pb = {rights[i], 0};
        pb.parent_fd = open(dirs[i], O_PATH | O_CLOEXEC);
        if (pb.parent_fd < 0)
            return errno;
        if (syscall(SYS_landlock_add_rule, rs, LL_RULE_PATH_BENEATH, &pb, 0) != 0)
            return errno;
        close(pb.parent_fd);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return errno;
    if (syscall(SYS_landlock_restrict_self, rs, 0) != 0)
        return errno;
    close(rs);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Calls made inside the sandbox                                       */

enum { FN_RENAME, FN_RENAMEAT, FN_RENAMEAT2, FN_NOREPLACE, FN_EXCHANGE, FN_RAW, FN_RAW_EXCHANGE,
       FN_FTRUNCATE };
static const char *const fn_labels[] = {"rename",           "renameat(dirfds)",
                                        "renameat2(dirfds)", "renameat2(NOREPLACE)",
                                        "renameat2(EXCHANGE)", "raw renameat2",
                                        "raw renameat2(EXCHANGE)", "ftruncate of a new file D/dname"};

struct call {
    int fn;
    const char *S, *sname, *D, *dname;
};

#define MAXCALLS 32
struct shared {
    int sandbox_err;
    int ncalls;
    struct res r[MAXCALLS];
};

static struct res make_call(const struct call *c)
{
    struct res r;
    char *sp = path_of("%s/%s", c->S, c->sname), *dp = path_of("%s/%s", c->D, c->dname);
    int sfd = open(c->S, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int dfd = open(c->D, O_PATH | O_DIRECTORY | O_CLOEXEC);
    errno = 0;
    switch (c->fn) {
    case FN_RENAME:
        r.rc = rename(sp, dp);
        break;
    case FN_RENAMEAT:
        r.rc = renameat(sfd, c->sname, dfd, c->dname);
        break;
    case FN_RENAMEAT2:
        r.rc = renameat2(sfd, c->sname, dfd, c->dname, 0);
        break;
    case FN_NOREPLACE:
        r.rc = renameat2(sfd, c->sname, dfd, c->dname, RENAME_NOREPLACE);
        break;
    case FN_EXCHANGE:
        r.rc = renameat2(sfd, c->sname, dfd, c->dname, RENAME_EXCHANGE);
        break;
    case FN_RAW:
        r.rc = (int)syscall(SYS_renameat2, AT_FDCWD, sp, AT_FDCWD, dp, 0);
        break;
    case FN_FTRUNCATE: { /* what the sandbox allows on a file its caller made */
        int fd = open(dp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        r.rc = fd < 0 ? -1 : ftruncate(fd, 1 << 20);
        int e = errno;
        if (fd >= 0)
            close(fd);
        errno = e;
        break;
    }
    default:
        r.rc = (int)syscall(SYS_renameat2, AT_FDCWD, sp, AT_FDCWD, dp, RENAME_EXCHANGE);
        break;
    }
    r.err = errno;
    close(sfd);
    close(dfd);
    free(sp);
    free(dp);
    return r;
}

/* Fork, sandbox, make the calls in order; results into `out`. */
static void sandboxed_calls(const char *const *dirs, const uint64_t *rights, int ndirs,
                            const struct call *calls, int ncalls, struct res *out)
{
    CHECK(ncalls <= MAXCALLS, "too many calls");
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(sh != MAP_FAILED, "mmap: %s", strerror(errno));
    sh->ncalls = -1;
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        sh->sandbox_err = sandbox(dirs, rights, ndirs);
        if (sh->sandbox_err)
            _exit(0);
        for (int i = 0; i < ncalls; i++) {
            sh->r[i] = make_call(&calls[i]);
            sh->ncalls = i + 1;
        }
        _exit(0);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "sandboxed child died (status %#x) after %d calls",
          st, sh->ncalls);
    CHECK(sh->sandbox_err == 0, "could not apply the Landlock sandbox: %s",
          strerror(sh->sandbox_err));
    CHECK(sh->ncalls == ncalls, "child made %d of %d calls", sh->ncalls, ncalls);
    memcpy(out, sh->r, sizeof out[0] * (size_t)ncalls);
    munmap(sh, sizeof *sh);
}

/* Fresh sibling directories *S and *D of one tmpfs directory (`tag`). */
static void sibling_dirs(const char *tag, char **S, char **D)
{
    char *t = test_dir("XT_TMPFS", tag);
    *S = path_of("%s/S", t);
    *D = path_of("%s/D", t);
    mkdir1(*S);
    mkdir1(*D);
}

/* ------------------------------------------------------------------ */
/* (a) a missing right: EACCES, nothing changes                        */

/*
 * Source S and destination D; `deny_src`/`deny_dst` are removed from the
 * rights granted there (REFER is never granted).  Oracle: the same rules on
 * two sibling directories of one tmpfs, raw system call.
 */
static void missing_right_case(uint64_t deny_src, uint64_t deny_dst, const char *label)
{
    uint64_t base = all_fs_rights() & ~LL_REFER;
    uint64_t rights[2] = {base & ~deny_src, base & ~deny_dst};

    /* oracle: same fs */
    char *oS, *oD;
    sibling_dirs("same", &oS, &oD);
    write_str(path_of("%s/a", oS), "oracle\n");
    const char *odirs[2] = {oS, oD};
    struct call oc[1] = {{FN_RAW, oS, "a", oD, "b"}};
    struct res want[1];
    sandboxed_calls(odirs, rights, 2, oc, 1, want);
    CHECK(want[0].rc == -1 && want[0].err == EACCES,
          "%s: same-fs kernel under Landlock gave %s, expected EACCES", label, res_str(want[0]));
    CHECK_DIR(oS, "a", "oracle");
    CHECK_DIR(oD, "", "oracle");

    /* across devices, through xrename */
    char *S = test_dir("XT_TMPFS", "S"), *D = test_dir("XT_EXT4", "D");
    require_kernel_exdev(S, D);
    const char *dirs[2] = {S, D};
    static const int fns[] = {FN_RENAME, FN_RENAMEAT, FN_RENAMEAT2, FN_NOREPLACE};
    for (int i = 0; i < 4; i++) {
        write_str(path_of("%s/a", S), "must stay here\n");
        struct call c[1] = {{fns[i], S, "a", D, "b"}};
        struct res got[1];
        sandboxed_calls(dirs, rights, 2, c, 1, got);
        char *what = path_of("%s across devices under Landlock (%s)", fn_labels[fns[i]], label);
        CHECK(got[0].rc == -1 && got[0].err == want[0].err,
              "%s: got %s, same-fs kernel gives %s", what, res_str(got[0]), res_str(want[0]));
        check_content_str(path_of("%s/a", S), "must stay here\n", what);
        CHECK_DIR(S, "a", what);
        CHECK_DIR(D, "", what);
    }
}

static void landlock_without_make_reg_on_destination_gives_eacces_and_changes_nothing(void)
{
    require_landlock();
    missing_right_case(0, LL_MAKE_REG, "no MAKE_REG on the destination");
}

static void landlock_without_remove_file_on_source_gives_eacces_and_changes_nothing(void)
{
    require_landlock();
    missing_right_case(LL_REMOVE_FILE, 0, "no REMOVE_FILE on the source");
}

/* ------------------------------------------------------------------ */
/* (b) every right but REFER: EXDEV from Landlock, emulated            */

static void build_sources(const char *S)
{
    write_str(path_of("%s/f0", S), "file 0\n");
    write_str(path_of("%s/f1", S), "file 1\n");
    write_str(path_of("%s/f2", S), "file 2\n");
    write_str(path_of("%s/f3", S), "file 3\n");
    write_str(path_of("%s/f4", S), "file 4\n");
    CHECK(symlink("some/target", path_of("%s/l", S)) == 0, "symlink: %s", strerror(errno));
    mkdir1(path_of("%s/t", S));
    mkdir1(path_of("%s/t/sub", S));
    write_str(path_of("%s/t/sub/g", S), "in the tree\n");
    CHECK(symlink("../x", path_of("%s/t/l", S)) == 0, "symlink: %s", strerror(errno));
    CHECK(mkfifo(path_of("%s/p", S), 0644) == 0, "mkfifo: %s", strerror(errno));
    write_str(path_of("%s/x", S), "exchange me\n");
}

/* S and D: every right except REFER (and `deny`) on both; one fs or two. */
static void refer_only_missing_case(const char *S, const char *D, int same_fs, uint64_t deny)
{
    build_sources(S);
    write_str(path_of("%s/old4", D), "old destination\n");
    write_str(path_of("%s/y", D), "exchange partner\n");
    uint64_t allowed = all_fs_rights() & ~LL_REFER & ~deny;
    uint64_t rights[2] = {allowed, allowed};
    const char *dirs[2] = {S, D};
    const struct call c[] = {
        {FN_RAW, S, "f0", D, "probe"},  /* the kernel's answer: EXDEV */
        {FN_RENAME, S, "f0", D, "f0"},  {FN_RENAMEAT, S, "f1", D, "f1"},
        {FN_RENAMEAT2, S, "f2", D, "f2"}, {FN_NOREPLACE, S, "f3", D, "f3"},
        {FN_RENAME, S, "f4", D, "old4"}, /* replaces */
        {FN_RENAMEAT, S, "l", D, "l"},  {FN_RENAMEAT2, S, "t", D, "t"},
        {FN_RENAME, S, "p", D, "p"},
        {FN_RAW_EXCHANGE, S, "x", D, "y"}, {FN_EXCHANGE, S, "x", D, "y"},
    };
    const int n = (int)(sizeof c / sizeof c[0]);
    struct res r[sizeof c / sizeof c[0]];
    sandboxed_calls(dirs, rights, 2, c, n, r);
    CHECK(r[0].rc == -1 && r[0].err == EXDEV,
          "kernel rename %s under Landlock without REFER gave %s, expected EXDEV",
          same_fs ? "between sibling dirs of one tmpfs" : "across devices", res_str(r[0]));
    for (int i = 1; i < n - 2; i++)
        CHECK(r[i].rc == 0, "%s %s -> %s under Landlock without REFER: %s, expected success",
              fn_labels[c[i].fn], c[i].sname, c[i].dname, res_str(r[i]));
    /* EXCHANGE: the kernel's EXDEV stands (documented), nothing changes */
    CHECK(r[n - 2].rc == -1 && r[n - 2].err == EXDEV, "raw EXCHANGE gave %s", res_str(r[n - 2]));
    CHECK(r[n - 1].rc == -1 && r[n - 1].err == EXDEV,
          "renameat2(RENAME_EXCHANGE) under Landlock without REFER: %s, expected -1 EXDEV",
          res_str(r[n - 1]));
    const char *what = "moves under Landlock without REFER";
    for (int i = 0; i < 4; i++) {
        char want[16];
        snprintf(want, sizeof want, "file %d\n", i);
        check_content_str(path_of("%s/f%d", D, i), want, what);
    }
    check_content_str(path_of("%s/old4", D), "file 4\n", what);
    char buf[64];
    ssize_t k = readlink(path_of("%s/l", D), buf, sizeof buf);
    CHECK(k == 11 && memcmp(buf, "some/target", 11) == 0, "%s: symlink not moved", what);
    check_content_str(path_of("%s/t/sub/g", D), "in the tree\n", what);
    CHECK_DIR(path_of("%s/t", D), "l sub", what);
    struct stat st;
    CHECK(lstat(path_of("%s/p", D), &st) == 0 && S_ISFIFO(st.st_mode), "%s: FIFO not moved",
          what);
    check_content_str(path_of("%s/x", S), "exchange me\n", what);
    check_content_str(path_of("%s/y", D), "exchange partner\n", what);
    CHECK_DIR(S, "x", what);
    CHECK_DIR(D, "f0 f1 f2 f3 l old4 p t y", what);
}

static void landlock_exdev_without_refer_between_sibling_dirs_is_emulated(void)
{
    require_landlock();
    char *S, *D;
    sibling_dirs("", &S, &D);
    refer_only_missing_case(S, D, 1, 0);
}

static void landlock_without_refer_across_devices_is_emulated(void)
{
    require_landlock();
    char *S = test_dir("XT_TMPFS", "S"), *D = test_dir("XT_EXT4", "D");
    require_kernel_exdev(S, D);
    refer_only_missing_case(S, D, 0, 0);
}

/* Without TRUNCATE too (issue 11): xrename truncates its own temp only when
 * a copy ends in a hole, so these moves need no truncate at all. */
static void landlock_without_refer_and_truncate_across_devices_is_emulated(void)
{
    require_landlock_truncate();
    char *S = test_dir("XT_TMPFS", "S"), *D = test_dir("XT_EXT4", "D");
    require_kernel_exdev(S, D);
    refer_only_missing_case(S, D, 0, LL_TRUNCATE);
}

/*
 * Without REFER and TRUNCATE, a sparse file that ends in a hole (1 MiB of
 * data, then a hole to 8 MiB), alone and inside a tree: its copy needs its
 * size set past the data, and ftruncate is refused (EACCES) even on the
 * temp xrename made itself.  The moves must succeed with the size and the
 * data right, and the hole kept where the destination has holes
 * (copy.rs set_size: a zero byte written at the last offset).
 */
#define SPARSE_DATA (1 << 20)
#define SPARSE_SIZE (8 << 20)

static void make_sparse(const char *path)
{
    write_pattern_file(path, SPARSE_DATA, 11);
    CHECK(truncate(path, SPARSE_SIZE) == 0, "truncate %s: %s", path, strerror(errno));
}

/* Whether files on `dir`'s filesystem can end in a hole. */
static int has_holes(const char *dir)
{
    char *p = path_of("%s/.xt-hole-probe", dir);
    make_sparse(p);
    struct stat st;
    CHECK(stat(p, &st) == 0, "stat %s: %s", p, strerror(errno));
    CHECK(unlink(p) == 0, "unlink %s: %s", p, strerror(errno));
    free(p);
    return (long long)st.st_blocks * 512 < SPARSE_SIZE;
}

static void check_sparse_tail(const char *path, int holes, const char *what)
{
    struct stat st;
    CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode), "%s: %s missing or not a file", what, path);
    CHECK(st.st_size == SPARSE_SIZE, "%s: size %lld, expected %d", what, (long long)st.st_size,
          SPARSE_SIZE);
    size_t n;
    unsigned char *got = read_file(path, &n), *want = malloc(SPARSE_DATA);
    fill_pattern(want, SPARSE_DATA, 11, 0);
    CHECK(memcmp(got, want, SPARSE_DATA) == 0, "%s: the first MiB differs", what);
    for (size_t i = SPARSE_DATA; i < n; i++)
        CHECK(got[i] == 0, "%s: byte %zu of the tail hole reads %u", what, i, got[i]);
    free(got);
    free(want);
    if (!holes)
        return;
    /* the data, and one block at most for the zero byte at the end */
    CHECK((long long)st.st_blocks * 512 < 2 * SPARSE_DATA,
          "%s: %lld KiB allocated for 1 MiB of data: the hole was filled", what,
          (long long)st.st_blocks / 2);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    off_t h = lseek(fd, 0, SEEK_HOLE);
    close(fd);
    CHECK(h == SPARSE_DATA, "%s: SEEK_HOLE from 0 gives %lld, expected %d", what, (long long)h,
          SPARSE_DATA);
}

static void landlock_without_refer_and_truncate_moves_a_file_ending_in_a_hole(void)
{
    require_landlock_truncate();
    char *S = test_dir("XT_TMPFS", "S"), *D = test_dir("XT_EXT4", "D");
    require_kernel_exdev(S, D);
    make_sparse(path_of("%s/sparse", S));
    mkdir1(path_of("%s/t", S));
    make_sparse(path_of("%s/t/sparse", S));
    int holes = has_holes(D);
    printf("  destination (%s) %s holes\n", getenv("XT_EXT4_KIND"), holes ? "has" : "has no");
    uint64_t allowed = all_fs_rights() & ~LL_REFER & ~LL_TRUNCATE;
    uint64_t rights[2] = {allowed, allowed};
    const char *dirs[2] = {S, D};
    const struct call c[] = {
        {FN_FTRUNCATE, S, "", D, "trunc-probe"}, /* the sandbox refuses: EACCES */
        {FN_RAW, S, "sparse", D, "sparse"},      /* the kernel's answer: EXDEV */
        {FN_RENAME, S, "sparse", D, "sparse"},
        {FN_RENAMEAT2, S, "t", D, "t"},
    };
    struct res r[4];
    sandboxed_calls(dirs, rights, 2, c, 4, r);
    CHECK(r[0].rc == -1 && r[0].err == EACCES,
          "ftruncate under Landlock without TRUNCATE gave %s, expected EACCES", res_str(r[0]));
    CHECK(unlink(path_of("%s/trunc-probe", D)) == 0, "unlink trunc-probe: %s", strerror(errno));
    CHECK(r[1].rc == -1 && r[1].err == EXDEV, "kernel rename gave %s, expected EXDEV",
          res_str(r[1]));
    CHECK(r[2].rc == 0, "rename of a file ending in a hole without TRUNCATE: %s, expected success",
          res_str(r[2]));
    CHECK(r[3].rc == 0, "renameat2 of a tree holding it without TRUNCATE: %s, expected success",
          res_str(r[3]));
    check_sparse_tail(path_of("%s/sparse", D), holes, "file ending in a hole");
    check_sparse_tail(path_of("%s/t/sparse", D), holes, "tree's file ending in a hole");
    CHECK_DIR(S, "", "after the moves");
    CHECK_DIR(D, "sparse t", "after the moves");
    CHECK_DIR(path_of("%s/t", D), "sparse", "after the moves");
}

/*
 * Under (b), a missing right that the move needs deep inside a tree must
 * still be refused: the destination allows everything except MAKE_REG
 * below an unrelated directory, so a tree holding a file cannot be created
 * there (Landlock: EXDEV from the kernel for the tree, then EACCES for its
 * file).  Nothing may be left behind.
 */
static void landlock_tree_move_needing_denied_right_leaves_nothing(void)
{
    require_landlock();
    char *S, *D;
    sibling_dirs("", &S, &D);
    mkdir1(path_of("%s/t", S));
    write_str(path_of("%s/t/g", S), "needs MAKE_REG\n");
    uint64_t base = all_fs_rights() & ~LL_REFER;
    uint64_t rights[2] = {base, base & ~LL_MAKE_REG};
    const char *dirs[2] = {S, D};
    const struct call c[] = {{FN_RAW, S, "t", D, "t"}, {FN_RENAME, S, "t", D, "t"},
                             {FN_NOREPLACE, S, "t", D, "t"}};
    struct res r[3];
    sandboxed_calls(dirs, rights, 2, c, 3, r);
    printf("  kernel, same fs, tree into a dir without MAKE_REG: %s\n", res_str(r[0]));
    for (int i = 1; i < 3; i++)
        CHECK(r[i].rc == -1 && r[i].err == EACCES,
              "%s of a tree holding a file into a dir without MAKE_REG: %s, expected -1 EACCES",
              fn_labels[c[i].fn], res_str(r[i]));
    check_content_str(path_of("%s/t/g", S), "needs MAKE_REG\n", "tree refused");
    CHECK_DIR(S, "t", "tree refused");
    CHECK_DIR(path_of("%s/t", S), "g", "tree refused");
    CHECK_DIR(D, "", "tree refused");
}

XT_MAIN(TEST(landlock_without_make_reg_on_destination_gives_eacces_and_changes_nothing),
        TEST(landlock_without_remove_file_on_source_gives_eacces_and_changes_nothing),
        TEST(landlock_exdev_without_refer_between_sibling_dirs_is_emulated),
        TEST(landlock_without_refer_across_devices_is_emulated),
        TEST(landlock_without_refer_and_truncate_across_devices_is_emulated),
        TEST(landlock_without_refer_and_truncate_moves_a_file_ending_in_a_hole),
        TEST(landlock_tree_move_needing_denied_right_leaves_nothing))
