/*
 * Whole directory trees moved across devices (issue 3): every object type
 * and all metadata inside the tree survive, the destination rules of
 * rename(2) for directories hold (empty directory replaced, ENOTEMPTY,
 * ENOTDIR, EINVAL, EBUSY), the overlayfs lower-layer case works, and every
 * failure leaves both sides exactly as they were, without leftovers.
 *
 * Trees are compared through snapshots: the list of entries (pre-order,
 * sorted), their lstat() fields, and separately their content (file hash,
 * link target, all xattrs).  Reading a file, a symlink or a directory may
 * update its atime, so a snapshot reads contents *before* the times are set
 * (source) and stats *before* anything is read (destination).
 */
#include "common.h"

#include <grp.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/un.h>

#define MIB (1u << 20)
#define MAXENT 256

/* Fresh source/destination directories for pair p; `tag` makes them unique. */
static void dirs_for(int p, const char *tag, char **sd, char **dd)
{
    char t[96];
    snprintf(t, sizeof t, "%s-%d-src", tag, p);
    *sd = test_dir(mount_pairs[p].src_env, t);
    snprintf(t, sizeof t, "%s-%d-dst", tag, p);
    *dd = test_dir(mount_pairs[p].dst_env, t);
    require_kernel_exdev(*sd, *dd);
}

/* ------------------------------------------------------------------ */
/* Tree snapshots                                                      */

struct ent {
    char rel[256]; /* "." for the root of the tree */
    struct stat st;
    uint64_t hash; /* regular files */
    off_t hashed;  /* bytes read */
    char link[256];
    char *xattrs; /* "name=hex name=hex ..." sorted by name */
};
struct snap {
    int n;
    struct ent e[MAXENT];
};

static char *ent_path(const char *root, const char *rel)
{
    return strcmp(rel, ".") == 0 ? strdup(root) : path_of("%s/%s", root, rel);
}

