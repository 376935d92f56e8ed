/* The backend conformance suite's registry and helpers (tests/backend_test.h). */
#include "backend_test.h"

#include <stdlib.h>
#include <string.h>

#define MAX_CASES 256
static struct {
    const char *kernel;
    backend_case_fn fn;
} g_cases[MAX_CASES];
static int g_ncases;

void backend_case_register(const char *kernel, backend_case_fn fn) {
    if (g_ncases < MAX_CASES) {
        g_cases[g_ncases].kernel = kernel;
        g_cases[g_ncases++].fn = fn;
    }
}

int backend_cuda_ready(char *why, size_t n) {
    int avail = 0;
    const char *r = ct_cuda_status(&avail);
    if (!avail) snprintf(why, n, "cuda unavailable: %s", r ? r : "(no reason)");
    return avail;
}

/* Devices of the backends other than the CPU that can run here. With
 * CT_TEST_BACKENDS_SELF=1 the CPU is also compared with itself: a check of this suite's
 * own code (shapes, views, leaks) on machines without a GPU. */
static int other_devices(ct_device *devs, int max, char *why, size_t n) {
    int k = 0;
    if (backend_cuda_ready(why, n) && k < max) devs[k++] = (ct_device){CT_CUDA, 0};
    const char *self = getenv("CT_TEST_BACKENDS_SELF");
    if (self && *self && strcmp(self, "0") != 0 && k < max) devs[k++] = ct_cpu();
    return k;
}

int backend_run_cases(backend_case_fn fn, char *why, size_t n) {
    ct_device devs[4];
    int k = other_devices(devs, 4, why, n);
    for (int i = 0; i < k; i++) {
        const ct_backend *b = ct_backend_get(devs[i].type);
        if (!b) {
            CHECK_MSG(0, "backend for device type %d: %s", (int)devs[i].type, ct_last_error());
            continue;
        }
        fn(devs[i], &b->k, b->name);
    }
    return k;
}

/* Every kernel-table entry has a case; every backend fills every entry. */
TEST(backends_every_kernel_has_a_case) {
    for (int i = 0; i < CT_KERNEL_COUNT; i++) {
        int found = 0;
        for (int c = 0; c < g_ncases; c++) found |= strcmp(g_cases[c].kernel, ct_kernel_names[i]) == 0;
        CHECK_MSG(found, "kernel %s has no backend case (add one with BACKEND_CASE in tests/)",
                  ct_kernel_names[i]);
        CHECK_MSG(ct_kernel_at(&ct_cpu_backend.k, i) != NULL, "the CPU lacks kernel %s",
                  ct_kernel_names[i]);
    }
    for (int c = 0; c < g_ncases; c++) {
        int known = 0;
        for (int i = 0; i < CT_KERNEL_COUNT; i++) known |= strcmp(g_cases[c].kernel, ct_kernel_names[i]) == 0;
        CHECK_MSG(known, "backend case for unknown kernel %s", g_cases[c].kernel);
    }
    char why[1024];
    if (backend_cuda_ready(why, sizeof why)) {
        const ct_backend *b = ct_backend_get(CT_CUDA);
        for (int i = 0; b && i < CT_KERNEL_COUNT; i++)
            CHECK_MSG(ct_kernel_at(&b->k, i) != NULL, "the %s backend lacks kernel %s", b->name,
                      ct_kernel_names[i]);
    }
}

ct_tensor *rnd(const int64_t *sh, int nd, ct_dtype dt, int kind) {
    ct_tensor *u;
    if (kind == 1) {
        ct_tensor *r = ct_rand(sh, nd, CT_FLOAT64), *r2 = ct_mul_scalar(r, 2.0);
        u = ct_add_scalar(r2, 1.0);
        ct_free(r);
        ct_free(r2);
    } else {
        ct_tensor *r = ct_randn(sh, nd, CT_FLOAT64);
        u = kind == 2 ? ct_abs(r) : ct_retain(r);
        ct_free(r);
    }
    if (dt == CT_INT64 && kind != 1) {
        ct_tensor *s = ct_mul_scalar(u, 4.0);
        ct_free(u);
        u = s;
    }
    ct_tensor *res = ct_to_dtype(u, dt);
    ct_free(u);
    return res;
}

tp tp_from(ct_tensor *cpu, ct_device dev) {
    tp p = {cpu, cpu ? ct_to_device(cpu, dev) : NULL};
    if (!p.c || !p.d) CHECK_MSG(0, "creating a test tensor failed: %s", ct_last_error());
    return p;
}

tp tp_rnd(const int64_t *sh, int nd, ct_dtype dt, int kind, ct_device dev) {
    return tp_from(rnd(sh, nd, dt, kind), dev);
}

tp tp_transpose(tp p, int a, int b) {
    tp r = {p.c ? ct_transpose(p.c, a, b) : NULL, p.d ? ct_transpose(p.d, a, b) : NULL};
    return r;
}

void tp_free(tp p) {
    ct_free(p.c);
    ct_free(p.d);
}

void tp_check(tp p, double tol, const char *what, const char *bname) {
    if (!p.c || !p.d) {
        CHECK_MSG(0, "%s: missing tensor", what);
        return;
    }
    ct_tensor *h = ct_to_device(p.d, ct_cpu());
    char w[256];
    snprintf(w, sizeof w, "%s on %s", what, bname);
    CHECK_CLOSE(h, p.c, tol, w);
    ct_free(h);
}
