/*
 * Basic cross-device moves of regular files through each of the three hooks
 * (rename, renameat, renameat2 with flags 0), over each pair of mounts.
 */
#include "common.h"

/* Move a fresh file src_dir/a -> dst_dir/b with `op` and check the outcome. */
static void move_one(enum op op, const struct mount_pair *p, size_t size, int replace)
{
    char tag[64];
    snprintf(tag, sizeof tag, "%s-src", op_names[op]);
    char *sd = test_dir(p->src_env, tag);
    snprintf(tag, sizeof tag, "%s-dst", op_names[op]);
    char *dd = test_dir(p->dst_env, tag);
    require_kernel_exdev(sd, dd);

    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    unsigned char *want = malloc(size + 1);
    fill_pattern(want, size, size + op, 0);
    write_file(src, want, size);
    if (replace)
        write_str(dst, "old destination content that must be replaced\n");

    char what[128];
    snprintf(what, sizeof what, "%s %s%s", op_names[op], p->label,
             replace ? " (replacing)" : "");
    errno = 0;
    int rc = do_op(op, src, dst);
    CHECK_RC0(rc, what);
    check_content(dst, want, size, what);
    check_absent(src, what);
    CHECK_DIR(sd, "", what);
    CHECK_DIR(dd, "b", what);
    free(want);
}

static void regular_file_moves_from_tmpfs_to_ext4(void)
{
    for (int op = 0; op < 3; op++)
        move_one(op, &mount_pairs[0], 100000, 0);
}

static void regular_file_moves_from_ext4_to_tmpfs(void)
{
    for (int op = 0; op < 3; op++)
        move_one(op, &mount_pairs[1], 100000, 0);
}

static void regular_file_moves_between_bind_mounts_of_same_fs(void)
{
    for (int op = 0; op < 3; op++)
        move_one(op, &mount_pairs[2], 100000, 0);
}

static void existing_destination_is_replaced(void)
{
    for (int p = 0; p < 3; p++)
        for (int op = 0; op < 3; op++)
            move_one(op, &mount_pairs[p], 5000, 1);
}

static void empty_file_moves(void)
{
    for (int p = 0; p < 3; p++)
        for (int op = 0; op < 3; op++)
            move_one(op, &mount_pairs[p], 0, 0);
}

