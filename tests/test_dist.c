/* Process groups, DDP, SyncBatchNorm and data-parallel `ctorch train` under a real
 * OpenMPI (mpirun on this machine, two or three ranks over shared memory / TCP). The
 * ranks of the library-level checks are build/dist_worker (tests/dist/dist_worker.c).
 * Without mpirun or the MPI plugin the tests report skipped. */
#include "cli_util.h"
#include "ctorch_data.h"
#include "ctorch_dist.h"
#include "ctorch_io.h"
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *mpi_skip_reason(void) {
    if (system("command -v mpirun >/dev/null 2>&1") != 0)
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)";
    if (access("build/libctorch_mpi.so", R_OK) != 0)
        return "build/libctorch_mpi.so not built (mpicc not found when building)";
    if (access("build/dist_worker", X_OK) != 0) return "build/dist_worker not built (make build/dist_worker)";
    return NULL;
}
#define NEED_MPI()                                                                         \
    do {                                                                                   \
        const char *why_ = mpi_skip_reason();                                              \
        if (why_) SKIP(why_);                                                              \
    } while (0)

/* mpirun as the tests use it: as root too, more ranks than cores, no binding, a bound on
 * the time; extra environment in env ("A=1 B=2" or ""). */
static int mpirun(int np, const char *env, const char *args, const char *log) {
    char cmd[3000];
    snprintf(cmd, sizeof cmd,
             "env %s OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
             "timeout 300 mpirun --stdin none -np %d --bind-to none %s",
             env, np, args);
    return run(cmd, log);
}

static void log_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s.log", tmpdir(), name);
}

static void worker(int np, const char *env, const char *scenario, int want_rc) {
    char log[512], args[600];
    log_path(log, sizeof log, "dist_worker");
    snprintf(args, sizeof args, "build/dist_worker %s", scenario);
    int rc = mpirun(np, env, args, log);
    if (rc != want_rc) show_log(log);
    CHECK_MSG(rc == want_rc, "%d ranks, %s %s: exit %d, want %d", np, env, scenario, rc, want_rc);
}

TEST(dist_collectives_two_and_three_ranks) {
    NEED_MPI();
    worker(2, "", "collectives", 0);
    worker(3, "", "collectives", 0);
}

TEST(dist_ddp_gradients_and_weights_equal_one_process_float32) {
    NEED_MPI();
    /* 3 SGD steps: mlp and simple_cnn (no BatchNorm) within 1e-5; small buckets so that
     * several are reduced while backward runs */
    worker(2, "DIST_BUCKET_MB=0.05", "ddp mlp 16 3", 0);
    worker(2, "DIST_BUCKET_MB=0.05", "ddp simple_cnn 16 3", 0);
    worker(3, "", "ddp simple_cnn 12 2", 0);
    /* resnet18_cifar + SyncBatchNorm, one step: the gradients within 1e-4 in float32 */
    worker(2, "DIST_TOL=1e-4 DIST_BUCKET_MB=4", "ddp resnet18_cifar 8 1", 0);
}

TEST(dist_ddp_resnet18_cifar_sync_bn_equals_one_process_in_float64) {
    NEED_MPI();
    /* issue 13's 20 steps: in float32 two runs that only sum in another order drift apart
     * by up to 1e-2..1 (ReLU masks and BatchNorm's cancellations amplify rounding ~10x per
     * step; PyTorch against itself, contiguous vs channels-last, drifts as far:
     * bench/float32_drift.py), so the algorithm is checked in float64: 20 steps, the
     * weights and the last gradients within 1e-8 (measured 2e-11 and 2e-10) */
    worker(2, "DIST_DTYPE=float64 DIST_TOL=1e-8 DIST_BUCKET_MB=4", "ddp resnet18_cifar 8 20", 0);
}

TEST(dist_ddp_parameter_without_gradient_on_some_ranks) {
    NEED_MPI();
    worker(2, "", "unused", 0);
    worker(3, "", "unused", 0);
}

TEST(dist_ddp_no_sync_accumulates_then_averages) {
    NEED_MPI();
    worker(2, "", "no_sync", 0);
}

