/*
 * Failing moves leave everything as it was: source intact, destination in
 * its previous state (old content, or absent), and no extra directory
 * entries (temp files are named .xrename-*, but any extra entry counts).
 */
#include "common.h"

#define MIB (1u << 20)

static const char OLD[] = "old destination content, must survive\n";

/* Source and destination exactly as before the failed move. */
static void check_untouched(const char *sd, const char *src, uint64_t src_hash,
                            off_t src_size, const char *dd, const char *dst,
                            int had_dst, const char *what)
{
    off_t size;
    CHECK(exists(src), "%s: source %s is gone", what, src);
    uint64_t h = hash_file(src, &size);
    CHECK(size == src_size && h == src_hash,
          "%s: source changed (%lld bytes, expected %lld; checksum %s)", what,
          (long long)size, (long long)src_size, h == src_hash ? "same" : "differs");
    if (had_dst) {
        check_content_str(dst, OLD, what);
        CHECK_DIR(dd, "b", what);
    } else {
        check_absent(dst, what);
        CHECK_DIR(dd, "", what);
    }
    CHECK_DIR(sd, "a", what);
}

/* 2 MiB into a 1 MiB tmpfs: -1/ENOSPC and nothing changed. */
static void enospc(int had_dst)
{
    empty_dir(env_path("XT_SMALL")); /* all of its 1 MiB for this test */
    for (int op = 0; op < 3; op++) {
        char *sd = test_dir("XT_EXT4", op_names[op]);
        char *dd = test_dir("XT_SMALL", op_names[op]);
        require_kernel_exdev(sd, dd);
        char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
        uint64_t h = write_pattern_file(src, 2 * MIB, 99);
        if (had_dst)
            write_str(dst, OLD);
        char *what = path_of("%s of 2 MiB into a 1 MiB tmpfs%s", op_names[op],
                             had_dst ? " over an existing file" : "");
        int rc = do_op(op, src, dst);
        CHECK_FAILS_WITH(rc, ENOSPC, what);
        check_untouched(sd, src, h, 2 * MIB, dd, dst, had_dst, what);
        rm_rf(dd);
    }
}

static void enospc_without_destination_changes_nothing(void)
{
    enospc(0);
}

static void enospc_keeps_old_destination(void)
{
    enospc(1);
}

/*
 * Source on a read-only bind mount: the copy could be made, but the source
 * cannot be removed, so the move must fail with EROFS and be undone.
 */
static void read_only_source(int had_dst)
{
    const char *ro = env_path("XT_RO");
    for (int op = 0; op < 3; op++) {
        char *wd = test_dir("XT_RO_SRC", op_names[op]); /* writable path */
        char *sd = path_of("%s/%s.%s", ro, xt_name, op_names[op]);
        char *dd = test_dir("XT_TMPFS", op_names[op]);
        require_kernel_exdev_via(wd, sd, dd);
        uint64_t h = write_pattern_file(path_of("%s/a", wd), 300000, 5);
        char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
        if (had_dst)
            write_str(dst, OLD);
        char *what = path_of("%s from a read-only mount%s", op_names[op],
                             had_dst ? " over an existing file" : "");
        int rc = do_op(op, src, dst);
        CHECK_FAILS_WITH(rc, EROFS, what);
        check_untouched(sd, src, h, 300000, dd, dst, had_dst, what);
    }
}

static void read_only_source_fails_with_erofs_and_keeps_old_destination(void)
{
    read_only_source(1);
}

static void read_only_source_fails_with_erofs_and_creates_no_destination(void)
{
    read_only_source(0);
}

static int have_strace(void)
{
    char *argv[] = {"strace", "-V", NULL};
    return spawn(argv, NULL, NULL, NULL, "/dev/null", "/dev/null", NULL) == 0;
}

/*
 * The source removal fails after the new file was installed: run the move
 * in a child under strace, which makes the first unlinkat fail with EPERM.
 * Expected: -1/EPERM and the destination back in its previous state.
 */
static void late_source_removal_failure(int had_dst)
{
    if (!have_strace())
        SKIP("strace is not installed");
    for (int op = 0; op < 3; op++) {
        char *sd, *dd;
        xdev_dirs(op_names[op], &sd, &dd);
        char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
        uint64_t h = write_pattern_file(src, 200000, 11);
        if (had_dst)
            write_str(dst, OLD);
        char *argv[] = {"strace", "-f", "-o", "/dev/null",
                        "-e", "inject=unlinkat:error=EPERM:when=1",
                        xt_self, "--child", (char *)op_names[op], src, dst, NULL};
        char *what = path_of("%s with the source removal failing (EPERM)%s",
                             op_names[op], had_dst ? " over an existing file" : "");
        int st = spawn(argv, NULL, NULL, NULL, NULL, NULL, NULL);
        CHECK(st == EPERM,
              "%s: child %s; expected it to report -1/EPERM (exit %d). "
              "(exit 0 means the injected unlinkat failure was not seen: the source "
              "must be removed with unlinkat as the first unlinkat of the move)",
              what, describe_status(st), EPERM);
        check_untouched(sd, src, h, 200000, dd, dst, had_dst, what);
    }
}

