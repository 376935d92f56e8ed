/* The fuzz targets (fuzz/fuzz_<name>.c, built by `make fuzz`, which `make test` runs when
 * clang's libFuzzer is there): each one runs over its committed corpus
 * (fuzz/corpus/<name>) and then fuzzes for a few seconds ($CT_FUZZ_SECONDS, default 10)
 * under AddressSanitizer, UndefinedBehaviorSanitizer and LeakSanitizer, with a 5 s limit per
 * input: any crash, leak, hang or sanitizer report fails the test. A target that is not
 * built is skipped, saying so. The long runs: make fuzz-run (docs/fuzzing.md). */
#include "test.h"

#include "cli_util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Whether the whole file contains needle (libFuzzer's logs outgrow log_has's 64 KiB). */
static int file_has(const char *path, const char *needle) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t cap = 1 << 16, n = 0, nl = strlen(needle);
    char *b = malloc(cap + 1);
    int found = 0;
    size_t r;
    while (b && !found && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        b[n] = 0;
        found = strstr(b, needle) != NULL;
        if (n > nl) { /* keep the last nl bytes: a needle across two reads */
            memmove(b, b + n - nl, nl);
            n = nl;
        }
    }
    free(b);
    fclose(f);
    return found;
}

TEST(fuzz_targets_short_run) {
    DIR *d = opendir("fuzz");
    if (!d) SKIP("no fuzz/ directory here (run the tests from the repository root)");
    int ran = 0, missing = 0;
    char missing_names[512] = "";
    const char *secs = getenv("CT_FUZZ_SECONDS");
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "fuzz_", 5) || n < 8 || strcmp(e->d_name + n - 2, ".c")) continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(n - 7), e->d_name + 5);
        char prog[512], corpus[512], work[512], cmd[8192], log[1024];
        snprintf(prog, sizeof prog, "%s/fuzz/fuzz_%s", build_dir(), name);
        if (access(prog, X_OK) != 0) {
            missing++;
            size_t l = strlen(missing_names);
            snprintf(missing_names + l, sizeof missing_names - l, " %s", name);
            continue;
        }
        snprintf(corpus, sizeof corpus, "fuzz/corpus/%s", name);
        snprintf(work, sizeof work, "%s/fuzz_%s", tmpdir(), name);
        snprintf(log, sizeof log, "%s/fuzz_%s.log", tmpdir(), name);
        /* new inputs go to a scratch directory, never into the committed corpus */
        snprintf(cmd, sizeof cmd,
                 "mkdir -p %s && ASAN_OPTIONS=detect_leaks=1 %s -max_total_time=%s -timeout=5 "
                 "-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=%s/ %s %s",
                 work, prog, secs ? secs : "10", work, work, corpus);
        char dict[512];
        snprintf(dict, sizeof dict, "fuzz/%s.dict", name);
        if (access(dict, R_OK) == 0) {
            size_t l = strlen(cmd);
            snprintf(cmd + l, sizeof cmd - l, " -dict=%s", dict);
        }
        int rc = run(cmd, log);
        if (rc != 0) show_log(log);
        CHECK_MSG(rc == 0, "fuzz target %s failed (exit %d): a crash, leak or hang; the input "
                  "is in %s, the log in %s", name, rc, work, log);
        CHECK_MSG(file_has(log, "stat::number_of_executed_units"),
                  "fuzz target %s did not report its run (log %s)", name, log);
        ran++;
    }
    closedir(d);
    if (!ran && missing) {
        char why[700];
        snprintf(why, sizeof why, "fuzz targets not built:%s (make fuzz; needs clang with "
                 "libFuzzer)", missing_names);
        ct_test_skip(why);
    }
}