TEST(dist_collective_timeout_ends_with_a_message) {
    NEED_MPI();
    char log[512];
    log_path(log, sizeof log, "timeout");
    time_t t0 = time(NULL);
    int rc = mpirun(2, "", "build/dist_worker timeout", log);
    double secs = difftime(time(NULL), t0);
    /* rank 0 exits without MPI's finalize (its communication thread is stuck), so mpirun
     * ends the job with a failure, as a real job does */
    CHECK_MSG(rc != 0, "exit %d", rc);
    CHECK_MSG(secs < 30, "took %.0f s", secs);
    CHECK(log_has(log, "all_reduce #1 did not complete within 2 s"));
    CHECK(log_has(log, "rank 0 on "));
}

TEST(dist_mismatched_models_and_builds_fail_on_every_rank) {
    NEED_MPI();
    char log[512];
    log_path(log, sizeof log, "mismatch");
    int rc = mpirun(2, "", "build/dist_worker model_mismatch", log);
    if (rc != 0) show_log(log);
    CHECK_MSG(rc == 0, "exit %d", rc);
    CHECK(log_has(log, "rank 0: DDP (rank 0 on"));
    CHECK(log_has(log, "rank 1: DDP (rank 1 on") &&
          log_has(log, "rank 0 has \"features.0.weight float32 [32, 3, 3, 3]\", this rank has "
                       "\"conv1.weight float32 [64, 3, 3, 3]\""));
    CHECK(log_has(log, "(rank 1's differs from rank 0's; see its message)"));
    rc = mpirun(2, "", "build/dist_worker version_mismatch", log);
    CHECK_MSG(rc == 3, "version mismatch: exit %d, want 3", rc);
}

/* ------------------------------------------------------------------ ctorch train */
static double max_rel_diff(const char *a, const char *b, int *ok) {
    ct_safetensors *x = ct_safetensors_load(a), *y = ct_safetensors_load(b);
    double worst = 0;
    *ok = x && y && x->n == y->n;
    for (int i = 0; *ok && i < x->n; i++) {
        ct_tensor *t = x->tensors[i], *u = ct_safetensors_get(y, x->names[i]);
        if (!u || ct_numel(u) != ct_numel(t)) {
            *ok = 0;
            break;
        }
        if (ct_dtype_of(t) != CT_FLOAT32) continue;
        const float *p = ct_data(t), *q = ct_data(u);
        double num = 0, den = 0;
        for (int64_t k = 0; k < ct_numel(t); k++) {
            num += ((double)p[k] - q[k]) * ((double)p[k] - q[k]);
            den += (double)p[k] * p[k];
        }
        double r = den > 0 ? sqrt(num / den) : sqrt(num);
        if (r > worst) worst = r;
    }
    ct_safetensors_free(x);
    ct_safetensors_free(y);
    return worst;
}

/* 1 rank x batch 64 vs 2 ranks x batch 32, 20 SGD steps, the same data order. */
static void cli_equivalence(const char *model, const char *dataset, double tol) {
    const char *data = getenv("CTORCH_DATA");
    char common[1024], cmd[2048], log[512], d1[512], d2[512], f1[600], f2[600];
    snprintf(d1, sizeof d1, "%s/eq-%s-1", tmpdir(), model);
    snprintf(d2, sizeof d2, "%s/eq-%s-2", tmpdir(), model);
    snprintf(common, sizeof common, "--model %s --dataset %s --data-dir %s --train-limit 1280 "
             "--test-limit 200 --epochs 1 --max-steps 20 --no-shuffle --threads 1 --deterministic "
             "--no-checkpoints", model, dataset, data);
    log_path(log, sizeof log, "equivalence");
    snprintf(cmd, sizeof cmd, "%s train %s --batch-size 64 --run-dir %s", bin(), common, d1);
    int rc = run(cmd, log);
    if (rc) show_log(log);
    CHECK_MSG(rc == 0, "one process: exit %d", rc);
    snprintf(cmd, sizeof cmd, "%s train %s --batch-size 32 --run-dir %s", bin(), common, d2);
    rc = mpirun(2, "", cmd, log);
    if (rc) show_log(log);
    CHECK_MSG(rc == 0, "two ranks: exit %d", rc);
    CHECK(log_has(log, "data-parallel: 2 processes"));
    snprintf(f1, sizeof f1, "%s/model.safetensors", d1);
    snprintf(f2, sizeof f2, "%s/model.safetensors", d2);
    int ok;
    double r = max_rel_diff(f1, f2, &ok);
    CHECK_MSG(ok, "the weights files differ in their tensors (%s)", ct_last_error());
    CHECK_MSG(r <= tol, "%s: 2 ranks x 32 vs 1 x 64 after 20 steps: weights differ by %.3g > %g",
              model, r, tol);
    printf("  %s: 2 ranks x 32 vs 1 x 64, 20 steps: max relative weight difference %.3g\n", model, r);
}