static void late_source_removal_failure_restores_old_destination(void)
{
    late_source_removal_failure(1);
}

static void late_source_removal_failure_removes_new_destination(void)
{
    late_source_removal_failure(0);
}

/*
 * A syscall the emulation needs is missing (an old kernel, a seccomp filter
 * answering ENOSYS to statx): the program gets the kernel's EXDEV back and
 * can do its own fallback; nothing has changed.
 */
/* Under strace's `inject`, `spec` makes the move fail at a step the
 * kernel's rename never makes: the program gets the kernel's EXDEV and
 * nothing changes, with or without an old destination. */
static void exdev_and_untouched(const char *strace_spec, const char *seccomp_spec, const char *label);

static void injected_failure_gives_the_kernels_exdev(const char *spec, const char *label)
{
    if (!have_strace())
        SKIP("strace is not installed");
    exdev_and_untouched(spec, NULL, label);
}

static void missing_syscall_gives_the_kernels_exdev(void)
{
    injected_failure_gives_the_kernels_exdev("inject=statx:error=ENOSYS", "statx answering ENOSYS");
}

/*
 * A sandbox policy (a seccomp filter answering EPERM, here simulated with
 * strace's injection of that answer into every call): a data call refused
 * falls back to the next method and the move succeeds; a refused fsync is
 * a durability step that cannot be made: EXDEV, and nothing changed.
 */
static void policy_refusing_copy_file_range_falls_back(void)
{
    if (!have_strace())
        SKIP("strace is not installed");
    char *sd, *dd;
    xdev_dirs("rename", &sd, &dd);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    uint64_t h = write_pattern_file(src, 300000, 6);
    char *argv[] = {"strace", "-f", "-o", "/dev/null", "-e", "inject=copy_file_range:error=EPERM",
                    xt_self, "--child", "rename", src, dst, NULL};
    int st = spawn(argv, NULL, NULL, NULL, NULL, NULL, NULL);
    CHECK(st == 0, "rename with copy_file_range refused (EPERM): child %s; expected success",
          describe_status(st));
    off_t size;
    CHECK(hash_file(dst, &size) == h && size == 300000, "the destination is not the source's data");
    check_absent(src, "rename with copy_file_range refused");
}

static void policy_refusing_fsync_gives_the_kernels_exdev(void)
{
    injected_failure_gives_the_kernels_exdev("inject=fsync:error=EPERM", "fsync refused (EPERM)");
}

/*
 * The same two policies as a real seccomp filter (SECCOMP_RET_ERRNO), which
 * a preloaded helper installs before the program runs: `refused` is the
 * comma-separated list of syscalls answered with EPERM.
 */
static int under_seccomp_filter(const char *refused, char *src, char *dst)
{
    char *helper = path_of("%s/libseccomp_eperm.so", env_path("XT_LIBDIR"));
    CHECK(exists(helper), "helper library %s was not built", helper);
    const char *set[] = {path_of("LD_PRELOAD=%s %s", env_path("XT_LIB"), helper),
                         path_of("XT_SECCOMP_EPERM=%s", refused), NULL};
    char *argv[] = {xt_self, "--child", "rename", src, dst, NULL};
    return spawn(argv, set, NULL, NULL, NULL, NULL, NULL);
}

static void seccomp_filter_refusing_data_calls_falls_back_to_read_write(void)
{
    char *sd, *dd;
    xdev_dirs("rename", &sd, &dd);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    uint64_t h = write_pattern_file(src, 3 * MIB + 12345, 8);
    int st = under_seccomp_filter("copy_file_range,sendfile", src, dst);
    CHECK(st == 0, "rename under a seccomp filter refusing copy_file_range and sendfile: child %s; "
          "expected success", describe_status(st));
    off_t size;
    CHECK(hash_file(dst, &size) == h && size == 3 * MIB + 12345, "the destination is not the source's data");
    check_absent(src, "rename under a seccomp filter refusing copy_file_range and sendfile");
}

/* A rename made under strace's `strace_spec` injection, or else under a
 * seccomp filter refusing `seccomp_spec`, fails with the kernel's EXDEV and
 * changes nothing, with or without an old destination. */
