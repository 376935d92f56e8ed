/* Shared pieces of the backend conformance suite (tests/test_backends.c and the op tests
 * that add cases for their own kernels): the registry of cases, tensor pairs (the same
 * values on the CPU and on the device under test) and comparison helpers.
 *
 * BACKEND_CASE(kernel, fn) registers fn as a case of the kernel-table entry `kernel` (a
 * name from CT_KERNEL_LIST in src/core/backend.h) and defines the test backends_<kernel>,
 * which runs fn once per backend other than the CPU that can run here (skipped, with the
 * reason, when there is none). The test backends_every_kernel_has_a_case walks the kernel
 * table and fails for an entry without a case, so a new kernel cannot go untested. */
#ifndef CT_BACKEND_TEST_H
#define CT_BACKEND_TEST_H

#include "test.h"

#include "core/backend.h"
#include "core/tensor_impl.h"

typedef void (*backend_case_fn)(ct_device dev, const ct_kernels *k, const char *bname);

void backend_case_register(const char *kernel, backend_case_fn fn);
/* Runs fn once per available backend other than the CPU; returns how many ran and, when
 * none did, writes the reason to why. */
int backend_run_cases(backend_case_fn fn, char *why, size_t n);

#define BACKEND_CASE(kernel, fn)                                                           \
    __attribute__((constructor)) static void ct_bcase_reg_##kernel##_##fn(void) {          \
        backend_case_register(#kernel, fn);                                                \
    }                                                                                      \
    TEST(backends_##kernel##_##fn) {                                                       \
        char why_[1024];                                                                   \
        if (backend_run_cases(fn, why_, sizeof why_) == 0) SKIP(why_);                     \
    }

/* Whether CUDA can run here; when not, why receives the reason. */
int backend_cuda_ready(char *why, size_t n);

static inline const ct_kernels *cpuk(void) { return &ct_cpu_backend.k; }
static inline double tol_for(ct_dtype dt) { return dt == CT_FLOAT64 ? 1e-9 : 1e-4; }

/* Both kernels must succeed. */
#define KCALL(what, cpu_call, dev_call)                                                    \
    do {                                                                                   \
        int rc_c_ = (cpu_call);                                                            \
        const char *e_c_ = rc_c_ ? ct_last_error() : "";                                   \
        char ec_[512];                                                                     \
        snprintf(ec_, sizeof ec_, "%s", e_c_);                                             \
        int rc_d_ = (dev_call);                                                            \
        CHECK_MSG(rc_c_ == 0 && rc_d_ == 0, "%s: cpu rc %d (%s), %s rc %d (%s)", (what),   \
                  rc_c_, ec_, bname, rc_d_, rc_d_ ? ct_last_error() : "");                 \
    } while (0)

/* The same tensor on the CPU (c) and on the device under test (d). */
typedef struct {
    ct_tensor *c, *d;
} tp;

/* Values: randn (kind 0), uniform in [1, 3) (kind 1: divisors, logs), |randn| (kind 2);
 * integers for int64 (randn * 4 truncated; kind 1: 1 or 2). */
ct_tensor *rnd(const int64_t *sh, int nd, ct_dtype dt, int kind);
tp tp_from(ct_tensor *cpu, ct_device dev); /* takes cpu over */
tp tp_rnd(const int64_t *sh, int nd, ct_dtype dt, int kind, ct_device dev);
tp tp_transpose(tp p, int a, int b);
void tp_free(tp p);
/* Compares the device result with the CPU one (relative error norm <= tol). */
void tp_check(tp p, double tol, const char *what, const char *bname);

#endif
