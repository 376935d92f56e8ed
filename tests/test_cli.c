/* End-to-end tests of the ctorch binary on real data (CTORCH_DATA), and its exit codes
 * on bad input. The binary is build/ctorch unless CTORCH_BIN says otherwise. */
#include "test.h"
#include "cli_util.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Same formula as tests/fixtures/gen_train_steps.py. */
static int write_formula_init(const char *path) {
    ct_module *m = ct_model_create("simple_cnn", 10);
    if (!m) return -1;
    static const char *names[6] = {"features.0.weight", "features.0.bias", "features.3.weight",
                                   "features.3.bias", "classifier.weight", "classifier.bias"};
    static const double fans[6] = {27, 27, 288, 288, 4096, 4096};
    for (int k = 0; k < 6; k++) {
        ct_tensor *t = ct_module_get_tensor(m, names[k]);
        if (!t) return -1;
        float *p = ct_data(t);
        for (int64_t i = 0; i < ct_numel(t); i++)
            p[i] = (float)(sin(0.37 * (double)i + 1.3 * k) / sqrt(fans[k]));
    }
    int rc = ct_module_save(m, path, NULL);
    ct_module_free(m);
    return rc;
}

static void compare_steps(const char *ckpt, ct_fixture *fx, int step, double tol) {
    ct_safetensors *st = ct_safetensors_load(ckpt);
    CHECK_NN(st);
    if (!st) return;
    static const char *names[6] = {"features.0.weight", "features.0.bias", "features.3.weight",
                                   "features.3.bias", "classifier.weight", "classifier.bias"};
    for (int k = 0; k < 6; k++) {
        char key[96], what[128];
        snprintf(key, sizeof key, "step%d.%s", step, names[k]);
        ct_tensor *want = ct_fixture_get(fx, key);
        snprintf(what, sizeof what, "%s after %d SGD steps vs PyTorch", names[k], step);
        double err = CHECK_CLOSE(ct_safetensors_get(st, names[k]), want, tol, what);
        printf("    %-18s after %2d steps: relative error %.2e (bar %.0e)\n", names[k], step, err, tol);
        ct_free(want);
    }
    ct_safetensors_free(st);
}

TEST(cli_train_matches_pytorch_after_5_and_40_sgd_steps) {
    const char *d = data_dir();
    if (!d) SKIP("CTORCH_DATA does not hold CIFAR-10");
    ct_fixture *fx = ct_fixture_load("train_steps_simple_cnn");
    if (!fx) return;
    char init[512], out5[512], out40[512], log[512], cmd[2048];
    snprintf(init, sizeof init, "%s/init.safetensors", tmpdir());
    snprintf(out5, sizeof out5, "%s/step5.safetensors", tmpdir());
    snprintf(out40, sizeof out40, "%s/step40.safetensors", tmpdir());
    snprintf(log, sizeof log, "%s/train.log", tmpdir());
    CHECK_OK(write_formula_init(init));
    int steps[2] = {5, 40};
    const char *outs[2] = {out5, out40};
    double tols[2] = {1e-5, 1e-2};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd,
                 "%s train --model simple_cnn --dataset cifar10 --data-dir %s --init %s --save %s "
                 "--no-shuffle --augment none --max-steps %d --train-limit %d --test-limit 200",
                 bin(), d, init, outs[i], steps[i], steps[i] * 64);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 0, "train exited %d", rc);
        if (rc) {
            show_log(log);
            continue;
        }
        CHECK(log_has(log, "final test accuracy"));
        compare_steps(outs[i], fx, steps[i], tols[i]);
    }
    /* eval reads the checkpoint back */
    snprintf(cmd, sizeof cmd, "%s eval --model simple_cnn --checkpoint %s --dataset cifar10 --data-dir %s --test-limit 500 --json",
             bin(), out40, d);
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "\"test_acc\""));
    ct_fixture_free(fx);
}

/* The same 5 SGD steps on the GPU (TF32 off): the weights match PyTorch's within 1e-4, and
 * eval reads the checkpoint back on the GPU. Skipped when CUDA is unavailable. */
