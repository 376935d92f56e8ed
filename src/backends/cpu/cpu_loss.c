/* CPU nll_loss kernels (forward/backward). The fused cross-entropy kernels live in
 * cpu_softmax.c next to the vectorised exp they use, and share check_targets below.
 *
 * Shapes: logp/logits [N, C] contiguous, target int64 [N] contiguous, out [N] for
 * CT_REDUCTION_NONE and [] otherwise, total_weight [] (out's dtype) = number of targets
 * that are not ignore_index. Targets are validated first (an out-of-range target is an
 * error, not a crash). Reductions over N are summed serially in double, in index order,
 * so results do not depend on the thread count. */
#include "cpu_kernels.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LOSS_GRAIN_ELEMS 16384

/* Helpers shared with the fused cross-entropy kernels in cpu_softmax.c. */
int64_t cpu_loss_check_targets(const int64_t *t, int64_t N, int64_t C, int64_t ignore_index,
                               const char *op);
void cpu_loss_reduce_rows(ct_tensor *out, ct_tensor *total_weight, const double *v, int64_t N,
                          int64_t count, ct_reduction red);

/* Checks every target is in [0, C) or equals ignore_index; returns the count of
 * non-ignored targets, or -1 with an error naming `op`. */
int64_t cpu_loss_check_targets(const int64_t *t, int64_t N, int64_t C, int64_t ignore_index,
                               const char *op) {
    int64_t count = 0;
    for (int64_t i = 0; i < N; i++) {
        if (t[i] == ignore_index) continue;
        if (t[i] < 0 || t[i] >= C)
            return ct_error("%s: target %lld at flat index %lld is out of bounds for %lld classes "
                            "(targets must be in [0, %lld) or equal ignore_index %lld)",
                            op, (long long)t[i], (long long)i, (long long)C, (long long)C,
                            (long long)ignore_index);
        count++;
    }
    return count;
}

static int check_dtype(ct_dtype dt, const char *op) {
    if (dt == CT_FLOAT32 || dt == CT_FLOAT64) return 0;
    return ct_error("%s: dtype %s is not supported on cpu (use float32 or float64)", op,
                    ct_dtype_name(dt));
}

static void store(void *p, ct_dtype dt, int64_t i, double v) {
    if (dt == CT_FLOAT32) ((float *)p)[i] = (float)v;
    else ((double *)p)[i] = v;
}

static double load(const void *p, ct_dtype dt, int64_t i) {
    return dt == CT_FLOAT32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

/* Stores `count` into total_weight (if given) and, for mean/sum, the reduction of the
 * per-row values v[0..N) into out (summed in index order; mean over zero targets is
 * NaN, as in PyTorch). */
void cpu_loss_reduce_rows(ct_tensor *out, ct_tensor *total_weight, const double *v, int64_t N,
                          int64_t count, ct_reduction red) {
    if (total_weight) store(ct_ptr(total_weight), total_weight->dtype, 0, (double)count);
    if (red == CT_REDUCTION_NONE) return;
    double s = 0;
    for (int64_t i = 0; i < N; i++) s += v[i];
    if (red == CT_REDUCTION_MEAN) s = count > 0 ? s / (double)count : NAN;
    store(ct_ptr(out), out->dtype, 0, s);
}

/* ------------------------------------------------------------------ nll_loss */
int cpu_nll_loss_forward_full(ct_tensor *out, ct_tensor *total_weight, const ct_tensor *logp,
                         const ct_tensor *target, ct_reduction red, int64_t ignore_index) {
    if (check_dtype(logp->dtype, "nll_loss") != 0) return -1;
    const int64_t N = logp->shape[0], C = logp->shape[1];
    const int64_t *t = (const int64_t *)ct_ptr(target);
    int64_t count = cpu_loss_check_targets(t, N, C, ignore_index, "nll_loss");
    if (count < 0) return -1;
    const void *x = ct_ptr(logp);
    const ct_dtype dt = logp->dtype;
    if (red == CT_REDUCTION_NONE) {
        void *o = ct_ptr(out);
        for (int64_t i = 0; i < N; i++)
            store(o, dt, i, t[i] == ignore_index ? 0.0 : -load(x, dt, i * C + t[i]));
        cpu_loss_reduce_rows(out, total_weight, NULL, N, count, red);
        return 0;
    }
    double s = 0;
    for (int64_t i = 0; i < N; i++)
        if (t[i] != ignore_index) s -= load(x, dt, i * C + t[i]);
    cpu_loss_reduce_rows(out, total_weight, &s, 1, count, red);
    return 0;
}

typedef struct {
    void *g;
    size_t rowbytes;
} zero_ctx;

static void zero_rows(void *vctx, int64_t b, int64_t e) {
    const zero_ctx *c = vctx;
    memset((char *)c->g + (size_t)b * c->rowbytes, 0, (size_t)(e - b) * c->rowbytes);
}

/* glogp (fully written: zeros except -g at each non-ignored target). */
int cpu_nll_loss_backward_full(ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target,
                          const ct_tensor *total_weight, ct_reduction red,
                          int64_t ignore_index) {
    if (check_dtype(glogp->dtype, "nll_loss backward") != 0) return -1;
    const int64_t N = glogp->shape[0], C = glogp->shape[1];
    const ct_dtype dt = glogp->dtype;
    const int64_t *t = (const int64_t *)ct_ptr(target);
    if (cpu_loss_check_targets(t, N, C, ignore_index, "nll_loss backward") < 0) return -1;
    zero_ctx z = {ct_ptr(glogp), (size_t)C * ct_dtype_size(dt)};
    if (N > 0 && C > 0) {
        int64_t grain = LOSS_GRAIN_ELEMS / C;
        ct_parallel_for(N, grain < 1 ? 1 : grain, zero_rows, &z);
    }
    const void *go = ct_ptr(gout);
    double scale = 0;
    if (red != CT_REDUCTION_NONE) {
        scale = load(go, gout->dtype, 0);
        if (red == CT_REDUCTION_MEAN) {
            double w = total_weight ? load(ct_ptr(total_weight), total_weight->dtype, 0) : 0;
            scale = w != 0 ? scale / w : 0; /* all ignored: no element receives gradient */
        }
    }
    void *g = ct_ptr(glogp);
    for (int64_t i = 0; i < N; i++) {
        if (t[i] == ignore_index) continue;
        double gi = red == CT_REDUCTION_NONE ? load(go, gout->dtype, i) : scale;
        store(g, dt, i * C + t[i], -gi);
    }
    return 0;
}
