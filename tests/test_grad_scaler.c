/* GradScaler against torch.amp.GradScaler (tests/fixtures/gen_grad_scaler.py: SGD through a
 * forced-overflow sequence, on the CPU and, where it runs, on CUDA), its errors, the
 * disabled scaler, state save/load, unscaled gradients, and the backend suite's case for
 * the amp_unscale kernel (every backend against the CPU). */
#include "backend_test.h"
#include "ctorch_optim.h"

#include <math.h>
#include <string.h>

/* Must mirror OVERFLOW and UNSCALE_FIRST in gen_grad_scaler.py. */
#define STEPS 12
static const char *overflow_at(int k) {
    return k == 2 ? "loss" : k == 6 ? "nan" : k == 7 ? "inf" : NULL;
}
static int unscale_first(int k) { return k == 4 || k == 6; }

/* t[i] = v, on any device (through a host copy). */
static void poke(ct_tensor *t, int64_t i, float v) {
    float buf[64];
    size_t nb = sizeof(float) * (size_t)ct_numel(t);
    CHECK(ct_numel(t) <= 64 && ct_dtype_of(t) == CT_FLOAT32);
    CHECK_OK(ct_copy_to_buffer(t, buf, nb));
    buf[i] = v;
    CHECK_OK(ct_copy_from_buffer(t, buf, nb));
}

static void check_on_cpu(const ct_tensor *got, ct_fixture *fx, const char *key, double tol) {
    ct_tensor *h = ct_to_device(got, ct_cpu()), *want = ct_fixture_get(fx, key);
    CHECK_CLOSE(h, want, tol, key);
    ct_free(h);
    ct_free(want);
}

static ct_tensor *fixture_on(ct_fixture *fx, const char *key, ct_device dev) {
    ct_tensor *h = ct_fixture_get(fx, key), *d = h ? ct_to_device(h, dev) : NULL;
    ct_free(h);
    return d;
}

/* One step of the sequence: forward, scale, backward, injection, (unscale), step, update. */
static void replay_step(ct_fixture *fx, ct_grad_scaler *sc, ct_optimizer *opt, ct_tensor *W,
                        ct_tensor *b, ct_device dev, int k, int *skipped) {
    char key[32];
    ct_scope *s = ct_scope_push();
    snprintf(key, sizeof key, "x.%d", k);
    ct_tensor *x = ct_keep(fixture_on(fx, key, dev));
    snprintf(key, sizeof key, "t.%d", k);
    ct_tensor *t = ct_keep(fixture_on(fx, key, dev));
    ct_optim_zero_grad(opt);
    ct_tensor *loss = ct_mse_loss(ct_linear(x, W, b), t, CT_REDUCTION_MEAN);
    const char *ov = overflow_at(k);
    if (ov && !strcmp(ov, "loss")) loss = ct_mul_scalar(loss, 1e38);
    ct_tensor *scaled = ct_grad_scaler_scale(sc, loss);
    CHECK_NN(scaled);
    if (k == 0) check_on_cpu(scaled, fx, "scaled_loss0", 1e-6);
    CHECK_OK(ct_backward(scaled, NULL, 0));
    if (ov && !strcmp(ov, "nan")) poke(ct_grad(W), 1 * 4 + 2, NAN);
    if (ov && !strcmp(ov, "inf")) poke(ct_grad(b), 0, -INFINITY);
    if (unscale_first(k)) CHECK_OK(ct_grad_scaler_unscale(sc, opt));
    if (k == 4) {
        check_on_cpu(ct_grad(W), fx, "gW.4", 1e-5);
        check_on_cpu(ct_grad(b), fx, "gb.4", 1e-5);
    }
    int rc = ct_grad_scaler_step(sc, opt);
    CHECK_MSG(rc == 0 || rc == 1, "step %d: %s", k, ct_last_error());
    *skipped = rc == 0;
    CHECK_OK(ct_grad_scaler_update(sc));
    ct_free(x);
    ct_free(t);
    ct_scope_pop(s);
}

