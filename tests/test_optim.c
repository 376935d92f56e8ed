/* Optimizers (SGD, Adam, AdamW) and lr schedules against torch.optim 1.13
 * (tests/fixtures/gen_nn_optim.py), plus their error paths. */
#include "test.h"
#include "ctorch_optim.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    ct_optim_kind kind;
    ct_optim_options o;
} optim_case;

/* Must mirror `configs` in gen_nn_optim.py. */
static int make_cases(optim_case *c) {
    int n = 0;
    ct_optim_options o;
    o = ct_optim_default_options(CT_OPTIM_SGD);
    o.lr = 0.1;
    c[n++] = (optim_case){"sgd_plain", CT_OPTIM_SGD, o};
    o.momentum = 0.9;
    c[n++] = (optim_case){"sgd_momentum", CT_OPTIM_SGD, o};
    o = ct_optim_default_options(CT_OPTIM_SGD);
    o.lr = 0.05;
    o.momentum = 0.9;
    o.nesterov = 1;
    o.weight_decay = 0.01;
    c[n++] = (optim_case){"sgd_nesterov_wd", CT_OPTIM_SGD, o};
    o = ct_optim_default_options(CT_OPTIM_SGD);
    o.lr = 0.1;
    o.momentum = 0.8;
    o.dampening = 0.3;
    o.weight_decay = 0.05;
    c[n++] = (optim_case){"sgd_dampening_wd", CT_OPTIM_SGD, o};
    o = ct_optim_default_options(CT_OPTIM_SGD);
    o.lr = 0.1;
    o.momentum = 0.9;
    o.maximize = 1;
    c[n++] = (optim_case){"sgd_maximize", CT_OPTIM_SGD, o};
    o = ct_optim_default_options(CT_OPTIM_ADAM);
    o.lr = 0.01;
    c[n++] = (optim_case){"adam", CT_OPTIM_ADAM, o};
    o.beta1 = 0.8;
    o.beta2 = 0.99;
    o.eps = 1e-6;
    o.weight_decay = 0.1;
    o.amsgrad = 1;
    c[n++] = (optim_case){"adam_wd_amsgrad", CT_OPTIM_ADAM, o};
    o = ct_optim_default_options(CT_OPTIM_ADAMW);
    o.lr = 0.01;
    o.weight_decay = 0.1;
    c[n++] = (optim_case){"adamw", CT_OPTIM_ADAMW, o};
    o = ct_optim_default_options(CT_OPTIM_ADAMW);
    o.lr = 0.02;
    o.weight_decay = 0.01;
    o.amsgrad = 1;
    c[n++] = (optim_case){"adamw_amsgrad", CT_OPTIM_ADAMW, o};
    return n;
}

/* Runs every case for 5 steps; noncontig_grad forces the generic (tensor-op) path. */
static void run_cases(ct_dtype dt, int noncontig_grad, double tol) {
    ct_fixture *fx = ct_fixture_load("optim_updates");
    if (!fx) return;
    optim_case cases[16];
    int nc = make_cases(cases);
    ct_tensor *p0 = ct_fixture_get(fx, "p0");
    for (int c = 0; c < nc; c++) {
        ct_tensor *p = ct_to_dtype(p0, dt);
        ct_tensor *pp = ct_clone(p); /* own storage, a leaf */
        ct_free(p);
        p = pp;
        CHECK_OK(ct_set_requires_grad(p, 1));
        ct_optimizer *o = ct_optim_new(cases[c].kind, &p, 1, &cases[c].o);
        CHECK_NN(o);
        if (!o) {
            ct_free(p);
            continue;
        }
        for (int k = 1; k <= 5; k++) {
            char key[64], what[96];
            snprintf(key, sizeof key, "g%d", k);
            ct_tensor *g0 = ct_fixture_get(fx, key);
            ct_tensor *g1 = ct_to_dtype(g0, dt);
            ct_tensor *g = noncontig_grad ? ct_test_noncontig(g1) : ct_retain(g1);
            if (noncontig_grad) CHECK(!ct_is_contiguous(g));
            CHECK_OK(ct_set_grad(p, g));
            CHECK_OK(ct_optim_step(o));
            snprintf(key, sizeof key, "%s.p%d%s", cases[c].name, k, dt == CT_FLOAT64 ? ".f64" : "");
            ct_tensor *want = ct_fixture_get(fx, key);
            snprintf(what, sizeof what, "%s step %d (%s%s)", cases[c].name, k, ct_dtype_name(dt),
                     noncontig_grad ? ", generic path" : "");
            CHECK_CLOSE(p, want, tol, what);
            ct_free(want);
            ct_free(g);
            ct_free(g1);
            ct_free(g0);
        }
        CHECK(ct_optim_steps(o) == 5);
        ct_optim_free(o);
        ct_free(p);
    }
    ct_free(p0);
    ct_fixture_free(fx);
}

