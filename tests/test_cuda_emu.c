/* The CUDA plugin on the CPU emulator (tests/cuda_emu/README.md): the plugin's kernels and
 * host code run on CPU fibers, with stand-ins for the CUDA runtime, driver, cuBLAS and
 * cuDNN, so that their logic is tested on every machine, GPU or not.
 *
 * Each test runs part of this suite again in a child process whose CUDA plugin is the
 * emulated one (build/cuda_emu/libctorch_cuda.so, beside this binary): the backend suite
 * (every kernel-table op against the CPU, fused optimizers, allocator), the DataLoader's
 * pinned batches and device prefetcher, the NCCL entry points (against a one-rank NCCL
 * stand-in), and the end-to-end `ctorch train --device cuda` test. These are emulator
 * passes, not GPU passes: the GPU cases of the normal run stay skipped on a machine
 * without a GPU. Skipped here when the emulator is not built (no CUDA toolkit), or inside
 * the emulated child itself. */
#include "test.h"
#include "core/backend.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* build/cuda_emu beside this test binary, if the emulated plugin is there. */
static const char *emu_dir(void) {
    static char dir[1024];
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return NULL;
    self[n] = 0;
    snprintf(dir, sizeof dir, "%s/cuda_emu", dirname(self));
    char lib[1100];
    snprintf(lib, sizeof lib, "%s/libctorch_cuda.so", dir);
    return access(lib, R_OK) == 0 ? dir : NULL;
}

#define EMU_SKIP()                                                                         \
    do {                                                                                   \
        if (getenv("CT_TEST_EMULATED")) SKIP("already inside the emulated run");           \
        if (!emu_dir())                                                                    \
            SKIP("the CUDA emulator is not built (needs the CUDA toolkit's headers: "      \
                 "make cuda-emu)");                                                        \
    } while (0)

/* Runs `cmd` with output to a temporary log; on failure shows its last lines. Returns
 * the exit status and copies the log's last line into `last`. */
static int run_logged(const char *cmd, char *last, size_t n) {
    char log[] = "/tmp/ctorch-emu-XXXXXX";
    int fd = mkstemp(log);
    if (fd < 0) return -1;
    close(fd);
    char full[4096];
    snprintf(full, sizeof full, "%s > %s 2>&1", cmd, log);
    int st = system(full);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    last[0] = 0;
    FILE *f = fopen(log, "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        if (rc != 0 && (strncmp(line, "FAIL", 4) == 0 || strstr(line, "cuda-emu:") ||
                        strncmp(line, "    ", 4) == 0))
            printf("    | %s", line);
        snprintf(last, n, "%s", line);
    }
    if (f) fclose(f);
    unlink(log);
    size_t l = strlen(last);
    if (l && last[l - 1] == '\n') last[l - 1] = 0;
    return rc;
}

/* This binary, filtered to `filter`, with the emulated plugin; every selected test must
 * pass (none skipped: a skip would mean the emulated device did not come up). */
