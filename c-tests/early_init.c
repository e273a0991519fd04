/*
 * A rename made by another preloaded library's constructor, possibly before
 * libxrename.so has run its own initialisation, is still handled.
 *
 * glibc runs the constructors of LD_PRELOAD libraries in reverse order, so
 * with LD_PRELOAD="libxrename.so libearly.so" the early constructor runs
 * before xrename's; both orders are tested.
 */
#include "common.h"

static void rename_in_constructor_of_other_preloaded_library_is_handled(void)
{
    const char *lib = env_path("XT_LIB");
    char *early = path_of("%s/libearly_rename.so", env_path("XT_LIBDIR"));
    CHECK(exists(early), "helper library %s was not built", early);
    const char *orders[][2] = {{early, lib}, {lib, early}};
    for (int o = 0; o < 2; o++) {
        char tag[8];
        snprintf(tag, sizeof tag, "%d", o);
        char *sd, *dd;
        xdev_dirs(tag, &sd, &dd);
        char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
        char *marker = path_of("%s/%s.marker", env_path("XT_WORK"), xt_name);
        unlink(marker);
        write_str(src, "moved from a constructor\n");
        char *preload = path_of("LD_PRELOAD=%s %s", orders[o][0], orders[o][1]);
        const char *set[] = {preload,
                             path_of("XT_EARLY_SRC=%s", src),
                             path_of("XT_EARLY_DST=%s", dst),
                             path_of("XT_EARLY_MARKER=%s", marker),
                             NULL};
        char *argv[] = {xt_self, "--child", NULL};
        int st = spawn(argv, set, NULL, NULL, NULL, NULL, NULL);
        CHECK(st == 0, "%s: child %s", preload, describe_status(st));
        CHECK(exists(marker), "%s: the constructor did not write its marker", preload);
        size_t len;
        char *got = (char *)read_file(marker, &len);
        int rc, e;
        CHECK(sscanf(got, "%d %d", &rc, &e) == 2, "bad marker: %s", got);
        CHECK(rc == 0, "%s: rename in the constructor returned %d, errno %d (%s)",
              preload, rc, e, strerror(e));
        check_content_str(dst, "moved from a constructor\n", preload);
        check_absent(src, preload);
    }
}

XT_MAIN(TEST(rename_in_constructor_of_other_preloaded_library_is_handled))