TEST(optim_updates_vs_torch_float32) { run_cases(CT_FLOAT32, 0, 1e-6); }
TEST(optim_updates_vs_torch_float64) { run_cases(CT_FLOAT64, 0, 1e-12); }
TEST(optim_updates_vs_torch_generic_path) { run_cases(CT_FLOAT32, 1, 1e-6); }

TEST(optim_sgd_state_and_skips) {
    int64_t sh[2] = {2, 3};
    ct_tensor *a = ct_ones(sh, 2, CT_FLOAT32), *b = ct_ones(sh, 2, CT_FLOAT32);
    ct_set_requires_grad(a, 1);
    ct_set_requires_grad(b, 1);
    ct_tensor *ps[2] = {a, b};
    ct_optimizer *o = ct_optim_sgd(ps, 2, 0.5, 0.9, 0, 0, 0);
    CHECK_NN(o);
    ct_tensor *g = ct_full(sh, 2, 2.0, CT_FLOAT32);
    ct_set_grad(a, g); /* b has no gradient: skipped, as in PyTorch */
    CHECK(ct_is_grad_enabled());
    CHECK_OK(ct_optim_step(o));
    CHECK(ct_is_grad_enabled()); /* restored */
    CHECK(fabs(((float *)ct_data(a))[0] - 0.0f) < 1e-7); /* 1 - 0.5*2 */
    CHECK(((float *)ct_data(b))[0] == 1.0f);
    CHECK(ct_optim_state(o, 1, "momentum_buffer") == NULL);
    ct_tensor *buf = ct_optim_state(o, 0, "momentum_buffer");
    CHECK(buf && fabs(((float *)ct_data(buf))[0] - 2.0f) < 1e-7);
    CHECK_OK(ct_optim_step(o)); /* buf = 0.9*2 + 2 = 3.8; a = 0 - 0.5*3.8 */
    CHECK(ct_optim_state(o, 0, "momentum_buffer") == buf); /* no reallocation */
    CHECK(fabs(((float *)ct_data(a))[0] + 1.9f) < 1e-6);
    /* lr / momentum accessors */
    CHECK(ct_optim_get_lr(o) == 0.5);
    CHECK_OK(ct_optim_set_lr(o, 0.25));
    CHECK(ct_optim_get_lr(o) == 0.25);
    CHECK_OK(ct_optim_set_momentum(o, 0.8));
    CHECK(ct_optim_get_momentum(o) == 0.8);
    CHECK_ERR_INT(ct_optim_set_lr(o, -1), "learning rate");
    /* zero_grad sets .grad to NULL */
    ct_optim_zero_grad(o);
    CHECK(ct_grad(a) == NULL);
    CHECK(ct_optim_num_params(o) == 2);
    CHECK(strcmp(ct_optim_name(ct_optim_kind_of(o)), "sgd") == 0);
    ct_optim_free(o);
    ct_free(g);
    ct_free(a);
    ct_free(b);
}

