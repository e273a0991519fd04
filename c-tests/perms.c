/*
 * Permission parity (issue 4): a cross-device move refused for permission
 * reasons fails with the errno the kernel gives on one filesystem, copies
 * nothing, leaves no trace at the destination and the source intact.
 *
 * Every case runs as root and as an unprivileged user (uid/gid 65534, no
 * supplementary groups: set in a forked child after the trees were prepared
 * by root), through rename (cwd = source dir, destination through
 * /proc/self/fd/N), renameat and renameat2 (dirfds, relative names) and
 * renameat2(RENAME_NOREPLACE).  Directory fds are opened by root before the
 * privileges are dropped, so the unprivileged child needs no access to the
 * (mode 0700) work directory.
 *
 * The oracle is the raw system call on one filesystem (or one mount), run
 * with the same identity; the documented errno is asserted as well.
 */
#include "common.h"

#include <ftw.h>
#include <grp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>

#define XT_FS_IOC_GETFLAGS _IOR('f', 1, long)
#define XT_FS_IOC_SETFLAGS _IOW('f', 2, long)
#define XT_FS_IMMUTABLE_FL 0x00000010
#define XT_FS_APPEND_FL 0x00000020

#define NOBODY 65534
#define OTHER 1234

/* ------------------------------------------------------------------ */
/* Attribute flags (chattr) and cleanup                                */

static int set_flags(const char *path, int set, int clear)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int f = 0, rc = ioctl(fd, XT_FS_IOC_GETFLAGS, &f);
    if (rc == 0) {
        int nf = (f | set) & ~clear;
        rc = nf == f ? 0 : ioctl(fd, XT_FS_IOC_SETFLAGS, &nf);
    }
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static void chattr(const char *path, int set)
{
    CHECK(set_flags(path, set, 0) == 0, "setting attribute flags %#x on %s: %s", set, path,
          strerror(errno));
}

static int unlock_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)f;
    (void)flag;
    if (!S_ISLNK(st->st_mode) && (S_ISREG(st->st_mode) || S_ISDIR(st->st_mode)))
        set_flags(p, 0, XT_FS_IMMUTABLE_FL | XT_FS_APPEND_FL); /* ENOTTY on tmpfs: fine */
    return 0;
}

/* Clear immutable/append-only flags below `dir`, then empty it. */
static int reset_dir(const char *dir)
{
    nftw(dir, unlock_cb, 32, FTW_PHYS);
    return remove_below(dir);
}

/* ------------------------------------------------------------------ */
/* Snapshots (types, modes, owners, contents)                          */

/* A snapshot entry: name, mode, owner; "/" for a directory, or contents. */
static void snap_entry(struct sbuf *sb, const char *p, const char *r, const struct stat *st)
{
    sb_add(sb, " %s(%04o,%u)", r, st->st_mode & 07777, (unsigned)st->st_uid);
    if (S_ISDIR(st->st_mode)) {
        sb_add(sb, "/");
    } else if (S_ISREG(st->st_mode)) {
        size_t len;
        unsigned char *c = read_file(p, &len);
        sb_add(sb, "=\"%.*s\"", (int)(len > 40 ? 40 : len), (char *)c);
        free(c);
    }
}

static char *snapshot2(const char *S, const char *D)
{
    return snapshot2_with(S, D, 256, snap_entry);
}

/* ------------------------------------------------------------------ */
/* Running a call as someone                                           */

enum { FN_RENAME, FN_RENAMEAT, FN_RENAMEAT2, FN_NOREPLACE, NFN };
static const char *const fn_labels[] = {"rename", "renameat", "renameat2",
                                        "renameat2/NOREPLACE"};