/* renameat and renameat2 with real directory file descriptors. */
static void renameat_with_directory_fds_moves_file(void)
{
    for (int p = 0; p < 2; p++) {
        for (int use2 = 0; use2 < 2; use2++) {
            const char *fn = use2 ? "renameat2" : "renameat";
            char *sd = test_dir(mount_pairs[p].src_env, fn);
            char *dd = test_dir(mount_pairs[p].dst_env, fn);
            require_kernel_exdev(sd, dd);
            write_str(path_of("%s/a", sd), "moved through directory fds\n");
            int sfd = open(sd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            int dfd = open(dd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            CHECK(sfd >= 0 && dfd >= 0, "open dirs: %s", strerror(errno));
            char what[96];
            snprintf(what, sizeof what, "%s(dirfd, \"a\", dirfd, \"b\") %s", fn,
                     mount_pairs[p].label);
            int rc = use2 ? renameat2(sfd, "a", dfd, "b", 0)
                          : renameat(sfd, "a", dfd, "b");
            CHECK_RC0(rc, what);
            check_content_str(path_of("%s/b", dd), "moved through directory fds\n", what);
            CHECK_DIR(sd, "", what);
            CHECK_DIR(dd, "b", what);
            close(sfd);
            close(dfd);
        }
    }
}

/* Relative paths resolved against the cwd (AT_FDCWD for the *at calls). */
static void relative_paths_from_cwd_move_file(void)
{
    for (int op = 0; op < 3; op++) {
        char *sd, *dd;
        xdev_dirs(op_names[op], &sd, &dd);
        write_str(path_of("%s/a", sd), "relative\n");
        CHECK(chdir("/") == 0, "chdir /: %s", strerror(errno));
        /* "/x/y" relative to "/" is "x/y" */
        char *src = path_of("%s/a", sd + 1), *dst = path_of("%s/b", dd + 1);
        char what[512];
        snprintf(what, sizeof what, "%s(\"%s\", \"%s\") with cwd /", op_names[op],
                 src, dst);
        int rc = do_op(op, src, dst);
        CHECK_RC0(rc, what);
        check_content_str(path_of("%s/b", dd), "relative\n", what);
        CHECK_DIR(sd, "", what);
        CHECK_DIR(dd, "b", what);
    }
    /* and relative to a directory on the source fs, destination absolute */
    char *sd = test_dir("XT_TMPFS", "cwd");
    char *dd = test_dir("XT_EXT4", "cwd");
    write_str(path_of("%s/a", sd), "relative 2\n");
    CHECK(chdir(sd) == 0, "chdir %s: %s", sd, strerror(errno));
    int rc = renameat(AT_FDCWD, "a", AT_FDCWD, path_of("%s/b", dd));
    CHECK_RC0(rc, "renameat(AT_FDCWD, \"a\", AT_FDCWD, absolute)");
    check_content_str(path_of("%s/b", dd), "relative 2\n", "renameat relative source");
    CHECK_DIR(sd, "", "renameat relative source");
}

static void large_100mib_file_keeps_its_content(void)
{
    const size_t size = 100u << 20;
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *src = path_of("%s/big", sd), *dst = path_of("%s/big", dd);
    uint64_t want = write_pattern_file(src, size, 42);
    int rc = rename(src, dst);
    CHECK_RC0(rc, "rename of 100 MiB file tmpfs->ext4");
    off_t got_size;
    uint64_t got = hash_file(dst, &got_size);
    CHECK(got_size == (off_t)size, "destination has %lld bytes, expected %zu",
          (long long)got_size, size);
    CHECK(got == want, "destination checksum %016llx differs from source %016llx",
          (unsigned long long)got, (unsigned long long)want);
    check_absent(src, "100 MiB move");
    CHECK_DIR(dd, "big", "100 MiB move");
    unlink(dst);
}

/*
 * rename(D/x, B/x) where B is a bind mount of D: the kernel says EXDEV, but
 * source and destination are the same file.  rename() of a file onto itself
 * must succeed and do nothing.
 */
static void same_file_through_bind_mount_is_left_alone(void)
{
    const char *B = env_path("XT_BIND_DST");
    for (int op = 0; op < 3; op++) {
        char *dd = test_dir("XT_BIND_SRC", op_names[op]);
        char *bd = path_of("%s/%s.%s", B, xt_name, op_names[op]);
        require_kernel_exdev(dd, bd);
        char *src = path_of("%s/x", dd), *dst = path_of("%s/x", bd);
        write_str(src, "the one and only\n");
        struct stat before, after;
        CHECK(stat(src, &before) == 0, "stat: %s", strerror(errno));
        char what[96];
        snprintf(what, sizeof what, "%s(D/x, B/x) with B a bind mount of D",
                 op_names[op]);
        int rc = do_op(op, src, dst);
        CHECK_RC0(rc, what);
        CHECK(stat(src, &after) == 0, "%s: file vanished: %s", what, strerror(errno));
        check_content_str(src, "the one and only\n", what);
        CHECK(after.st_ino == before.st_ino,
              "%s: file was replaced by a copy (inode %llu -> %llu)", what,
              (unsigned long long)before.st_ino, (unsigned long long)after.st_ino);
        CHECK_DIR(dd, "x", what);
    }
}

static void errno_is_unchanged_by_successful_cross_device_rename(void)
{
    static const int sentinels[] = {12345, EBADF};
    for (int s = 0; s < 2; s++) {
        for (int op = 0; op < 3; op++) {
            char *sd, *dd;
            xdev_dirs(op_names[op], &sd, &dd);
            char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
            write_str(src, "x");
            errno = sentinels[s];
            int rc = do_op(op, src, dst);
            int e = errno;
            CHECK(rc == 0, "cross-device %s returned %d (errno %s)", op_names[op],
                  rc, strerror(e));
            CHECK(e == sentinels[s],
                  "errno was %d before a successful cross-device %s and %d (%s) after",
                  sentinels[s], op_names[op], e, strerror(e));
        }
    }
}

static void errno_is_unchanged_by_successful_same_fs_rename(void)
{
    static const int sentinels[] = {12345, EBADF};
    for (int s = 0; s < 2; s++) {
        for (int op = 0; op < 3; op++) {
            char *d = test_dir("XT_TMPFS", op_names[op]);
            char *src = path_of("%s/a", d), *dst = path_of("%s/b", d);
            write_str(src, "x");
            errno = sentinels[s];
            int rc = do_op(op, src, dst);
            int e = errno;
            CHECK(rc == 0, "same-fs %s returned %d (errno %s)", op_names[op], rc,
                  strerror(e));
            CHECK(e == sentinels[s],
                  "errno was %d before a successful same-fs %s and %d (%s) after",
                  sentinels[s], op_names[op], e, strerror(e));
            check_content_str(dst, "x", "same-fs rename");
            CHECK_DIR(d, "b", "same-fs rename");
        }
    }
}

/* Only EXDEV is handled; other answers of the kernel come back unchanged. */
static void other_errors_pass_through_unchanged(void)
{
    for (int op = 0; op < 3; op++) {
        char *d = test_dir("XT_EXT4", op_names[op]);
        char *what = path_of("%s of a missing source on one fs", op_names[op]);
        int rc = do_op(op, path_of("%s/missing", d), path_of("%s/b", d));
        CHECK_FAILS_WITH(rc, ENOENT, what);
        what = path_of("%s of a file onto a non-empty directory", op_names[op]);
        write_str(path_of("%s/f", d), "f");
        CHECK(mkdir(path_of("%s/dir", d), 0755) == 0, "mkdir");
        write_str(path_of("%s/dir/inner", d), "i");
        rc = do_op(op, path_of("%s/f", d), path_of("%s/dir", d));
        CHECK_FAILS_WITH(rc, EISDIR, what);
        CHECK_DIR(d, "dir f", what);
    }
}

/*
 * Since issue 3 every object type moves across devices: a directory (with
 * its contents), a symlink (the link itself, also a dangling one) and a
 * FIFO, through each hook and over each pair of mounts.
 */
static void non_regular_sources_move_across_devices(void)
{
    static const char *const names[] = {"dir", "link", "dangling", "fifo"};
    for (int p = 0; p < 3; p++) {
        for (int op = 0; op < 3; op++) {
            char tag[64];
            snprintf(tag, sizeof tag, "%s-src", op_names[op]);
            char *sd = test_dir(mount_pairs[p].src_env, tag);
            snprintf(tag, sizeof tag, "%s-dst", op_names[op]);
            char *dd = test_dir(mount_pairs[p].dst_env, tag);
            require_kernel_exdev(sd, dd);
            CHECK(mkdir(path_of("%s/dir", sd), 0755) == 0, "mkdir: %s", strerror(errno));
            write_str(path_of("%s/dir/inner", sd), "inner content\n");
            CHECK(symlink("target-of-link", path_of("%s/link", sd)) == 0, "symlink: %s",
                  strerror(errno));
            CHECK(symlink("no/such/target", path_of("%s/dangling", sd)) == 0,
                  "symlink: %s", strerror(errno));
            CHECK(mkfifo(path_of("%s/fifo", sd), 0640) == 0, "mkfifo: %s", strerror(errno));
            CHECK(chmod(path_of("%s/fifo", sd), 0640) == 0, "chmod: %s", strerror(errno));
            for (int i = 0; i < 4; i++) {
                char *what = path_of("%s of a %s %s", op_names[op], names[i], mount_pairs[p].label);
                char *src = path_of("%s/%s", sd, names[i]);
                char *dst = path_of("%s/%s", dd, names[i]);
                errno = 0;
                int rc = do_op(op, src, dst);
                CHECK_RC0(rc, what);
                check_absent(src, what);
                struct stat st;
                CHECK(lstat(dst, &st) == 0, "%s: destination %s is missing: %s", what,
                      dst, strerror(errno));
                char buf[64];
                ssize_t n;
                switch (i) {
                case 0:
                    CHECK(S_ISDIR(st.st_mode), "%s: destination is not a directory (mode %o)",
                          what, st.st_mode);
                    check_content_str(path_of("%s/inner", dst), "inner content\n", what);
                    CHECK_DIR(dst, "inner", what);
                    break;
                case 1:
                case 2:
                    CHECK(S_ISLNK(st.st_mode), "%s: destination is not a symlink (mode %o)",
                          what, st.st_mode);
                    n = readlink(dst, buf, sizeof buf);
                    const char *want = i == 1 ? "target-of-link" : "no/such/target";
                    CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0,
                          "%s: link target is \"%.*s\", expected \"%s\"", what,
                          (int)(n < 0 ? 0 : n), buf, want);
                    break;
                case 3:
                    CHECK(S_ISFIFO(st.st_mode), "%s: destination is not a FIFO (mode %o)",
                          what, st.st_mode);
                    CHECK((st.st_mode & 07777) == 0640, "%s: FIFO mode %04o, expected 0640",
                          what, st.st_mode & 07777);
                    break;
                }
            }
            char *what = path_of("%s of non-regular sources %s", op_names[op],
                                 mount_pairs[p].label);
            CHECK_DIR(sd, "", what);
            CHECK_DIR(dd, "dangling dir fifo link", what);
        }
    }
}

/*
 * renameat2 flags across devices (issue 4): RENAME_NOREPLACE is emulated
 * (moves onto an absent name, EEXIST onto an existing one with nothing
 * changed); RENAME_EXCHANGE cannot be atomic across filesystems and keeps
 * the kernel's EXDEV.
 */
static void renameat2_noreplace_is_emulated_and_exchange_keeps_exdev(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    write_str(path_of("%s/a", sd), "a");
    write_str(path_of("%s/n", sd), "n");
    write_str(path_of("%s/b", dd), "b");
    int rc = renameat2(AT_FDCWD, path_of("%s/a", sd), AT_FDCWD, path_of("%s/b", dd),
                       RENAME_NOREPLACE);
    CHECK_FAILS_WITH(rc, EEXIST, "renameat2 RENAME_NOREPLACE onto an existing file across devices");
    rc = renameat2(AT_FDCWD, path_of("%s/a", sd), AT_FDCWD, path_of("%s/b", dd),
                   RENAME_EXCHANGE);
    CHECK_FAILS_WITH(rc, EXDEV, "renameat2 RENAME_EXCHANGE across devices");
    check_content_str(path_of("%s/a", sd), "a", "renameat2 with flags");
    check_content_str(path_of("%s/b", dd), "b", "renameat2 with flags");
    CHECK_DIR(sd, "a n", "renameat2 with flags");
    CHECK_DIR(dd, "b", "renameat2 with flags");
    rc = renameat2(AT_FDCWD, path_of("%s/n", sd), AT_FDCWD, path_of("%s/new", dd),
                   RENAME_NOREPLACE);
    CHECK(rc == 0, "renameat2 RENAME_NOREPLACE onto an absent name across devices: %s",
          strerror(errno));
    check_content_str(path_of("%s/new", dd), "n", "renameat2 RENAME_NOREPLACE");
    CHECK_DIR(sd, "a", "renameat2 RENAME_NOREPLACE");
    CHECK_DIR(dd, "b new", "renameat2 RENAME_NOREPLACE");
}

XT_MAIN(TEST(regular_file_moves_from_tmpfs_to_ext4),
        TEST(regular_file_moves_from_ext4_to_tmpfs),
        TEST(regular_file_moves_between_bind_mounts_of_same_fs),
        TEST(existing_destination_is_replaced),
        TEST(empty_file_moves),
        TEST(renameat_with_directory_fds_moves_file),
        TEST(relative_paths_from_cwd_move_file),
        TEST(large_100mib_file_keeps_its_content),
        TEST(same_file_through_bind_mount_is_left_alone),
        TEST(errno_is_unchanged_by_successful_cross_device_rename),
        TEST(errno_is_unchanged_by_successful_same_fs_rename),
        TEST(other_errors_pass_through_unchanged),
        TEST(non_regular_sources_move_across_devices),
        TEST(renameat2_noreplace_is_emulated_and_exchange_keeps_exdev))