TEST(optim_adam_beta1_as_momentum) {
    int64_t n = 4;
    ct_tensor *p = ct_zeros(&n, 1, CT_FLOAT64);
    ct_set_requires_grad(p, 1);
    ct_optimizer *o = ct_optim_adam(&p, 1, 1e-3, 0.9, 0.999, 1e-8, 0);
    CHECK_NN(o);
    CHECK(ct_optim_get_momentum(o) == 0.9);
    CHECK_OK(ct_optim_set_momentum(o, 0.85));
    CHECK(ct_optim_options_of(o)->beta1 == 0.85);
    CHECK_ERR_INT(ct_optim_set_momentum(o, 1.0), "beta1");
    ct_optim_free(o);
    ct_free(p);
}

TEST(optim_errors) {
    int64_t n = 3;
    ct_tensor *p = ct_zeros(&n, 1, CT_FLOAT32);
    ct_tensor *nog = ct_zeros(&n, 1, CT_FLOAT32);
    ct_tensor *ip = ct_zeros(&n, 1, CT_INT64);
    ct_set_requires_grad(p, 1);
    ct_clear_error();
    CHECK(ct_optim_sgd(&p, 1, -0.1, 0, 0, 0, 0) == NULL);
    CHECK(strstr(ct_last_error(), "SGD") && strstr(ct_last_error(), "learning rate"));
    CHECK(ct_optim_sgd(&p, 1, 0.1, 0, 0, 0, 1) == NULL);
    CHECK(strstr(ct_last_error(), "nesterov"));
    CHECK(ct_optim_sgd(&p, 1, 0.1, -0.5, 0, 0, 0) == NULL);
    CHECK(strstr(ct_last_error(), "momentum"));
    CHECK(ct_optim_sgd(&p, 1, 0.1, 0.9, 0, -1, 0) == NULL);
    CHECK(strstr(ct_last_error(), "weight_decay"));
    CHECK(ct_optim_adam(&p, 1, 0.1, 1.0, 0.999, 1e-8, 0) == NULL);
    CHECK(strstr(ct_last_error(), "Adam") && strstr(ct_last_error(), "beta1"));
    CHECK(ct_optim_adamw(&p, 1, 0.1, 0.9, -0.1, 1e-8, 0) == NULL);
    CHECK(strstr(ct_last_error(), "AdamW") && strstr(ct_last_error(), "beta2"));
    CHECK(ct_optim_adam(&p, 1, 0.1, 0.9, 0.999, -1, 0) == NULL);
    CHECK(strstr(ct_last_error(), "epsilon"));
    CHECK(ct_optim_sgd(&nog, 1, 0.1, 0, 0, 0, 0) == NULL);
    CHECK(strstr(ct_last_error(), "requires grad"));
    CHECK(ct_optim_sgd(&ip, 1, 0.1, 0, 0, 0, 0) == NULL);
    CHECK(strstr(ct_last_error(), "int64"));
    ct_tensor *dup[2] = {p, p};
    CHECK(ct_optim_sgd(dup, 2, 0.1, 0, 0, 0, 0) == NULL);
    CHECK(strstr(ct_last_error(), "twice"));
    ct_tensor *nul = NULL;
    CHECK(ct_optim_sgd(&nul, 1, 0.1, 0, 0, 0, 0) == NULL);
    CHECK(strstr(ct_last_error(), "NULL"));
    /* a gradient of the wrong dtype (set_grad already refuses a wrong shape) */
    ct_optimizer *o = ct_optim_sgd(&p, 1, 0.1, 0, 0, 0, 0);
    CHECK_NN(o);
    ct_tensor *g = ct_zeros(&n, 1, CT_FLOAT64);
    CHECK_OK(ct_set_grad(p, g));
    CHECK_ERR_INT(ct_optim_step(o), "gradient");
    ct_zero_grad(p);
    ct_optim_free(o);
    CHECK_ERR_INT(ct_optim_step(NULL), "NULL");
    /* empty parameter list is fine */
    o = ct_optim_adam(NULL, 0, 1e-3, 0.9, 0.999, 1e-8, 0);
    CHECK_NN(o);
    CHECK_OK(ct_optim_step(o));
    ct_optim_free(o);
    ct_free(g);
    ct_free(p);
    ct_free(nog);
    ct_free(ip);
}

