/* One rank of the process-group tests (tests/test_dist.c starts it with mpirun -np N).
 * Usage: dist_worker SCENARIO [args]; exit 0 when the scenario's checks pass on this
 * rank, else 1 with the failed check on stderr. Scenarios:
 *   collectives        all_reduce (sum, avg, max; float32/64, int64, bfloat16), broadcast,
 *                      all_gather, barrier, async handles, errors on bad arguments
 *   ddp MODEL BATCH [STEPS]  STEPS SGD steps (momentum) of DDP on BATCH/world images per
 *                      rank (SyncBatchNorm for models with BatchNorm) against one process
 *                      on all BATCH images: the last gradients and the weights within the
 *                      relative tolerance $DIST_TOL (1e-5)
 *   unused             a parameter that gets a gradient on rank 0 only, and one that gets
 *                      none on any rank: backward completes, gradients as expected
 *   no_sync            two backwards with sync off then one on = the accumulated average
 *   timeout            rank 1 never joins an all_reduce: rank 0's fails within the timeout
 *   model_mismatch     rank 1 builds another model: ct_ddp_new fails on every rank
 *   version_mismatch   rank 1 passes another build id: ct_dist_init fails on every rank */
#include "ctorch.h"
#include "ctorch_dist.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

ct_module *ct_model_create_ex(const char *name, int classes, int c, int h, int w);

static int g_rank, g_world, g_failed;

#define EXPECT(cond, ...)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "rank %d: line %d: check failed: %s: ", g_rank, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (last error: %s)\n", ct_last_error());                       \
            g_failed = 1;                                                                  \
        }                                                                                  \
    } while (0)

static int init(const char *build_id) {
    ct_dist_opts o = {.timeout_seconds = 0, .build_id = build_id};
    if (ct_dist_init(&o) != 0) {
        fprintf(stderr, "rank ?: ct_dist_init: %s\n", ct_last_error());
        return -1;
    }
    g_rank = ct_dist_rank();
    g_world = ct_dist_world_size();
    return 0;
}