/* The result of one call, made by `uid` (0 or NOBODY) in a child process. */
static struct res run_as(uid_t uid, int raw, int fn, const char *S, const char *D)
{
    int sfd = open(S, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int dfd = open(D, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(sfd >= 0 && dfd >= 0, "open %s, %s: %s", S, D, strerror(errno));
    int pfd[2];
    CHECK(pipe(pfd) == 0, "pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(pfd[0]);
        struct res r = {-2, 0};
        if (uid != 0) {
            if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0) {
                r.err = errno;
                r.rc = -3;
                goto out;
            }
            /* keep /proc/self/fd usable after the credential change */
            prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
        }
        char dpath[64];
        snprintf(dpath, sizeof dpath, "/proc/self/fd/%d/b", dfd);
        if (fchdir(sfd) != 0) {
            r.err = errno;
            r.rc = -4;
            goto out;
        }
        unsigned flags = fn == FN_NOREPLACE ? RENAME_NOREPLACE : 0;
        errno = 0;
        if (raw)
            r.rc = fn == FN_RENAME
                       ? (int)syscall(SYS_renameat2, AT_FDCWD, "a", AT_FDCWD, dpath, 0)
                       : (int)syscall(SYS_renameat2, sfd, "a", dfd, "b", flags);
        else if (fn == FN_RENAME)
            r.rc = rename("a", dpath);
        else if (fn == FN_RENAMEAT)
            r.rc = renameat(sfd, "a", dfd, "b");
        else
            r.rc = renameat2(sfd, "a", dfd, "b", flags);
        r.err = errno;
    out:
        if (write(pfd[1], &r, sizeof r) != sizeof r)
            _exit(2);
        _exit(0);
    }
    close(pfd[1]);
    struct res r = {-9, 0};
    ssize_t n = read(pfd[0], &r, sizeof r);
    close(pfd[0]);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && n == sizeof r,
          "child making the call died (status %#x)", st);
    CHECK(r.rc != -3, "dropping privileges to %d failed: %s", NOBODY, strerror(r.err));
    CHECK(r.rc != -4, "fchdir: %s", strerror(r.err));
    close(sfd);
    close(dfd);
    return r;
}

/* ------------------------------------------------------------------ */
/* The case runner                                                     */

/*
 * One side of a case: S and D are where the call is made, Sw and Dw where
 * the setup writes (different only under a read-only mount).
 */
struct side {
    const char *S, *D, *Sw, *Dw;
};

struct pcase {
    const char *label;
    void (*setup)(const char *S, const char *D);
    int want_nobody, want_root; /* documented errno, 0 = success */
    int want_noreplace;         /* for RENAME_NOREPLACE, if not 0 (e.g. EEXIST) */
};

static int failures;

