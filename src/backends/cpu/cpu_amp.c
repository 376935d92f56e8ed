/* The CPU's amp_unscale (kernel-table entry; torch._amp_foreach_non_finite_check_and_unscale_
 * on the CPU): one pass over each gradient that multiplies by inv_scale in the gradient's
 * precision (float for float16/bfloat16, converted with src/core/half.h) and notes whether
 * any element was inf or NaN. */
#include "core/backend.h"
#include "cpu_isa.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "cpu_kernels.h"

#include <stdatomic.h>

typedef struct {
    void *g;
    double inv;
    int scale; /* 0 when inv_scale == 1: only the check (the values stay bit for bit) */
    atomic_int bad;
} amp_ctx;

/* A finite x gives x - x == 0; inf and NaN give NaN, which equals nothing. */
#define AMP_LOOP(T)                                                                      \
    do {                                                                                 \
        T *g = c->g;                                                                     \
        const T inv = (T)c->inv;                                                         \
        int bad = 0;                                                                     \
        if (c->scale) {                                                                  \
            for (int64_t i = b; i < e; i++) {                                            \
                const T v = g[i];                                                        \
                bad |= !(v - v == v - v);                                                \
                g[i] = v * inv;                                                          \
            }                                                                            \
        } else {                                                                         \
            for (int64_t i = b; i < e; i++) {                                            \
                const T v = g[i];                                                        \
                bad |= !(v - v == v - v);                                                \
            }                                                                            \
        }                                                                                \
        if (bad) atomic_store_explicit(&c->bad, 1, memory_order_relaxed);                \
    } while (0)

#define AMP_HALF_LOOP(TO_F32, FROM_F32)                                                  \
    do {                                                                                 \
        uint16_t *g = c->g;                                                              \
        const float inv = (float)c->inv;                                                 \
        int bad = 0;                                                                     \
        for (int64_t i = b; i < e; i++) {                                                \
            const float v = TO_F32(g[i]);                                                \
            bad |= !(v - v == v - v);                                                    \
            if (c->scale) g[i] = FROM_F32(v * inv);                                      \
        }                                                                                \
        if (bad) atomic_store_explicit(&c->bad, 1, memory_order_relaxed);                \
    } while (0)


CT_MULTIVERSION static void amp_f32(void *vc, int64_t b, int64_t e) {
    amp_ctx *c = vc;
    AMP_LOOP(float);
}
CT_MULTIVERSION static void amp_f64(void *vc, int64_t b, int64_t e) {
    amp_ctx *c = vc;
    AMP_LOOP(double);
}
static void amp_f16(void *vc, int64_t b, int64_t e) {
    amp_ctx *c = vc;
    AMP_HALF_LOOP(ct_f16_to_f32, ct_f32_to_f16);
}
static void amp_bf16(void *vc, int64_t b, int64_t e) {
    amp_ctx *c = vc;
    AMP_HALF_LOOP(ct_bf16_to_f32, ct_f32_to_bf16);
}

int cpu_amp_unscale(ct_tensor *const *grads, int n, ct_tensor *found_inf, double inv_scale) {
    if (found_inf->dtype != CT_FLOAT32 || ct_numel(found_inf) != 1)
        return ct_error("amp_unscale: found_inf must be a 1-element float32 tensor, got %s "
                        "with %lld elements", ct_dtype_name(found_inf->dtype),
                        (long long)ct_numel(found_inf));
    amp_ctx c;
    c.inv = (float)inv_scale;
    c.scale = c.inv != 1.0;
    atomic_init(&c.bad, 0);
    for (int i = 0; i < n; i++) {
        const ct_tensor *g = grads[i];
        ct_range_fn fn = g->dtype == CT_FLOAT32   ? amp_f32
                         : g->dtype == CT_FLOAT64 ? amp_f64
                         : g->dtype == CT_FLOAT16 ? amp_f16
                         : g->dtype == CT_BFLOAT16 ? amp_bf16
                                                   : NULL;
        if (!fn)
            return ct_error("amp_unscale: gradient %d has dtype %s (float32, float64, float16 "
                            "or bfloat16 expected)", i, ct_dtype_name(g->dtype));
        c.g = ct_ptr(g);
        ct_parallel_for(ct_numel(g), 1 << 15, fn, &c);
    }
    if (atomic_load(&c.bad)) *(float *)ct_ptr(found_inf) = 1.0f;
    return 0;
}