/* --------------------------------------------------------------- schedules */
static void check_seq(ct_fixture *fx, const char *key, const ct_schedule *s, int momentum) {
    ct_tensor *want = ct_fixture_get(fx, key);
    if (!want) return;
    int64_t n = ct_numel(want);
    ct_tensor *got = ct_empty(&n, 1, CT_FLOAT64);
    double *g = ct_data(got);
    for (int64_t i = 0; i < n; i++)
        g[i] = momentum ? ct_schedule_momentum(s, i) : ct_schedule_lr(s, i);
    CHECK_CLOSE(got, want, 1e-12, key);
    /* and element-wise (small values at the end of a cosine must match too) */
    const double *w = ct_data(want);
    for (int64_t i = 0; i < n; i++)
        CHECK_MSG(fabs(g[i] - w[i]) <= 1e-12 + 1e-9 * fabs(w[i]), "%s[%lld]: got %.17g want %.17g",
                  key, (long long)i, g[i], w[i]);
    ct_free(got);
    ct_free(want);
}

TEST(optim_schedules_vs_torch) {
    ct_fixture *fx = ct_fixture_load("optim_schedules");
    if (!fx) return;
    ct_schedule s = ct_schedule_default(CT_SCHED_STEP, 0.1);
    s.step_size = 4;
    s.gamma = 0.5;
    check_seq(fx, "step", &s, 0);
    s = ct_schedule_default(CT_SCHED_COSINE, 0.1);
    s.T_max = 10;
    s.eta_min = 0.001;
    check_seq(fx, "cosine", &s, 0);
    s = ct_schedule_default(CT_SCHED_LINEAR, 0.1);
    s.start_factor = 0.1;
    s.end_factor = 1.0;
    s.total_iters = 6;
    check_seq(fx, "linear", &s, 0);
    s = ct_schedule_default(CT_SCHED_ONECYCLE, 0.1);
    s.total_steps = 30;
    check_seq(fx, "onecycle", &s, 0);
    check_seq(fx, "onecycle_momentum", &s, 1);
    s = ct_schedule_default(CT_SCHED_ONECYCLE, 0.05);
    s.total_steps = 30;
    s.pct_start = 0.25;
    s.div_factor = 10;
    s.final_div_factor = 100;
    check_seq(fx, "onecycle2", &s, 0);
    s = ct_schedule_default(CT_SCHED_COSINE, 0.1);
    s.T_max = 20;
    s.warmup_steps = 5;
    s.warmup_start_factor = 0.25;
    check_seq(fx, "warmup_cosine", &s, 0);
    ct_fixture_free(fx);
}

TEST(optim_schedule_functions) {
    CHECK(ct_lr_step(0.1, 0, 3, 0.1) == 0.1);
    CHECK(fabs(ct_lr_step(0.1, 7, 3, 0.1) - 0.001) < 1e-15);
    CHECK(fabs(ct_lr_cosine(0.1, 10, 10, 0.0)) < 1e-15);
    CHECK(fabs(ct_lr_linear(1.0, 100, 0.5, 1.0, 4) - 1.0) < 1e-15);
    CHECK(fabs(ct_lr_onecycle(1.0, 0, 100, 0.3, 25, 1e4) - 0.04) < 1e-15);
    CHECK(fabs(ct_lr_onecycle(1.0, 99, 100, 0.3, 25, 1e4) - 0.04 / 1e4) < 1e-15);
    ct_schedule s = ct_schedule_default(CT_SCHED_NONE, 0.3);
    CHECK(ct_schedule_lr(&s, 1000) == 0.3);
    CHECK(isnan(ct_schedule_momentum(&s, 3)));
    ct_schedule_kind k;
    CHECK_OK(ct_schedule_parse("onecycle", &k));
    CHECK(k == CT_SCHED_ONECYCLE);
    CHECK_ERR_INT(ct_schedule_parse("exponential", &k), "unknown schedule");
}

