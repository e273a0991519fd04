/*
 * Hostile arguments and a hostile environment (issue 4): bad pointers, empty
 * and over-long names, odd bytes in names, and a source that is replaced
 * while it is being moved across devices.  Errors must be the kernel's
 * (compared with a same-filesystem oracle made with the raw system call);
 * nothing may crash, and nothing partial may ever appear at the destination.
 */
#include "common.h"

#include <sys/mman.h>

/* Call `fn` (0 rename, 1 renameat(AT_FDCWD), 2 renameat2(AT_FDCWD, 0)). */
static int call3(int fn, const char *a, const char *b)
{
    switch (fn) {
    case 0:
        return rename(a, b);
    case 1:
        return renameat(AT_FDCWD, a, AT_FDCWD, b);
    default:
        return renameat2(AT_FDCWD, a, AT_FDCWD, b, 0);
    }
}

static const char *const fn_names[] = {"rename", "renameat", "renameat2"};

/* Run fn in a child: it must not crash; returns its rc/errno via exit code. */
static void expect_in_child(int fn, const char *a, const char *b, int want_errno,
                            const char *what)
{
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        errno = 0;
        int rc = call3(fn, a, b);
        _exit(rc == 0 ? 0 : rc != -1 ? 254 : errno > 0 && errno < 250 ? errno : 253);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid, "waitpid: %s", strerror(errno));
    CHECK(!WIFSIGNALED(st), "%s: process killed by signal %d (%s)", what, WTERMSIG(st),
          strsignal(WTERMSIG(st)));
    int code = WEXITSTATUS(st);
    CHECK(code == want_errno, "%s: got %s, expected -1 %s", what,
          code == 0 ? "0 (success)" : code >= 250 ? "a bad return value" : err_name(code),
          err_name(want_errno));
}

/* ------------------------------------------------------------------ */

static void null_pointers_give_efault_for_all_three_functions(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    write_str(src, "must stay\n");
    const char *volatile nul = NULL;
    for (int fn = 0; fn < 3; fn++) {
        char *what = path_of("%s(NULL, dst)", fn_names[fn]);
        expect_in_child(fn, nul, dst, EFAULT, what);
        what = path_of("%s(src, NULL)", fn_names[fn]);
        expect_in_child(fn, src, nul, EFAULT, what);
        what = path_of("%s(NULL, NULL)", fn_names[fn]);
        expect_in_child(fn, nul, nul, EFAULT, what);
        /* and in this very process, with the *at functions and dirfds */
        int sfd = open(sd, O_RDONLY | O_DIRECTORY), dfd = open(dd, O_RDONLY | O_DIRECTORY);
        errno = 0;
        int rc = renameat(sfd, nul, dfd, "b");
        CHECK_FAILS_WITH(rc, EFAULT, "renameat(dirfd, NULL, dirfd, \"b\")");
        rc = renameat2(sfd, "a", dfd, nul, RENAME_NOREPLACE);
        CHECK_FAILS_WITH(rc, EFAULT, "renameat2(dirfd, \"a\", dirfd, NULL, NOREPLACE)");
        close(sfd);
        close(dfd);
    }
    check_content_str(src, "must stay\n", "NULL pointers");
    CHECK_DIR(sd, "a", "NULL pointers");
    CHECK_DIR(dd, "", "NULL pointers");
}

