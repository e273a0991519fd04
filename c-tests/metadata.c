/*
 * A file moved across devices keeps its metadata: owner, group, mode
 * (including setuid/setgid), atime/mtime to the nanosecond, user.* xattrs,
 * its POSIX ACL, and its holes.  Each check runs in both directions
 * (tmpfs -> ext4 and ext4 -> tmpfs).
 */
#include "common.h"

struct dir_pair {
    const char *label, *src_env, *dst_env;
};
static const struct dir_pair dirs[] = {
    {"tmpfs->ext4", "XT_TMPFS", "XT_EXT4"},
    {"ext4->tmpfs", "XT_EXT4", "XT_TMPFS"},
};

/* Fresh source/destination directories for direction d. */
static void dirs_for(int d, char **sd, char **dd)
{
    char tag[32];
    snprintf(tag, sizeof tag, "%d-src", d);
    *sd = test_dir(dirs[d].src_env, tag);
    snprintf(tag, sizeof tag, "%d-dst", d);
    *dd = test_dir(dirs[d].dst_env, tag);
    require_kernel_exdev(*sd, *dd);
}

static void move_ok(const char *src, const char *dst, const char *what)
{
    int rc = rename(src, dst);
    CHECK_RC0(rc, what);
    check_absent(src, what);
}

static void owner_and_group_are_preserved(void)
{
    require_real_root("chown to 1234:5678");
    for (int d = 0; d < 2; d++) {
        char *sd, *dd;
        dirs_for(d, &sd, &dd);
        char *src = path_of("%s/f", sd), *dst = path_of("%s/f", dd);
        write_str(src, "owned by someone else\n");
        CHECK(chown(src, 1234, 5678) == 0, "chown: %s", strerror(errno));
        CHECK(chmod(src, 0640) == 0, "chmod: %s", strerror(errno));
        move_ok(src, dst, dirs[d].label);
        struct stat st;
        CHECK(lstat(dst, &st) == 0, "lstat %s: %s", dst, strerror(errno));
        CHECK(st.st_uid == 1234, "%s: uid is %u, expected 1234", dirs[d].label,
              st.st_uid);
        CHECK(st.st_gid == 5678, "%s: gid is %u, expected 5678", dirs[d].label,
              st.st_gid);
        CHECK((st.st_mode & 07777) == 0640, "%s: mode is %04o, expected 0640",
              dirs[d].label, st.st_mode & 07777);
        check_content_str(dst, "owned by someone else\n", dirs[d].label);
    }
}

static void mode_bits_including_setuid_and_setgid_are_preserved(void)
{
    static const mode_t modes[] = {04755, 02755, 06750, 0600, 0444, 0777, 0};
    /* as real root, also on files owned by another user: the setuid and
       setgid bits must survive the ownership change of the copy */
    int owners = real_root() ? 2 : 1;
    for (int d = 0; d < 2; d++) {
        for (int o = 0; o < owners; o++) {
            for (int m = 0; m < (int)(sizeof modes / sizeof modes[0]); m++) {
                char *sd, *dd;
                dirs_for(d, &sd, &dd);
                char *src = path_of("%s/f", sd), *dst = path_of("%s/f", dd);
                write_str(src, "#!/bin/sh\n");
                if (o == 1)
                    CHECK(chown(src, 1234, 5678) == 0, "chown: %s", strerror(errno));
                CHECK(chmod(src, modes[m]) == 0, "chmod: %s", strerror(errno));
                struct stat before, st;
                CHECK(lstat(src, &before) == 0, "lstat: %s", strerror(errno));
                CHECK((before.st_mode & 07777) == modes[m], "setup: mode %04o not set",
                      modes[m]);
                char *what = path_of("%s mode %04o%s", dirs[d].label, modes[m],
                                     o ? " owner 1234:5678" : "");
                move_ok(src, dst, what);
                CHECK(lstat(dst, &st) == 0, "%s: lstat %s: %s", what, dst, strerror(errno));
                CHECK(st.st_mode == before.st_mode, "%s: mode is %06o, expected %06o",
                      what, st.st_mode, before.st_mode);
                CHECK(st.st_uid == before.st_uid && st.st_gid == before.st_gid,
                      "%s: owner is %u:%u, expected %u:%u", what, st.st_uid,
                      st.st_gid, before.st_uid, before.st_gid);
            }
        }
    }
}

