/* Runs the built examples (make examples puts them in build/examples) and checks their exit status
 * and what they print, and that they refuse bad arguments with exit status 2. The
 * directory is $CTORCH_EXAMPLES, else examples/ beside the test binary, else
 * build/examples; the data root is $CTORCH_DATA (set by make test). */
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *example_dir(void) {
    static char dir[1024];
    const char *env = getenv("CTORCH_EXAMPLES");
    if (env && *env) return env;
    char exe[900];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        snprintf(dir, sizeof dir, "%s/examples", exe);
        char probe[1100];
        snprintf(probe, sizeof probe, "%s/mlp_adam", dir);
        if (access(probe, X_OK) == 0) return dir;
    }
    return "build/examples";
}

/* The example's path in buf, or NULL when it has not been built. */
static const char *example(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", example_dir(), name);
    return access(buf, X_OK) == 0 ? buf : NULL;
}

/* Runs `cmd` with stdout and stderr into a buffer; returns the exit status (-1 when it
 * did not exit normally). */
static int run(const char *cmd, char *out, size_t n) {
    char full[4096];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    out[0] = 0;
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t len = fread(out, 1, n - 1, p);
    out[len] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The number after the last occurrence of `key` in s, or NAN. */
static double last_number_after(const char *s, const char *key) {
    const char *hit = NULL;
    for (const char *p = strstr(s, key); p; p = strstr(p + 1, key)) hit = p;
    return hit ? strtod(hit + strlen(key), NULL) : NAN;
}

static char g_out[1 << 16];

#define NEED_EXAMPLE(name, path)                                                             \
    char path[1200];                                                                        \
    if (!example(name, path, sizeof path)) SKIP(name " is not built: run make examples")

TEST(examples_dynamic_branch_runs) {
    NEED_EXAMPLE("dynamic_branch", path);
    int rc = run(path, g_out, sizeof g_out);
    CHECK_MSG(rc == 0, "dynamic_branch exited %d:\n%s", rc, g_out);
    double used = last_number_after(g_out, "auxiliary head used on ");
    CHECK_MSG(used >= 1 && used <= 19, "aux head used on %g of 20 steps:\n%s", used, g_out);
    /* the data-dependent branch: aux.weight has a gradient exactly on the aux steps */
    CHECK(strstr(g_out, "aux head used, aux.weight grad present") != NULL);
    CHECK(strstr(g_out, "aux head skipped, aux.weight grad absent") != NULL);
    CHECK(strstr(g_out, "used, aux.weight grad absent") == NULL);
    CHECK(strstr(g_out, "skipped, aux.weight grad present") == NULL);
    CHECK(strstr(g_out, "step 19") != NULL);
}

TEST(examples_mlp_adam_runs_and_fits_its_batch) {
    NEED_EXAMPLE("mlp_adam", path);
    int rc = run(path, g_out, sizeof g_out);
    CHECK_MSG(rc == 0, "mlp_adam exited %d:\n%s", rc, g_out);
    double first = last_number_after(g_out, "step  0  loss "),
           last = last_number_after(g_out, "step 49  loss ");
    CHECK_MSG(first > 2.0 && last < 0.05, "loss %g -> %g:\n%s", first, last, g_out);
}

/* Embedding + positions + TransformerEncoder with key padding masks learns to sort digit
 * sequences of varying length (examples/seq_transformer.c). */
TEST(examples_seq_transformer_learns_to_sort) {
    NEED_EXAMPLE("seq_transformer", path);
    char cmd[1300];
    snprintf(cmd, sizeof cmd, "%s 300", path);
    int rc = run(cmd, g_out, sizeof g_out);
    CHECK_MSG(rc == 0, "seq_transformer exited %d:\n%s", rc, g_out);
    double first = last_number_after(g_out, "step    0  loss ");
    double acc = last_number_after(g_out, "digit accuracy ");
    CHECK_MSG(first > 1.5 && acc > 90.0, "loss at step 0 %g, digit accuracy %g%% (want > 90%%):\n%s",
              first, acc, g_out);
    printf("    seq_transformer: digit accuracy %.2f%% after 300 steps\n", acc);
    snprintf(cmd, sizeof cmd, "%s 0", path);
    rc = run(cmd, g_out, sizeof g_out);
    CHECK_MSG(rc == 2 && strstr(g_out, "usage:"), "0 steps: exit %d:\n%s", rc, g_out);
}

static int have_mnist(const char *root) {
    char p[1024];
    snprintf(p, sizeof p, "%s/mnist/train-images-idx3-ubyte.gz", root);
    if (access(p, R_OK) == 0) return 1;
    snprintf(p, sizeof p, "%s/mnist/train-images-idx3-ubyte", root);
    return access(p, R_OK) == 0;
}

TEST(examples_adaptive_net_learns_mnist) {
    NEED_EXAMPLE("adaptive_net", path);
    const char *root = getenv("CTORCH_DATA");
    if (!root || !have_mnist(root)) SKIP("no MNIST under $CTORCH_DATA (mnist/*-idx*-ubyte.gz)");
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "%s '%s'", path, root);
    int rc = run(cmd, g_out, sizeof g_out);
    CHECK_MSG(rc == 0, "adaptive_net exited %d:\n%s", rc, g_out);
    CHECK(strstr(g_out, "(aux_head): Linear(in_features=128, out_features=5, bias=True)") != NULL);
    double acc = last_number_after(g_out, "test accuracy ");
    CHECK_MSG(acc > 85.0, "test accuracy %g%% (want > 85%%):\n%s", acc, g_out);
    double loss = last_number_after(g_out, "step  300  train loss ");
    CHECK_MSG(loss > 0 && loss < 0.6, "train loss at step 300: %g\n%s", loss, g_out);
    /* the aux head ran on some batches, not all: a data-dependent choice */
    double aux = last_number_after(g_out, "(aux head on ");
    CHECK_MSG(aux > 30 && aux < 270, "aux head on %g of 300 steps", aux);
    printf("    adaptive_net: test accuracy %.2f%%, aux head on %.0f of 300 steps\n", acc, aux);
}