static void report(const char *label, const char *who, const char *fn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report(const char *label, const char *who, const char *fn, const char *fmt, ...)
{
    va_list ap;
    printf("  | %-40s | %-6s | %-20s | ", label, who, fn);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    failures++;
}

static void run_pcase(const struct pcase *pc, const struct side *same, const struct side *cross)
{
    for (int w = 0; w < 2; w++) {
        uid_t uid = w ? NOBODY : 0;
        const char *who = w ? "nobody" : "root";
        for (int fn = 0; fn < NFN; fn++) {
            int want_doc = w ? pc->want_nobody : pc->want_root;
            if (fn == FN_NOREPLACE && pc->want_noreplace)
                want_doc = pc->want_noreplace;
            /* kernel, one filesystem */
            CHECK(reset_dir(same->Sw) == 0 && reset_dir(same->Dw) == 0, "reset");
            pc->setup(same->Sw, same->Dw);
            struct res want = run_as(uid, 1, fn, same->S, same->D);
            char *post_same = snapshot2(same->S, same->D);
            CHECK(reset_dir(same->Sw) == 0 && reset_dir(same->Dw) == 0, "reset");

            /* xrename, across devices */
            CHECK(reset_dir(cross->Sw) == 0 && reset_dir(cross->Dw) == 0, "reset");
            pc->setup(cross->Sw, cross->Dw);
            char *pre = snapshot2(cross->S, cross->D);
            struct res got = run_as(uid, 0, fn, cross->S, cross->D);
            char *post = snapshot2(cross->S, cross->D);
            int cleaned = reset_dir(cross->Sw) == 0 && reset_dir(cross->Dw) == 0;

            struct res doc = {want_doc ? -1 : 0, want_doc};
            if (!res_eq(want, doc))
                report(pc->label, who, fn_labels[fn],
                       "test assumption: same-fs kernel gives %s, documented %s", res_str(want),
                       res_str(doc));
            if (!res_eq(got, want))
                report(pc->label, who, fn_labels[fn], "cross-device %s, same-fs kernel %s",
                       res_str(got), res_str(want));
            else if (got.rc != 0 && strcmp(pre, post) != 0)
                report(pc->label, who, fn_labels[fn],
                       "failed (%s) but changed [%s] into [%s]", res_str(got), pre, post);
            else if (got.rc == 0 && strcmp(post, post_same) != 0)
                report(pc->label, who, fn_labels[fn], "result [%s], same-fs kernel gives [%s]",
                       post, post_same);
            CHECK(cleaned, "could not clean up after %s as %s", fn_labels[fn], who);
            free(pre);
            free(post);
            free(post_same);
        }
    }
    CHECK(failures == 0, "%d mismatches (rows above)", failures);
}

/* Directories for a case: same-fs pair on `same_env`, cross pair src_env -> dst_env. */
static void run_simple(const struct pcase *pc, const char *same_env, const char *src_env,
                       const char *dst_env)
{
    char *t = test_dir(same_env, "same");
    char *sS = path_of("%s/S", t), *sD = path_of("%s/D", t);
    CHECK(mkdir(sS, 0755) == 0 && mkdir(sD, 0755) == 0, "mkdir: %s", strerror(errno));
    char *xS = path_of("%s/S", test_dir(src_env, "src"));
    char *xD = path_of("%s/D", test_dir(dst_env, "dst"));
    CHECK(mkdir(xS, 0755) == 0 && mkdir(xD, 0755) == 0, "mkdir: %s", strerror(errno));
    require_kernel_exdev(xS, xD);
    struct side same = {sS, sD, sS, sD}, cross = {xS, xD, xS, xD};
    run_pcase(pc, &same, &cross);
    /* leave the directories writable and flag-free */
    chmod(sS, 0755);
    chmod(sD, 0755);
    chmod(xS, 0755);
    chmod(xD, 0755);
    set_flags(xS, 0, XT_FS_IMMUTABLE_FL | XT_FS_APPEND_FL);
    set_flags(sS, 0, XT_FS_IMMUTABLE_FL | XT_FS_APPEND_FL);
}

static void own(const char *p, uid_t u, mode_t m)
{
    CHECK(lchown(p, u, u) == 0, "chown %s: %s", p, strerror(errno));
    CHECK(chmod(p, m) == 0, "chmod %s: %s", p, strerror(errno));
}

static void file_for(const char *dir, uid_t u, mode_t m)
{
    char *p = path_of("%s/a", dir);
    write_str(p, "source content\n");
    own(p, u, m);
    free(p);
}

static void require_privilege_drop(void)
{
    require_real_root("setuid to an unprivileged user, chown to other users");
}

/* ------------------------------------------------------------------ */
/* The cases                                                           */

static void setup_sticky_source(const char *S, const char *D)
{
    file_for(S, OTHER, 0644);
    own(S, 0, 01777);
    own(D, 0, 0777);
}

static void sticky_source_directory_refuses_other_users_file_with_eperm(void)
{
    require_privilege_drop();
    struct pcase pc = {"sticky 01777 source dir, file of uid 1234", setup_sticky_source, EPERM,
                       0, 0};
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

static void setup_source_not_writable(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0555);
    own(D, 0, 0777);
}

static void source_directory_without_write_permission_gives_eacces(void)
{
    require_privilege_drop();
    struct pcase pc = {"source dir 0555", setup_source_not_writable, EACCES, 0, 0};
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

static void setup_dest_not_writable(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0777);
    own(D, 0, 0555);
}

static void destination_directory_without_write_permission_gives_eacces(void)
{
    require_privilege_drop();
    struct pcase pc = {"destination dir 0555", setup_dest_not_writable, EACCES, 0, 0};
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

static void setup_sticky_dest(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0777);
    char *b = path_of("%s/b", D);
    write_str(b, "someone else's file\n");
    own(b, OTHER, 0644);
    own(D, 0, 01777);
}

static void sticky_destination_refuses_replacing_other_users_file_with_eperm(void)
{
    require_privilege_drop();
    struct pcase pc = {"sticky 01777 dest dir, target of uid 1234", setup_sticky_dest, EPERM,
                       0, EEXIST};
    /* NOREPLACE: EEXIST comes first for everybody; handled by the oracle */
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

static void setup_dir_not_writable(const char *S, const char *D)
{
    char *a = path_of("%s/a", S);
    CHECK(mkdir(a, 0755) == 0, "mkdir: %s", strerror(errno));
    write_str(path_of("%s/inner", a), "inner\n");
    own(path_of("%s/inner", a), NOBODY, 0644);
    own(a, 0, 0555); /* a new ".." needs write permission on the directory itself */
    own(S, 0, 0777);
    own(D, 0, 0777);
}

static void directory_without_write_permission_cannot_change_parent(void)
{
    require_privilege_drop();
    struct pcase pc = {"directory 0555 moved to another parent", setup_dir_not_writable,
                       EACCES, 0, 0};
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

static void setup_unreadable_dirs(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0333); /* write and search, but not read: rename needs no more */
    own(D, 0, 0333);
}

static void write_and_search_only_directories_allow_the_move(void)
{
    require_privilege_drop();
    struct pcase pc = {"source and destination dirs 0333", setup_unreadable_dirs, 0, 0, 0};
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

static void setup_sticky_own_file(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 01777);
    own(D, 0, 0777);
}

static void sticky_source_directory_allows_moving_own_file(void)
{
    require_privilege_drop();
    struct pcase pc = {"sticky 01777 source dir, own file", setup_sticky_own_file, 0, 0, 0};
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

static void setup_foreign_readonly_target(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0777);
    char *b = path_of("%s/b", D);
    write_str(b, "root's read-only file\n");
    own(b, 0, 0444);
    own(D, 0, 0777);
}

static void replacing_other_users_read_only_file_needs_only_directory_permission(void)
{
    require_privilege_drop();
    struct pcase pc = {"target 0444 of root in a 0777 dir", setup_foreign_readonly_target, 0,
                       0, EEXIST};
    run_simple(&pc, "XT_TMPFS", "XT_TMPFS", "XT_EXT4");
}

/* chattr cases: the source on ext4 (tmpfs has no immutable/append-only) */

static void setup_immutable_file(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0777);
    own(D, 0, 0777);
    chattr(path_of("%s/a", S), XT_FS_IMMUTABLE_FL);
}

static void setup_append_only_file(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0777);
    own(D, 0, 0777);
    chattr(path_of("%s/a", S), XT_FS_APPEND_FL);
}