TEST(cli_train_on_cuda_matches_pytorch_after_5_sgd_steps) {
    int avail = 0;
    const char *why = ct_cuda_status(&avail);
    if (!avail) SKIP(why);
    const char *d = data_dir();
    if (!d) SKIP("CTORCH_DATA does not hold CIFAR-10");
    ct_fixture *fx = ct_fixture_load("train_steps_simple_cnn");
    if (!fx) return;
    char init[512], out[512], log[512], cmd[2048];
    snprintf(init, sizeof init, "%s/init_cuda.safetensors", tmpdir());
    snprintf(out, sizeof out, "%s/step5_cuda.safetensors", tmpdir());
    snprintf(log, sizeof log, "%s/train_cuda.log", tmpdir());
    CHECK_OK(write_formula_init(init));
    /* a device index past the last: a usage error naming the devices there are */
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset cifar10 --device cuda:99",
             bin());
    CHECK(run(cmd, log) == 2 && log_has(log, "no such device") && log_has(log, "cuda:0 is"));
    snprintf(cmd, sizeof cmd, "%s --version", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "cuda: available (") && log_has(log, "  cuda:0 "));
    snprintf(cmd, sizeof cmd,
             "CTORCH_TF32=0 %s train --model simple_cnn --dataset cifar10 --data-dir %s --init %s "
             "--save %s --device cuda --no-shuffle --augment none --max-steps 5 --train-limit 320 "
             "--test-limit 200",
             bin(), d, init, out);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "train --device cuda exited %d", rc);
    if (rc) {
        show_log(log);
    } else {
        CHECK(log_has(log, "final test accuracy"));
        compare_steps(out, fx, 5, 1e-4);
        /* the checkpoint evaluated on the GPU and on the CPU: same loss and accuracy (the
         * GPU path counts the right answers there and brings loss and count back in one
         * packed copy) */
        double acc[2] = {-1, -1}, loss[2] = {-1, -1};
        for (int i = 0; i < 2; i++) {
            snprintf(cmd, sizeof cmd,
                     "%s eval --model simple_cnn --checkpoint %s --dataset cifar10 --data-dir %s "
                     "--device %s --test-limit 200 --json",
                     bin(), out, d, i ? "cpu" : "cuda");
            CHECK(run(cmd, log) == 0);
            FILE *f = fopen(log, "r");
            char line[1024];
            while (f && fgets(line, sizeof line, f)) {
                const char *a = strstr(line, "\"test_acc\": "), *l = strstr(line, "\"test_loss\": ");
                if (a) acc[i] = atof(a + 12);
                if (l) loss[i] = atof(l + 13);
            }
            if (f) fclose(f);
        }
        CHECK_MSG(acc[0] >= 0 && fabs(acc[0] - acc[1]) <= 0.01,
                  "eval accuracy cuda %g vs cpu %g", acc[0], acc[1]);
        CHECK_MSG(loss[0] >= 0 && fabs(loss[0] - loss[1]) <= 1e-4 * fabs(loss[1]) + 1e-6,
                  "eval loss cuda %g vs cpu %g", loss[0], loss[1]);
    }
    ct_fixture_free(fx);
}

TEST(cli_mlp_learns_mnist_subset) {
    const char *d = getenv("CTORCH_DATA");
    char p[1024];
    snprintf(p, sizeof p, "%s/mnist/train-images-idx3-ubyte.gz", d ? d : ".");
    if (!d || access(p, R_OK) != 0) SKIP("CTORCH_DATA does not hold MNIST");
    char log[512], json[512], cmd[2048];
    snprintf(log, sizeof log, "%s/mlp.log", tmpdir());
    snprintf(json, sizeof json, "%s/mlp.jsonl", tmpdir());
    snprintf(cmd, sizeof cmd,
             "%s train --model mlp --dataset mnist --data-dir %s --optimizer adam --lr 0.001 "
             "--epochs 2 --train-limit 10000 --test-limit 2000 --log-json %s",
             bin(), d, json);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "train exited %d", rc);
    FILE *f = fopen(json, "r");
    CHECK(f != NULL);
    double acc = 0;
    int lines = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        lines++;
        const char *k = strstr(line, "\"test_acc\": ");
        CHECK(k && strstr(line, "\"epoch\"") && strstr(line, "\"images_per_sec\"") && strstr(line, "\"lr\""));
        if (k) acc = atof(k + 12);
    }
    if (f) fclose(f);
    CHECK(lines == 2);
    CHECK_MSG(acc > 0.88, "mlp test accuracy %.3f after 2 epochs on 10000 images", acc);
}