TEST(examples_refuse_bad_arguments) {
    char path[1200], cmd[2400];
    if (example("adaptive_net", path, sizeof path)) {
        snprintf(cmd, sizeof cmd, "%s /nonexistent/ctorch-data", path);
        int rc = run(cmd, g_out, sizeof g_out);
        CHECK_MSG(rc == 2 && strstr(g_out, "/nonexistent/ctorch-data/mnist"),
                  "missing data: exit %d:\n%s", rc, g_out);
        snprintf(cmd, sizeof cmd, "%s /nonexistent/ctorch-data 0", path);
        rc = run(cmd, g_out, sizeof g_out);
        CHECK_MSG(rc == 2 && strstr(g_out, "usage:"), "0 steps: exit %d:\n%s", rc, g_out);
    }
    if (example("cifar_cnn", path, sizeof path)) {
        snprintf(cmd, sizeof cmd, "%s --epochs", path);
        int rc = run(cmd, g_out, sizeof g_out);
        CHECK_MSG(rc == 2 && strstr(g_out, "usage:"), "--epochs without a value: exit %d:\n%s",
                  rc, g_out);
        const char *bad_numbers[3] = {"--limit -5", "--epochs abc", "--limit 10x"};
        for (int i = 0; i < 3; i++) {
            snprintf(cmd, sizeof cmd, "%s %s", path, bad_numbers[i]);
            rc = run(cmd, g_out, sizeof g_out);
            CHECK_MSG(rc == 2 && strstr(g_out, "needs a whole number >= 1"), "%s: exit %d:\n%s",
                      bad_numbers[i], rc, g_out);
        }
        snprintf(cmd, sizeof cmd, "%s --device tpu", path);
        rc = run(cmd, g_out, sizeof g_out);
        CHECK_MSG(rc == 2 && strstr(g_out, "tpu"), "--device tpu: exit %d:\n%s", rc, g_out);
        snprintf(cmd, sizeof cmd, "%s --data-dir /nonexistent/ctorch-data", path);
        rc = run(cmd, g_out, sizeof g_out);
        CHECK_MSG(rc == 2 && strstr(g_out, "/nonexistent/ctorch-data"),
                  "missing data: exit %d:\n%s", rc, g_out);
    } else {
        SKIP("the examples are not built: run make examples");
    }
}

TEST(examples_cifar_cnn_trains_on_a_subset) {
    NEED_EXAMPLE("cifar_cnn", path);
    const char *root = getenv("CTORCH_DATA");
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/cifar-10-batches-bin/data_batch_1.bin", root ? root : ".");
    if (!root || access(probe, R_OK) != 0) SKIP("no CIFAR-10 under $CTORCH_DATA");
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "%s --data-dir '%s' --limit 2000", path, root);
    int rc = run(cmd, g_out, sizeof g_out);
    CHECK_MSG(rc == 0, "cifar_cnn exited %d:\n%s", rc, g_out);
    double acc = last_number_after(g_out, "test accuracy ");
    CHECK_MSG(acc > 15.0, "test accuracy %g%% after 2000 images (chance: 10%%):\n%s", acc, g_out);
}