TEST(dist_train_two_ranks_batch_32_equal_one_rank_batch_64) {
    NEED_MPI();
    if (!data_dir()) SKIP("CIFAR-10 not found (set CTORCH_DATA)");
    cli_equivalence("simple_cnn", "cifar10", 1e-5);
    cli_equivalence("mlp", "mnist", 1e-5);
}

static int read_file(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t k = fread(buf, 1, n - 1, f);
    buf[k] = 0;
    fclose(f);
    return 0;
}

TEST(dist_train_rank_0_writes_the_run_and_resumes_bitwise_or_resharded) {
    NEED_MPI();
    if (!data_dir()) SKIP("CIFAR-10 not found (set CTORCH_DATA)");
    const char *data = getenv("CTORCH_DATA");
    char common[1024], cmd[2048], log[512], full[512], part[512], buf[1 << 15];
    snprintf(full, sizeof full, "%s/dist-full", tmpdir());
    snprintf(part, sizeof part, "%s/dist-part", tmpdir());
    snprintf(common, sizeof common, "--model simple_cnn --dataset cifar10 --data-dir %s "
             "--train-limit 512 --test-limit 200 --batch-size 32 --threads 1 --deterministic "
             "--augment standard --seed 3", data);
    log_path(log, sizeof log, "dist_resume");
    /* uninterrupted: 2 epochs on 2 ranks */
    snprintf(cmd, sizeof cmd, "%s train %s --epochs 2 --run-dir %s", bin(), common, full);
    int rc = mpirun(2, "CTORCH_LAUNCH_COMMAND='test launch'", cmd, log);
    if (rc) show_log(log);
    CHECK_MSG(rc == 0, "exit %d", rc);
    /* only rank 0 printed the epochs */
    FILE *f = fopen(log, "r");
    int epochs = 0;
    while (f && fgets(buf, sizeof buf, f))
        if (strstr(buf, "epoch 1/2 train_loss")) epochs++;
    if (f) fclose(f);
    CHECK_MSG(epochs == 1, "the epoch line was printed %d times (rank 0 only: once)", epochs);
    snprintf(buf, sizeof buf, "%s/manifest.json", full);
    char man[1 << 15];
    CHECK_OK(read_file(buf, man, sizeof man));
    CHECK(strstr(man, "\"world_size\": 2") != NULL);
    CHECK(strstr(man, "test launch") != NULL);
    /* 1 epoch, then --resume to 2 epochs: bitwise the uninterrupted weights */
    snprintf(cmd, sizeof cmd, "%s train %s --epochs 1 --run-dir %s", bin(), common, part);
    CHECK_OK(mpirun(2, "", cmd, log));
    snprintf(cmd, sizeof cmd, "%s train --resume %s --epochs 2", bin(), part);
    rc = mpirun(2, "", cmd, log);
    if (rc) show_log(log);
    CHECK_MSG(rc == 0, "resume exit %d", rc);
    char a[600], b[600], sa[65], sb[65];
    snprintf(a, sizeof a, "%s/model.safetensors", full);
    snprintf(b, sizeof b, "%s/model.safetensors", part);
    CHECK_OK(ct_sha256_file(a, sa));
    CHECK_OK(ct_sha256_file(b, sb));
    CHECK_MSG(!strcmp(sa, sb), "resumed on the same world size: weights differ");
    /* resumed by one process (another world size): a warning, re-sharded, completes */
    snprintf(cmd, sizeof cmd, "%s train --resume %s --epochs 3", bin(), part);
    rc = run(cmd, log);
    if (rc) show_log(log);
    CHECK_MSG(rc == 0, "resume with one process: exit %d", rc);
    CHECK(log_has(log, "written by 2 processes, this job has 1"));
}

