/*
 * A real sandbox policy for the tests: when this library is preloaded, its
 * constructor installs a seccomp filter that answers an error to the
 * syscalls named in XT_SECCOMP_EPERM (comma-separated `name` for EPERM, or
 * `name:ERRNO` with a number: copy_file_range, sendfile, fsync, fdatasync,
 * syncfs, flistxattr, fsetxattr, fgetxattr, ptrace) and allows everything else, as
 * container runtimes and sandboxes do. Built by run.sh into
 * target/c-tests/libseccomp_eperm.so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static long number(const char *name)
{
    static const struct { const char *name; long nr; } known[] = {
        {"copy_file_range", SYS_copy_file_range}, {"sendfile", SYS_sendfile},
        {"fsync", SYS_fsync}, {"fdatasync", SYS_fdatasync}, {"syncfs", SYS_syncfs},
        {"flistxattr", SYS_flistxattr}, {"fsetxattr", SYS_fsetxattr}, {"fgetxattr", SYS_fgetxattr},
        {"ptrace", SYS_ptrace},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(known[i].name, name) == 0)
            return known[i].nr;
    return -1;
}

__attribute__((constructor)) static void install(void)
{
    const char *spec = getenv("XT_SECCOMP_EPERM");
    if (!spec || !*spec)
        return;
    struct sock_filter f[64];
    unsigned n = 0;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    char *copy = strdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        unsigned err = EPERM;
        char *colon = strchr(tok, ':');
        if (colon) {
            *colon = 0;
            err = (unsigned)atoi(colon + 1);
        }
        long nr = number(tok);
        if (nr < 0 || n > 60) {
            fprintf(stderr, "seccomp_eperm: unknown syscall %s\n", tok);
            _exit(120);
        }
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1);
        f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA));
    }
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("seccomp_eperm: installing the filter");
        _exit(121);
    }
    free(copy);
}