static void replay(ct_device dev) {
    ct_fixture *fx = ct_fixture_load("grad_scaler");
    if (!fx) return;
    ct_tensor *W = fixture_on(fx, "W0", dev), *b = fixture_on(fx, "b0", dev);
    CHECK_OK(ct_set_requires_grad(W, 1));
    CHECK_OK(ct_set_requires_grad(b, 1));
    ct_tensor *ps[2] = {W, b};
    ct_optimizer *opt = ct_optim_sgd_opt(ps, 2, &(ct_sgd_opts){.lr = 0.05, .momentum = 0.9});
    ct_grad_scaler *sc = ct_grad_scaler_new(&(ct_grad_scaler_opts){
        .init_scale = 1024, .growth_factor = 2, .backoff_factor = 0.25, .growth_interval = 3});
    CHECK_NN(opt);
    CHECK_NN(sc);
    ct_tensor *scales = ct_fixture_get(fx, "scale"), *skips = ct_fixture_get(fx, "skipped");
    ct_tensor *trackers = ct_fixture_get(fx, "tracker");
    int nskipped = 0;
    for (int k = 0; k < STEPS && opt && sc; k++) {
        int skipped = -1;
        replay_step(fx, sc, opt, W, b, dev, k, &skipped);
        ct_grad_scaler_state st;
        CHECK_OK(ct_grad_scaler_state_dict(sc, &st));
        const double want = ((const double *)ct_data(scales))[k];
        CHECK_MSG(ct_grad_scaler_get_scale(sc) == want && st.scale == want,
                  "step %d: scale %g, PyTorch %g", k, ct_grad_scaler_get_scale(sc), want);
        CHECK_MSG(skipped == ((const int64_t *)ct_data(skips))[k], "step %d: skipped %d", k,
                  skipped);
        CHECK_MSG(st.growth_tracker == ((const int64_t *)ct_data(trackers))[k],
                  "step %d: growth tracker %lld", k, (long long)st.growth_tracker);
        nskipped += skipped == 1;
        char key[32];
        snprintf(key, sizeof key, "W.%d", k);
        check_on_cpu(W, fx, key, 1e-5);
        snprintf(key, sizeof key, "b.%d", k);
        check_on_cpu(b, fx, key, 1e-5);
    }
    CHECK(nskipped == 3);
    CHECK(ct_grad_scaler_skipped_steps(sc) == 3 && ct_grad_scaler_steps_taken(sc) == STEPS - 3);
    CHECK(ct_optim_steps(opt) == STEPS - 3); /* a skipped step never reaches the optimizer */
    ct_tensor *state = ct_fixture_get(fx, "state");
    ct_grad_scaler_state st;
    CHECK_OK(ct_grad_scaler_state_dict(sc, &st));
    const double *w = ct_data(state);
    CHECK(st.scale == w[0] && st.growth_factor == w[1] && st.backoff_factor == w[2] &&
          st.growth_interval == (int64_t)w[3] && st.growth_tracker == (int64_t)w[4]);
    ct_free(state), ct_free(scales), ct_free(skips), ct_free(trackers);
    ct_grad_scaler_free(sc);
    ct_optim_free(opt);
    ct_free(W), ct_free(b);
    ct_fixture_free(fx);
}

TEST(grad_scaler_vs_torch) { replay(ct_cpu()); }

/* The same sequence with the parameters on CUDA (and on the emulator: make test). */
TEST(backends_cuda_grad_scaler_vs_torch) {
    char why[1024];
    if (!backend_cuda_ready(why, sizeof why)) SKIP(why);
    replay((ct_device){CT_CUDA, 0});
}

/* ----------------------------------------------------------------- helpers */
typedef struct {
    ct_tensor *w;
    ct_optimizer *opt;
} tiny;

/* One float32 parameter [2, 3] of ones, SGD lr 0.1; its gradient set to g * value. */
static tiny tiny_new(void) {
    int64_t sh[2] = {2, 3};
    tiny t;
    t.w = ct_ones(sh, 2, CT_FLOAT32);
    ct_set_requires_grad(t.w, 1);
    t.opt = ct_optim_sgd_opt(&t.w, 1, &(ct_sgd_opts){.lr = 0.1});
    return t;
}
static void tiny_grad(tiny *t, double value) {
    int64_t sh[2] = {2, 3};
    ct_tensor *g = ct_full(sh, 2, value, CT_FLOAT32);
    CHECK_OK(ct_set_grad(t->w, g));
    ct_free(g);
}
static void tiny_free(tiny *t) {
    ct_optim_free(t->opt);
    ct_free(t->w);
}
static float first(const ct_tensor *t) { return ((const float *)ct_data(t))[0]; }