static void collect_into(struct snap *s, const char *root, const char *rel)
{
    CHECK(s->n < MAXENT, "tree below %s has more than %d entries", root, MAXENT);
    struct ent *e = &s->e[s->n++];
    snprintf(e->rel, sizeof e->rel, "%s", rel);
    char *p = ent_path(root, rel);
    CHECK(lstat(p, &e->st) == 0, "lstat %s: %s", p, strerror(errno));
    if (S_ISDIR(e->st.st_mode)) {
        char *names = list_dir(p); /* sorted; our names hold no spaces */
        char *save = NULL, *kids[MAXENT];
        int k = 0;
        for (char *tok = strtok_r(names, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
            if (k < MAXENT)
                kids[k++] = strcmp(rel, ".") == 0 ? strdup(tok) : path_of("%s/%s", rel, tok);
        for (int i = 0; i < k; i++) {
            collect_into(s, root, kids[i]);
            free(kids[i]);
        }
        free(names);
    }
    free(p);
}

/* Entries below and including root, in sorted pre-order (reads directories). */
static struct snap *collect(const char *root)
{
    struct snap *s = calloc(1, sizeof *s);
    collect_into(s, root, ".");
    return s;
}

/* lstat every entry of s below root (no reads, so no atime updates). */
static void stat_all(struct snap *s, const char *root, const char *what)
{
    for (int i = 0; i < s->n; i++) {
        char *p = ent_path(root, s->e[i].rel);
        CHECK(lstat(p, &s->e[i].st) == 0, "%s: %s is missing: %s", what, p, strerror(errno));
        free(p);
    }
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* All xattrs of a path (not following symlinks), serialized and sorted. */
static char *xattr_dump(const char *path)
{
    static char names[65536];
    ssize_t n = llistxattr(path, names, sizeof names);
    if (n < 0 && (errno == ENOTSUP || errno == EPERM))
        return strdup("");
    CHECK(n >= 0, "llistxattr %s: %s", path, strerror(errno));
    char *list[256];
    int k = 0;
    for (char *p = names; p < names + n; p += strlen(p) + 1)
        if (k < 256)
            list[k++] = p;
    qsort(list, (size_t)k, sizeof list[0], cmp_cstr);
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    for (int i = 0; i < k; i++) {
        unsigned char v[65536];
        ssize_t vn = lgetxattr(path, list[i], v, sizeof v);
        CHECK(vn >= 0, "lgetxattr %s %s: %s", path, list[i], strerror(errno));
        fprintf(f, "%s%s=", i ? " " : "", list[i]);
        for (ssize_t j = 0; j < vn; j++)
            fprintf(f, "%02x", v[j]);
    }
    fclose(f);
    return out;
}

/* Content of every entry: file hash, link target, xattrs. */
static void read_all(struct snap *s, const char *root)
{
    for (int i = 0; i < s->n; i++) {
        struct ent *e = &s->e[i];
        char *p = ent_path(root, e->rel);
        if (S_ISREG(e->st.st_mode))
            e->hash = hash_file(p, &e->hashed);
        if (S_ISLNK(e->st.st_mode)) {
            ssize_t n = readlink(p, e->link, sizeof e->link - 1);
            CHECK(n >= 0, "readlink %s: %s", p, strerror(errno));
            e->link[n] = 0;
        }
        free(e->xattrs);
        e->xattrs = xattr_dump(p);
        free(p);
    }
}

/*
 * Give every entry distinct nanosecond atime/mtime, children before their
 * directory (reverse pre-order), so no later change touches them.
 */
static void stamp_times(const struct snap *s, const char *root)
{
    for (int i = s->n - 1; i >= 0; i--) {
        struct timespec ts[2] = {
            {1000000000 + (time_t)i * 86400, 100000001 + i * 1237},
            {900000000 + (time_t)i * 86400, 999999999 - i * 4321},
        };
        char *p = ent_path(root, s->e[i].rel);
        CHECK(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW) == 0, "setup: utimensat %s: %s",
              p, strerror(errno));
        free(p);
    }
}

/*
 * Record a source tree: contents first, then (optionally) the times, then
 * the stat fields.
 */
static struct snap *record(const char *root, int stamp)
{
    struct snap *s = collect(root);
    read_all(s, root);
    if (stamp) {
        stamp_times(s, root);
        struct stat st;
        CHECK(lstat(root, &st) == 0 && st.st_mtim.tv_nsec == 999999999 &&
                  st.st_atim.tv_nsec == 100000001,
              "setup: %s does not keep nanosecond times", root);
    }
    stat_all(s, root, "setup");
    return s;
}

static const char *type_name(mode_t m)
{
    return S_ISREG(m) ? "file" : S_ISDIR(m) ? "directory" : S_ISLNK(m) ? "symlink"
         : S_ISFIFO(m) ? "fifo" : S_ISSOCK(m) ? "socket" : S_ISCHR(m) ? "char device"
         : S_ISBLK(m) ? "block device" : "?";
}

/*
 * The tree at root must match snapshot b in every recorded field:
 * type, mode, owner, size, nlink, rdev, mtime (and atime if with_atime),
 * hard links, contents, link targets, xattrs, and the exact set of entries.
 */
static void check_tree(const struct snap *b, const char *root, int with_atime,
                       const char *what)
{
    struct snap *a = calloc(1, sizeof *a);
    a->n = b->n;
    for (int i = 0; i < b->n; i++)
        memcpy(a->e[i].rel, b->e[i].rel, sizeof a->e[i].rel);
    stat_all(a, root, what); /* before anything below root is read */
    for (int i = 0; i < b->n; i++) {
        const struct stat *x = &b->e[i].st, *y = &a->e[i].st;
        const char *r = b->e[i].rel;
        CHECK((x->st_mode & S_IFMT) == (y->st_mode & S_IFMT), "%s: %s is a %s, expected a %s",
              what, r, type_name(y->st_mode), type_name(x->st_mode));
        CHECK(x->st_mode == y->st_mode, "%s: %s (%s) has mode %04o, expected %04o", what, r,
              type_name(x->st_mode), y->st_mode & 07777, x->st_mode & 07777);
        CHECK(x->st_uid == y->st_uid && x->st_gid == y->st_gid,
              "%s: %s (%s) is owned by %u:%u, expected %u:%u", what, r,
              type_name(x->st_mode), y->st_uid, y->st_gid, x->st_uid, x->st_gid);
        if (!S_ISDIR(x->st_mode)) {
            CHECK(x->st_size == y->st_size, "%s: %s has size %lld, expected %lld", what, r,
                  (long long)y->st_size, (long long)x->st_size);
            CHECK(x->st_nlink == y->st_nlink, "%s: %s has %lu links, expected %lu", what, r,
                  (unsigned long)y->st_nlink, (unsigned long)x->st_nlink);
        }
        if (S_ISCHR(x->st_mode) || S_ISBLK(x->st_mode))
            CHECK(x->st_rdev == y->st_rdev, "%s: %s is device %u:%u, expected %u:%u", what, r,
                  major(y->st_rdev), minor(y->st_rdev), major(x->st_rdev), minor(x->st_rdev));
        CHECK(x->st_mtim.tv_sec == y->st_mtim.tv_sec && x->st_mtim.tv_nsec == y->st_mtim.tv_nsec,
              "%s: %s (%s) has mtime %lld.%09ld, expected %lld.%09ld", what, r,
              type_name(x->st_mode), (long long)y->st_mtim.tv_sec, y->st_mtim.tv_nsec,
              (long long)x->st_mtim.tv_sec, x->st_mtim.tv_nsec);
        if (with_atime)
            CHECK(x->st_atim.tv_sec == y->st_atim.tv_sec &&
                      x->st_atim.tv_nsec == y->st_atim.tv_nsec,
                  "%s: %s (%s) has atime %lld.%09ld, expected %lld.%09ld", what, r,
                  type_name(x->st_mode), (long long)y->st_atim.tv_sec, y->st_atim.tv_nsec,
                  (long long)x->st_atim.tv_sec, x->st_atim.tv_nsec);
        /* sparse files stay sparse (roughly: at most 64 KiB more allocated) */
        if (S_ISREG(x->st_mode) && x->st_blocks * 512 + 65536 < x->st_size)
            CHECK(y->st_blocks <= x->st_blocks + 128,
                  "%s: sparse file %s has %lld bytes allocated, the source had %lld",
                  what, r, (long long)y->st_blocks * 512, (long long)x->st_blocks * 512);
    }
    /* hard links: same inode before <=> same inode after */
    for (int i = 0; i < b->n; i++)
        for (int j = i + 1; j < b->n; j++) {
            if (S_ISDIR(b->e[i].st.st_mode) || S_ISDIR(b->e[j].st.st_mode))
                continue;
            int before = b->e[i].st.st_ino == b->e[j].st.st_ino;
            int after = a->e[i].st.st_ino == a->e[j].st.st_ino;
            CHECK(before == after, "%s: %s and %s %s", what, b->e[i].rel, b->e[j].rel,
                  before ? "were hard links of one inode and are now separate files"
                         : "are now hard links of one inode but were separate files");
        }
    /* exactly these entries, nothing missing and nothing extra */
    struct snap *l = collect(root);
    for (int i = 0; i < l->n || i < b->n; i++) {
        CHECK(i < l->n && i < b->n && strcmp(l->e[i].rel, b->e[i].rel) == 0,
              "%s: entry #%d below %s is \"%s\", expected \"%s\" (missing or extra entry)",
              what, i, root, i < l->n ? l->e[i].rel : "(none)",
              i < b->n ? b->e[i].rel : "(none)");
    }
    free(l);
    read_all(a, root);
    for (int i = 0; i < b->n; i++) {
        const struct ent *x = &b->e[i], *y = &a->e[i];
        if (S_ISREG(x->st.st_mode))
            CHECK(x->hash == y->hash && x->hashed == y->hashed,
                  "%s: content of %s differs (%lld bytes read, expected %lld; checksum %s)",
                  what, x->rel, (long long)y->hashed, (long long)x->hashed,
                  x->hash == y->hash ? "same" : "differs");
        if (S_ISLNK(x->st.st_mode))
            CHECK(strcmp(x->link, y->link) == 0, "%s: symlink %s points to \"%s\", expected \"%s\"",
                  what, x->rel, y->link, x->link);
        CHECK(strcmp(x->xattrs, y->xattrs) == 0, "%s: xattrs of %s are [%s], expected [%s]",
              what, x->rel, y->xattrs, x->xattrs);
    }
    free(a);
}

/* ------------------------------------------------------------------ */
/* Building trees                                                      */

static void mkdir_mode(const char *p, mode_t mode)
{
    CHECK(mkdir(p, 0700) == 0, "setup: mkdir %s: %s", p, strerror(errno));
    CHECK(chmod(p, mode) == 0, "setup: chmod %s: %s", p, strerror(errno));
}

static void own(const char *p, uid_t u, gid_t g)
{
    CHECK(lchown(p, u, g) == 0, "setup: lchown %s: %s", p, strerror(errno));
}

static void make_socket(const char *dir, const char *name)
{
    int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(cwd >= 0 && chdir(dir) == 0, "setup: chdir %s: %s", dir, strerror(errno));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0, "setup: socket: %s", strerror(errno));
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", name);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "setup: bind %s/%s: %s", dir, name,
          strerror(errno));
    close(fd);
    CHECK(fchdir(cwd) == 0, "fchdir: %s", strerror(errno));
    close(cwd);
}