static void setup_append_only_source_dir(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0777);
    own(D, 0, 0777);
    chattr(S, XT_FS_APPEND_FL);
}

static void setup_immutable_dir_object(const char *S, const char *D)
{
    char *a = path_of("%s/a", S);
    CHECK(mkdir(a, 0777) == 0, "mkdir: %s", strerror(errno));
    write_str(path_of("%s/inner", a), "inner\n");
    own(a, NOBODY, 0777);
    own(S, 0, 0777);
    own(D, 0, 0777);
    chattr(a, XT_FS_IMMUTABLE_FL);
}

static void require_ext4(void)
{
    const char *k = getenv("XT_EXT4_KIND");
    if (!k || strcmp(k, "ext4") != 0)
        SKIP("XT_EXT4 is not a real ext4 (%s): no chattr flags", k ? k : "?");
}

static void immutable_source_file_gives_eperm(void)
{
    require_privilege_drop();
    require_ext4();
    struct pcase pc = {"immutable (+i) source file", setup_immutable_file, EPERM, EPERM, 0};
    run_simple(&pc, "XT_EXT4", "XT_EXT4", "XT_TMPFS");
}

static void append_only_source_file_gives_eperm(void)
{
    require_privilege_drop();
    require_ext4();
    struct pcase pc = {"append-only (+a) source file", setup_append_only_file, EPERM, EPERM, 0};
    run_simple(&pc, "XT_EXT4", "XT_EXT4", "XT_TMPFS");
}