/* The optimizer and a schedule together: the lr used at each step follows the schedule. */
TEST(optim_sgd_with_schedule) {
    int64_t n = 1;
    ct_tensor *p = ct_zeros(&n, 1, CT_FLOAT64);
    ct_set_requires_grad(p, 1);
    ct_optimizer *o = ct_optim_sgd(&p, 1, 0.1, 0, 0, 0, 0);
    ct_schedule s = ct_schedule_default(CT_SCHED_STEP, 0.1);
    s.step_size = 2;
    s.gamma = 0.5;
    ct_tensor *g = ct_ones(&n, 1, CT_FLOAT64);
    double expect = 0;
    for (int i = 0; i < 6; i++) {
        CHECK_OK(ct_optim_set_lr(o, ct_schedule_lr(&s, i)));
        ct_set_grad(p, g);
        CHECK_OK(ct_optim_step(o));
        expect -= ct_schedule_lr(&s, i);
    }
    CHECK(fabs(((double *)ct_data(p))[0] - expect) < 1e-15);
    ct_optim_free(o);
    ct_free(g);
    ct_free(p);
}

/* The options structs: zero fields are PyTorch's defaults; what is set is taken. */
TEST(optim_options_structs_default_to_pytorch) {
    int64_t n = 3;
    ct_tensor *p = ct_zeros(&n, 1, CT_FLOAT32);
    ct_set_requires_grad(p, 1);
    ct_optimizer *s = ct_optim_sgd_opt(&p, 1, &(ct_sgd_opts){.lr = 0.05, .momentum = 0.9});
    const ct_optim_options *o = ct_optim_options_of(s);
    CHECK(o && o->lr == 0.05 && o->momentum == 0.9 && o->dampening == 0 && !o->nesterov &&
          o->weight_decay == 0);
    ct_optim_free(s);
    s = ct_optim_sgd_opt(&p, 1, NULL);
    CHECK(ct_optim_get_lr(s) == 1e-3);
    ct_optim_free(s);
    ct_optimizer *a = ct_optim_adamw_opt(&p, 1, NULL);
    o = ct_optim_options_of(a);
    CHECK(o && o->lr == 1e-3 && o->beta1 == 0.9 && o->beta2 == 0.999 && o->eps == 1e-8 &&
          o->weight_decay == 1e-2 && ct_optim_kind_of(a) == CT_OPTIM_ADAMW);
    ct_optim_free(a);
    a = ct_optim_adamw_opt(&p, 1, &(ct_adam_opts){.lr = 3e-4, .betas = {0.0, 0.95},
                                                   .no_weight_decay = 1, .amsgrad = 1});
    o = ct_optim_options_of(a);
    CHECK(o && o->lr == 3e-4 && o->beta1 == 0 && o->beta2 == 0.95 && o->weight_decay == 0 &&
          o->amsgrad);
    ct_optim_free(a);
    a = ct_optim_adam_opt(&p, 1, &(ct_adam_opts){.weight_decay = 0.1});
    CHECK(ct_optim_options_of(a)->weight_decay == 0.1 && ct_optim_kind_of(a) == CT_OPTIM_ADAM);
    ct_optim_free(a);
    struct {
        ct_optimizer *o;
        const char *needle;
    } bad[3] = {{ct_optim_sgd_opt(&p, 1, &(ct_sgd_opts){.lr = -1}), "learning rate"},
                {ct_optim_adam_opt(&p, 1, &(ct_adam_opts){.betas = {1.5, 0.9}}), "beta1"},
                {ct_optim_sgd_opt(&p, 1, &(ct_sgd_opts){.nesterov = 1}), "nesterov"}};
    for (int i = 0; i < 3; i++) {
        CHECK_MSG(bad[i].o == NULL, "bad options %d accepted", i);
        ct_optim_free(bad[i].o);
    }
    CHECK_ERR_INT(ct_optim_sgd_opt(&p, 1, &(ct_sgd_opts){.nesterov = 1}) ? 0 : -1, "nesterov");
    ct_free(p);
}

