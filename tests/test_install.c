/* `make install` as a user of the C library meets it, through scripts/check-install.sh
 * (run from the repository root, as `make test` does): the normal build installed into a
 * temporary prefix, every file there, a program that includes only ctorch.h compiled with
 * pkg-config shared and static and run without LD_LIBRARY_PATH, the installed CUDA plugin
 * found, DESTDIR, `make uninstall`; and a clear failure for an unwritable or relative
 * PREFIX. The build directory is the one holding this binary (CT_TEST_BUILD_DIR overrides
 * it); skipped when that build has no libctorch.so/ctorch (make test-sanitize builds only
 * the test binary) or is out of date, or when pkg-config is missing. */
#include "test.h"
#include "cli_util.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs scripts/check-install.sh with its output indented. Returns its exit status; on
 * 77 (skipped) copies the reason of its "SKIP: " line into `why`. */
static int run_check(const char *mode, char *why, size_t n) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "scripts/check-install.sh '%s' %s 2>&1", build_dir(), mode);
    why[0] = 0;
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[2048];
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, "SKIP: ", 6) == 0) {
            size_t l = strcspn(line + 6, "\n");
            if (l >= n) l = n - 1;
            memcpy(why, line + 6, l);
            why[l] = 0;
        } else {
            printf("    %s", line);
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define NEED_TREE()                                                                        \
    do {                                                                                   \
        if (getenv("CT_TEST_EMULATED")) SKIP("already inside an emulated run");            \
        if (access("scripts/check-install.sh", X_OK) != 0 || access("Makefile", R_OK) != 0) \
            SKIP("not run from the repository root (make install needs the source tree)"); \
    } while (0)

TEST(install_pkg_config_shared_and_static_programs_run) {
    NEED_TREE();
    char why[1024];
    int rc = run_check("install", why, sizeof why);
    if (rc == 77) SKIP(why);
    CHECK_MSG(rc == 0, "scripts/check-install.sh failed (exit status %d, see above)", rc);
}

TEST(install_unwritable_or_relative_prefix_fails_clearly) {
    NEED_TREE();
    char why[1024];
    int rc = run_check("bad-prefix", why, sizeof why);
    if (rc == 77) SKIP(why);
    CHECK_MSG(rc == 0, "scripts/check-install.sh bad-prefix failed (exit status %d, see above)",
              rc);
}
