/*
 * Sizes (issue 5): a multi-GiB sparse file, a zero-byte file with its
 * metadata, and a file that keeps growing while it is being moved.
 */
#include "common.h"

#include <poll.h>
#include <sys/time.h>
#include <time.h>

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

static const char *ename(int e)
{
    const char *n = strerrorname_np(e);
    return n ? n : "?";
}

static void pwrite_all(int fd, const void *buf, size_t len, off_t off, const char *what)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "pwrite %s: %s", what, strerror(errno));
        p += n;
        len -= (size_t)n;
        off += n;
    }
}

static void pread_all(int fd, void *buf, size_t len, off_t off, const char *what)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n >= 0, "pread %s at %lld: %s", what, (long long)off, strerror(errno));
        CHECK(n > 0, "pread %s: unexpected end of file at %lld", what, (long long)off);
        p += n;
        len -= (size_t)n;
        off += n;
    }
}

/* ------------------------------------------------------------------ */
/* A 6 GiB sparse file                                                 */

#define SPARSE_SIZE (6 * GIB)
#define SPARSE_CHUNK MIB
static const unsigned long long data_offsets[] = {0, 1 * GIB, 3 * GIB, SPARSE_SIZE - MIB};
static const unsigned long long hole_offsets[] = {
    MIB, 512 * MIB, GIB + MIB, 2 * GIB, 3 * GIB - 64 * KIB, 3 * GIB + MIB,
    5 * GIB, SPARSE_SIZE - MIB - 64 * KIB};
#define NDATA (sizeof data_offsets / sizeof data_offsets[0])
#define NHOLE (sizeof hole_offsets / sizeof hole_offsets[0])

static void check_sparse(const char *path, const struct stat *orig, const char *what)
{
    struct stat st;
    CHECK(lstat(path, &st) == 0, "%s: %s is missing: %s", what, path, strerror(errno));
    CHECK(S_ISREG(st.st_mode), "%s: not a regular file (mode %o)", what, st.st_mode);
    CHECK(st.st_size == (off_t)SPARSE_SIZE, "%s: st_size %lld, expected %llu", what,
          (long long)st.st_size, SPARSE_SIZE);
    /* 4 MiB of data; allow metadata blocks, but nothing like the holes */
    CHECK((unsigned long long)st.st_blocks * 512 <= 16 * MIB,
          "%s: %lld blocks allocated (%llu MiB): the holes were filled", what,
          (long long)st.st_blocks, (unsigned long long)st.st_blocks * 512 / MIB);
    CHECK((unsigned long long)st.st_blocks * 512 >= NDATA * SPARSE_CHUNK,
          "%s: only %lld blocks allocated for %zu MiB of data", what,
          (long long)st.st_blocks, NDATA);
    CHECK((st.st_mode & 07777) == (orig->st_mode & 07777), "%s: mode %04o, expected %04o",
          what, st.st_mode & 07777, orig->st_mode & 07777);
    CHECK(st.st_mtim.tv_sec == orig->st_mtim.tv_sec &&
              st.st_mtim.tv_nsec == orig->st_mtim.tv_nsec,
          "%s: mtime %lld.%09ld, expected %lld.%09ld", what, (long long)st.st_mtim.tv_sec,
          st.st_mtim.tv_nsec, (long long)orig->st_mtim.tv_sec, orig->st_mtim.tv_nsec);

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0, "%s: open %s: %s", what, path, strerror(errno));
    unsigned char *got = malloc(SPARSE_CHUNK), *want = malloc(SPARSE_CHUNK);
    for (size_t k = 0; k < NDATA; k++) {
        pread_all(fd, got, SPARSE_CHUNK, (off_t)data_offsets[k], what);
        fill_pattern(want, SPARSE_CHUNK, 606, data_offsets[k]);
        if (memcmp(got, want, SPARSE_CHUNK) != 0) {
            size_t i = 0;
            while (got[i] == want[i])
                i++;
            FAILF("%s: data block at %llu MiB differs at byte %llu", what,
                  data_offsets[k] / MIB, data_offsets[k] + i);
        }
    }
    for (size_t k = 0; k < NHOLE; k++) {
        pread_all(fd, got, 64 * KIB, (off_t)hole_offsets[k], what);
        for (size_t i = 0; i < 64 * KIB; i++)
            CHECK(got[i] == 0, "%s: hole at %llu reads byte %u at %llu, expected zeros",
                  what, hole_offsets[k], got[i], hole_offsets[k] + i);
    }
    /* and the layout: data where it was written, a hole right after it */
    for (size_t k = 0; k < NDATA; k++) {
        off_t d = lseek(fd, (off_t)data_offsets[k], SEEK_DATA);
        CHECK(d == (off_t)data_offsets[k], "%s: SEEK_DATA from %llu gives %lld", what,
              data_offsets[k], (long long)d);
        if (data_offsets[k] + SPARSE_CHUNK < SPARSE_SIZE) {
            off_t h = lseek(fd, (off_t)data_offsets[k], SEEK_HOLE);
            CHECK(h == (off_t)(data_offsets[k] + SPARSE_CHUNK),
                  "%s: SEEK_HOLE from %llu gives %lld, expected %llu", what,
                  data_offsets[k], (long long)h, data_offsets[k] + SPARSE_CHUNK);
        }
    }
    free(got);
    free(want);
    close(fd);
}