TEST(dist_train_without_the_plugin_says_how_to_fix) {
    NEED_MPI();
    if (!data_dir()) SKIP("CIFAR-10 not found (set CTORCH_DATA)");
    char cmd[1024], log[512];
    log_path(log, sizeof log, "noplugin");
    snprintf(cmd, sizeof cmd, "%s train --model mlp --dataset mnist --data-dir %s --epochs 1 "
             "--train-limit 64 --no-checkpoints", bin(), getenv("CTORCH_DATA"));
    int rc = mpirun(2, "CTORCH_MPI_PLUGIN=/nonexistent/libctorch_mpi.so", cmd, log);
    CHECK_MSG(rc != 0, "exit %d", rc);
    CHECK(log_has(log, "CTORCH_MPI_PLUGIN=/nonexistent/libctorch_mpi.so could not be loaded"));
    /* the CLI itself never links libmpi: one process needs no MPI at all */
    rc = run("ldd build/ctorch | grep -q libmpi", log);
    CHECK_MSG(rc != 0, "build/ctorch links libmpi");
}

/* ------------------------------------------------------------------ the sampler */
TEST(distributed_sampler_shards_like_pytorch) {
    ct_dataset *ds = calloc(1, sizeof *ds);
    ds->n = 10, ds->c = 1, ds->h = 1, ds->w = 1, ds->num_classes = 10;
    snprintf(ds->name, sizeof ds->name, "tiny");
    uint8_t img[10];
    int64_t lab[10];
    for (int i = 0; i < 10; i++) img[i] = (uint8_t)i, lab[i] = i;
    ds->images = img;
    ds->labels = lab;
    for (int shard = CT_SHARD_PAD; shard <= CT_SHARD_EXACT; shard++) {
        int seen[10] = {0}, total = 0, lens[3];
        for (int r = 0; r < 3; r++) {
            ct_dataloader_opts o = ct_dataloader_default_opts();
            o.batch_size = 2, o.num_workers = 0, o.num_replicas = 3, o.rank = r, o.shard = shard;
            o.seed = 5;
            ct_dataloader *dl = ct_dataloader_new(ds, &o);
            CHECK_NN(dl);
            if (!dl) return;
            ct_tensor *x, *y;
            lens[r] = 0;
            while (ct_dataloader_next(dl, &x, &y) == 1) {
                for (int64_t i = 0; i < ct_numel(y); i++) seen[((int64_t *)ct_data(y))[i]]++, total++;
                lens[r] += (int)ct_numel(y);
                ct_free(x), ct_free(y);
            }
            ct_dataloader_free(dl);
        }
        int distinct = 0;
        for (int i = 0; i < 10; i++) distinct += seen[i] > 0;
        if (shard == CT_SHARD_PAD) { /* 4 each, 2 records twice */
            CHECK(lens[0] == 4 && lens[1] == 4 && lens[2] == 4 && distinct == 10 && total == 12);
        } else if (shard == CT_SHARD_DROP) { /* 3 each, one record left out */
            CHECK(lens[0] == 3 && lens[1] == 3 && lens[2] == 3 && distinct == 9 && total == 9);
        } else { /* every record once: 4, 3, 3 */
            CHECK(lens[0] == 4 && lens[1] == 3 && lens[2] == 3 && distinct == 10 && total == 10);
        }
    }
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.num_replicas = 2, o.rank = 2;
    ct_clear_error();
    ct_dataloader *bad = ct_dataloader_new(ds, &o);
    CHECK(!bad && strstr(ct_last_error(), "rank must be in 0..num_replicas-1"));
    ct_dataloader_free(bad);
    free(ds);
}