/* ------------------------------------------------------------------ errors */
TEST(grad_scaler_call_order_errors) {
    tiny t = tiny_new();
    ct_grad_scaler *sc = ct_grad_scaler_new(NULL);
    CHECK(ct_grad_scaler_get_scale(sc) == 65536.0 && ct_grad_scaler_is_enabled(sc));
    CHECK_ERR_INT(ct_grad_scaler_update(sc), "no inf checks were recorded before update");
    tiny_grad(&t, 65536.0 * 2);
    CHECK_OK(ct_grad_scaler_unscale(sc, t.opt));
    CHECK(first(ct_grad(t.w)) == 2.0f);
    CHECK_ERR_INT(ct_grad_scaler_unscale(sc, t.opt), "already called for this optimizer");
    CHECK(first(ct_grad(t.w)) == 2.0f); /* the refused call changed nothing */
    CHECK(ct_grad_scaler_step(sc, t.opt) == 1);
    CHECK(fabsf(first(t.w) - 0.8f) < 1e-7f);
    CHECK_ERR_INT(ct_grad_scaler_step(sc, t.opt), "step: already called");
    CHECK_ERR_INT(ct_grad_scaler_unscale(sc, t.opt), "after ct_grad_scaler_step");
    CHECK_OK(ct_grad_scaler_update(sc));
    CHECK_ERR_INT(ct_grad_scaler_update(sc), "no inf checks");
    /* an optimizer without gradients has nothing to check (PyTorch asserts) */
    ct_optim_zero_grad(t.opt);
    CHECK_ERR_INT(ct_grad_scaler_step(sc, t.opt), "none of its parameters has a gradient");
    /* a new iteration works again after update */
    CHECK_OK(ct_grad_scaler_update_to(sc, 8.0));
    tiny_grad(&t, 8.0);
    CHECK(ct_grad_scaler_step(sc, t.opt) == 1);
    CHECK(fabsf(first(t.w) - 0.7f) < 1e-6f);
    CHECK_OK(ct_grad_scaler_update(sc));
    CHECK_ERR_INT(ct_grad_scaler_update_to(sc, -1), "positive float32");
    CHECK_ERR_INT(ct_grad_scaler_update_to(sc, 1e39), "positive float32");
    ct_grad_scaler_free(sc);
    tiny_free(&t);
}

