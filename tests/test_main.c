/* Runs every registered test (optionally only those whose name contains argv[1]) and
 * closes with "N passed, N failed, N skipped". */
#include "test.h"

#include <stdlib.h>
#include <string.h>

extern int ct_test__count(void);
extern void ct_test__run(int i, const char **name, int *failed, int *skipped);

/* `ctorch train` run by the tests writes its run directories under a temporary root
 * (CTORCH_RUNS), never into the checkout's runs/. */
static char g_runs[64];
static void remove_runs(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_runs);
    if (system(cmd)) {}
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    if (!getenv("CTORCH_RUNS")) {
        snprintf(g_runs, sizeof g_runs, "/tmp/ctorch-test-runs-XXXXXX");
        if (mkdtemp(g_runs)) {
            setenv("CTORCH_RUNS", g_runs, 1);
            atexit(remove_runs);
        }
    }
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
