/* Batched matrix multiply on OpenBLAS, or on AVX-512 kernels of our own where they are faster
 * (cpu_gemm_small.h); single-threaded GEMMs inside ct_parallel_for.
 *
 * cpu_bmm: c[b] = alpha * a[b] @ b[b] + beta * c[b] with a [B,M,K], b [B,K,N] and
 * c [B,M,N] contiguous; or, with a linear layer's bias (beta 0), alpha * a[b] @ b[b] + bias
 * on every row: the blocked float32 kernels add it in their epilogue, the other paths
 * start each tile from the bias and accumulate onto it. a and b may be row-major
 * (stride[2] == 1) or transposed (stride[1] == 1) and may broadcast over the batch
 * (stride[0] == 0).
 *
 * Work is split over the batch; when the batch alone cannot feed every thread, each
 * product is also tiled over rows and/or columns of c so that one large GEMM (a
 * linear layer, say) still uses all cores. A product whose inner dimension dwarfs c (a
 * weight gradient, gy^T @ x summed over every token of the batch) is split over K
 * instead: tiling c would make every thread pack the whole of the long operand that its
 * tile shares with the others; each K part packs only its own rows. The parts are
 * summed in part order, and their number depends on the shape only, so the result does
 * not depend on the thread count. */
#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "cpu_alloc.h"
#include "cpu_gemm_small.h"
#include "cpu_sgemm_amx.h"
#include "cpu_kernels.h"

#include <cblas.h>
#include <limits.h>
#include <string.h>

/* Row-major layout of a (rows x cols) matrix with strides s1 (row) and s2 (col):
 * NoTrans when columns are unit-stride, Trans when rows are. Strides of size-1
 * dimensions do not matter and are ignored. Returns 0, or -1 when neither fits. */
static int mat_layout(int64_t rows, int64_t cols, int64_t s1, int64_t s2, CBLAS_TRANSPOSE *tr,
                      int64_t *ld) {
    int64_t r1 = rows > 1 ? rows : 1, c1 = cols > 1 ? cols : 1;
    if ((cols <= 1 || s2 == 1) && (rows <= 1 || s1 >= c1)) {
        *tr = CblasNoTrans;
        *ld = rows <= 1 ? c1 : s1;
        return 0;
    }
    if ((rows <= 1 || s1 == 1) && (cols <= 1 || s2 >= r1)) {
        *tr = CblasTrans;
        *ld = cols <= 1 ? r1 : s2;
        return 0;
    }
    return -1;
}

typedef struct {
    ct_dtype dt;
    int64_t M, N, K;
    CBLAS_TRANSPOSE ta, tb;
    int64_t lda, ldb;
    int64_t sa, sb; /* batch strides (elements) */
    const char *a, *b;
    char *c;
    double alpha, beta;
    const float *bias; /* float32 column bias of part 0 (beta is 0 then), or NULL */
    int small;        /* float32: CT_SGEMM_SMALL / _BLOCKED for our kernels (cpu_gemm_small.h) */
    int64_t tm, tn;   /* tiles per product along M and N */
    int64_t bm, bn;   /* tile sizes */
    int64_t tk, bk;   /* parts along K (1: no split) and their length */
    char *part;       /* parts 1..tk-1 of c (part 0 is c itself), [tk-1, M, N] */
    size_t es;
} bmm_ctx;