static void atime_and_mtime_are_preserved_to_the_nanosecond(void)
{
    static const struct timespec times[][2] = {
        /* atime, mtime: odd nanosecond values in the past */
        {{1000000000, 123456789}, {1200000000, 987654321}},
        {{1500000000, 1}, {1400000000, 999999999}},
        {{86400 * 365, 500000001}, {86400 * 366, 7}},
    };
    for (int d = 0; d < 2; d++) {
        for (int t = 0; t < 3; t++) {
            char *sd, *dd;
            dirs_for(d, &sd, &dd);
            char *src = path_of("%s/f", sd), *dst = path_of("%s/f", dd);
            write_str(src, "timestamps\n");
            CHECK(utimensat(AT_FDCWD, src, times[t], 0) == 0, "utimensat: %s",
                  strerror(errno));
            struct stat before, st;
            CHECK(lstat(src, &before) == 0, "lstat: %s", strerror(errno));
            CHECK(before.st_atim.tv_nsec == times[t][0].tv_nsec &&
                      before.st_mtim.tv_nsec == times[t][1].tv_nsec,
                  "setup: %s does not store nanosecond timestamps", dirs[d].src_env);
            move_ok(src, dst, dirs[d].label);
            /* stat before reading the content: reading may update atime */
            CHECK(lstat(dst, &st) == 0, "lstat %s: %s", dst, strerror(errno));
            CHECK(st.st_atim.tv_sec == times[t][0].tv_sec &&
                      st.st_atim.tv_nsec == times[t][0].tv_nsec,
                  "%s: atime is %lld.%09ld, expected %lld.%09ld", dirs[d].label,
                  (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
                  (long long)times[t][0].tv_sec, times[t][0].tv_nsec);
            CHECK(st.st_mtim.tv_sec == times[t][1].tv_sec &&
                      st.st_mtim.tv_nsec == times[t][1].tv_nsec,
                  "%s: mtime is %lld.%09ld, expected %lld.%09ld", dirs[d].label,
                  (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                  (long long)times[t][1].tv_sec, times[t][1].tv_nsec);
            check_content_str(dst, "timestamps\n", dirs[d].label);
        }
    }
}

/* Sorted, space-separated user.* xattr names of a path. */
static char *user_xattr_names(const char *path)
{
    char names[65536];
    ssize_t n = llistxattr(path, names, sizeof names);
    CHECK(n >= 0, "llistxattr %s: %s", path, strerror(errno));
    char *list[256];
    int k = 0;
    for (char *p = names; p < names + n; p += strlen(p) + 1)
        if (strncmp(p, "user.", 5) == 0 && k < 256)
            list[k++] = p;
    for (int i = 1; i < k; i++) /* insertion sort */
        for (int j = i; j > 0 && strcmp(list[j - 1], list[j]) > 0; j--) {
            char *t = list[j];
            list[j] = list[j - 1];
            list[j - 1] = t;
        }
    char *out = calloc(1, (size_t)n + 2);
    for (int i = 0; i < k; i++) {
        if (i)
            strcat(out, " ");
        strcat(out, list[i]);
    }
    return out;
}

static void user_xattrs_are_preserved(void)
{
    unsigned char bin[300];
    for (int i = 0; i < 300; i++)
        bin[i] = (unsigned char)(i * 7); /* includes NUL bytes */
    const struct {
        const char *name;
        const void *value;
        size_t len;
    } attrs[] = {
        {"user.alpha", "first value", 11},
        {"user.empty", "", 0},
        {"user.binary", bin, sizeof bin},
        {"user.zeta.with.dots", "z", 1},
    };
    const char *want_names = "user.alpha user.binary user.empty user.zeta.with.dots";
    for (int d = 0; d < 2; d++) {
        char *sd, *dd;
        dirs_for(d, &sd, &dd);
        char *src = path_of("%s/f", sd), *dst = path_of("%s/f", dd);
        write_str(src, "with xattrs\n");
        for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++)
            CHECK(lsetxattr(src, attrs[i].name, attrs[i].value, attrs[i].len, 0) == 0,
                  "setup: setxattr %s on %s: %s", attrs[i].name, dirs[d].src_env,
                  strerror(errno));
        move_ok(src, dst, dirs[d].label);
        char *names = user_xattr_names(dst);
        CHECK(strcmp(names, want_names) == 0, "%s: user xattrs are [%s], expected [%s]",
              dirs[d].label, names, want_names);
        for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
            unsigned char got[1024];
            ssize_t n = lgetxattr(dst, attrs[i].name, got, sizeof got);
            CHECK(n >= 0, "%s: getxattr %s: %s", dirs[d].label, attrs[i].name,
                  strerror(errno));
            CHECK((size_t)n == attrs[i].len && memcmp(got, attrs[i].value, attrs[i].len) == 0,
                  "%s: xattr %s has %zd bytes that differ from the %zu set",
                  dirs[d].label, attrs[i].name, n, attrs[i].len);
        }
        check_content_str(dst, "with xattrs\n", dirs[d].label);
    }
}

