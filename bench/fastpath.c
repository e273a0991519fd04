/* Times N same-filesystem renames with one of rename, renameat, renameat2
 * (or, with "getppid", N calls that are not renames: what a traced program
 * that renames nothing pays). Prints nanoseconds per call. Used by
 * bench/bench.py, bare, preloaded and traced. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: fastpath DIR N rename|renameat|renameat2|getppid|mix\n");
        return 2;
    }
    if (chdir(argv[1]) != 0) return perror("chdir"), 1;
    long n = atol(argv[2]);
    const char *fn = argv[3];
    int fd = open("a", O_CREAT | O_WRONLY, 0600);
    if (fd < 0) return perror("open"), 1;
    close(fd);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        const char *from = (i & 1) ? "b" : "a", *to = (i & 1) ? "a" : "b";
        int rc;
        if (strcmp(fn, "getppid") == 0)
            rc = syscall(SYS_getppid) > 0 ? 0 : -1;
        else if (strcmp(fn, "mix") == 0) {
            /* open, fstat, read, close: an ordinary mix of calls */
            char c;
            struct stat st;
            int f = open("a", O_RDONLY);
            rc = (f < 0 || fstat(f, &st) != 0 || read(f, &c, 1) < 0 || close(f) != 0) ? -1 : 0;
        }
        else if (strcmp(fn, "rename") == 0)
            rc = rename(from, to);
        else if (strcmp(fn, "renameat") == 0)
            rc = renameat(AT_FDCWD, from, AT_FDCWD, to);
        else
            rc = renameat2(AT_FDCWD, from, AT_FDCWD, to, 0);
        if (rc != 0) return perror(fn), 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("%.1f\n", ns / n);
    int renames = strcmp(fn, "getppid") != 0 && strcmp(fn, "mix") != 0;
    unlink(renames && (n & 1) ? "b" : "a");
    return 0;
}