/* The test accuracy in the last row of a --log-json file (-1 when missing). */
static double last_test_acc(const char *json, int *has_scale) {
    FILE *f = fopen(json, "r");
    double acc = -1;
    char line[1024];
    *has_scale = 0;
    while (f && fgets(line, sizeof line, f)) {
        const char *k = strstr(line, "\"test_acc\": ");
        if (k) acc = atof(k + 12);
        *has_scale = strstr(line, "\"loss_scale\": ") && strstr(line, "\"amp_skipped_steps\": ");
    }
    if (f) fclose(f);
    return acc;
}

/* --amp bf16 and --amp fp16 (with its GradScaler) train simple_cnn on real CIFAR-10 as
 * well as float32 from the same seed (a subset: the 10-epoch comparison is in
 * bench/RESULTS.md). */
TEST(cli_amp_trains_simple_cnn_on_cifar10) {
    const char *d = data_dir();
    if (!d) SKIP("$CTORCH_DATA holds no CIFAR-10");
    const char *amps[3] = {"off", "bf16", "fp16"};
    double acc[3];
    for (int i = 0; i < 3; i++) {
        char log[512], json[512], cmd[2048];
        snprintf(log, sizeof log, "%s/amp_%s.log", tmpdir(), amps[i]);
        snprintf(json, sizeof json, "%s/amp_%s.jsonl", tmpdir(), amps[i]);
        snprintf(cmd, sizeof cmd,
                 "%s train --model simple_cnn --dataset cifar10 --data-dir %s --epochs 2 "
                 "--train-limit 6000 --test-limit 2000 --amp %s --log-json %s",
                 bin(), d, amps[i], json);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 0, "--amp %s: train exited %d", amps[i], rc);
        if (rc) show_log(log);
        int scaled;
        acc[i] = last_test_acc(json, &scaled);
        CHECK_MSG(scaled == (i == 2), "--amp %s: loss_scale in the log %d", amps[i], scaled);
        CHECK_MSG(acc[i] > 0.33, "--amp %s: test accuracy %.3f", amps[i], acc[i]);
    }
    for (int i = 1; i < 3; i++)
        CHECK_MSG(fabs(acc[i] - acc[0]) < 0.04, "--amp %s: %.3f vs float32 %.3f", amps[i],
                  acc[i], acc[0]);
}

