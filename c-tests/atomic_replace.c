/*
 * Replacing an existing destination across devices is atomic for readers:
 * a reader that keeps opening the destination by name and reading it whole
 * sees either the complete old or the complete new content, and never a
 * missing file.  A second child only open()s and fstat()s the destination as
 * fast as it can, to hit short windows (e.g. an unlink before the install).
 */
#include "common.h"
#include <poll.h>

#define MIB (1u << 20)

struct reader_report {
    long reads, old_seen, new_seen;
    int open_errno;    /* first failed open() */
    long bad_size;     /* first size that matched neither version, or -1 */
    int bad_checksum;  /* a read of a right size with wrong content */
};

/* full: read and checksum the whole file each time; else only open + fstat */
static void reader(int full, const char *path, off_t size_a, uint64_t hash_a,
                   off_t size_b, uint64_t hash_b, int ready_fd, int stop_fd,
                   int report_fd)
{
    struct reader_report r = {0, 0, 0, 0, -1, 0};
    int told_ready = 0;
    for (;;) {
        struct pollfd p = {stop_fd, POLLIN, 0};
        if (poll(&p, 1, 0) != 0)
            break; /* parent closed the stop pipe */
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            r.open_errno = errno;
            break;
        }
        uint64_t h = HASH_INIT;
        off_t total = 0;
        if (full) {
            static unsigned char buf[1 << 20];
            ssize_t n;
            while ((n = read(fd, buf, sizeof buf)) > 0) {
                h = hash_update(h, buf, (size_t)n);
                total += n;
            }
        } else {
            struct stat st;
            if (fstat(fd, &st) != 0)
                _exit(3);
            total = st.st_size;
        }
        close(fd);
        r.reads++;
        if (total == size_a && (!full || h == hash_a)) {
            r.old_seen++;
        } else if (total == size_b && (!full || h == hash_b)) {
            r.new_seen++;
        } else {
            if (total != size_a && total != size_b)
                r.bad_size = (long)total;
            else
                r.bad_checksum = 1;
            break;
        }
        if (!told_ready) {
            told_ready = 1;
            if (write(ready_fd, "r", 1) != 1)
                _exit(3);
        }
    }
    if (!told_ready && write(ready_fd, "x", 1) != 1)
        _exit(3);
    if (write(report_fd, &r, sizeof r) != (ssize_t)sizeof r)
        _exit(3);
    _exit(0);
}

static void reader_never_sees_missing_or_partial_destination_during_replace(void)
{
    const off_t size_a = 20 * MIB, size_b = 20 * MIB - 12345;
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *dst = path_of("%s/data", dd);
    char *src = path_of("%s/next", sd);
    uint64_t hash_a = write_pattern_file(dst, (size_t)size_a, 1000);
    /* the two versions' hashes, computed once */
    uint64_t hash_b = write_pattern_file(src, (size_t)size_b, 2000);
    CHECK(unlink(src) == 0, "unlink: %s", strerror(errno));

    int ready[2], stop[2], report[2];
    CHECK(pipe(ready) == 0 && pipe(stop) == 0 && pipe(report) == 0, "pipe: %s",
          strerror(errno));
    pid_t pids[2];
    for (int full = 0; full < 2; full++) {
        fflush(stdout);
        pids[full] = fork();
        CHECK(pids[full] >= 0, "fork: %s", strerror(errno));
        if (pids[full] == 0) {
            close(ready[0]);
            close(stop[1]);
            close(report[0]);
            reader(full, dst, size_a, hash_a, size_b, hash_b, ready[1], stop[0],
                   report[1]);
        }
    }
    close(ready[1]);
    close(stop[0]);
    close(report[1]);
    char c[2];
    CHECK(read(ready[0], &c[0], 1) == 1 && read(ready[0], &c[1], 1) == 1,
          "readers did not start");
    int started = c[0] == 'r' && c[1] == 'r';

    const int rounds = 8;
    for (int i = 0; i < rounds && started; i++) {
        int to_b = i % 2 == 0; /* A -> B -> A -> ... */
        write_pattern_file(src, (size_t)(to_b ? size_b : size_a), to_b ? 2000 : 1000);
        int rc = rename(src, dst);
        if (rc != 0) {
            int e = errno;
            kill(pids[0], SIGKILL);
            kill(pids[1], SIGKILL);
            waitpid(pids[0], NULL, 0);
            waitpid(pids[1], NULL, 0);
            errno = e;
            CHECK_RC0(rc, path_of("replace %d of %d", i + 1, rounds));
        }
    }
    close(stop[1]);
    for (int k = 0; k < 2; k++) {
        struct reader_report r;
        ssize_t n = read(report[0], &r, sizeof r);
        CHECK(n == (ssize_t)sizeof r, "a reader died without a report");
        CHECK(r.open_errno == 0, "reader: open(%s) failed with %s during a replace",
              dst, strerror(r.open_errno));
        CHECK(r.bad_size < 0,
              "reader saw %ld bytes: neither the old (%lld) nor the new (%lld) size",
              r.bad_size, (long long)size_a, (long long)size_b);
        CHECK(!r.bad_checksum, "reader saw content matching neither version");
        CHECK(r.reads > 0, "a reader never completed a read");
        printf("# reader: %ld opens (%ld old version, %ld new version)\n", r.reads,
               r.old_seen, r.new_seen);
    }
    waitpid(pids[0], NULL, 0);
    waitpid(pids[1], NULL, 0);
    CHECK(started, "readers did not start");
    /* after an even number of replaces the destination holds version A */
    off_t size;
    uint64_t h = hash_file(dst, &size);
    CHECK(size == size_a && h == hash_a, "final destination is not the last version");
    CHECK_DIR(dd, "data", "after the replaces");
    CHECK_DIR(sd, "", "after the replaces");
}

XT_MAIN(TEST(reader_never_sees_missing_or_partial_destination_during_replace))