static void make_sparse(const char *p)
{
    unsigned char buf[4096];
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0, "setup: create %s: %s", p, strerror(errno));
    fill_pattern(buf, sizeof buf, 17, 0);
    CHECK(pwrite(fd, buf, sizeof buf, 0) == (ssize_t)sizeof buf, "pwrite: %s", strerror(errno));
    fill_pattern(buf, sizeof buf, 18, 0);
    CHECK(pwrite(fd, buf, sizeof buf, 4 * MIB) == (ssize_t)sizeof buf, "pwrite: %s",
          strerror(errno));
    CHECK(ftruncate(fd, 8 * MIB) == 0, "ftruncate: %s", strerror(errno));
    CHECK(fsync(fd) == 0, "fsync: %s", strerror(errno));
    close(fd);
    struct stat st;
    CHECK(stat(p, &st) == 0 && st.st_blocks * 512 <= 64 * 1024,
          "setup: %s is not sparse (%lld bytes allocated)", p, (long long)st.st_blocks * 512);
}

static void xattr(const char *p, const char *name, const char *value)
{
    CHECK(lsetxattr(p, name, value, strlen(value), 0) == 0, "setup: setxattr %s on %s: %s",
          name, p, strerror(errno));
}

static void run_cmd(const char *cmd)
{
    int st = system(cmd);
    CHECK(st == 0, "setup: '%s' failed with status %d", cmd, st);
}

/*
 * Everything a tree can hold.  As real root also: a char device, foreign
 * owners on every kind of entry, and a default ACL on a directory.
 */
static void build_rich_tree(const char *t)
{
    int root = real_root();
    mkdir_mode(t, 0750);
    mkdir_mode(path_of("%s/a", t), 0755);
    mkdir_mode(path_of("%s/a/b", t), 0755);
    mkdir_mode(path_of("%s/a/b/c", t), 0700);
    mkdir_mode(path_of("%s/a/emptydir", t), 0711);
    mkdir_mode(path_of("%s/setgid", t), 0755);
    mkdir_mode(path_of("%s/sticky", t), 0755);
    mkdir_mode(path_of("%s/ro", t), 0755);
    mkdir_mode(path_of("%s/ro/sub", t), 0755);
    if (root) {
        own(t, 1234, 5678);
        own(path_of("%s/setgid", t), 1234, 5678);
        own(path_of("%s/a/b", t), 4321, 8765);
        own(path_of("%s/ro", t), 1234, 5678);
    }

    write_file(path_of("%s/empty", t), "", 0);
    write_pattern_file(path_of("%s/page", t), 4096, 1);
    write_pattern_file(path_of("%s/a/big", t), MIB + 3, 2);
    make_sparse(path_of("%s/sparse", t));
    write_str(path_of("%s/a/b/c/deep", t), "deep inside\n");
    write_str(path_of("%s/setgid/inherits", t), "in a setgid directory\n");
    write_str(path_of("%s/ro/file", t), "in a read-only directory\n");
    write_str(path_of("%s/sticky/shared", t), "in a sticky directory\n");
    /* hard-link pair in different subdirectories */
    write_str(path_of("%s/a/hard1", t), "one inode, two names\n");
    CHECK(link(path_of("%s/a/hard1", t), path_of("%s/sticky/hard2", t)) == 0, "setup: link: %s",
          strerror(errno));
    CHECK(symlink("a/big", path_of("%s/link", t)) == 0, "setup: symlink: %s", strerror(errno));
    CHECK(symlink("../../../no/such/target", path_of("%s/a/b/dangling", t)) == 0,
          "setup: symlink: %s", strerror(errno));
    CHECK(symlink("/", path_of("%s/a/abs", t)) == 0, "setup: symlink: %s", strerror(errno));
    CHECK(mkfifo(path_of("%s/a/fifo", t), 0600) == 0, "setup: mkfifo: %s", strerror(errno));
    CHECK(chmod(path_of("%s/a/fifo", t), 0620) == 0, "setup: chmod: %s", strerror(errno));
    make_socket(path_of("%s/a/b", t), "sock");
    CHECK(chmod(path_of("%s/a/b/sock", t), 0770) == 0, "setup: chmod: %s", strerror(errno));
    xattr(path_of("%s/page", t), "user.file", "file value");
    xattr(path_of("%s/a/big", t), "user.empty", "");
    xattr(path_of("%s/a", t), "user.dir", "directory value");
    xattr(path_of("%s/ro", t), "user.ro", "on a read-only directory");
    CHECK(chmod(path_of("%s/page", t), 0600) == 0, "setup: chmod: %s", strerror(errno));
    CHECK(chmod(path_of("%s/a/big", t), 0640) == 0, "setup: chmod: %s", strerror(errno));
    if (root) {
        CHECK(mknod(path_of("%s/a/null", t), S_IFCHR | 0666, makedev(1, 3)) == 0,
              "setup: mknod: %s", strerror(errno));
        CHECK(chmod(path_of("%s/a/null", t), 0666) == 0, "setup: chmod: %s", strerror(errno));
        own(path_of("%s/a/null", t), 4321, 8765);
        own(path_of("%s/page", t), 1234, 5678);
        own(path_of("%s/empty", t), 4321, 5678);
        own(path_of("%s/a/hard1", t), 1234, 5678);
        own(path_of("%s/link", t), 1234, 5678);
        own(path_of("%s/a/b/dangling", t), 4321, 8765);
        own(path_of("%s/a/fifo", t), 1234, 5678);
        own(path_of("%s/a/b/sock", t), 1234, 5678);
        own(path_of("%s/sticky/shared", t), 4321, 8765);
        mkdir_mode(path_of("%s/acl", t), 0750);
        write_str(path_of("%s/acl/file", t), "with an access acl\n");
        run_cmd(path_of("setfacl -m u:1234:rwx,d:u:1234:rwx,d:g:5678:r-x '%s/acl'", t));
        run_cmd(path_of("setfacl -m u:4321:r-- '%s/acl/file'", t));
    }
    /* directory modes last: chown and file creation must not disturb them */
    CHECK(chmod(path_of("%s/setgid", t), 02775) == 0, "setup: chmod: %s", strerror(errno));
    CHECK(chmod(path_of("%s/sticky", t), 01777) == 0, "setup: chmod: %s", strerror(errno));
    CHECK(chmod(path_of("%s/ro", t), 0555) == 0, "setup: chmod: %s", strerror(errno));
    CHECK(chmod(path_of("%s/ro/sub", t), 0555) == 0, "setup: chmod: %s", strerror(errno));
}

