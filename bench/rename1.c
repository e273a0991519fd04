/* rename(argv[1], argv[2]) and nothing else: the xrename contender in the
 * benchmarks (run preloaded), so that its process overhead matches mv's. */
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: rename1 OLD NEW\n");
        return 2;
    }
    if (rename(argv[1], argv[2]) != 0) {
        perror("rename");
        return 1;
    }
    return 0;
}
