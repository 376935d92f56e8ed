/* The architecture's rules, checked on the source tree (run from the repository root, as
 * `make test` does): no device-type branch above src/backends and no numbered backward
 * slots (scripts/check-layering.sh), no function over 100 lines (scripts/long-functions.sh),
 * and leaving out a piece of an op fails the build or a test (scripts/check-op-drift.sh). */
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs a script of scripts/ with its output indented; returns its exit status. */
static int run_script(const char *cmd) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[1024];
    while (fgets(line, sizeof line, p)) printf("    %s", line);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define NEED_TREE()                                                                        \
    do {                                                                                   \
        if (access("scripts/check-layering.sh", X_OK) != 0 || access("src/core", F_OK) != 0) \
            SKIP("not run from the repository root (the source tree is needed)");          \
    } while (0)

TEST(repo_no_device_branches_or_numbered_slots_above_backends) {
    NEED_TREE();
    CHECK_MSG(run_script("scripts/check-layering.sh 2>&1") == 0, "scripts/check-layering.sh failed");
}

TEST(repo_no_function_over_100_lines) {
    NEED_TREE();
    CHECK_MSG(run_script("scripts/long-functions.sh 100 2>&1") == 0,
              "functions over 100 lines (listed above)");
}

TEST(repo_leaving_out_part_of_an_op_fails_the_build_or_a_test) {
    NEED_TREE();
    const char *build = getenv("CT_TEST_BUILD_DIR");
    if (!build) build = "build";
    char obj[512];
    snprintf(obj, sizeof obj, "%s/src/ops/pointwise.o", build);
    if (access(obj, R_OK) != 0) SKIP("the build's objects are not in ./build (set CT_TEST_BUILD_DIR)");
    if (getenv("CT_TEST_EMULATED")) SKIP("already inside an emulated run");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "scripts/check-op-drift.sh %s 2>&1", build);
    CHECK_MSG(run_script(cmd) == 0, "an omission was not caught (see above)");
}