/* Parameter groups: each group steps at its own lr (SGD and Adam), set_lr sets them all,
 * groups never share a kernel call's lr; bad groups are refused. */
TEST(optim_param_groups_have_their_own_lr) {
    int64_t s[1] = {4};
    ct_tensor *a = ct_ones(s, 1, CT_FLOAT32), *b = ct_ones(s, 1, CT_FLOAT32);
    ct_set_requires_grad(a, 1);
    ct_set_requires_grad(b, 1);
    ct_tensor *pa[1] = {a}, *pb[1] = {b};
    ct_param_group g[2] = {{pa, 1, 0.5}, {pb, 1, -1}};
    ct_optim_options o = ct_optim_default_options(CT_OPTIM_SGD);
    o.lr = 0.1;
    ct_optimizer *opt = ct_optim_new_groups(CT_OPTIM_SGD, g, 2, &o);
    CHECK_NN(opt);
    if (!opt) return;
    CHECK(ct_optim_num_groups(opt) == 2 && ct_optim_param_group(opt, 1) == 1);
    CHECK(ct_optim_get_group_lr(opt, 0) == 0.5 && ct_optim_get_group_lr(opt, 1) == 0.1);
    CHECK(ct_optim_get_lr(opt) == 0.5);
    for (int step = 0; step < 2; step++) {
        ct_tensor *ga = ct_full(s, 1, 2.0, CT_FLOAT32), *gb = ct_full(s, 1, 2.0, CT_FLOAT32);
        CHECK_OK(ct_set_grad(a, ga));
        CHECK_OK(ct_set_grad(b, gb));
        ct_free(ga), ct_free(gb);
        if (step == 1) CHECK_OK(ct_optim_set_group_lr(opt, 1, 0.25));
        CHECK_OK(ct_optim_step(opt));
    }
    /* a: 1 - 0.5*2 - 0.5*2 = -1; b: 1 - 0.1*2 - 0.25*2 = 0.3 */
    CHECK(fabs(((float *)ct_data(a))[3] - -1.0) < 1e-6);
    CHECK(fabs(((float *)ct_data(b))[0] - 0.3) < 1e-6);
    CHECK_OK(ct_optim_set_lr(opt, 0.01));
    CHECK(ct_optim_get_group_lr(opt, 1) == 0.01 && ct_optim_get_group_lr(opt, 0) == 0.01);
    CHECK_ERR_INT(ct_optim_set_group_lr(opt, 2, 0.1), "no parameter group 2");
    ct_optim_free(opt);
    ct_param_group dup[2] = {{pa, 1, 0.5}, {pa, 1, 0.1}};
    CHECK_ERR_PTR((ct_tensor *)ct_optim_new_groups(CT_OPTIM_SGD, dup, 2, &o), "appears twice");
    ct_param_group bad[1] = {{pa, 1, NAN}};
    CHECK_ERR_PTR((ct_tensor *)ct_optim_new_groups(CT_OPTIM_ADAM, bad, 1, NULL), "group 0");
    /* Adam: the same step size ratio as the lrs (Adam's first step is lr * sign(g)) */
    ct_param_group ga2[2] = {{pa, 1, 1e-2}, {pb, 1, 1e-3}};
    ct_optimizer *adam = ct_optim_new_groups(CT_OPTIM_ADAM, ga2, 2, NULL);
    CHECK_NN(adam);
    float a0 = ((float *)ct_data(a))[0], b0 = ((float *)ct_data(b))[0];
    ct_tensor *g1 = ct_full(s, 1, 3.0, CT_FLOAT32);
    ct_set_grad(a, g1), ct_set_grad(b, g1);
    ct_free(g1);
    CHECK_OK(ct_optim_step(adam));
    CHECK(fabs((a0 - ((float *)ct_data(a))[0]) - 1e-2) < 1e-6);
    CHECK(fabs((b0 - ((float *)ct_data(b))[0]) - 1e-3) < 1e-6);
    ct_optim_free(adam);
    ct_free(a), ct_free(b);
}