TEST(dist_train_nan_loss_is_agreed_by_every_rank) {
    NEED_MPI();
    if (!data_dir()) SKIP("CIFAR-10 not found (set CTORCH_DATA)");
    char cmd[2048], log[512];
    log_path(log, sizeof log, "dist_nan");
    /* a huge learning rate: the loss becomes NaN; every rank stops at the same step (exit 1
     * naming it), or with --nan-policy skip every rank skips the same updates and finishes */
    const char *base = "train --model mlp --dataset mnist --train-limit 640 --test-limit 100 "
                       "--epochs 1 --batch-size 32 --threads 1 --lr 10000 --no-checkpoints";
    snprintf(cmd, sizeof cmd, "%s %s --data-dir %s --run-dir %s/dist-nan-stop", bin(), base,
             getenv("CTORCH_DATA"), tmpdir());
    int rc = mpirun(2, "", cmd, log);
    CHECK_MSG(rc != 0, "NaN with --nan-policy stop: exit %d", rc);
    CHECK(log_has(log, "the loss is NaN; stopping (--nan-policy stop)"));
    CHECK(!log_has(log, "did not complete within"));
    snprintf(cmd, sizeof cmd, "%s %s --data-dir %s --run-dir %s/dist-nan-skip --nan-policy skip", bin(),
             base, getenv("CTORCH_DATA"), tmpdir());
    rc = mpirun(2, "", cmd, log);
    if (rc) show_log(log);
    CHECK_MSG(rc == 0, "NaN with --nan-policy skip: exit %d", rc);
    CHECK(log_has(log, "nan_skipped"));
}

/* ------------------------------------------------------------------ bad input, one process */
TEST(dist_bad_options_and_arguments_fail_with_a_message) {
    char cmd[1024], log[512];
    log_path(log, sizeof log, "dist_bad");
    static const char *const bad[][2] = {
        {"--bucket-mb 0", "--bucket-mb"},      {"--bucket-mb lots", "--bucket-mb"},
        {"--dist-timeout 0", "--dist-timeout"}, {"--dist-timeout -5", "--dist-timeout"},
        {"--sync-bn=yes", "--sync-bn"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s train --model mlp --dataset mnist %s", bin(), bad[i][0]);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 2, "%s: exit %d, want 2", bad[i][0], rc);
        CHECK_MSG(log_has(log, bad[i][1]), "%s: the message does not name the option", bad[i][0]);
    }
    /* the C API without a process group */
    CHECK_ERR_INT(ct_dist_all_reduce_buf((double[]){1}, 1, CT_FLOAT64, CT_REDUCE_SUM), "before ct_dist_init");
    CHECK_ERR_INT(ct_dist_set_timeout(-1), "positive number of seconds");
    CHECK_ERR_PTR((ct_tensor *)ct_ddp_new(NULL, NULL), "NULL model");
    ct_module *m = ct_model_create_ex("mlp", 10, 1, 28, 28);
    ct_ddp *d = ct_ddp_new(m, NULL); /* one process: a plain wrapper */
    CHECK_NN(d);
    int32_t f[CT_DDP_MAX_FLAGS + 1] = {1};
    CHECK_ERR_INT(ct_ddp_set_flags(d, f, CT_DDP_MAX_FLAGS + 1), "at most 8 flags");
    CHECK_OK(ct_ddp_set_flags(d, f, 1));
    int32_t g = 0;
    CHECK_OK(ct_ddp_get_flags(d, &g, 1));
    CHECK(g == 1);
    ct_ddp_free(d);
    ct_module_free(m);
    CHECK(ct_nn_convert_sync_batchnorm(NULL) < 0);
    /* the ranks' thread count from the launcher's variables; garbage is ignored */
    snprintf(cmd, sizeof cmd, "CTORCH_NUM_THREADS=3 OMP_NUM_THREADS=5 %s --version", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "cpu: 3 threads"));
    snprintf(cmd, sizeof cmd, "env -u CTORCH_NUM_THREADS OMP_NUM_THREADS=5 %s --version", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "cpu: 5 threads"));
    snprintf(cmd, sizeof cmd, "CTORCH_NUM_THREADS=lots OMP_NUM_THREADS=-2 %s --version", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "cpu: ") && !log_has(log, "cpu: -2"));
}