static void append_only_source_directory_gives_eperm(void)
{
    require_privilege_drop();
    require_ext4();
    struct pcase pc = {"append-only (+a) source directory", setup_append_only_source_dir, EPERM,
                       EPERM, 0};
    run_simple(&pc, "XT_EXT4", "XT_EXT4", "XT_TMPFS");
}

static void immutable_directory_source_gives_eperm(void)
{
    require_privilege_drop();
    require_ext4();
    struct pcase pc = {"immutable (+i) directory as the source", setup_immutable_dir_object,
                       EPERM, EPERM, 0};
    run_simple(&pc, "XT_EXT4", "XT_EXT4", "XT_TMPFS");
}

/* read-only mounts */

static void setup_plain(const char *S, const char *D)
{
    file_for(S, NOBODY, 0644);
    own(S, 0, 0777);
    own(D, 0, 0777);
}

static void read_only_source_mount_gives_erofs(void)
{
    require_privilege_drop();
    const char *ro = env_path("XT_RO");
    /* same-fs oracle: both directories on the read-only mount */
    char *wS = test_dir("XT_RO_SRC", "S"), *wD = test_dir("XT_RO_SRC", "D");
    char *rS = path_of("%s/%s.S", ro, xt_name), *rD = path_of("%s/%s.D", ro, xt_name);
    char *xD = test_dir("XT_TMPFS", "D");
    require_kernel_exdev_via(wS, rS, xD);
    struct side same = {rS, rD, wS, wD}, cross = {rS, xD, wS, xD};
    struct pcase pc = {"source on a read-only mount", setup_plain, EROFS, EROFS, 0};
    run_pcase(&pc, &same, &cross);
}

static void read_only_destination_mount_gives_erofs(void)
{
    require_privilege_drop();
    /* a private mount namespace for this test process: the mount dies with it */
    CHECK(unshare(CLONE_NEWNS) == 0, "unshare: %s", strerror(errno));
    CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "make-rprivate: %s",
          strerror(errno));
    char *t = test_dir("XT_EXT4", "");
    char *rw = path_of("%s/rw", t), *romnt = path_of("%s/ro", t);
    CHECK(mkdir(rw, 0755) == 0 && mkdir(romnt, 0755) == 0, "mkdir: %s", strerror(errno));
    CHECK(mkdir(path_of("%s/S", rw), 0755) == 0 && mkdir(path_of("%s/D", rw), 0755) == 0,
          "mkdir: %s", strerror(errno));
    CHECK(mount(rw, romnt, NULL, MS_BIND, NULL) == 0, "bind mount: %s", strerror(errno));
    CHECK(mount(NULL, romnt, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) == 0,
          "remount read-only: %s", strerror(errno));
    char *xS = test_dir("XT_TMPFS", "S");
    require_kernel_exdev_via(path_of("%s/D", rw), path_of("%s/D", romnt), xS);
    struct side same = {path_of("%s/S", romnt), path_of("%s/D", romnt), path_of("%s/S", rw),
                        path_of("%s/D", rw)};
    struct side cross = {xS, path_of("%s/D", romnt), xS, path_of("%s/D", rw)};
    struct pcase pc = {"destination on a read-only mount", setup_plain, EROFS, EROFS, 0};
    run_pcase(&pc, &same, &cross);
    CHECK(umount(romnt) == 0, "umount %s: %s", romnt, strerror(errno));
}

XT_MAIN(TEST(sticky_source_directory_refuses_other_users_file_with_eperm),
        TEST(source_directory_without_write_permission_gives_eacces),
        TEST(destination_directory_without_write_permission_gives_eacces),
        TEST(sticky_destination_refuses_replacing_other_users_file_with_eperm),
        TEST(directory_without_write_permission_cannot_change_parent),
        TEST(write_and_search_only_directories_allow_the_move),
        TEST(sticky_source_directory_allows_moving_own_file),
        TEST(replacing_other_users_read_only_file_needs_only_directory_permission),
        TEST(immutable_source_file_gives_eperm), TEST(append_only_source_file_gives_eperm),
        TEST(append_only_source_directory_gives_eperm),
        TEST(immutable_directory_source_gives_eperm), TEST(read_only_source_mount_gives_erofs),
        TEST(read_only_destination_mount_gives_erofs))