static void bmm_range(void *vctx, int64_t begin, int64_t end) {
    const bmm_ctx *x = vctx;
    int64_t per = x->tm * x->tn * x->tk;
    for (int64_t t = begin; t < end; t++) {
        int64_t bi = t / per, r = t % per;
        int64_t kp = r / (x->tm * x->tn);
        r %= x->tm * x->tn;
        int64_t m0 = (r / x->tn) * x->bm, n0 = (r % x->tn) * x->bn, k0 = kp * x->bk;
        int64_t m = x->M - m0 < x->bm ? x->M - m0 : x->bm;
        int64_t n = x->N - n0 < x->bn ? x->N - n0 : x->bn;
        int64_t k = x->K - k0 < x->bk ? x->K - k0 : x->bk;
        if (m <= 0 || n <= 0) continue;
        /* Offset of row m0 (and column k0) in a and of column n0 (and row k0) in b
         * depends on the layout. */
        int64_t aoff = bi * x->sa + (x->ta == CblasNoTrans ? m0 * x->lda + k0 : k0 * x->lda + m0);
        int64_t boff = bi * x->sb + (x->tb == CblasNoTrans ? k0 * x->ldb + n0 : n0 * x->ldb + k0);
        int64_t coff = bi * x->M * x->N + m0 * x->N + n0;
        /* part 0 accumulates into c (beta), the others start from 0 in their buffers */
        char *c = kp ? x->part + (size_t)(kp - 1) * (size_t)(x->M * x->N) * x->es : x->c;
        double beta = kp ? 0 : x->beta;
        if (x->dt == CT_FLOAT32) {
            int ta = x->ta != CblasNoTrans, tb = x->tb != CblasNoTrans;
            const float *bias = kp ? NULL : x->bias;
            const float *A = (const float *)x->a + aoff, *Bm = (const float *)x->b + boff;
            float *C = (float *)c + coff;
            /* the blocked kernels add the bias in their epilogue */
            if (x->small == CT_SGEMM_BLOCKED &&
                ct_sgemm_blocked(ta, tb, m, n, k, (float)x->alpha, A, x->lda, Bm, x->ldb,
                                 (float)beta, C, x->N, bias ? bias + n0 : NULL) == 0)
                continue;
            if (bias) { /* the others accumulate onto the tile's rows of bias (beta is 0) */
                for (int64_t r = 0; r < m; r++)
                    memcpy(C + r * x->N, bias + n0, sizeof(float) * (size_t)n);
                beta = 1.0;
            }
            if (x->small == CT_SGEMM_SMALL &&
                ct_sgemm_small(ta, tb, m, n, k, (float)x->alpha, A, x->lda, Bm, x->ldb,
                               (float)beta, C, x->N) == 0)
                continue;
            cblas_sgemm(CblasRowMajor, x->ta, x->tb, (int)m, (int)n, (int)k, (float)x->alpha,
                        (const float *)x->a + aoff, (int)x->lda, (const float *)x->b + boff,
                        (int)x->ldb, (float)beta, (float *)c + coff, (int)x->N);
        } else {
            cblas_dgemm(CblasRowMajor, x->ta, x->tb, (int)m, (int)n, (int)k, x->alpha,
                        (const double *)x->a + aoff, (int)x->lda, (const double *)x->b + boff,
                        (int)x->ldb, beta, (double *)c + coff, (int)x->N);
        }
    }
}

/* c[i] += part 1 [i] + part 2 [i] + ... for elements [begin, end) of c (B == 1). */
static void sum_parts(void *vctx, int64_t begin, int64_t end) {
    const bmm_ctx *x = vctx;
    const int64_t mn = x->M * x->N;
    for (int64_t kp = 1; kp < x->tk; kp++) {
        if (x->dt == CT_FLOAT32) {
            float *c = (float *)x->c;
            const float *p = (const float *)x->part + (kp - 1) * mn;
            for (int64_t i = begin; i < end; i++) c[i] += p[i];
        } else {
            double *c = (double *)x->c;
            const double *p = (const double *)x->part + (kp - 1) * mn;
            for (int64_t i = begin; i < end; i++) c[i] += p[i];
        }
    }
}

/* c = beta * c (used when K == 0, where BLAS would see a degenerate product). */
static void scale_c(ct_tensor *c, double beta) {
    int64_t n = ct_numel(c);
    if (c->dtype == CT_FLOAT32) {
        float *p = (float *)ct_ptr(c);
        if (beta == 0) memset(p, 0, sizeof(float) * (size_t)n);
        else for (int64_t i = 0; i < n; i++) p[i] = (float)(p[i] * beta);
    } else {
        double *p = (double *)ct_ptr(c);
        if (beta == 0) memset(p, 0, sizeof(double) * (size_t)n);
        else for (int64_t i = 0; i < n; i++) p[i] *= beta;
    }
}

/* bmm's bias: 1-D [N] of c's dtype, with beta == 0. */
static int bias_check(const ct_tensor *c, const ct_tensor *bias, double beta) {
    char s1[64], s2[64];
    if (bias->ndim != 1 || c->ndim != 3 || bias->shape[0] != c->shape[2] || bias->dtype != c->dtype)
        return ct_error("bmm: bias %s (%s) must be 1-D [%lld] of the output's dtype %s",
                        ct_shape_str(bias, s1, sizeof s1), ct_dtype_name(bias->dtype),
                        (long long)(c->ndim == 3 ? c->shape[2] : -1), ct_dtype_name(c->dtype));
    if (beta != 0)
        return ct_error("bmm: a bias needs beta == 0 (got %g) for the output %s", beta,
                        ct_shape_str(c, s2, sizeof s2));
    return 0;
}

