/* The backend suite's case for the amp_unscale kernel (GradScaler's fused unscale and
 * inf/NaN check): every backend against the CPU. */
#include "backend_test.h"

#include <math.h>
#include <string.h>

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