static void run_emulated_env(const char *env, const char *filter, int min_tests) {
    const char *dir = emu_dir();
    char self[1024], cmd[4096], last[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = 0;
    const char *ld = getenv("LD_LIBRARY_PATH");
    snprintf(cmd, sizeof cmd,
             "CTORCH_CUDA_PLUGIN=%s/libctorch_cuda.so LD_LIBRARY_PATH=%s%s%s "
             "CTORCH_CUBLAS_LIBRARY= CTORCH_CUDNN_LIBRARY= CTORCH_NCCL_LIBRARY= "
             "CT_TEST_EMULATED=1 %s %s %s",
             dir, dir, ld && *ld ? ":" : "", ld && *ld ? ld : "", env, self, filter);
    int rc = run_logged(cmd, last, sizeof last);
    int passed = -1, failed = -1, skipped = -1;
    sscanf(last, "%d passed, %d failed, %d skipped", &passed, &failed, &skipped);
    printf("    emulated `%s`%s%s: %s\n", filter, *env ? " with " : "", env, last);
    CHECK_MSG(rc == 0 && failed == 0, "emulated run of `%s` exited %d (%s)", filter, rc, last);
    CHECK_MSG(passed >= min_tests && skipped == 0,
              "emulated run of `%s`: %d passed, %d skipped; expected >= %d passed, none "
              "skipped",
              filter, passed, skipped, min_tests);
}

static void run_emulated(const char *filter, int min_tests) {
    run_emulated_env("", filter, min_tests);
}

/* The core checks a plugin's backend-table layout before it calls into it: a plugin from
 * another build is refused with a reason and a fix, and --device cuda exits 2. */
TEST(cuda_plugin_of_another_build_is_refused) {
    EMU_SKIP();
    char self[1024], plugin[1200], cmd[4096], last[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = 0;
    snprintf(plugin, sizeof plugin, "%s/wrong_abi/libctorch_cuda.so", emu_dir());
    if (access(plugin, R_OK) != 0) SKIP("wrong_abi plugin not built (make cuda-emu)");
    const char *bin = getenv("CTORCH_BIN") ? getenv("CTORCH_BIN") : "build/ctorch";
    snprintf(cmd, sizeof cmd, "CTORCH_CUDA_PLUGIN=%s %s --version | grep '^cuda:'", plugin, bin);
    CHECK(run_logged(cmd, last, sizeof last) == 0);
    CHECK_MSG(strstr(last, "unavailable") && strstr(last, "built for another version") &&
                  strstr(last, "make cuda") && !strstr(last, "was called"),
              "--version: %s", last);
    snprintf(cmd, sizeof cmd,
             "CTORCH_CUDA_PLUGIN=%s %s train --model mlp --dataset mnist --device cuda; "
             "echo \"exit $?\"",
             plugin, bin);
    CHECK(run_logged(cmd, last, sizeof last) == 0);
    CHECK_MSG(strcmp(last, "exit 2") == 0, "train --device cuda with that plugin: %s", last);
}

/* Whether $CTORCH_DATA holds CIFAR-10 (the emulated training test needs it). */
static int cifar_present(void) {
    const char *d = getenv("CTORCH_DATA");
    char p[1100];
    if (!d) return 0;
    snprintf(p, sizeof p, "%s/cifar-10-batches-bin/data_batch_1.bin", d);
    return access(p, R_OK) == 0;
}

TEST(cuda_emulator_self_test) {
    EMU_SKIP();
    char cmd[1200], last[1024];
    snprintf(cmd, sizeof cmd, "%s/test_simt", emu_dir());
    int rc = run_logged(cmd, last, sizeof last);
    printf("    %s\n", last);
    CHECK_MSG(rc == 0, "%s exited %d (%s)", cmd, rc, last);
}

TEST(cuda_emulator_backend_suite) {
    EMU_SKIP();
    run_emulated("backends", CT_KERNEL_COUNT); /* at least one case per kernel */
}

/* The same suite with the threads of each block run in other orders between barriers: a
 * data race inside a kernel changes its result with the order (tests/cuda_emu/simt.cc). */
TEST(cuda_emulator_backend_suite_other_thread_orders) {
    EMU_SKIP();
    run_emulated_env("CT_EMU_SCHEDULE=reverse", "backends", CT_KERNEL_COUNT);
    run_emulated_env("CT_EMU_SCHEDULE=random CT_EMU_SEED=7", "backends", CT_KERNEL_COUNT);
}

/* Again with work on each stream deferred until something waits for it (lazy), or only
 * the compute stream's (mixed): a missing cudaStreamWaitEvent or copy fence between the
 * compute and copy streams then gives wrong data (tests/cuda_emu/emu_streams.c). */
TEST(cuda_emulator_deferred_streams) {
    EMU_SKIP();
    const char *modes[2] = {"CT_EMU_STREAMS=lazy", "CT_EMU_STREAMS=mixed"};
    for (int i = 0; i < 2; i++) {
        run_emulated_env(modes[i], "data_prefetcher_cuda", 1);
        run_emulated_env(modes[i], "data_cuda_copy_stream", 1);
        run_emulated_env(modes[i], "backends_cuda", 4);
        run_emulated_env(modes[i], "backends_sgd_step", 1);
        run_emulated_env(modes[i], "backends_adam_step", 1);
        run_emulated_env(modes[i], "backends_ops_cnn", 1);
    }
    if (cifar_present()) run_emulated_env(modes[0], "cli_train_on_cuda", 1);
}

TEST(cuda_emulator_data_prefetcher) {
    EMU_SKIP();
    run_emulated("data_prefetcher_cuda", 1);
    run_emulated("data_cuda_copy_stream", 1);
}

TEST(cuda_emulator_train_end_to_end) {
    EMU_SKIP();
    if (!cifar_present()) SKIP("no CIFAR-10 under $CTORCH_DATA");
    run_emulated("cli_train_on_cuda", 1);
}

/* The manifest's CUDA fields (src/cli/run_info.c) through the plugin's `versions` entry
 * point: driver, runtime and cuDNN versions, the device in use. */
TEST(cuda_emulator_run_info) {
    EMU_SKIP();
    run_emulated("run_info_env_cuda", 1);
}

/* The plugin's NCCL code (src/backends/cuda/cuda_nccl.c, tests/test_nccl.c) against the
 * emulator's one-rank NCCL (tests/cuda_emu/emu_nccl.c): the missing-library report (alone:
 * a loaded NCCL stays loaded), every dtype and op, broadcast, all-gather, wait, injected
 * failures and the timeout; then the collectives with stream work deferred (a collective
 * queued on another stream than the kernels' would read its input before it is written). */
TEST(cuda_emulator_nccl) {
    EMU_SKIP();
    run_emulated("nccl_missing_library", 1);
    run_emulated("cuda_nccl_", 2);
    run_emulated_env("CT_EMU_STREAMS=lazy", "cuda_nccl_single_rank", 1);
}