TEST(cli_bad_input_exits_2_with_a_message) {
    char log[512], cmd[2048], bad[512];
    snprintf(log, sizeof log, "%s/bad.log", tmpdir());
    struct {
        const char *args, *needle;
    } cases[] = {
        {"train --model simple_cnn --dataset cifar10 --bogus 1", "unknown option '--bogus'"},
        {"train --model nope --dataset cifar10", "choose one of: simple_cnn"},
        {"train --model mlp --dataset imagenet", "imagenet"},
        {"train --model mlp --dataset mnist --epochs x", "--epochs expects an integer"},
        {"train --model mlp --dataset mnist --lr -1", "--lr must be between"},
        {"train --model mlp --dataset mnist --optimizer rmsprop", "choose one of: sgd"},
        {"train --model mlp --dataset mnist --data-dir /nonexistent/dir", "ctorch download"},
        {"train --model mlp --dataset mnist --device tpu", "unknown device 'tpu'"},
        {"train --model mlp --dataset mnist --batch-size", "needs a value"},
        {"eval --model mlp --dataset mnist", "required"},
        {"bench --model mlp", "required"},
        {"train --model mlp --dataset mnist --amp fp8", "choose one of: bf16, fp16, off"},
        {"bench --model mlp --batch-size 4 --amp half", "choose one of: bf16, fp16, off"},
        {"frobnicate", "unknown command"},
        {"help nope", "unknown command"},
        {"download", "name the dataset"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cmd, sizeof cmd, "%s %s", bin(), cases[i].args);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 2, "`ctorch %s` exited %d, expected 2", cases[i].args, rc);
        CHECK_MSG(log_has(log, cases[i].needle), "`ctorch %s`: output lacks \"%s\"", cases[i].args, cases[i].needle);
    }
    /* --device cuda on a machine without a driver or plugin: exit 2 fast, naming why */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    snprintf(cmd, sizeof cmd, "%s train --model mlp --dataset mnist --device cuda", bin());
    int rc = run(cmd, log);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    int avail = 0;
    ct_cuda_status(&avail);
    if (!avail) {
        CHECK_MSG(rc == 2, "--device cuda exited %d", rc);
        CHECK(log_has(log, "CUDA is unavailable"));
        CHECK_MSG(secs < 1.0, "--device cuda took %.2fs to fail", secs);
    }
    const char *d = data_dir();
    if (!d) return;
    /* unwritable --save, checkpoint of another model: exit 2 before training */
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset cifar10 --data-dir %s --save /proc/nope/w.safetensors", bin(), d);
    CHECK(run(cmd, log) == 2 && log_has(log, "--save"));
    snprintf(bad, sizeof bad, "%s/mlp_init.safetensors", tmpdir());
    ct_module *m = ct_model_create("mlp", 10);
    CHECK_OK(ct_module_save(m, bad, NULL));
    ct_module_free(m);
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset cifar10 --data-dir %s --init %s", bin(), d, bad);
    CHECK(run(cmd, log) == 2);
    CHECK_MSG(log_has(log, "features.0.weight"), "mismatch message should list the missing names");
    snprintf(cmd, sizeof cmd, "%s eval --model simple_cnn --dataset cifar10 --data-dir %s --checkpoint %s/missing.safetensors", bin(), d, tmpdir());
    CHECK(run(cmd, log) == 2);
    /* a truncated dataset file */
    char dd[512];
    snprintf(dd, sizeof dd, "%s/trunc/cifar-10-batches-bin", tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && head -c 1000 %s/cifar-10-batches-bin/data_batch_1.bin > %s/data_batch_1.bin", dd, d, dd);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset cifar10 --data-dir %s/trunc", bin(), tmpdir());
    CHECK(run(cmd, log) == 2);
    CHECK(log_has(log, "data_batch_1.bin"));
}

TEST(cli_version_and_help) {
    char log[512], cmd[1024];
    snprintf(log, sizeof log, "%s/version.log", tmpdir());
    snprintf(cmd, sizeof cmd, "%s --version", bin());
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "ctorch " CT_VERSION) && log_has(log, "cuda: "));
    snprintf(cmd, sizeof cmd, "%s help train", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "--max-steps"));
    snprintf(cmd, sizeof cmd, "%s bench --model mlp --batch-size 32 --steps 2 --json", bin());
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "\"train_images_per_sec\"") && log_has(log, "\"infer_images_per_sec\"") &&
          log_has(log, "\"threads\"") && log_has(log, "\"device\": \"cpu\""));
}

TEST(cli_ctrl_c_saves_the_weights_so_far) {
    const char *d = data_dir();
    if (!d) SKIP("CTORCH_DATA does not hold CIFAR-10");
    char out[512], log[512];
    snprintf(out, sizeof out, "%s/interrupted.safetensors", tmpdir());
    snprintf(log, sizeof log, "%s/interrupted.log", tmpdir());
    unlink(out);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "w", stdout);
        (void)f;
        dup2(fileno(stdout), 2);
        execl(bin(), bin(), "train", "--model", "simple_cnn", "--dataset", "cifar10", "--data-dir", d,
              "--epochs", "50", "--train-limit", "20000", "--test-limit", "100", "--save", out, (char *)NULL);
        _exit(127);
    }
    CHECK(pid > 0);
    /* wait until training has started, then interrupt */
    for (int i = 0; i < 100 && !log_has(log, "training simple_cnn"); i++) usleep(100000);
    usleep(1500000);
    kill(pid, SIGINT);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "interrupted train should exit 0 after saving (status %d)", st);
    CHECK(log_has(log, "interrupted at step"));
    CHECK(log_has(log, "saved weights to"));
    ct_module *m = ct_model_create("simple_cnn", 10);
    CHECK_OK(ct_module_load(m, out));
    ct_module_free(m);
}