static void exdev_and_untouched(const char *strace_spec, const char *seccomp_spec, const char *label)
{
    for (int had_dst = 0; had_dst < 2; had_dst++) {
        char *sd, *dd;
        xdev_dirs("rename", &sd, &dd);
        char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
        uint64_t h = write_pattern_file(src, 5000, 5);
        if (had_dst)
            write_str(dst, OLD);
        char *what = path_of("rename with %s%s", label, had_dst ? " over an existing file" : "");
        int st;
        if (strace_spec) {
            char *argv[] = {"strace", "-f", "-o", "/dev/null", "-e", (char *)strace_spec,
                            xt_self, "--child", "rename", src, dst, NULL};
            st = spawn(argv, NULL, NULL, NULL, NULL, NULL, NULL);
        } else {
            st = under_seccomp_filter(seccomp_spec, src, dst);
        }
        CHECK(st == EXDEV, "%s: child %s; expected -1/EXDEV (exit %d)", what, describe_status(st), EXDEV);
        check_untouched(sd, src, h, 5000, dd, dst, had_dst, what);
    }
}

static void seccomp_filter_refusing_fsync_gives_the_kernels_exdev(void)
{
    exdev_and_untouched(NULL, "fsync,fdatasync", "a seccomp filter refusing fsync and fdatasync");
}

/*
 * A filter refusing the xattr calls (ENOSYS, as for a call the sandbox does
 * not know; or EPERM) on a file with an ACL that denies its group: the ACL
 * cannot be copied, and a copy without it would give the group the mask's
 * rights. The kernel's EXDEV, nothing changed.
 */
static void seccomp_filter_refusing_xattr_calls_never_drops_an_acl(void)
{
    const char *specs[] = {"flistxattr:38", "fsetxattr:38", "fgetxattr:1", "fsetxattr:1"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        char *sd, *dd;
        xdev_dirs("rename", &sd, &dd);
        char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
        uint64_t h = write_pattern_file(src, 5000, 10);
        chmod(src, 0660);
        int rc = system(path_of("setfacl -m g::---,u:65534:rw '%s'", src));
        if (rc != 0)
            SKIP("setfacl failed (no ACL support here?)");
        char *what = path_of("rename of a file with an ACL, %s refused by a seccomp filter", specs[i]);
        int st = under_seccomp_filter(specs[i], src, dst);
        CHECK(st == EXDEV, "%s: child %s; expected -1/EXDEV (exit %d)", what, describe_status(st), EXDEV);
        check_untouched(sd, src, h, 5000, dd, dst, 0, what);
    }
}

/* XRENAME_DISABLE=1 (read when the library loads): the kernel's EXDEV. */
static void disable_variable_leaves_kernel_exdev(void)
{
    const char *set[] = {"XRENAME_DISABLE=1", NULL};
    for (int had_dst = 0; had_dst < 2; had_dst++) {
        for (int op = 0; op < 3; op++) {
            char *sd, *dd;
            xdev_dirs(op_names[op], &sd, &dd);
            char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
            uint64_t h = write_pattern_file(src, 5000, 3);
            if (had_dst)
                write_str(dst, OLD);
            char *argv[] = {xt_self, "--child", (char *)op_names[op], src, dst, NULL};
            char *what = path_of("%s with XRENAME_DISABLE=1%s", op_names[op],
                                 had_dst ? " over an existing file" : "");
            int st = spawn(argv, set, NULL, NULL, NULL, NULL, NULL);
            CHECK(st == EXDEV, "%s: child %s; expected -1/EXDEV (exit %d)", what,
                  describe_status(st), EXDEV);
            check_untouched(sd, src, h, 5000, dd, dst, had_dst, what);
        }
    }
}

XT_MAIN(TEST(enospc_without_destination_changes_nothing),
        TEST(enospc_keeps_old_destination),
        TEST(read_only_source_fails_with_erofs_and_keeps_old_destination),
        TEST(read_only_source_fails_with_erofs_and_creates_no_destination),
        TEST(late_source_removal_failure_restores_old_destination),
        TEST(late_source_removal_failure_removes_new_destination),
        TEST(disable_variable_leaves_kernel_exdev),
        TEST(missing_syscall_gives_the_kernels_exdev),
        TEST(policy_refusing_copy_file_range_falls_back),
        TEST(policy_refusing_fsync_gives_the_kernels_exdev),
        TEST(seccomp_filter_refusing_data_calls_falls_back_to_read_write),
        TEST(seccomp_filter_refusing_fsync_gives_the_kernels_exdev),
        TEST(seccomp_filter_refusing_xattr_calls_never_drops_an_acl))