static void unmapped_pointer_gives_efault(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    write_str(src, "must stay\n");
    long pg = sysconf(_SC_PAGESIZE);
    char *p = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
    CHECK(munmap(p, (size_t)pg) == 0, "munmap: %s", strerror(errno));
    /* a string running off the end of a mapped page into unmapped memory */
    char *q = mmap(NULL, 2 * (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    CHECK(q != MAP_FAILED, "mmap: %s", strerror(errno));
    CHECK(munmap(q + pg, (size_t)pg) == 0, "munmap: %s", strerror(errno));
    memset(q, 'z', (size_t)pg);
    char *unterminated = q + pg - 100; /* 100 bytes, then the hole: no NUL */
    for (int fn = 0; fn < 3; fn++) {
        expect_in_child(fn, p, dst, EFAULT, path_of("%s(unmapped, dst)", fn_names[fn]));
        expect_in_child(fn, src, p, EFAULT, path_of("%s(src, unmapped)", fn_names[fn]));
        expect_in_child(fn, unterminated, dst, EFAULT,
                        path_of("%s(unterminated, dst)", fn_names[fn]));
        expect_in_child(fn, src, unterminated, EFAULT,
                        path_of("%s(src, unterminated)", fn_names[fn]));
        errno = 0;
        int rc = renameat2(AT_FDCWD, src, AT_FDCWD, p, RENAME_NOREPLACE);
        CHECK_FAILS_WITH(rc, EFAULT, "renameat2(src, unmapped, NOREPLACE)");
    }
    check_content_str(src, "must stay\n", "unmapped pointers");
    CHECK_DIR(sd, "a", "unmapped pointers");
    CHECK_DIR(dd, "", "unmapped pointers");
}

static void empty_strings_give_enoent(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    write_str(src, "must stay\n");
    for (int fn = 0; fn < 3; fn++) {
        errno = 0;
        int rc = call3(fn, "", dst);
        CHECK_FAILS_WITH(rc, ENOENT, path_of("%s(\"\", dst)", fn_names[fn]));
        rc = call3(fn, src, "");
        CHECK_FAILS_WITH(rc, ENOENT, path_of("%s(src, \"\")", fn_names[fn]));
        rc = call3(fn, "", "");
        CHECK_FAILS_WITH(rc, ENOENT, path_of("%s(\"\", \"\")", fn_names[fn]));
    }
    int sfd = open(sd, O_RDONLY | O_DIRECTORY), dfd = open(dd, O_RDONLY | O_DIRECTORY);
    int rc = renameat(sfd, "", dfd, "b");
    CHECK_FAILS_WITH(rc, ENOENT, "renameat(dirfd, \"\", dirfd, \"b\")");
    rc = renameat2(sfd, "a", dfd, "", RENAME_NOREPLACE);
    CHECK_FAILS_WITH(rc, ENOENT, "renameat2(dirfd, \"a\", dirfd, \"\", NOREPLACE)");
    check_content_str(src, "must stay\n", "empty strings");
    CHECK_DIR(sd, "a", "empty strings");
    CHECK_DIR(dd, "", "empty strings");
}

/*
 * A last component of NAME_MAX+1 bytes: the kernel answers EXDEV before it
 * looks the name up, so the errno is xrename's to get right.
 */
static void overlong_last_component_gives_enametoolong_like_kernel(void)
{
    char longname[NAME_MAX + 2];
    memset(longname, 'a', NAME_MAX + 1);
    longname[NAME_MAX + 1] = 0;
    char *same = test_dir("XT_TMPFS", "same");
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    write_str(path_of("%s/f", same), "f");
    write_str(path_of("%s/f", sd), "f");
    for (int side = 0; side < 2; side++) {
        for (int fn = 0; fn < 4; fn++) {
            const char *sn = side ? "f" : longname, *dn = side ? longname : "b";
            unsigned flags = fn == 3 ? RENAME_NOREPLACE : 0;
            errno = 0;
            long orc = syscall(SYS_renameat2, AT_FDCWD, path_of("%s/%s", same, sn), AT_FDCWD,
                               path_of("%s/x%s", same, dn), flags);
            int oerr = errno;
            CHECK(orc == -1 && oerr == ENAMETOOLONG, "oracle gave %ld %s", orc, err_name(oerr));
            errno = 0;
            char *a = path_of("%s/%s", sd, sn), *b = path_of("%s/%s", dd, dn);
            int rc = fn == 3 ? renameat2(AT_FDCWD, a, AT_FDCWD, b, flags) : call3(fn, a, b);
            char *what = path_of("%s%s with a %d-byte %s name across devices",
                                 fn == 3 ? "renameat2" : fn_names[fn],
                                 fn == 3 ? "(NOREPLACE)" : "", NAME_MAX + 1,
                                 side ? "destination" : "source");
            CHECK_FAILS_WITH(rc, ENAMETOOLONG, what);
            CHECK_DIR(sd, "f", what);
            CHECK_DIR(dd, "", what);
        }
    }
}

/* A NAME_MAX-byte name is valid: it moves (temp names must not be derived from it). */
static void name_max_last_component_moves_across_devices(void)
{
    char name[NAME_MAX + 1];
    memset(name, 'n', NAME_MAX);
    name[NAME_MAX] = 0;
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    for (int fn = 0; fn < 3; fn++) {
        for (int replace = 0; replace < 2; replace++) {
            char *a = path_of("%s/%s", sd, name), *b = path_of("%s/%s", dd, name);
            write_str(a, "long name\n");
            if (replace)
                write_str(b, "old\n");
            int rc = call3(fn, a, b);
            char *what = path_of("%s of a %d-byte name%s", fn_names[fn], NAME_MAX,
                                 replace ? " over an existing file" : "");
            CHECK_RC0(rc, what);
            check_content_str(b, "long name\n", what);
            CHECK_DIR(sd, "", what);
            CHECK_DIR(dd, name, what);
            /* a directory with such a name, holding such a name */
            CHECK(mkdir(a, 0755) == 0, "mkdir: %s", strerror(errno));
            write_str(path_of("%s/%s", a, name), "inner\n");
            CHECK(unlink(b) == 0, "unlink: %s", strerror(errno));
            rc = call3(fn, a, b);
            what = path_of("%s of a directory with a %d-byte name", fn_names[fn], NAME_MAX);
            CHECK_RC0(rc, what);
            check_content_str(path_of("%s/%s", b, name), "inner\n", what);
            CHECK_DIR(sd, "", what);
            CHECK_DIR(dd, name, what);
            rm_rf(b);
        }
    }
}

static void path_longer_than_path_max_gives_enametoolong(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    write_str(src, "must stay\n");
    /* "D/./././...../b": resolvable if it were short enough */
    size_t n = PATH_MAX + 16;
    char *lsrc = malloc(n + strlen(sd) + 8), *ldst = malloc(n + strlen(dd) + 8);
    strcpy(lsrc, sd);
    strcpy(ldst, dd);
    while (strlen(lsrc) < PATH_MAX + 4)
        strcat(lsrc, "/.");
    while (strlen(ldst) < PATH_MAX + 4)
        strcat(ldst, "/.");
    strcat(lsrc, "/a");
    strcat(ldst, "/b");
    for (int fn = 0; fn < 3; fn++) {
        errno = 0;
        int rc = call3(fn, lsrc, dst);
        CHECK_FAILS_WITH(rc, ENAMETOOLONG,
                         path_of("%s(%zu-byte source, dst)", fn_names[fn], strlen(lsrc)));
        rc = call3(fn, src, ldst);
        CHECK_FAILS_WITH(rc, ENAMETOOLONG,
                         path_of("%s(src, %zu-byte destination)", fn_names[fn], strlen(ldst)));
    }
    /* a long component in the middle: the kernel's own parent lookup refuses */
    char mid[NAME_MAX + 2];
    memset(mid, 'm', NAME_MAX + 1);
    mid[NAME_MAX + 1] = 0;
    int rc = rename(src, path_of("%s/%s/b", dd, mid));
    CHECK_FAILS_WITH(rc, ENAMETOOLONG, "rename(src, D/<256 bytes>/b)");
    check_content_str(src, "must stay\n", "overlong paths");
    CHECK_DIR(sd, "a", "overlong paths");
    CHECK_DIR(dd, "", "overlong paths");
}

/* Names are bytes: invalid UTF-8 and a newline move like any other name. */
static void non_utf8_and_newline_names_move_across_devices(void)
{
    static const char *const names[] = {"\xff\xfe", "new\nline", "tab\there", "\x01\x7f",
                                        " lead space", "-dash", "\xc3\x28"};
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (int fn = 0; fn < 3; fn++) {
            char *a = path_of("%s/%s", sd, names[i]), *b = path_of("%s/%s.moved", dd, names[i]);
            write_str(a, names[i]);
            int rc = call3(fn, a, b);
            char *what = path_of("%s of file #%zu with an odd name", fn_names[fn], i);
            CHECK_RC0(rc, what);
            check_content_str(b, names[i], what);
            check_absent(a, what);
            CHECK(unlink(b) == 0, "unlink: %s", strerror(errno));
        }
    }
    /* a directory whose entries all have such names, itself oddly named */
    char *tree = path_of("%s/\xff\ntree", sd);
    CHECK(mkdir(tree, 0755) == 0, "mkdir: %s", strerror(errno));
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        write_str(path_of("%s/%s", tree, names[i]), names[i]);
    CHECK(symlink("\xff\xfe", path_of("%s/link\n", tree)) == 0, "symlink: %s", strerror(errno));
    char *dst = path_of("%s/\xfe\ntree", dd);
    int rc = renameat2(AT_FDCWD, tree, AT_FDCWD, dst, RENAME_NOREPLACE);
    CHECK_RC0(rc, "renameat2(NOREPLACE) of a tree with odd names");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        check_content_str(path_of("%s/%s", dst, names[i]), names[i], "tree with odd names");
    char buf[16];
    ssize_t k = readlink(path_of("%s/link\n", dst), buf, sizeof buf);
    CHECK(k == 2 && memcmp(buf, "\xff\xfe", 2) == 0, "symlink target not kept (%zd bytes)", k);
    CHECK_DIR(sd, "", "tree with odd names");
    CHECK_DIR(dd, "\xfe\ntree", "tree with odd names");
}

/* ------------------------------------------------------------------ */
/* A source replaced again and again while it is moved                 */

#define NCAND 4
static const size_t cand_size[NCAND] = {65536 + 3, 300000, 700001, 1u << 20};

/*
 * The racer: forever write a complete candidate under a private name, then
 * rename it onto the source name with the raw system call (same filesystem,
 * never through xrename).
 */
static __attribute__((noreturn)) void racer(const char *sd)
{
    char *tmp = path_of("%s/racer.tmp", sd), *src = path_of("%s/src", sd);
    static unsigned char buf[1u << 20];
    for (unsigned i = 0;; i++) {
        int c = (int)(i % NCAND);
        fill_pattern(buf, cand_size[c], 1000 + (uint64_t)c, 0);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            _exit(3);
        size_t off = 0;
        while (off < cand_size[c]) {
            ssize_t n = write(fd, buf + off, cand_size[c] - off);
            if (n <= 0)
                _exit(4);
            off += (size_t)n;
        }
        close(fd);
        if (syscall(SYS_renameat2, AT_FDCWD, tmp, AT_FDCWD, src, 0) != 0)
            _exit(5);
    }
}

static void replaced_source_moves_one_complete_candidate_or_fails_cleanly(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    uint64_t hashes[NCAND];
    static unsigned char buf[1u << 20];
    for (int c = 0; c < NCAND; c++) {
        fill_pattern(buf, cand_size[c], 1000 + (uint64_t)c, 0);
        hashes[c] = hash_update(HASH_INIT, buf, cand_size[c]);
    }
    char *src = path_of("%s/src", sd), *dst = path_of("%s/dst", dd);
    fill_pattern(buf, cand_size[0], 1000, 0);
    write_file(src, buf, cand_size[0]);

    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0)
        racer(sd);

    int ok = 0, enoent = 0, exdev = 0;
    uint64_t last = 0; /* 0: no destination yet */
    char failure[512] = "";
    for (int i = 0; i < 60 && !failure[0]; i++) {
        int fn = i % 3;
        errno = 0;
        int rc = call3(fn, src, dst);
        int e = errno;
        if (rc == 0) {
            ok++;
        } else if (rc == -1 && e == ENOENT) {
            enoent++;
        } else if (rc == -1 && e == EXDEV) {
            exdev++;
        } else {
            snprintf(failure, sizeof failure, "attempt %d (%s): returned %d, errno %s", i,
                     fn_names[fn], rc, err_name(e));
            break;
        }
        char *l = list_dir(dd);
        if (strcmp(l, exists(dst) ? "dst" : "") != 0) {
            snprintf(failure, sizeof failure, "attempt %d: destination dir holds [%s]", i, l);
            break;
        }
        free(l);
        if (!exists(dst))
            continue;
        off_t size;
        uint64_t h = hash_file(dst, &size);
        int match = -1;
        for (int c = 0; c < NCAND; c++)
            if (h == hashes[c] && size == (off_t)cand_size[c])
                match = c;
        if (match < 0)
            snprintf(failure, sizeof failure,
                     "attempt %d: destination (%lld bytes) is not one of the complete "
                     "candidates (a mix or a partial copy)",
                     i, (long long)size);
        else if (rc != 0 && h != last)
            snprintf(failure, sizeof failure,
                     "attempt %d failed (%s) but the destination changed", i, err_name(e));
        last = h;
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st), "racer stopped by itself: status %d", WEXITSTATUS(st));
    CHECK(!failure[0], "%s", failure);
    printf("  racing moves: %d succeeded, %d ENOENT, %d EXDEV\n", ok, enoent, exdev);

    /* with the racer gone the move is deterministic */
    if (!exists(src)) {
        fill_pattern(buf, cand_size[2], 1002, 0);
        write_file(src, buf, cand_size[2]);
    }
    off_t ssize;
    uint64_t sh = hash_file(src, &ssize);
    int rc = rename(src, dst);
    CHECK_RC0(rc, "rename once the racer stopped");
    off_t size;
    uint64_t h = hash_file(dst, &size);
    CHECK(h == sh && size == ssize, "final destination differs from the final source");
    CHECK_DIR(dd, "dst", "after racing");
    char *l = list_dir(sd);
    CHECK(strcmp(l, "") == 0 || strcmp(l, "racer.tmp") == 0,
          "source directory holds [%s] (leftovers?)", l);
}

XT_MAIN(TEST(null_pointers_give_efault_for_all_three_functions),
        TEST(unmapped_pointer_gives_efault), TEST(empty_strings_give_enoent),
        TEST(overlong_last_component_gives_enametoolong_like_kernel),
        TEST(name_max_last_component_moves_across_devices),
        TEST(path_longer_than_path_max_gives_enametoolong),
        TEST(non_utf8_and_newline_names_move_across_devices),
        TEST(replaced_source_moves_one_complete_candidate_or_fails_cleanly))