int cpu_bmm_bias_prefill(ct_tensor *c, const ct_tensor *bias, double beta) {
    if (bias_check(c, bias, beta) != 0) return -1;
    int64_t st[3] = {0, 0, bias->stride[0]};
    ct_tensor *v = ct_tensor_make(bias->storage, bias->dtype, c->shape, st, 3, bias->offset);
    int rc = v ? cpu_copy(c, v) : -1;
    ct_free(v);
    return rc;
}

/* bmm's operands: 3-D, one float dtype, matching shapes. */
static int bmm_check(const ct_tensor *c, const ct_tensor *a, const ct_tensor *b) {
    if (a->ndim != 3 || b->ndim != 3 || c->ndim != 3)
        return ct_error("bmm: expected 3-D operands, got %d-D, %d-D and %d-D output", a->ndim,
                        b->ndim, c->ndim);
    if (c->dtype != CT_FLOAT32 && c->dtype != CT_FLOAT64)
        return ct_error("bmm: dtype %s not supported on cpu (float32 and float64 only)",
                        ct_dtype_name(c->dtype));
    if (a->dtype != c->dtype || b->dtype != c->dtype)
        return ct_error("bmm: dtypes differ (%s @ %s -> %s)", ct_dtype_name(a->dtype),
                        ct_dtype_name(b->dtype), ct_dtype_name(c->dtype));
    int64_t B = c->shape[0], M = c->shape[1], N = c->shape[2], K = a->shape[2];
    if (a->shape[0] != B || b->shape[0] != B || a->shape[1] != M || b->shape[1] != K ||
        b->shape[2] != N)
        return ct_error("bmm: shapes [%lld, %lld, %lld] @ [%lld, %lld, %lld] -> [%lld, %lld, %lld] "
                        "do not match",
                        (long long)a->shape[0], (long long)a->shape[1], (long long)a->shape[2],
                        (long long)b->shape[0], (long long)b->shape[1], (long long)b->shape[2],
                        (long long)B, (long long)M, (long long)N);
    return 0;
}

/* float32 products large enough for AMX (cpu_sgemm_amx.c), one after the other, each
 * threaded inside: 0 when done, 1 when they are not for AMX, -1 on error. */
static int bmm_amx(const bmm_ctx *x, int64_t B) {
    int ta = x->ta != CblasNoTrans, tb = x->tb != CblasNoTrans;
    if (x->dt != CT_FLOAT32 || !ct_sgemm_amx_wanted(ta, tb, x->M, x->N, x->K)) return 1;
    for (int64_t bi = 0; bi < B; bi++) {
        int rc = ct_sgemm_amx(ta, tb, x->M, x->N, x->K, (float)x->alpha,
                              (const float *)x->a + bi * x->sa, x->lda,
                              (const float *)x->b + bi * x->sb, x->ldb, (float)x->beta,
                              (float *)x->c + bi * x->M * x->N, x->N, x->bias);
        if (rc < 0) return -1;
        if (rc > 0) /* AMX not usable: the other kernels, unless it went off mid-batch */
            return bi == 0 ? 1
                           : ct_error("bmm: the AMX kernel was turned off in the middle of a "
                                      "batched product");
    }
    return 0;
}