static void posix_acl_is_preserved(void)
{
    require_real_root("an ACL entry for uid 1234");
    for (int d = 0; d < 2; d++) {
        char *sd, *dd;
        dirs_for(d, &sd, &dd);
        char *src = path_of("%s/f", sd), *dst = path_of("%s/f", dd);
        write_str(src, "with an acl\n");
        char *cmd = path_of("setfacl -m u:1234:rw '%s'", src);
        int st = system(cmd);
        CHECK(st == 0, "setup: '%s' failed with status %d", cmd, st);
        unsigned char want[1024], got[1024];
        ssize_t wn = getxattr(src, "system.posix_acl_access", want, sizeof want);
        CHECK(wn > 0, "setup: no system.posix_acl_access on source: %s", strerror(errno));
        struct stat before, after;
        CHECK(lstat(src, &before) == 0, "lstat: %s", strerror(errno));
        move_ok(src, dst, dirs[d].label);
        ssize_t gn = getxattr(dst, "system.posix_acl_access", got, sizeof got);
        CHECK(gn >= 0, "%s: destination has no ACL (getxattr system.posix_acl_access: %s)",
              dirs[d].label, strerror(errno));
        CHECK(gn == wn && memcmp(got, want, (size_t)wn) == 0,
              "%s: destination ACL (%zd bytes) differs from the source's (%zd bytes)",
              dirs[d].label, gn, wn);
        CHECK(lstat(dst, &after) == 0, "lstat: %s", strerror(errno));
        CHECK(after.st_mode == before.st_mode, "%s: mode %06o, expected %06o",
              dirs[d].label, after.st_mode, before.st_mode);
        /* and as getfacl sees it */
        char *out = path_of("%s/acl.txt", env_path("XT_WORK"));
        cmd = path_of("getfacl -cp '%s' > '%s'", dst, out);
        CHECK(system(cmd) == 0, "'%s' failed", cmd);
        size_t len;
        char *text = (char *)read_file(out, &len);
        CHECK(strstr(text, "user:1234:rw-") != NULL, "%s: getfacl shows no user:1234:rw-:\n%s",
              dirs[d].label, text);
        unlink(out);
    }
}

static void sparse_file_stays_sparse(void)
{
    const size_t size = 8u << 20, block = 4096, second = 4u << 20;
    unsigned char *want = calloc(1, size);
    fill_pattern(want, block, 7, 0);
    fill_pattern(want + second, block, 8, 0);
    for (int d = 0; d < 2; d++) {
        char *sd, *dd;
        dirs_for(d, &sd, &dd);
        char *src = path_of("%s/sparse", sd), *dst = path_of("%s/sparse", dd);
        int fd = open(src, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        CHECK(fd >= 0, "create: %s", strerror(errno));
        CHECK(pwrite(fd, want, block, 0) == (ssize_t)block, "pwrite: %s", strerror(errno));
        CHECK(pwrite(fd, want + second, block, second) == (ssize_t)block, "pwrite: %s",
              strerror(errno));
        CHECK(ftruncate(fd, size) == 0, "ftruncate: %s", strerror(errno));
        CHECK(fsync(fd) == 0, "fsync: %s", strerror(errno));
        close(fd);
        struct stat st;
        CHECK(stat(src, &st) == 0, "stat: %s", strerror(errno));
        CHECK(st.st_blocks * 512 <= 64 * 1024,
              "setup: source on %s is not sparse (%lld bytes allocated)",
              dirs[d].src_env, (long long)st.st_blocks * 512);
        move_ok(src, dst, dirs[d].label);
        CHECK(stat(dst, &st) == 0, "stat %s: %s", dst, strerror(errno));
        CHECK(st.st_size == (off_t)size, "%s: size %lld, expected %zu", dirs[d].label,
              (long long)st.st_size, size);
        CHECK(st.st_blocks * 512 <= 64 * 1024,
              "%s: destination is not sparse: %lld bytes allocated for 8 KiB of data",
              dirs[d].label, (long long)st.st_blocks * 512);
        check_content(dst, want, size, dirs[d].label);
    }
    free(want);
}

XT_MAIN(TEST(owner_and_group_are_preserved),
        TEST(mode_bits_including_setuid_and_setgid_are_preserved),
        TEST(atime_and_mtime_are_preserved_to_the_nanosecond),
        TEST(user_xattrs_are_preserved),
        TEST(posix_acl_is_preserved),
        TEST(sparse_file_stays_sparse))