TEST(grad_scaler_null_and_bad_arguments) {
    tiny t = tiny_new();
    ct_grad_scaler *sc = ct_grad_scaler_new(NULL);
    int64_t n = 3;
    ct_tensor *loss = ct_ones(&n, 1, CT_FLOAT32);
    ct_grad_scaler_state st;
    CHECK_ERR_PTR(ct_grad_scaler_scale(NULL, loss), "NULL scaler");
    CHECK_ERR_PTR(ct_grad_scaler_scale(sc, NULL), "the loss");
    CHECK_ERR_INT(ct_grad_scaler_unscale(NULL, t.opt), "NULL scaler");
    CHECK_ERR_INT(ct_grad_scaler_unscale(sc, NULL), "NULL optimizer");
    CHECK_ERR_INT(ct_grad_scaler_step(NULL, t.opt), "NULL scaler");
    CHECK_ERR_INT(ct_grad_scaler_step(sc, NULL), "NULL optimizer");
    CHECK_ERR_INT(ct_grad_scaler_update(NULL), "NULL scaler");
    CHECK_ERR_INT(ct_grad_scaler_update_to(NULL, 2.0), "NULL scaler");
    CHECK_ERR_INT(ct_grad_scaler_state_dict(NULL, &st), "NULL scaler");
    CHECK_ERR_INT(ct_grad_scaler_state_dict(sc, NULL), "NULL output");
    CHECK_ERR_INT(ct_grad_scaler_load_state_dict(NULL, &st), "NULL scaler");
    CHECK_ERR_INT(ct_grad_scaler_load_state_dict(sc, NULL), "NULL state");
    CHECK(ct_grad_scaler_get_scale(NULL) == 1.0 && !ct_grad_scaler_is_enabled(NULL));
    CHECK(ct_grad_scaler_steps_taken(NULL) == 0 && ct_grad_scaler_skipped_steps(NULL) == 0);
    ct_grad_scaler_free(NULL);
    /* options PyTorch refuses, and those that would make the scale meaningless */
    struct {
        ct_grad_scaler_opts o;
        const char *needle;
    } bad[] = {{{.growth_factor = 1.0}, "growth factor must be > 1.0"},
               {{.backoff_factor = 1.5}, "backoff factor must be in (0, 1)"},
               {{.backoff_factor = -0.5}, "backoff factor"},
               {{.init_scale = -1}, "positive float32"},
               {{.init_scale = 1e300}, "positive float32"},
               {{.growth_interval = -3}, "growth interval must be >= 1"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ct_clear_error();
        ct_grad_scaler *b = ct_grad_scaler_new(&bad[i].o);
        CHECK_MSG(b == NULL && strstr(ct_last_error(), bad[i].needle),
                  "options %zu: %s (want \"%s\")", i, ct_last_error(), bad[i].needle);
        ct_grad_scaler_free(b);
    }
    /* a float16 gradient is refused, as PyTorch's "Attempting to unscale FP16 gradients" */
    int64_t sh[2] = {2, 3};
    ct_tensor *h = ct_ones(sh, 2, CT_FLOAT32), *h16 = ct_to_dtype(h, CT_FLOAT16);
    CHECK_OK(ct_set_grad(t.w, h16));
    CHECK_ERR_INT(ct_grad_scaler_unscale(sc, t.opt), "float16 gradient");
    ct_free(h), ct_free(h16), ct_free(loss);
    ct_grad_scaler_free(sc);
    tiny_free(&t);
}

/* --------------------------------------------------------------- disabled */
TEST(grad_scaler_disabled_only_steps) {
    tiny t = tiny_new();
    ct_grad_scaler *sc = ct_grad_scaler_new(&(ct_grad_scaler_opts){.disabled = 1});
    CHECK_NN(sc);
    CHECK(!ct_grad_scaler_is_enabled(sc) && ct_grad_scaler_get_scale(sc) == 1.0);
    int64_t n = 2;
    ct_tensor *loss = ct_full(&n, 1, 3.0, CT_FLOAT32);
    ct_tensor *s = ct_grad_scaler_scale(sc, loss);
    CHECK(s == loss); /* the loss itself, one more reference */
    ct_free(s);
    tiny_grad(&t, INFINITY); /* no checks at all: PyTorch steps too */
    CHECK_OK(ct_grad_scaler_unscale(sc, t.opt));
    CHECK(isinf(first(ct_grad(t.w))));
    tiny_grad(&t, 2.0);
    CHECK(ct_grad_scaler_step(sc, t.opt) == 1);
    CHECK(fabsf(first(t.w) - 0.8f) < 1e-7f);
    CHECK(ct_grad_scaler_step(sc, t.opt) == 1); /* no stage tracking either */
    CHECK_OK(ct_grad_scaler_update(sc));
    CHECK(ct_grad_scaler_steps_taken(sc) == 2 && ct_grad_scaler_skipped_steps(sc) == 0);
    ct_grad_scaler_state st;
    CHECK_OK(ct_grad_scaler_state_dict(sc, &st));
    CHECK(st.scale == 0 && st.growth_interval == 0 && st.growth_tracker == 0);
    st.scale = 5;
    CHECK_OK(ct_grad_scaler_load_state_dict(sc, &st)); /* a no-op, as in PyTorch */
    CHECK(ct_grad_scaler_get_scale(sc) == 1.0);
    /* a disabled scaler's options are not validated (PyTorch does not either) */
    ct_grad_scaler *d2 =
        ct_grad_scaler_new(&(ct_grad_scaler_opts){.disabled = 1, .growth_factor = 0.5});
    CHECK_NN(d2);
    ct_grad_scaler_free(d2);
    ct_free(loss);
    ct_grad_scaler_free(sc);
    tiny_free(&t);
}

/* ------------------------------------------------------------------ state */
/* Steps with gradient value g_k (scaled by the scaler's scale) on both scalers. */
static void run_steps(ct_grad_scaler *sc, tiny *t, const double *g, int n) {
    for (int k = 0; k < n; k++) {
        tiny_grad(t, g[k] * ct_grad_scaler_get_scale(sc));
        CHECK(ct_grad_scaler_step(sc, t->opt) >= 0);
        CHECK_OK(ct_grad_scaler_update(sc));
    }
}

TEST(grad_scaler_state_round_trip) {
    const ct_grad_scaler_opts o = {.init_scale = 256, .growth_factor = 4, .backoff_factor = 0.125,
                                   .growth_interval = 5};
    ct_grad_scaler *a = ct_grad_scaler_new(&o), *b = ct_grad_scaler_new(NULL);
    tiny ta = tiny_new(), tb = tiny_new();
    const double g1[] = {0.1, INFINITY, 0.2, 0.3}, g2[] = {0.5, NAN, 0.1, 0.1, 0.1, 0.1, 0.2};
    run_steps(a, &ta, g1, 4); /* scale 256 -> 32, tracker 2 */
    ct_grad_scaler_state st, st2;
    CHECK_OK(ct_grad_scaler_state_dict(a, &st));
    CHECK(st.scale == 32 && st.growth_factor == 4 && st.backoff_factor == 0.125 &&
          st.growth_interval == 5 && st.growth_tracker == 2);
    CHECK_OK(ct_grad_scaler_load_state_dict(b, &st));
    CHECK_OK(ct_grad_scaler_state_dict(b, &st2));
    CHECK(memcmp(&st, &st2, sizeof st) == 0);
    int prev = ct_set_grad_enabled(0);
    CHECK_OK(ct_copy_(tb.w, ta.w));
    ct_set_grad_enabled(prev);
    run_steps(a, &ta, g2, 7); /* both continue alike: backoff, then growth after 5 */
    run_steps(b, &tb, g2, 7);
    CHECK_OK(ct_grad_scaler_state_dict(a, &st));
    CHECK_OK(ct_grad_scaler_state_dict(b, &st2));
    CHECK(memcmp(&st, &st2, sizeof st) == 0 && st.scale == 16 && st.growth_tracker == 0);
    CHECK(first(ta.w) == first(tb.w));
    /* an empty state (a disabled scaler's) and invalid ones are refused, b unchanged */
    ct_grad_scaler_state empty = {0}, bad = st;
    CHECK_ERR_INT(ct_grad_scaler_load_state_dict(b, &empty), "state is empty");
    bad.growth_tracker = 5;
    CHECK_ERR_INT(ct_grad_scaler_load_state_dict(b, &bad), "_growth_tracker 5");
    bad = st;
    bad.growth_factor = 0.9;
    CHECK_ERR_INT(ct_grad_scaler_load_state_dict(b, &bad), "load_state_dict: the growth factor");
    CHECK(ct_grad_scaler_get_scale(b) == 16);
    ct_grad_scaler_free(a);
    ct_grad_scaler_free(b);
    tiny_free(&ta);
    tiny_free(&tb);
}

/* ----------------------------------------------------------- unscaled grads */
/* Gradients after unscale are those of the unscaled loss (ctorch has no clip_grad_norm;
 * this is the point where one would clip), also for a non-contiguous gradient and several
 * parameters of two dtypes. */
TEST(grad_scaler_unscale_gives_the_true_gradients) {
    int64_t sh[2] = {4, 3}, bs = 4;
    ct_tensor *w = ct_test_randn(sh, 2, CT_FLOAT32), *b = ct_test_randn(&bs, 1, CT_FLOAT64);
    ct_tensor *x = ct_test_randn(sh, 2, CT_FLOAT32);
    ct_set_requires_grad(w, 1);
    ct_set_requires_grad(b, 1);
    ct_tensor *ps[2] = {w, b};
    ct_optimizer *opt = ct_optim_sgd_opt(ps, 2, NULL);
    ct_grad_scaler *sc = ct_grad_scaler_new(&(ct_grad_scaler_opts){.init_scale = 3.0});
    ct_scope *s = ct_scope_push();
    /* two losses, each scaled: sum(w * x) (dw = x) and sum(b * b) (db = 2b) */
    CHECK_OK(ct_backward(ct_grad_scaler_scale(sc, ct_sum(ct_mul(w, x), NULL, 0, 0)), NULL, 0));
    CHECK_OK(ct_backward(ct_grad_scaler_scale(sc, ct_sum(ct_mul(b, b), NULL, 0, 0)), NULL, 0));
    ct_tensor *nc = ct_test_noncontig(ct_grad(w)); /* unscaled through a contiguous copy */
    CHECK(!ct_is_contiguous(nc));
    CHECK_OK(ct_set_grad(w, nc));
    CHECK_OK(ct_grad_scaler_unscale(sc, opt));
    CHECK(ct_grad(w) == nc); /* in place */
    float inv = (float)(1.0 / 3.0);
    ct_tensor *want_w = ct_mul_scalar(ct_mul_scalar(x, 3.0), inv);
    ct_tensor *want_b = ct_mul_scalar(ct_mul_scalar(b, 6.0), (double)inv);
    CHECK_CLOSE(ct_grad(w), want_w, 0, "unscaled dw (float32, exact)");
    CHECK_CLOSE(ct_grad(b), want_b, 1e-15, "unscaled db (float64)");
    CHECK(ct_grad_scaler_step(sc, opt) == 1);
    ct_scope_pop(s);
    ct_grad_scaler_free(sc);
    ct_optim_free(opt);
    ct_free(w), ct_free(b), ct_free(x);
}

/* Each optimizer's step is skipped only for its own inf/NaN; update backs off when any
 * optimizer of the iteration saw one (PyTorch sums every optimizer's found_inf). */
TEST(grad_scaler_two_optimizers) {
    tiny a = tiny_new(), b = tiny_new();
    ct_grad_scaler *sc = ct_grad_scaler_new(&(ct_grad_scaler_opts){.init_scale = 4});
    tiny_grad(&a, NAN);
    tiny_grad(&b, 4.0);
    CHECK(ct_grad_scaler_step(sc, a.opt) == 0);
    CHECK(ct_grad_scaler_step(sc, b.opt) == 1);
    CHECK(first(a.w) == 1.0f && fabsf(first(b.w) - 0.9f) < 1e-7f);
    CHECK_OK(ct_grad_scaler_update(sc));
    CHECK(ct_grad_scaler_get_scale(sc) == 2.0);
    CHECK(ct_grad_scaler_skipped_steps(sc) == 1 && ct_grad_scaler_steps_taken(sc) == 1);
    ct_grad_scaler_free(sc);
    tiny_free(&a);
    tiny_free(&b);
}

/* Growth stops short of float32 overflow (the scale is kept when scale * growth is inf). */
TEST(grad_scaler_growth_stays_finite) {
    tiny t = tiny_new();
    ct_grad_scaler *sc = ct_grad_scaler_new(&(ct_grad_scaler_opts){
        .init_scale = 0x1p127, .growth_interval = 1});
    tiny_grad(&t, 0);
    CHECK(ct_grad_scaler_step(sc, t.opt) == 1);
    CHECK_OK(ct_grad_scaler_update(sc));
    CHECK(ct_grad_scaler_get_scale(sc) == 0x1p127);
    ct_grad_scaler_state st;
    CHECK_OK(ct_grad_scaler_state_dict(sc, &st));
    CHECK(st.growth_tracker == 0);
    ct_grad_scaler_free(sc);
    tiny_free(&t);
}

/* ------------------------------------------------- ct_amp_unscale_ (the op) */
TEST(grad_scaler_amp_unscale_op) {
    int64_t n = 5;
    ct_tensor *f = ct_zeros(NULL, 0, CT_FLOAT32);
    ct_tensor *g32 = ct_full(&n, 1, 8.0, CT_FLOAT32), *g16 = ct_to_dtype(g32, CT_BFLOAT16);
    ct_tensor *gs[2] = {g32, g16};
    CHECK_OK(ct_amp_unscale_(gs, 2, f, 0.25));
    CHECK(ct_item(f) == 0);
    ct_tensor *back = ct_to_dtype(g16, CT_FLOAT32);
    CHECK(first(g32) == 2.0f && first(back) == 2.0f);
    ct_free(back);
    ((float *)ct_data(g32))[3] = INFINITY;
    CHECK_OK(ct_amp_unscale_(gs, 2, f, 1.0));
    CHECK(ct_item(f) == 1 && first(g32) == 2.0f);
    CHECK_OK(ct_amp_unscale_(NULL, 0, f, 1.0));
    ct_tensor *gi = ct_zeros(&n, 1, CT_INT64), *f64 = ct_zeros(NULL, 0, CT_FLOAT64);
    CHECK_ERR_INT(ct_amp_unscale_(&gi, 1, f, 0.5), "gradient 0 has dtype int64");
    CHECK_ERR_INT(ct_amp_unscale_(gs, 1, f64, 0.5), "found_inf must be a 1-element float32");
    CHECK_ERR_INT(ct_amp_unscale_(gs, 1, NULL, 0.5), "found_inf");
    CHECK_ERR_INT(ct_amp_unscale_(NULL, 2, f, 0.5), "invalid gradient list");
    ct_tensor *withnull[2] = {g32, NULL};
    CHECK_ERR_INT(ct_amp_unscale_(withnull, 2, f, 0.5), "gradient 1");
    ct_free(f), ct_free(g32), ct_free(g16), ct_free(gi), ct_free(f64);
}

/* ------------------------------------------------------------- backend case */
/* Element-wise equality of two tensors' values (NaN equal to NaN), through float64. */
static int same_values(const ct_tensor *a, const ct_tensor *b) {
    ct_tensor *ha = ct_to_device(a, ct_cpu()), *hb = ct_to_device(b, ct_cpu());
    ct_tensor *da = ha ? ct_to_dtype(ha, CT_FLOAT64) : NULL;
    ct_tensor *db = hb ? ct_to_dtype(hb, CT_FLOAT64) : NULL;
    int same = da && db && ct_numel(da) == ct_numel(db);
    for (int64_t i = 0; same && i < ct_numel(da); i++) {
        double x = ((const double *)ct_data(da))[i], y = ((const double *)ct_data(db))[i];
        same = x == y || (isnan(x) && isnan(y));
    }
    ct_free(ha), ct_free(hb), ct_free(da), ct_free(db);
    return same;
}

static void case_amp_unscale(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64, CT_FLOAT16, CT_BFLOAT16};
    const int64_t sizes[3] = {37, 0, 65536 + 100}; /* the last spans two CUDA chunks */
    const double invs[2] = {1.0 / 1024, 1.0};
    for (int di = 0; di < 4; di++)
        for (int bad = 0; bad < 3; bad++) /* none, an inf, a NaN in the big tensor */
            for (int ii = 0; ii < 2; ii++) {
                char what[128];
                snprintf(what, sizeof what, "amp_unscale %s %s inv %g",
                         ct_dtype_name(dts[di]), bad == 0 ? "finite" : bad == 1 ? "inf" : "nan",
                         invs[ii]);
                tp g[3];
                for (int t = 0; t < 3; t++) {
                    ct_tensor *r = rnd(&sizes[t], 1, CT_FLOAT32, 0);
                    ct_tensor *big = ct_mul_scalar(r, 1000.0);
                    if (bad && t == 2) /* in the second chunk */
                        ((float *)ct_data(big))[65536 + 70] = bad == 1 ? -INFINITY : NAN;
                    g[t] = tp_from(ct_to_dtype(big, dts[di]), dev);
                    ct_free(r), ct_free(big);
                }
                /* found_inf starts at 1 in one case: the kernel never resets it */
                tp f = tp_from(ct_full(NULL, 0, ii == 1 && bad == 0 && di == 0, CT_FLOAT32), dev);
                ct_tensor *gc[3] = {g[0].c, g[1].c, g[2].c}, *gd[3] = {g[0].d, g[1].d, g[2].d};
                KCALL(what, cpuk()->amp_unscale(gc, 3, f.c, invs[ii]),
                      k->amp_unscale(gd, 3, f.d, invs[ii]));
                for (int t = 0; t < 3; t++)
                    CHECK_MSG(same_values(g[t].c, g[t].d), "%s on %s: tensor %d differs", what,
                              bname, t);
                CHECK_MSG(same_values(f.c, f.d), "%s on %s: found_inf differs", what, bname);
                CHECK_MSG((ct_item(f.c) != 0) == (bad != 0 || (ii == 1 && di == 0)),
                          "%s: found_inf %g on the CPU", what, ct_item(f.c));
                for (int t = 0; t < 3; t++) tp_free(g[t]);
                tp_free(f);
            }
}
BACKEND_CASE(amp_unscale, case_amp_unscale)