static void multi_gib_sparse_file_moves_intact(void)
{
    char *td, *ed;
    xdev_dirs("", &td, &ed);
    char *a = path_of("%s/sparse", td), *b = path_of("%s/sparse", ed);
    /* 6 GiB apparent, 4 MiB of data: neither the 1 GiB tmpfs nor the
     * 512 MiB ext4 could hold it if the holes were filled */
    int fd = open(a, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    CHECK(fd >= 0, "create %s: %s", a, strerror(errno));
    unsigned char *buf = malloc(SPARSE_CHUNK);
    for (size_t k = 0; k < NDATA; k++) {
        fill_pattern(buf, SPARSE_CHUNK, 606, data_offsets[k]);
        pwrite_all(fd, buf, SPARSE_CHUNK, (off_t)data_offsets[k], a);
    }
    free(buf);
    CHECK(fchmod(fd, 0640) == 0, "fchmod: %s", strerror(errno));
    struct timespec ts[2] = {{1500000000, 111111111}, {1600000000, 222222222}};
    CHECK(futimens(fd, ts) == 0, "futimens: %s", strerror(errno));
    CHECK(close(fd) == 0, "close: %s", strerror(errno));
    struct stat orig;
    CHECK(lstat(a, &orig) == 0, "stat: %s", strerror(errno));
    check_sparse(a, &orig, "setup: the source");

    int rc = rename(a, b);
    CHECK_RC0(rc, "rename of a 6 GiB sparse file tmpfs->ext4 (512 MiB)");
    check_sparse(b, &orig, "after tmpfs->ext4");
    check_absent(a, "after tmpfs->ext4");
    CHECK_DIR(ed, "sparse", "after tmpfs->ext4");
    CHECK_DIR(td, "", "after tmpfs->ext4");

    rc = renameat2(AT_FDCWD, b, AT_FDCWD, a, 0);
    CHECK_RC0(rc, "renameat2 of a 6 GiB sparse file ext4->tmpfs");
    check_sparse(a, &orig, "after ext4->tmpfs");
    check_absent(b, "after ext4->tmpfs");
    CHECK_DIR(ed, "", "after ext4->tmpfs");
    CHECK_DIR(td, "sparse", "after ext4->tmpfs");
    unlink(a);
}

/* ------------------------------------------------------------------ */
/* Zero bytes                                                          */

static void zero_byte_file_moves(void)
{
    for (int p = 0; p < 3; p++) {
        for (int op = 0; op < 3; op++) {
            for (int replace = 0; replace < 2; replace++) {
                char tag[64];
                snprintf(tag, sizeof tag, "%s-%d-src", op_names[op], replace);
                char *sd = test_dir(mount_pairs[p].src_env, tag);
                snprintf(tag, sizeof tag, "%s-%d-dst", op_names[op], replace);
                char *dd = test_dir(mount_pairs[p].dst_env, tag);
                require_kernel_exdev(sd, dd);
                char *src = path_of("%s/empty", sd), *dst = path_of("%s/moved", dd);
                char what[128];
                snprintf(what, sizeof what, "%s of a 0-byte file %s%s", op_names[op],
                         mount_pairs[p].label, replace ? " over a non-empty file" : "");

                write_file(src, "", 0);
                CHECK(chmod(src, 0604) == 0, "chmod: %s", strerror(errno));
                int has_xattr = setxattr(src, "user.xt", "zero", 4, 0) == 0;
                CHECK(has_xattr || errno == ENOTSUP || errno == EOPNOTSUPP,
                      "setxattr: %s", strerror(errno));
                struct timespec ts[2] = {{1000000000, 123456789}, {1234567890, 987654321}};
                CHECK(utimensat(AT_FDCWD, src, ts, 0) == 0, "utimensat: %s", strerror(errno));
                if (replace)
                    write_str(dst, "previous destination content, not empty\n");
                struct stat before;
                CHECK(lstat(src, &before) == 0, "stat: %s", strerror(errno));

                errno = 0;
                int rc = do_op((enum op)op, src, dst);
                CHECK_RC0(rc, what);
                check_absent(src, what);
                struct stat st;
                CHECK(lstat(dst, &st) == 0, "%s: destination missing: %s", what,
                      strerror(errno));
                CHECK(S_ISREG(st.st_mode), "%s: destination mode %o is not a file", what,
                      st.st_mode);
                CHECK(st.st_size == 0 && st.st_blocks == 0,
                      "%s: destination has size %lld and %lld blocks, expected 0 and 0",
                      what, (long long)st.st_size, (long long)st.st_blocks);
                CHECK(st.st_nlink == 1, "%s: destination has %lu links", what,
                      (unsigned long)st.st_nlink);
                CHECK((st.st_mode & 07777) == 0604, "%s: mode %04o, expected 0604", what,
                      st.st_mode & 07777);
                CHECK(st.st_uid == before.st_uid && st.st_gid == before.st_gid,
                      "%s: owner %u:%u, expected %u:%u", what, st.st_uid, st.st_gid,
                      before.st_uid, before.st_gid);
                CHECK(st.st_mtim.tv_sec == ts[1].tv_sec && st.st_mtim.tv_nsec == ts[1].tv_nsec,
                      "%s: mtime %lld.%09ld, expected %lld.%09ld", what,
                      (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                      (long long)ts[1].tv_sec, ts[1].tv_nsec);
                CHECK(st.st_atim.tv_sec == ts[0].tv_sec && st.st_atim.tv_nsec == ts[0].tv_nsec,
                      "%s: atime %lld.%09ld, expected %lld.%09ld", what,
                      (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
                      (long long)ts[0].tv_sec, ts[0].tv_nsec);
                if (has_xattr) {
                    char v[16];
                    ssize_t n = getxattr(dst, "user.xt", v, sizeof v);
                    CHECK(n == 4 && memcmp(v, "zero", 4) == 0,
                          "%s: xattr user.xt is %s, expected \"zero\"", what,
                          n < 0 ? strerror(errno) : "different");
                }
                CHECK_DIR(sd, "", what);
                CHECK_DIR(dd, "moved", what);
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* A file appended to during the move                                  */

/*
 * Records of exactly one page, written at page-aligned offsets with one
 * write(2) each: the file size another process observes then always falls
 * on a record boundary (the kernel updates i_size per page), so "the first
 * K complete records and nothing else" is the exact expected content.
 */
#define REC 4096u
#define PREFILL 8192u /* 32 MiB already there when the move starts */
#define MAXREC 32768u /* the appender stops writing at 128 MiB */

static void make_record(unsigned char *r, uint64_t seq)
{
    fill_pattern(r, REC, 0xA11 + seq, 0);
    int n = snprintf((char *)r, 32, "record %016llx\n", (unsigned long long)seq);
    r[n] = '\n';
}

/*
 * The file must be records 0..K-1, complete and in sequence; returns K.
 * Fails if not, naming the first bad record.
 */
static uint64_t check_record_prefix(const char *path, const char *what)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0, "%s: open %s: %s", what, path, strerror(errno));
    struct stat st;
    CHECK(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
    CHECK(st.st_size % REC == 0,
          "%s: %s has %lld bytes, not a whole number of %u-byte records (a partial record)",
          what, path, (long long)st.st_size, REC);
    uint64_t k = (uint64_t)st.st_size / REC;
    unsigned char *got = malloc(REC), *want = malloc(REC);
    for (uint64_t i = 0; i < k; i++) {
        pread_all(fd, got, REC, (off_t)(i * REC), what);
        make_record(want, i);
        if (memcmp(got, want, REC) != 0) {
            unsigned long long seen = 0;
            int parsed = sscanf((char *)got, "record %llx", &seen) == 1;
            FAILF("%s: record %llu of %llu in %s is wrong (%s%llx)", what,
                  (unsigned long long)i, (unsigned long long)k, path,
                  parsed ? "its header says record " : "no record header, ",
                  parsed ? seen : 0ull);
        }
    }
    free(got);
    free(want);
    close(fd);
    return k;
}

/*
 * Child: appends records PREFILL.. to fd, reports "started" on `ready`
 * after the first one, stops when `stop` reaches EOF, and writes the
 * number of records in the file to `ready` before exiting.
 */
static void appender(int fd, int ready, int stop)
{
    unsigned char rec[REC];
    uint64_t seq = PREFILL;
    int stopped = 0;
    while (!stopped) {
        if (seq < MAXREC) {
            make_record(rec, seq);
            ssize_t n;
            do
                n = write(fd, rec, REC);
            while (n < 0 && errno == EINTR);
            if (n != (ssize_t)REC)
                _exit(n < 0 ? (errno > 0 && errno < 250 ? errno : 250) : 251);
            if (seq++ == PREFILL && write(ready, "s", 1) != 1)
                _exit(252);
        }
        struct pollfd pf = {stop, POLLIN, 0};
        int r = poll(&pf, 1, seq < MAXREC ? 0 : -1); /* at the cap: wait for stop */
        if (r > 0)
            stopped = 1; /* EOF (POLLHUP/POLLIN): the parent is done */
    }
    if (write(ready, &seq, sizeof seq) != sizeof seq)
        _exit(253);
    _exit(0);
}

static void appended_move(const struct mount_pair *p, enum op op, int round)
{
    char tag[64];
    snprintf(tag, sizeof tag, "%s-%d-src", op_names[op], round);
    char *sd = test_dir(p->src_env, tag);
    snprintf(tag, sizeof tag, "%s-%d-dst", op_names[op], round);
    char *dd = test_dir(p->dst_env, tag);
    require_kernel_exdev(sd, dd);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    char *what = path_of("%s %s of a file appended to during the move (round %d)",
                         op_names[op], p->label, round);

    int fd = open(src, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    CHECK(fd >= 0, "create %s: %s", src, strerror(errno));
    unsigned char *rec = malloc(REC * 256u);
    for (uint64_t i = 0; i < PREFILL; i += 256) {
        for (uint64_t j = 0; j < 256; j++)
            make_record(rec + j * REC, i + j);
        write_all(fd, rec, REC * 256u, src);
    }
    free(rec);

    int ready[2], stop[2];
    CHECK(pipe(ready) == 0 && pipe(stop) == 0, "pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(ready[0]);
        close(stop[1]);
        appender(fd, ready[1], stop[0]);
    }
    close(fd);
    close(ready[1]);
    close(stop[0]);
    char c;
    ssize_t n = read(ready[0], &c, 1);
    CHECK(n == 1, "%s: the appender did not start", what);

    errno = 0;
    int rc = do_op(op, src, dst); /* while the child keeps appending */
    int e = errno;

    close(stop[1]); /* stop the appender */
    uint64_t total = 0;
    n = read(ready[0], &total, sizeof total);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        CHECK(errno == EINTR, "waitpid: %s", strerror(errno));
    close(ready[0]);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && n == sizeof total,
          "%s: the appender failed (status %d)", what, status);

    if (rc == 0) {
        check_absent(src, what);
        uint64_t k = check_record_prefix(dst, what);
        CHECK(k >= PREFILL, "%s: the copy has %llu records, fewer than the %u there "
                            "before the move started",
              what, (unsigned long long)k, PREFILL);
        CHECK(k <= total, "%s: the copy has %llu records, but only %llu were written",
              what, (unsigned long long)k, (unsigned long long)total);
        CHECK_DIR(sd, "", what);
        CHECK_DIR(dd, "b", what);
        printf("  note: %s: moved, copy has %llu of %llu records\n", what,
               (unsigned long long)k, (unsigned long long)total);
    } else {
        CHECK(rc == -1 && e != 0, "%s: returned %d, errno %d", what, rc, e);
        check_absent(dst, what);
        uint64_t k = check_record_prefix(src, what);
        CHECK(k == total, "%s: failed with %s, but the source has %llu records and "
                          "%llu were written",
              what, ename(e), (unsigned long long)k, (unsigned long long)total);
        CHECK_DIR(sd, "a", what);
        CHECK_DIR(dd, "", what);
        printf("  note: %s: failed with %s, source intact (%llu records)\n", what,
               ename(e), (unsigned long long)k);
    }
    rm_rf(sd);
    rm_rf(dd);
}

static void file_appended_during_move_gives_a_consistent_copy(void)
{
    for (int round = 0; round < 2; round++) {
        appended_move(&mount_pairs[0], (enum op)(round ? OP_RENAMEAT : OP_RENAME), round);
        appended_move(&mount_pairs[1], (enum op)(round ? OP_RENAME : OP_RENAMEAT2), round);
    }
}

XT_MAIN(TEST(multi_gib_sparse_file_moves_intact),
        TEST(zero_byte_file_moves),
        TEST(file_appended_during_move_gives_a_consistent_copy))
