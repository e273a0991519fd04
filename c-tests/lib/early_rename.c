/*
 * Helper library for early_init.c: its constructor does a cross-device
 * rename(XT_EARLY_SRC, XT_EARLY_DST) and writes "RC ERRNO\n" to
 * XT_EARLY_MARKER.  Built by run.sh into target/c-tests/libearly_rename.so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((constructor)) static void rename_from_constructor(void)
{
    const char *src = getenv("XT_EARLY_SRC");
    const char *dst = getenv("XT_EARLY_DST");
    const char *marker = getenv("XT_EARLY_MARKER");
    if (!src || !dst || !marker)
        return;
    errno = 0;
    int rc = rename(src, dst);
    int e = errno;
    FILE *f = fopen(marker, "w");
    if (!f)
        return;
    fprintf(f, "%d %d\n", rc, rc == 0 ? 0 : e);
    fclose(f);
}