/* ------------------------------------------------------------------ collectives */
static void collectives(void) {
    int64_t n4[1] = {4};
    ct_tensor *t = ct_full(n4, 1, g_rank + 1, CT_FLOAT32);
    EXPECT(ct_dist_all_reduce(t, CT_REDUCE_SUM) == 0, "sum");
    double want = g_world * (g_world + 1) / 2.0;
    EXPECT(((float *)ct_data(t))[3] == want, "sum = %g, want %g", ((float *)ct_data(t))[3], want);
    ct_free(t);

    t = ct_full(n4, 1, g_rank + 1, CT_FLOAT64);
    EXPECT(ct_dist_all_reduce(t, CT_REDUCE_AVG) == 0, "avg");
    EXPECT(fabs(((double *)ct_data(t))[0] - (g_world + 1) / 2.0) < 1e-12, "avg = %g",
           ((double *)ct_data(t))[0]);
    ct_free(t);

    t = ct_full(n4, 1, 10 * g_rank, CT_INT64);
    EXPECT(ct_dist_all_reduce(t, CT_REDUCE_MAX) == 0, "max");
    EXPECT(((int64_t *)ct_data(t))[1] == 10 * (g_world - 1), "max = %lld",
           (long long)((int64_t *)ct_data(t))[1]);
    ct_free(t);

    t = ct_full(n4, 1, 0.5 * (g_rank + 1), CT_BFLOAT16);
    EXPECT(ct_dist_all_reduce(t, CT_REDUCE_SUM) == 0, "bf16 sum");
    EXPECT(ct_item(ct_sum(t, NULL, 0, 0)) == 4 * 0.5 * want, "bf16 sum = %g",
           ct_item(ct_sum(t, NULL, 0, 0)));
    ct_free(t);

    /* async: several in flight, waited in another order */
    ct_tensor *a = ct_full(n4, 1, 1, CT_FLOAT32), *b = ct_full(n4, 1, g_rank, CT_FLOAT32);
    ct_dist_work *wa = ct_dist_all_reduce_async(a, CT_REDUCE_SUM);
    ct_dist_work *wb = ct_dist_broadcast_async(b, g_world - 1);
    EXPECT(wa && wb, "async handles");
    EXPECT(ct_dist_wait(wb) == 0 && ct_dist_wait(wa) == 0, "waits");
    EXPECT(((float *)ct_data(a))[0] == g_world, "async sum");
    EXPECT(((float *)ct_data(b))[2] == g_world - 1, "broadcast from the last rank");
    ct_free(a);
    ct_free(b);

    int64_t one[1] = {2}, all[1] = {2 * g_world};
    ct_tensor *in = ct_full(one, 1, g_rank, CT_INT32), *out = ct_zeros(all, 1, CT_INT32);
    EXPECT(ct_dist_all_gather(out, in) == 0, "all_gather");
    for (int r = 0; r < g_world; r++)
        EXPECT(((int32_t *)ct_data(out))[2 * r + 1] == r, "all_gather slot %d", r);
    EXPECT(ct_dist_all_gather(in, in) != 0 && strstr(ct_last_error(), "world_size"),
           "all_gather with a wrong output size must fail");
    ct_free(in);
    ct_free(out);
    EXPECT(ct_dist_barrier() == 0, "barrier");

    ct_tensor *u8 = ct_zeros(n4, 1, CT_UINT8);
    EXPECT(ct_dist_all_reduce(u8, CT_REDUCE_SUM) != 0 && strstr(ct_last_error(), "uint8"),
           "uint8 all_reduce must fail naming the dtype");
    ct_tensor *nc = ct_zeros((int64_t[]){4, 4}, 2, CT_FLOAT32), *tr = ct_transpose(nc, 0, 1);
    EXPECT(ct_dist_all_reduce(tr, CT_REDUCE_SUM) != 0 && strstr(ct_last_error(), "contiguous"),
           "non-contiguous all_reduce must fail");
    EXPECT(ct_dist_broadcast(u8, g_world) != 0 && strstr(ct_last_error(), "ranks 0.."),
           "broadcast from a rank that does not exist must fail");
    ct_free(u8);
    ct_free(tr);
    ct_free(nc);
}

/* ------------------------------------------------------------------ DDP equivalence */
/* $DIST_DTYPE=float64: the models and data in float64, where rounding (amplified by
 * ReLU masks and BatchNorm's cancellations over steps) no longer hides the algorithm. */
static int use_f64(void) { return getenv("DIST_DTYPE") && !strcmp(getenv("DIST_DTYPE"), "float64"); }

static ct_tensor *batch_images(int64_t n, int64_t first, int64_t count) {
    ct_manual_seed(1234);
    int64_t sh[4] = {n, 3, 32, 32};
    ct_tensor *all = ct_randn(sh, 4, CT_FLOAT32);
    ct_tensor *part = ct_narrow(all, 0, first, count), *c = ct_contiguous(part);
    ct_free(part);
    ct_free(all);
    if (use_f64()) {
        ct_tensor *d = ct_to_dtype(c, CT_FLOAT64);
        ct_free(c);
        c = d;
    }
    return c;
}

static ct_tensor *batch_labels(int64_t first, int64_t count) {
    int64_t sh[1] = {count};
    ct_tensor *y = ct_empty(sh, 1, CT_INT64);
    for (int64_t i = 0; i < count; i++) ((int64_t *)ct_data(y))[i] = (first + i) * 7 % 10;
    return y;
}


static ct_module *build(const char *name) {
    ct_manual_seed(7 + (getenv("DIST_SEED_BY_RANK") ? g_rank : 0));
    ct_module *m = ct_model_create_ex(name, 10, 3, 32, 32);
    if (m && use_f64()) ct_module_to(m, ct_cpu(), CT_FLOAT64);
    return m;
}