int cpu_bmm_full(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, const ct_tensor *bias,
                 double alpha, double beta) {
    if (bmm_check(c, a, b) != 0) return -1;
    int64_t B = c->shape[0], M = c->shape[1], N = c->shape[2], K = a->shape[2];
    if (B == 0 || M == 0 || N == 0) return 0;
    /* a bias that is not one contiguous float32 row: broadcast into c first */
    if (bias && (c->dtype != CT_FLOAT32 || K == 0 || (bias->stride[0] != 1 && N > 1))) {
        if (cpu_bmm_bias_prefill(c, bias, beta) != 0) return -1;
        bias = NULL;
        beta = 1.0;
    }
    if (bias && bias_check(c, bias, beta) != 0) return -1;
    if (K == 0) {
        scale_c(c, beta);
        return 0;
    }
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
        return ct_error("bmm: matrix dimension too large for BLAS (M=%lld N=%lld K=%lld)",
                        (long long)M, (long long)N, (long long)K);
    bmm_ctx x = {.dt = c->dtype, .M = M, .N = N, .K = K, .alpha = alpha, .beta = beta,
                 .bias = bias ? (const float *)ct_ptr(bias) : NULL};
    if (mat_layout(M, K, a->stride[1], a->stride[2], &x.ta, &x.lda) != 0 ||
        mat_layout(K, N, b->stride[1], b->stride[2], &x.tb, &x.ldb) != 0)
        return ct_error("bmm: operands need a unit stride in one of their last two dims");
    if (x.lda > INT_MAX || x.ldb > INT_MAX)
        return ct_error("bmm: leading dimension too large for BLAS");
    x.sa = a->shape[0] > 1 ? a->stride[0] : 0;
    x.sb = b->shape[0] > 1 ? b->stride[0] : 0;
    x.a = ct_ptr(a);
    x.b = ct_ptr(b);
    x.c = ct_ptr(c);
    x.es = ct_dtype_size(c->dtype);
    int rc = bmm_amx(&x, B);
    if (rc <= 0) return rc;
    x.small = x.dt == CT_FLOAT32
                  ? ct_sgemm_small_wanted(x.ta != CblasNoTrans, x.tb != CblasNoTrans, M, N, K)
                  : CT_SGEMM_BLAS;

    /* Tiling: enough tasks for every thread, tiles not too thin for BLAS. */
    int nth = ct_plan_threads();
    double flops = 2.0 * (double)B * (double)M * (double)N * (double)K;
    x.tm = x.tn = x.tk = 1;
    x.bk = K;
    /* One product with K at least 8 times the larger side of c and 1024 long: K in
     * parts of at least 512 (a multiple of 64), at most 4; decided by the shape alone. */
    if (B == 1 && flops >= 4e6 && K >= 1024 && K >= 8 * (M > N ? M : N)) {
        x.tk = K / 512 < 4 ? K / 512 : 4;
        x.bk = (K + x.tk - 1) / x.tk;
        x.bk = (x.bk + 63) / 64 * 64;
        x.tk = (K + x.bk - 1) / x.bk;
    }
    if (nth > 1 && B * x.tk < nth && flops >= 4e6) {
        int64_t need = (nth + B * x.tk - 1) / (B * x.tk);
        int64_t maxm = M / 32 > 1 ? M / 32 : 1, maxn = N / 64 > 1 ? N / 64 : 1;
        /* Split the longer side; but when C is the largest operand (a weight gradient:
         * gy^T @ x), split its rows so that each thread owns contiguous rows of C: the
         * optimizer step that follows splits parameters the same way, so each thread
         * then updates the rows that are still in its own cache. */
        int rows_first = M >= N || (N >= K && M >= K && maxm >= need);
        if (rows_first) {
            x.tm = need < maxm ? need : maxm;
            int64_t rest = (need + x.tm - 1) / x.tm;
            x.tn = rest < maxn ? rest : maxn;
        } else {
            x.tn = need < maxn ? need : maxn;
            int64_t rest = (need + x.tn - 1) / x.tn;
            x.tm = rest < maxm ? rest : maxm;
        }
    }
    x.bm = (M + x.tm - 1) / x.tm;
    x.bn = (N + x.tn - 1) / x.tn;
    /* Round tile widths for nicer BLAS blocking (tile counts may shrink a little). */
    if (x.tm > 1) x.bm = (x.bm + 7) / 8 * 8;
    if (x.tn > 1) x.bn = (x.bn + 15) / 16 * 16;
    x.tm = (M + x.bm - 1) / x.bm;
    x.tn = (N + x.bn - 1) / x.bn;
    int64_t ntasks = B * x.tm * x.tn * x.tk;
    if (x.tk > 1 && !(x.part = ct_cpu_alloc((size_t)(x.tk - 1) * (size_t)(M * N) * x.es))) {
        ct_error_context("bmm");
        return -1;
    }
    /* Small products run inline: a thread hand-off costs more than the work. More tasks
     * than threads (a batch, K parts) go to whichever thread is free; tiling one product
     * finer than a tile per thread would cost more packing than the balance gains. */
    int64_t grain = flops < 2e5 ? ntasks : 1;
    ct_parallel_for_dynamic(ntasks, grain, bmm_range, &x);
    if (x.tk > 1) {
        ct_parallel_for(M * N, 4096, sum_parts, &x);
        ct_cpu_free(x.part);
    }
    return 0;
}
