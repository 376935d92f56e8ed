/* CPU where: out = cond ? a : b over broadcast operands (one strided walk over the four
 * tensors), moving elements of any dtype by their size. */
#include "core/error.h"
#include "cpu_iter.h"
#include "cpu_kernels.h"

#define WHERE_ROW(T, NAME)                                                                    \
    static void NAME(void *vc, int64_t n, char **p, const int64_t *s) {                       \
        (void)vc;                                                                             \
        T *o = (T *)p[0];                                                                     \
        const uint8_t *c = (const uint8_t *)p[1];                                             \
        const T *a = (const T *)p[2], *b = (const T *)p[3];                                   \
        if (s[0] == 1 && s[1] == 1 && s[2] == 1 && s[3] == 1) {                               \
            for (int64_t i = 0; i < n; i++) o[i] = c[i] ? a[i] : b[i];                        \
            return;                                                                           \
        }                                                                                     \
        for (int64_t i = 0; i < n; i++) o[i * s[0]] = c[i * s[1]] ? a[i * s[2]] : b[i * s[3]]; \
    }
WHERE_ROW(uint8_t, where_1)
WHERE_ROW(uint16_t, where_2)
WHERE_ROW(uint32_t, where_4)
WHERE_ROW(uint64_t, where_8)

int cpu_where(ct_tensor *out, const ct_tensor *cond, const ct_tensor *a, const ct_tensor *b) {
    if (cond->dtype != CT_BOOL || a->dtype != out->dtype || b->dtype != out->dtype)
        return ct_error("where: cond must be bool and a, b, out of one dtype (got %s, %s, %s, %s)",
                        ct_dtype_name(cond->dtype), ct_dtype_name(a->dtype),
                        ct_dtype_name(b->dtype), ct_dtype_name(out->dtype));
    const ct_tensor *ops[4] = {out, cond, a, b};
    ct_iter it;
    ct_iter_init(&it, 4, ops);
    switch (ct_dtype_size(out->dtype)) {
    case 1: ct_iter_run(&it, where_1, NULL); return 0;
    case 2: ct_iter_run(&it, where_2, NULL); return 0;
    case 4: ct_iter_run(&it, where_4, NULL); return 0;
    case 8: ct_iter_run(&it, where_8, NULL); return 0;
    default: return ct_error("where: dtype %s not supported on the CPU", ct_dtype_name(out->dtype));
    }
}