/* grads of one step: model on x, mean cross-entropy */
static int step(ct_module *m, ct_ddp *d, const ct_tensor *x, const ct_tensor *y) {
    ct_module_train(m, 1);
    ct_tensor *logits = d ? ct_ddp_forward(d, x) : ct_module_forward(m, x);
    ct_tensor *loss = logits ? ct_cross_entropy(logits, y, CT_REDUCTION_MEAN, 0.0, -100) : NULL;
    int rc = loss ? ct_backward(loss, NULL, 0) : -1;
    ct_free(logits);
    ct_free(loss);
    return rc;
}

/* SGD with momentum for `steps` steps (step k on images k*batch ...): the DDP model on
 * its share against the reference on the whole batch; then the gradients of the last
 * step and the weights are compared. */
static double at(const ct_tensor *t, int64_t k) {
    return ct_dtype_of(t) == CT_FLOAT64 ? ((const double *)ct_data(t))[k] : ((const float *)ct_data(t))[k];
}

static void ddp_equivalence(const char *model, int64_t batch, int steps) {
    double tol = getenv("DIST_TOL") ? atof(getenv("DIST_TOL")) : 1e-5;
    int64_t per = batch / g_world;
    /* reference: one process, the whole batch, plain BatchNorm */
    ct_module *ref = build(model);
    /* this rank's share, through DDP (+ SyncBatchNorm) */
    ct_module *m = build(model);
    ct_nn_convert_sync_batchnorm(m);
    ct_ddp_opts o = ct_ddp_default_opts();
    if (getenv("DIST_BUCKET_MB")) o.bucket_cap_mb = atof(getenv("DIST_BUCKET_MB"));
    ct_ddp *d = ct_ddp_new(m, &o);
    EXPECT(d != NULL, "ct_ddp_new");
    if (!d) return;
    int np, np2;
    ct_tensor **pr = ct_module_parameters(ref, &np), **pm = ct_module_parameters(m, &np2);
    ct_optim_options oo = ct_optim_default_options(CT_OPTIM_SGD);
    oo.lr = 0.05;
    oo.momentum = 0.9;
    ct_optimizer *optr = ct_optim_new(CT_OPTIM_SGD, pr, np, &oo), *optm = ct_optim_new(CT_OPTIM_SGD, pm, np2, &oo);
    for (int k = 0; k < steps; k++) {
        if (k) {
            ct_optim_step(optr), ct_optim_step(optm);
            ct_optim_zero_grad(optr), ct_optim_zero_grad(optm);
        }
        ct_tensor *x = batch_images(batch * steps, k * batch, batch), *y = batch_labels(k * batch, batch);
        EXPECT(step(ref, NULL, x, y) == 0, "reference step");
        ct_free(x), ct_free(y);
        x = batch_images(batch * steps, k * batch + g_rank * per, per);
        y = batch_labels(k * batch + g_rank * per, per);
        EXPECT(step(m, d, x, y) == 0, "DDP step");
        ct_free(x), ct_free(y);
    }
    double wworst = 0;
    for (int i = 0; i < np && i < np2; i++) {
        double num = 0, den = 0;
        for (int64_t k = 0; k < ct_numel(pr[i]); k++) {
            double a = at(pr[i], k), b = at(pm[i], k);
            num += (a - b) * (a - b);
            den += a * a;
        }
        wworst = fmax(wworst, den > 0 ? sqrt(num / den) : sqrt(num));
    }
    double worst = 0;
    int worst_i = 0;
    for (int i = 0; i < np && i < np2; i++) {
        ct_tensor *ga = ct_grad(pr[i]), *gb = ct_grad(pm[i]);
        EXPECT(ga && gb, "parameter %d has a gradient", i);
        if (!ga || !gb) continue;
        double num = 0, den = 0;
        for (int64_t k = 0; k < ct_numel(ga); k++) {
            double a = at(ga, k), b = at(gb, k);
            num += (a - b) * (a - b);
            den += a * a;
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (rel > worst) worst = rel, worst_i = i;
    }
    printf("rank %d: %s, %d buckets, %d steps: worst relative difference of the last gradients "
           "%.3g (parameter %d), of the weights %.3g\n", g_rank, model, ct_ddp_num_buckets(d),
           steps, worst, worst_i, wworst);
    EXPECT(worst <= tol, "gradients differ by %.3g > %g", worst, tol);
    EXPECT(wworst <= tol, "weights differ by %.3g > %g", wworst, tol);
    free(pr);
    free(pm);
    ct_optim_free(optr);
    ct_optim_free(optm);
    ct_ddp_free(d);
    ct_module_free(m);
    ct_module_free(ref);
}

/* ------------------------------------------------------------------ unused parameters */
typedef struct {
    int rank;
} branchy;

static ct_tensor *branchy_forward(ct_module *m, const ct_tensor *x) {
    /* a: always; b: only on rank 0 (a data-dependent branch); c: never */
    ct_tensor *h = ct_matmul(x, m->params[0]);
    if (ct_dist_rank() == 0) {
        ct_tensor *h2 = ct_matmul(h, m->params[1]);
        ct_free(h);
        h = h2;
    }
    return h;
}

static void unused(void) {
    ct_module *m = ct_module_new("Branchy", branchy_forward, NULL, NULL);
    int64_t sh[2] = {4, 4};
    ct_tensor *a = ct_ones(sh, 2, CT_FLOAT32), *b = ct_ones(sh, 2, CT_FLOAT32), *c = ct_ones(sh, 2, CT_FLOAT32);
    ct_module_add_parameter(m, "a", a);
    ct_module_add_parameter(m, "b", b);
    ct_module_add_parameter(m, "c", c);
    ct_free(a), ct_free(b), ct_free(c);
    ct_ddp *d = ct_ddp_new(m, NULL);
    EXPECT(d != NULL, "ct_ddp_new");
    if (!d) return;
    for (int it = 0; it < 3; it++) { /* several steps: no hang, the same each time */
        ct_module_zero_grad(m);
        ct_tensor *x = ct_full((int64_t[]){2, 4}, 2, 1.0, CT_FLOAT32);
        ct_tensor *out = ct_ddp_forward(d, x), *s = out ? ct_sum(out, NULL, 0, 0) : NULL;
        EXPECT(s && ct_backward(s, NULL, 0) == 0, "backward with an unused parameter");
        ct_free(x), ct_free(out), ct_free(s);
        ct_tensor *ga = ct_grad(m->params[0]), *gb = ct_grad(m->params[1]), *gc = ct_grad(m->params[2]);
        EXPECT(ga && gb, "a and b have gradients on every rank");
        EXPECT(!gc, "c, used by no rank, has no gradient");
        if (!ga || !gb) break;
        /* rank 0: d(sum(x a b))/da = x^T 1 b^T = 2*4 = 8 per entry; other ranks: x^T 1 = 2.
         * Averaged: (8 + 2 (world-1)) / world. b: rank 0 has (x a)^T 1 = 2*4 = 8, others 0. */
        double wa = (8.0 + 2.0 * (g_world - 1)) / g_world, wb = 8.0 / g_world;
        EXPECT(fabs(((float *)ct_data(ga))[5] - wa) < 1e-5, "grad a = %g, want %g",
               ((float *)ct_data(ga))[5], wa);
        EXPECT(fabs(((float *)ct_data(gb))[5] - wb) < 1e-5, "grad b = %g, want %g",
               ((float *)ct_data(gb))[5], wb);
    }
    ct_ddp_free(d);
    ct_module_free(m);
}

/* ------------------------------------------------------------------ no_sync */
static void no_sync(void) {
    ct_module *m = build("mlp"), *ref = build("mlp");
    ct_ddp *d = ct_ddp_new(m, NULL);
    EXPECT(d != NULL, "ct_ddp_new");
    if (!d) return;
    /* three micro-batches per rank: two without sync, the last with */
    for (int k = 0; k < 3; k++) {
        ct_ddp_set_require_sync(d, k == 2);
        ct_tensor *x = batch_images(24, (3 * g_rank + k) * 2, 2), *y = batch_labels((3 * g_rank + k) * 2, 2);
        EXPECT(step(m, d, x, y) == 0, "micro-batch %d", k);
        ct_free(x), ct_free(y);
    }
    /* the reference: every rank's micro-batches in one process, summed, / world */
    for (int r = 0; r < g_world; r++)
        for (int k = 0; k < 3; k++) {
            ct_tensor *x = batch_images(24, (3 * r + k) * 2, 2), *y = batch_labels((3 * r + k) * 2, 2);
            step(ref, NULL, x, y);
            ct_free(x), ct_free(y);
        }
    int np;
    ct_tensor **pr = ct_module_parameters(ref, &np), **pm = ct_module_parameters(m, &np);
    for (int i = 0; i < np; i++) {
        const float *a = ct_data(ct_grad(pr[i])), *b = ct_data(ct_grad(pm[i]));
        double num = 0, den = 0;
        for (int64_t k = 0; k < ct_numel(pr[i]); k++) {
            double want = (double)a[k] / g_world;
            num += (want - b[k]) * (want - b[k]);
            den += want * want;
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        EXPECT(rel < 1e-5, "parameter %d: accumulated gradient differs by %g", i, rel);
    }
    free(pr);
    free(pm);
    ct_ddp_free(d);
    ct_module_free(m);
    ct_module_free(ref);
}

/* ------------------------------------------------------------------ failures */
static void timeout(void) {
    ct_dist_set_timeout(2);
    int64_t n[1] = {1000};
    ct_tensor *t = ct_ones(n, 1, CT_FLOAT32);
    if (g_rank == 1) { /* never joins; exits after rank 0 has given up */
        sleep(6);
        _exit(0);
    }
    EXPECT(ct_dist_all_reduce(t, CT_REDUCE_SUM) != 0, "the all_reduce must time out");
    fprintf(stderr, "rank %d: %s\n", g_rank, ct_last_error());
    EXPECT(strstr(ct_last_error(), "did not complete within 2 s") != NULL, "message names the timeout");
    EXPECT(ct_dist_barrier() != 0 && strstr(ct_last_error(), "broken"), "the group is broken afterwards");
    fflush(stderr);
    _exit(g_failed ? 1 : 0); /* the comm thread is stuck in MPI: no finalize */
}

static void model_mismatch(void) {
    ct_module *m = build(g_rank == 1 ? "resnet18_cifar" : "simple_cnn");
    ct_ddp *d = ct_ddp_new(m, NULL);
    EXPECT(d == NULL, "ct_ddp_new must fail");
    fprintf(stderr, "rank %d: %s\n", g_rank, ct_last_error());
    EXPECT(strstr(ct_last_error(), "different models") != NULL, "message says so");
    ct_module_free(m);
}

int main(int argc, char **argv) {
    const char *sc = argc > 1 ? argv[1] : "";
    ct_set_num_threads(1);
    if (!strcmp(sc, "version_mismatch")) {
        int world = 1, rank = 0;
        ct_dist_env(&world, &rank, NULL, NULL);
        int rc = init(rank == 1 ? "commit other" : "commit this");
        if (rc == 0) {
            fprintf(stderr, "rank %d: ct_dist_init should have failed\n", rank);
            return 1;
        }
        int ok = strstr(ct_last_error(), "different builds") && strstr(ct_last_error(), "commit other");
        return ok ? 3 : 1; /* 3: failed as expected (no finalize after a failed init) */
    }
    if (init("commit this") != 0) return 1;
    if (!strcmp(sc, "collectives")) collectives();
    else if (!strcmp(sc, "ddp") && argc > 3) ddp_equivalence(argv[2], atoll(argv[3]), argc > 4 ? atoi(argv[4]) : 1);
    else if (!strcmp(sc, "unused")) unused();
    else if (!strcmp(sc, "no_sync")) no_sync();
    else if (!strcmp(sc, "timeout")) timeout();
    else if (!strcmp(sc, "model_mismatch")) model_mismatch();
    else {
        fprintf(stderr, "dist_worker: unknown scenario '%s'\n", sc);
        return 2;
    }
    if (g_failed) {
        fflush(stderr);
        return 1;
    }
    ct_dist_finalize();
    return 0;
}
