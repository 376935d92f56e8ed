/* Runs every registered test (optionally only those whose name contains argv[1]) and
 * closes with "N passed, N failed, N skipped". */
#include "test.h"

#include <stdlib.h>
#include <string.h>

extern int ct_test__count(void);
extern void ct_test__run(int i, const char **name, int *failed, int *skipped);

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    ct_set_num_threads(getenv("CT_TEST_THREADS") ? atoi(getenv("CT_TEST_THREADS")) : 0);
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < ct_test__count(); i++) {
        const char *name;
        int f, s;
        ct_test__run(i, filter ? &filter : NULL, &f, &s);
        name = filter;
        (void)name;
        if (f < 0) continue; /* filtered out */
        if (f) failed++;
        else if (s) skipped++;
        else passed++;
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