/* A small tree: a file, a subdirectory with a file and a symlink, an empty dir. */
static void build_small_tree(const char *t, const char *salt)
{
    mkdir_mode(t, 0750);
    write_str(path_of("%s/f", t), salt);
    mkdir_mode(path_of("%s/sub", t), 0705);
    write_pattern_file(path_of("%s/sub/g", t), 10000, (uint64_t)strlen(salt));
    CHECK(symlink("g", path_of("%s/sub/link", t)) == 0, "setup: symlink: %s", strerror(errno));
    mkdir_mode(path_of("%s/empty", t), 0700);
}

/* ------------------------------------------------------------------ */
/* Child processes for cleanup and other users                         */

/*
 * Run body(arg) in a child process, then cleanup(carg) in this one whether
 * the body passed or not (a failed CHECK exits the child).  A failure of the
 * body (already reported by the child) fails the test after the cleanup.
 */
static void guarded(void (*body)(void *), void *arg, void (*cleanup)(void *), void *carg)
{
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        body(arg);
        fflush(stdout);
        _exit(0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        CHECK(errno == EINTR, "waitpid: %s", strerror(errno));
    if (cleanup)
        cleanup(carg);
    if (WIFSIGNALED(status))
        FAILF("test body killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    if (WEXITSTATUS(status) != 0)
        _exit(WEXITSTATUS(status)); /* the child printed its FAIL or skip line */
}

static void unmount(void *path)
{
    if (umount2(path, 0) != 0)
        umount2(path, MNT_DETACH);
}

static void mount_tmpfs(const char *path)
{
    CHECK(mount("xt-inner", path, "tmpfs", 0, "size=16m") == 0, "setup: mount tmpfs on %s: %s",
          path, strerror(errno));
}

static int is_mount_point(const char *path)
{
    char *parent = path_of("%s/..", path);
    struct stat a, b;
    int r = stat(path, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
    free(parent);
    return r;
}

/* ------------------------------------------------------------------ */
/* Successful moves                                                    */

static void tree_moves_with_all_object_types_and_metadata(void)
{
    if (!real_root())
        printf("# not real root: no char device, foreign owners or ACLs in the tree\n");
    for (int p = 0; p < 3; p++) {
        enum op op = (enum op)p; /* each pair through another hook */
        char *sd, *dd;
        dirs_for(p, "rich", &sd, &dd);
        char *src = path_of("%s/t", sd), *dst = path_of("%s/t", dd);
        build_rich_tree(src);
        struct snap *before = record(src, 1);
        char *what = path_of("%s of a tree with every object type %s", op_names[op],
                             mount_pairs[p].label);
        errno = 0;
        int rc = do_op(op, src, dst);
        CHECK_RC0(rc, what);
        check_tree(before, dst, 1, what);
        check_absent(src, what);
        CHECK_DIR(sd, "", what);
        CHECK_DIR(dd, "t", what);
        /* the hard-link pair really is one inode with two names */
        struct stat h1, h2;
        CHECK(lstat(path_of("%s/a/hard1", dst), &h1) == 0 &&
                  lstat(path_of("%s/sticky/hard2", dst), &h2) == 0,
              "%s: hard links missing", what);
        CHECK(h1.st_ino == h2.st_ino && h1.st_nlink == 2,
              "%s: a/hard1 and sticky/hard2 are inodes %llu and %llu with %lu links", what,
              (unsigned long long)h1.st_ino, (unsigned long long)h2.st_ino,
              (unsigned long)h1.st_nlink);
        free(before);
    }
}

static void directory_replaces_empty_directory(void)
{
    for (int p = 0; p < 3; p++) {
        for (int op = 0; op < 3; op++) {
            char tag[32];
            snprintf(tag, sizeof tag, "%s", op_names[op]);
            char *sd, *dd;
            dirs_for(p, tag, &sd, &dd);
            char *src = path_of("%s/t", sd), *dst = path_of("%s/t", dd);
            build_small_tree(src, "replaces an empty directory\n");
            mkdir_mode(dst, 0777);
            struct snap *before = record(src, 1);
            char *what = path_of("%s of a tree onto an empty directory %s", op_names[op],
                                 mount_pairs[p].label);
            int rc = do_op(op, src, dst);
            CHECK_RC0(rc, what);
            check_tree(before, dst, 1, what);
            check_absent(src, what);
            CHECK_DIR(sd, "", what);
            CHECK_DIR(dd, "t", what);
            free(before);
        }
    }
}

static void renameat_with_dirfds_moves_a_tree(void)
{
    for (int p = 0; p < 3; p++) {
        for (int use2 = 0; use2 < 2; use2++) {
            const char *fn = use2 ? "renameat2" : "renameat";
            char *sd, *dd;
            dirs_for(p, fn, &sd, &dd);
            build_small_tree(path_of("%s/t", sd), fn);
            CHECK(mkdir(path_of("%s/x", dd), 0755) == 0, "mkdir: %s", strerror(errno));
            struct snap *before = record(path_of("%s/t", sd), 1);
            int sfd = open(sd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            int dfd = open(dd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            CHECK(sfd >= 0 && dfd >= 0, "open dirs: %s", strerror(errno));
            CHECK(chdir("/") == 0, "chdir /: %s", strerror(errno)); /* cwd elsewhere */
            char *what = path_of("%s(dirfd, \"t\", dirfd, \"x/t2\"%s) %s", fn,
                                 use2 ? ", 0" : "", mount_pairs[p].label);
            int rc = use2 ? renameat2(sfd, "t", dfd, "x/t2", 0) : renameat(sfd, "t", dfd, "x/t2");
            CHECK_RC0(rc, what);
            check_tree(before, path_of("%s/x/t2", dd), 1, what);
            CHECK_DIR(sd, "", what);
            CHECK_DIR(dd, "x", what);
            CHECK_DIR(path_of("%s/x", dd), "t2", what);
            close(sfd);
            close(dfd);
            free(before);
        }
    }
}

/*
 * A directory in the lower layer of an overlay mount: the kernel refuses to
 * rename it (EXDEV, without redirect_dir) although both names are on the
 * same mount - what `mv` inside a Docker container runs into.
 */
struct overlay {
    char *lower, *upperfs, *merged;
};

static void overlay_body(void *arg)
{
    struct overlay *o = arg;
    char *d = path_of("%s/d", o->merged), *e = path_of("%s/e", o->merged);
    long krc = syscall(SYS_renameat2, AT_FDCWD, d, AT_FDCWD, e, 0);
    int ke = errno;
    CHECK(krc == -1 && ke == EXDEV,
          "setup: kernel rename merged/d -> merged/e gave %ld/%s, expected EXDEV", krc,
          krc == 0 ? "success" : strerror(ke));
    const char *what = "rename of a lower-layer directory inside an overlay mount";
    errno = 0;
    int rc = rename(d, e);
    CHECK_RC0(rc, what);
    check_absent(d, what);
    CHECK_DIR(o->merged, "e", what);
    CHECK_DIR(e, "f sub", what);
    CHECK_DIR(path_of("%s/sub", e), "g", what);
    check_content_str(path_of("%s/f", e), "lower file f\n", what);
    check_content_str(path_of("%s/sub/g", e), "lower file sub/g\n", what);
    /* the lower layer itself is never modified by overlayfs */
    check_content_str(path_of("%s/d/f", o->lower), "lower file f\n", "lower layer");
    check_content_str(path_of("%s/d/sub/g", o->lower), "lower file sub/g\n", "lower layer");
}

static void overlay_cleanup(void *arg)
{
    struct overlay *o = arg;
    unmount(o->merged);
    unmount(o->upperfs);
}

static void overlay_lower_directory_rename_works(void)
{
    require_real_root("mount overlayfs");
    struct overlay o;
    o.lower = test_dir("XT_TMPFS", "lower");
    o.upperfs = test_dir("XT_TMPFS", "upperfs");
    o.merged = test_dir("XT_TMPFS", "merged");
    CHECK(mkdir(path_of("%s/d", o.lower), 0755) == 0, "mkdir: %s", strerror(errno));
    CHECK(mkdir(path_of("%s/d/sub", o.lower), 0755) == 0, "mkdir: %s", strerror(errno));
    write_str(path_of("%s/d/f", o.lower), "lower file f\n");
    write_str(path_of("%s/d/sub/g", o.lower), "lower file sub/g\n");
    /* upper and work must be on one filesystem: a second tmpfs */
    mount_tmpfs(o.upperfs);
    CHECK(mkdir(path_of("%s/upper", o.upperfs), 0755) == 0 &&
              mkdir(path_of("%s/work", o.upperfs), 0755) == 0,
          "mkdir: %s", strerror(errno));
    /* redirect_dir=off is the kernel's usual default; say it, so that the
       kernel's EXDEV does not depend on the build configuration */
    char *opts = path_of("lowerdir=%s,upperdir=%s/upper,workdir=%s/work,redirect_dir=off",
                         o.lower, o.upperfs, o.upperfs);
    if (mount("overlay", o.merged, "overlay", 0, opts) != 0) {
        int e = errno;
        unmount(o.upperfs);
        if (e == ENODEV)
            SKIP("overlayfs is not available in this kernel");
        FAILF("setup: mount -t overlay -o %s %s: %s", opts, o.merged, strerror(e));
    }
    guarded(overlay_body, &o, overlay_cleanup, &o);
}

/* ------------------------------------------------------------------ */
/* Refused moves: the kernel's rules, nothing changed, no leftovers    */

static void directory_onto_nonempty_directory_is_enotempty(void)
{
    for (int p = 0; p < 3; p++) {
        for (int op = 0; op < 3; op++) {
            char *sd, *dd;
            dirs_for(p, op_names[op], &sd, &dd);
            char *src = path_of("%s/t", sd), *dst = path_of("%s/t", dd);
            build_small_tree(src, "source\n");
            build_small_tree(dst, "destination\n");
            struct snap *sb = record(src, 1), *db = record(dst, 1);
            char *what = path_of("%s of a tree onto a non-empty directory %s", op_names[op],
                                 mount_pairs[p].label);
            int rc = do_op(op, src, dst);
            CHECK_FAILS_WITH(rc, ENOTEMPTY, what);
            check_tree(sb, src, 0, what);
            check_tree(db, dst, 0, what);
            CHECK_DIR(sd, "t", what);
            CHECK_DIR(dd, "t", what);
            free(sb);
            free(db);
        }
    }
}

static void directory_onto_file_is_enotdir(void)
{
    for (int p = 0; p < 3; p++) {
        for (int op = 0; op < 3; op++) {
            char *sd, *dd;
            dirs_for(p, op_names[op], &sd, &dd);
            char *src = path_of("%s/t", sd);
            build_small_tree(src, "source\n");
            write_str(path_of("%s/file", dd), "a file in the way\n");
            CHECK(mkdir(path_of("%s/realdir", dd), 0755) == 0, "mkdir: %s", strerror(errno));
            CHECK(symlink("realdir", path_of("%s/dirlink", dd)) == 0, "symlink: %s",
                  strerror(errno));
            struct snap *sb = record(src, 1);
            static const char *const targets[] = {"file", "dirlink"};
            for (int k = 0; k < 2; k++) {
                char *what = path_of("%s of a tree onto a %s %s", op_names[op],
                                     k ? "symlink to a directory" : "regular file",
                                     mount_pairs[p].label);
                int rc = do_op(op, src, path_of("%s/%s", dd, targets[k]));
                CHECK_FAILS_WITH(rc, ENOTDIR, what);
                check_tree(sb, src, 0, what);
                CHECK_DIR(sd, "t", what);
                CHECK_DIR(dd, "dirlink file realdir", what);
                CHECK_DIR(path_of("%s/realdir", dd), "", what);
                check_content_str(path_of("%s/file", dd), "a file in the way\n", what);
                char buf[32];
                ssize_t n = readlink(path_of("%s/dirlink", dd), buf, sizeof buf);
                CHECK(n == 7 && memcmp(buf, "realdir", 7) == 0, "%s: dirlink changed", what);
            }
            free(sb);
        }
    }
}

/*
 * rename(T, T/m/new) with a filesystem mounted on T/m: the kernel checks
 * the mounts first and says EXDEV; moving T into itself must fail with
 * EINVAL like rename(2) on one filesystem.
 */
struct einval {
    char *sd, *t, *m, *dst;
    int src_p;
};

static void einval_body(void *arg)
{
    struct einval *x = arg;
    write_str(path_of("%s/inside", x->m), "on the inner mount\n");
    struct snap *sb = record(x->t, 1);
    long krc = syscall(SYS_renameat2, AT_FDCWD, x->t, AT_FDCWD, x->dst, 0);
    int ke = errno;
    CHECK(krc == -1 && ke == EXDEV, "setup: kernel rename %s -> %s gave %ld/%s, expected EXDEV",
          x->t, x->dst, krc, krc == 0 ? "success" : strerror(ke));
    for (int op = 0; op < 3; op++) {
        char *what = path_of("%s of a %s directory to a mount point inside itself (%s)",
                             op_names[op], mount_pairs[x->src_p].src_env,
                             x->dst + strlen(x->sd) + 1);
        int rc = do_op(op, x->t, x->dst);
        CHECK_FAILS_WITH(rc, EINVAL, what);
        CHECK(is_mount_point(x->m), "%s: %s is no longer a mount point", what, x->m);
        check_tree(sb, x->t, 0, what); /* includes the inner mount's content */
        CHECK_DIR(x->sd, "t", what);
        check_absent(x->dst, what);
    }
    free(sb);
}

static void directory_into_mount_point_inside_itself_is_einval(void)
{
    require_real_root("mount a tmpfs");
    for (int p = 0; p < 2; p++) {        /* source on tmpfs, then on ext4 */
        for (int deep = 0; deep < 2; deep++) { /* T/m, then T/x/y/m */
            struct einval x;
            x.src_p = p;
            x.sd = test_dir(mount_pairs[p].src_env, deep ? "deep" : "flat");
            x.t = path_of("%s/t", x.sd);
            build_small_tree(x.t, "moving into itself\n");
            if (deep) {
                CHECK(mkdir(path_of("%s/x", x.t), 0755) == 0 &&
                          mkdir(path_of("%s/x/y", x.t), 0755) == 0,
                      "mkdir: %s", strerror(errno));
                x.m = path_of("%s/x/y/m", x.t);
            } else {
                x.m = path_of("%s/m", x.t);
            }
            CHECK(mkdir(x.m, 0755) == 0, "mkdir: %s", strerror(errno));
            x.dst = path_of("%s/new", x.m);
            mount_tmpfs(x.m);
            guarded(einval_body, &x, unmount, x.m);
        }
    }
}

/* rename(M, elsewhere) where M is itself a mount point: EBUSY. */
struct ebusy {
    char *sd, *dd, *mp;
    int p;
};

static void ebusy_body(void *arg)
{
    struct ebusy *x = arg;
    build_small_tree(path_of("%s/t", x->mp), "on a mounted filesystem\n");
    struct snap *sb = record(x->mp, 1);
    char *dst = path_of("%s/mp", x->dd);
    require_kernel_exdev(x->sd, x->dd);
    long krc = syscall(SYS_renameat2, AT_FDCWD, x->mp, AT_FDCWD, dst, 0);
    int ke = errno;
    CHECK(krc == -1 && ke == EXDEV, "setup: kernel rename %s -> %s gave %ld/%s, expected EXDEV",
          x->mp, dst, krc, krc == 0 ? "success" : strerror(ke));
    for (int op = 0; op < 3; op++) {
        for (int had_dst = 0; had_dst < 2; had_dst++) {
            if (had_dst)
                CHECK(mkdir(dst, 0755) == 0, "mkdir: %s", strerror(errno));
            char *what = path_of("%s of a mount point to %s%s", op_names[op],
                                 mount_pairs[x->p].dst_env,
                                 had_dst ? " onto an empty directory" : "");
            int rc = do_op(op, x->mp, dst);
            CHECK_FAILS_WITH(rc, EBUSY, what);
            CHECK(is_mount_point(x->mp), "%s: %s is no longer a mount point", what, x->mp);
            check_tree(sb, x->mp, 0, what);
            CHECK_DIR(x->sd, "mp", what);
            if (had_dst) {
                CHECK_DIR(x->dd, "mp", what);
                CHECK_DIR(dst, "", what);
                CHECK(rmdir(dst) == 0, "rmdir: %s", strerror(errno));
            } else {
                CHECK_DIR(x->dd, "", what);
            }
        }
    }
    free(sb);
}

static void mount_point_source_is_ebusy(void)
{
    require_real_root("mount a tmpfs");
    for (int p = 0; p < 2; p++) {
        struct ebusy x;
        x.p = p;
        x.sd = test_dir(mount_pairs[p].src_env, "src");
        x.dd = test_dir(mount_pairs[p].dst_env, "dst");
        x.mp = path_of("%s/mp", x.sd);
        CHECK(mkdir(x.mp, 0755) == 0, "mkdir: %s", strerror(errno));
        mount_tmpfs(x.mp);
        guarded(ebusy_body, &x, unmount, x.mp);
    }
}

/* ------------------------------------------------------------------ */
/* Failures on the way                                                 */

/* 2 MiB of data in a tree, destination on a 1 MiB tmpfs: ENOSPC. */
static void failed_tree_move_leaves_no_trace(void)
{
    empty_dir(env_path("XT_SMALL")); /* all of its 1 MiB for this test */
    for (int op = 0; op < 3; op++) {
        for (int had_dst = 0; had_dst < 2; had_dst++) {
            char tag[32];
            snprintf(tag, sizeof tag, "%s-%d", op_names[op], had_dst);
            char *sd = test_dir("XT_EXT4", tag);
            char *dd = test_dir("XT_SMALL", tag);
            require_kernel_exdev(sd, dd);
            char *src = path_of("%s/t", sd), *dst = path_of("%s/t", dd);
            build_small_tree(src, "part of a tree too big for its destination\n");
            CHECK(mkdir(path_of("%s/sub/deeper", src), 0755) == 0, "mkdir: %s", strerror(errno));
            write_pattern_file(path_of("%s/a", src), 512 * 1024, 1);
            write_pattern_file(path_of("%s/sub/b", src), 512 * 1024, 2);
            write_pattern_file(path_of("%s/sub/deeper/c", src), 512 * 1024, 3);
            write_pattern_file(path_of("%s/z", src), 512 * 1024, 4);
            if (had_dst)
                mkdir_mode(dst, 0700);
            struct snap *sb = record(src, 1);
            char *what = path_of("%s of a 2 MiB tree into a 1 MiB tmpfs%s", op_names[op],
                                 had_dst ? " onto an empty directory" : "");
            int rc = do_op(op, src, dst);
            CHECK_FAILS_WITH(rc, ENOSPC, what);
            check_tree(sb, src, 0, what);
            CHECK_DIR(sd, "t", what);
            if (had_dst) {
                struct stat st;
                CHECK(lstat(dst, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700,
                      "%s: the empty destination directory was not kept as it was", what);
                CHECK_DIR(dst, "", what);
                CHECK_DIR(dd, "t", what);
            } else {
                CHECK_DIR(dd, "", what);
            }
            rm_rf(dd);
            free(sb);
        }
    }
}

/*
 * A file deep in the source tree is immutable (chattr +i), so the source
 * could never be removed after copying: the move must fail with EPERM (what
 * unlink says) and leave no copy behind.
 */
struct immutable {
    const char *label;
    char *sd, *dd, *src, *locked;
    struct snap *before; /* recorded before chattr +i (utimensat is refused after) */
};

static void immutable_body(void *arg)
{
    struct immutable *x = arg;
    struct snap *sb = x->before;
    for (int op = 0; op < 3; op++) {
        char *what = path_of("%s of a tree holding an immutable file %s", op_names[op], x->label);
        int rc = do_op(op, x->src, path_of("%s/t", x->dd));
        CHECK_FAILS_WITH(rc, EPERM, what);
        check_tree(sb, x->src, 0, what);
        CHECK_DIR(x->sd, "t", what);
        CHECK_DIR(x->dd, "", what);
    }
}

static void chattr_minus_i(void *arg)
{
    struct immutable *x = arg;
    char *cmd = path_of("chattr -i '%s'", x->locked);
    if (system(cmd) != 0)
        printf("# could not undo chattr +i on %s\n", x->locked);
    free(cmd);
}

/*
 * A source subdirectory without write permission, moved by its (unprivileged)
 * owner.  The kernel's rename would move the tree on one filesystem (it only
 * needs write permission on the tree's root and its parents), but xrename
 * must delete every entry of the source after copying, which the owner may
 * not do inside a 0555 directory: the move must fail with EACCES up front
 * instead of half-moving the tree.
 */
struct unpriv {
    char *sd, *dd, *src;
};

static void drop_to_nobody(void)
{
    CHECK(setgroups(0, NULL) == 0 && setgid(65534) == 0 && setuid(65534) == 0,
          "setup: drop privileges to 65534: %s", strerror(errno));
    CHECK(geteuid() == 65534 && getegid() == 65534, "setup: still uid %u", geteuid());
}

static void unpriv_kernel_body(void *arg)
{
    struct unpriv *x = arg;
    drop_to_nobody();
    /* the kernel's rule: on one filesystem this tree may be moved */
    char *other = path_of("%s/other", x->sd), *moved = path_of("%s/other/t", x->sd);
    CHECK(mkdir(other, 0755) == 0, "setup: mkdir: %s", strerror(errno));
    long rc = syscall(SYS_renameat2, AT_FDCWD, x->src, AT_FDCWD, moved, 0);
    CHECK(rc == 0, "setup: kernel rename of the tree on one fs as uid 65534: %s", strerror(errno));
    rc = syscall(SYS_renameat2, AT_FDCWD, moved, AT_FDCWD, x->src, 0);
    CHECK(rc == 0, "setup: kernel rename back: %s", strerror(errno));
    CHECK(rmdir(other) == 0, "setup: rmdir: %s", strerror(errno));
}

static void unpriv_move_body(void *arg)
{
    struct unpriv *x = arg;
    drop_to_nobody();
    for (int op = 0; op < 3; op++) {
        char *what = path_of("%s by uid 65534 of a tree with a 0555 subdirectory", op_names[op]);
        int rc = do_op(op, x->src, path_of("%s/t", x->dd));
        CHECK_FAILS_WITH(rc, EACCES, what);
        CHECK_DIR(x->dd, "", what);
        CHECK_DIR(x->sd, "t", what);
    }
}

static void restore_mode(void *arg)
{
    struct stat *st = arg;
    chmod(env_path("XT_WORK"), st->st_mode & 07777);
}

static void tree_move_refuses_unremovable_source_before_copying(void)
{
    require_real_root("chattr +i, and setuid to 65534");
    /* 1. as an unprivileged owner: a subdirectory without write permission */
    struct unpriv u;
    u.sd = test_dir("XT_TMPFS", "unpriv-src");
    u.dd = test_dir("XT_EXT4", "unpriv-dst");
    require_kernel_exdev(u.sd, u.dd);
    u.src = path_of("%s/t", u.sd);
    build_small_tree(u.src, "owned by nobody\n");
    mkdir_mode(path_of("%s/ro", u.src), 0755);
    write_str(path_of("%s/ro/file", u.src), "cannot be unlinked by its owner\n");
    write_str(path_of("%s/z", u.src), "after the read-only directory\n");
    run_cmd(path_of("chown -R 65534:65534 '%s' '%s' '%s'", u.sd, u.dd, u.src));
    CHECK(chmod(path_of("%s/ro", u.src), 0555) == 0, "chmod: %s", strerror(errno));
    /* uid 65534 must be able to reach the test directories */
    struct stat work;
    CHECK(stat(env_path("XT_WORK"), &work) == 0, "stat: %s", strerror(errno));
    CHECK(chmod(env_path("XT_WORK"), 0711) == 0, "chmod: %s", strerror(errno));
    guarded(unpriv_kernel_body, &u, NULL, NULL);
    struct snap *sb = record(u.src, 1);
    guarded(unpriv_move_body, &u, restore_mode, &work);
    check_tree(sb, u.src, 0, "after the refused unprivileged moves");
    CHECK_DIR(u.dd, "", "after the refused unprivileged moves");
    free(sb);

    /* 2. immutable file inside the source tree (needs ext4 for chattr) */
    const char *kind = getenv("XT_EXT4_KIND");
    if (!kind || strcmp(kind, "ext4") != 0)
        SKIP("XT_EXT4 is not ext4 (%s): chattr +i needs it", kind ? kind : "?");
    static const int ps[] = {1, 2}; /* ext4->tmpfs, bind D->B */
    for (int k = 0; k < 2; k++) {
        struct immutable x;
        x.label = mount_pairs[ps[k]].label;
        dirs_for(ps[k], "immutable", &x.sd, &x.dd);
        x.src = path_of("%s/t", x.sd);
        build_small_tree(x.src, "a tree that cannot be removed\n");
        CHECK(mkdir(path_of("%s/sub/deeper", x.src), 0755) == 0, "mkdir: %s", strerror(errno));
        write_pattern_file(path_of("%s/sub/deeper/a", x.src), 100000, 5);
        x.locked = path_of("%s/sub/deeper/locked", x.src);
        write_str(x.locked, "immutable\n");
        write_str(path_of("%s/sub/deeper/z", x.src), "after the locked file\n");
        x.before = record(x.src, 1);
        run_cmd(path_of("chattr +i '%s'", x.locked));
        guarded(immutable_body, &x, chattr_minus_i, &x);
        free(x.before);
    }
}

XT_MAIN(TEST(tree_moves_with_all_object_types_and_metadata),
        TEST(directory_replaces_empty_directory),
        TEST(directory_onto_nonempty_directory_is_enotempty),
        TEST(directory_onto_file_is_enotdir),
        TEST(directory_into_mount_point_inside_itself_is_einval),
        TEST(mount_point_source_is_ebusy),
        TEST(overlay_lower_directory_rename_works),
        TEST(renameat_with_dirfds_moves_a_tree),
        TEST(failed_tree_move_leaves_no_trace),
        TEST(tree_move_refuses_unremovable_source_before_copying))
