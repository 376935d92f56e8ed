/* GEMM through cuBLAS and convolution through cuDNN.
 *
 * bmm: cublasGemmStridedBatchedEx on the row-major problem seen as column-major
 * (C^T = B^T A^T), so a row-major operand is passed untransposed and a transposed one
 * (unit stride along rows) with CUBLAS_OP_T; a batch stride of 0 broadcasts. float32
 * computes in full FP32 (CUBLAS_COMPUTE_32F) unless TF32 is enabled (CTORCH_TF32=1 or
 * ct_cuda_set_tf32), float64 in FP64; bfloat16 / float16 operands and results
 * (CUDA_R_16BF / CUDA_R_16F) compute in FP32 (CUBLAS_COMPUTE_32F: tensor cores, float32
 * accumulation, the result rounded once).
 *
 * conv2d: cuDNN's legacy convolution API (NCHW, groups, stride, padding, dilation) for
 * the forward pass, the input gradient (backward data) and the weight gradient (backward
 * filter). The algorithm is chosen once per shape and direction -- timed with
 * cudnnFind*AlgorithmEx on the real buffers (the cudnn.benchmark analogue) or, with
 * CTORCH_CUDNN_BENCHMARK=0, taken from cuDNN's heuristics -- and cached with its
 * descriptors. With CTORCH_DETERMINISTIC=1 only algorithms cuDNN reports as deterministic
 * are used, chosen by the heuristics (so the same one on every run). With TF32 off,
 * float32 convolutions use CUDNN_FMA_MATH (no tensor-core TF32). bfloat16 / float16
 * tensors (CUDNN_DATA_BFLOAT16 / CUDNN_DATA_HALF) convolve with a float32 compute type
 * (cuDNN's PSEUDO_BFLOAT16 / PSEUDO_HALF configurations) and CUDNN_TENSOR_OP_MATH. */
#include "cuda_host.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------------- bmm */
/* Layout of a (rows x cols) row-major view with strides s1 (row) and s2 (col):
 * 0 = untransposed (unit col stride), 1 = transposed (unit row stride); -1 neither.
 * ld: the leading dimension. Mirrors cpu_gemm.c's mat_layout. */
static int mat_layout(int64_t rows, int64_t cols, int64_t s1, int64_t s2, int *trans,
                      int64_t *ld) {
    int64_t r1 = rows > 1 ? rows : 1, c1 = cols > 1 ? cols : 1;
    if ((cols <= 1 || s2 == 1) && (rows <= 1 || s1 >= c1)) {
        *trans = 0;
        *ld = rows <= 1 ? c1 : s1;
        return 0;
    }
    if ((rows <= 1 || s1 == 1) && (cols <= 1 || s2 >= r1)) {
        *trans = 1;
        *ld = cols <= 1 ? r1 : s2;
        return 0;
    }
    return -1;
}

static int scale_c(cu_dev *d, ct_tensor *c, double beta) {
    cuk_geom g;
    memset(&g, 0, sizeof g);
    int64_t n = cu_numel(c);
    g.ndim = 1;
    g.shape[0] = n;
    g.stride[0][0] = g.stride[1][0] = 1;
    if (beta == 0) return cu_fail(cuk_fill(&d->k, cu_dsize(c->dtype), &g, n, cu_ptr(c), 0), "bmm");
    return cu_fail(cuk_unary(&d->k, CT_UN_MUL_SCALAR, (int)c->dtype, &g, n, cu_ptr(c), cu_ptr(c),
                             beta, 0),
                   "bmm");
}

/* c[b][m][n] = bias[n] (bmm's bias, beta == 0): the copy kernel over a broadcast geometry,
 * before the GEMM accumulates onto it with beta 1. */
static int bias_prefill(cu_dev *d, ct_tensor *c, const ct_tensor *bias, double beta) {
    if (bias->ndim != 1 || bias->shape[0] != c->shape[2] || bias->dtype != c->dtype)
        return cu_error("bmm: bias must be 1-D [%lld] of the output's dtype %s",
                        (long long)c->shape[2], cu_dtype_name(c->dtype));
    if (beta != 0) return cu_error("bmm: a bias needs beta == 0 (got %g)", beta);
    cuk_geom g;
    memset(&g, 0, sizeof g);
    g.ndim = 2; /* innermost first: the columns, then every row of every batch */
    g.shape[0] = c->shape[2];
    g.shape[1] = c->shape[0] * c->shape[1];
    g.stride[0][0] = 1, g.stride[0][1] = c->shape[2];
    g.stride[1][0] = bias->stride[0], g.stride[1][1] = 0;
    return cu_fail(cuk_copy(&d->k, (int)c->dtype, (int)bias->dtype, &g, cu_numel(c), cu_ptr(c),
                            cu_ptr(bias)),
                   "bmm bias");
}

int cu_k_bmm(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, const ct_tensor *bias,
             double alpha, double beta) {
    if (a->ndim != 3 || b->ndim != 3 || c->ndim != 3)
        return cu_error("bmm: expected 3-D operands, got %d-D, %d-D and %d-D output", a->ndim,
                        b->ndim, c->ndim);
    if (!cu_is_float(c->dtype) && !cu_is_lowp(c->dtype))
        return cu_error("bmm: dtype %s not supported on cuda (float32, float64, bfloat16 or "
                        "float16)",
                        cu_dtype_name(c->dtype));
    if (a->dtype != c->dtype || b->dtype != c->dtype)
        return cu_error("bmm: dtypes differ (%s @ %s -> %s)", cu_dtype_name(a->dtype),
                        cu_dtype_name(b->dtype), cu_dtype_name(c->dtype));
    const int64_t B = c->shape[0], M = c->shape[1], N = c->shape[2], K = a->shape[2];
    if (a->shape[0] != B || b->shape[0] != B || a->shape[1] != M || b->shape[1] != K ||
        b->shape[2] != N)
        return cu_error("bmm: shapes [%lld, %lld, %lld] @ [%lld, %lld, %lld] -> [%lld, %lld, "
                        "%lld] do not match",
                        (long long)a->shape[0], (long long)a->shape[1], (long long)a->shape[2],
                        (long long)b->shape[0], (long long)b->shape[1], (long long)b->shape[2],
                        (long long)B, (long long)M, (long long)N);
    if (B == 0 || M == 0 || N == 0) return 0;
    cu_dev *d = cu_dev_of(c);
    if (!d) return -1;
    if (!cu_is_contiguous(c)) return cu_error("bmm: the output must be contiguous");
    if (bias) {
        if (bias_prefill(d, c, bias, beta) != 0) return -1;
        beta = 1.0;
    }
    if (K == 0) return scale_c(d, c, beta);
    int ta, tb;
    int64_t lda, ldb;
    if (mat_layout(M, K, a->stride[1], a->stride[2], &ta, &lda) != 0 ||
        mat_layout(K, N, b->stride[1], b->stride[2], &tb, &ldb) != 0)
        return cu_error("bmm: operands need a unit stride in one of their last two dims");
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX)
        return cu_error("bmm: matrix dimension too large for cuBLAS (M=%lld N=%lld K=%lld)",
                        (long long)M, (long long)N, (long long)K);
    const long long sa = a->shape[0] > 1 ? a->stride[0] : 0;
    const long long sb = b->shape[0] > 1 ? b->stride[0] : 0;
    const long long sc = M * N;
    const int f64 = c->dtype == CT_FLOAT64;
    const cudaDataType_t type = f64                         ? CUDA_R_64F
                                : c->dtype == CT_BFLOAT16 ? CUDA_R_16BF
                                : c->dtype == CT_FLOAT16  ? CUDA_R_16F
                                                          : CUDA_R_32F;
    /* TF32 concerns float32 operands only; 16-bit ones run on tensor cores regardless */
    cublasComputeType_t ctype = CUBLAS_COMPUTE_32F;
    if (f64) ctype = CUBLAS_COMPUTE_64F;
    else if (cu_tf32 && c->dtype == CT_FLOAT32) ctype = CUBLAS_COMPUTE_32F_FAST_TF32;
    const float af = (float)alpha, bf = (float)beta;
    const void *pa = f64 ? (const void *)&alpha : (const void *)&af;
    const void *pb = f64 ? (const void *)&beta : (const void *)&bf;
    const size_t es = cu_dsize(c->dtype);
    const char *A = cu_ptr(a), *Bp = cu_ptr(b);
    char *C = cu_ptr(c);
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    pthread_mutex_lock(&d->lib_mu);
    for (int64_t b0 = 0; b0 < B && st == CUBLAS_STATUS_SUCCESS; b0 += 65535) {
        const int nb = (int)(B - b0 < 65535 ? B - b0 : 65535);
        st = cu_blas.cublasGemmStridedBatchedEx(
            d->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N,
            (int)M, (int)K, pa, Bp + (size_t)(b0 * sb) * es, type, (int)ldb, sb,
            A + (size_t)(b0 * sa) * es, type, (int)lda, sa, pb, C + (size_t)(b0 * sc) * es, type,
            (int)N, sc, nb, ctype, CUBLAS_GEMM_DEFAULT);
    }
    pthread_mutex_unlock(&d->lib_mu);
    if (st != CUBLAS_STATUS_SUCCESS)
        return cu_error("bmm: cuBLAS failed on cuda:%d for [%lld, %lld, %lld] @ [%lld, %lld] "
                        "(%s): %s",
                        d->index, (long long)B, (long long)M, (long long)K, (long long)K,
                        (long long)N, cu_dtype_name(c->dtype), cu_blas_str(st));
    return 0;
}

/* ------------------------------------------------------------------- conv2d */
enum { DIR_FWD, DIR_BWD_DATA, DIR_BWD_FILTER };
static const char *dir_name[] = {"conv2d", "conv2d backward (input)", "conv2d backward (weight)"};

typedef struct {
    int dir, dtype, tf32, det, bench;
    int64_t x[4], w[4], y[4];
    int stride[2], pad[2], dil[2], groups;
} conv_key;

typedef struct conv_plan {
    struct conv_plan *next;
    conv_key key;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    int algo;
    size_t ws;
} conv_plan;

static void plan_free(conv_plan *p) {
    if (!p) return;
    if (p->xd) cu_dnn.cudnnDestroyTensorDescriptor(p->xd);
    if (p->yd) cu_dnn.cudnnDestroyTensorDescriptor(p->yd);
    if (p->wd) cu_dnn.cudnnDestroyFilterDescriptor(p->wd);
    if (p->cd) cu_dnn.cudnnDestroyConvolutionDescriptor(p->cd);
    free(p);
}

void cu_dnn_release(cu_dev *d) {
    pthread_mutex_lock(&d->lib_mu);
    while (d->plans) {
        conv_plan *p = d->plans;
        d->plans = p->next;
        plan_free(p);
    }
    pthread_mutex_unlock(&d->lib_mu);
}

static int dnn_err(cudnnStatus_t s, const char *op, const char *what) {
    const char *hint = "";
    if (s == CUDNN_STATUS_NOT_SUPPORTED)
        hint = " (this configuration is not supported by cuDNN on this GPU)";
    else if (s == CUDNN_STATUS_ALLOC_FAILED)
        hint = " (out of GPU memory inside cuDNN: reduce the batch size)";
    else if (s == CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED || s == CUDNN_STATUS_VERSION_MISMATCH)
        hint = " (cuDNN installation incomplete or mixed versions: reinstall cuDNN 9 with all "
               "its libcudnn_*.so libraries)";
    return cu_error("%s: cuDNN %s failed: %s%s", op, what, cu_dnn_str(s), hint);
}

static int fits_int(const int64_t *s, int n) {
    int64_t total = 1;
    for (int i = 0; i < n; i++) {
        if (s[i] > INT_MAX) return 0;
        total *= s[i];
    }
    return total <= INT_MAX;
}

/* Creates the descriptors of a plan. x/y are NCHW tensors, w is [O, C/g, kh, kw]. */
static int plan_descriptors(conv_plan *p, const char *op) {
    const conv_key *k = &p->key;
    const cudnnDataType_t t = k->dtype == CT_FLOAT64    ? CUDNN_DATA_DOUBLE
                              : k->dtype == CT_BFLOAT16 ? CUDNN_DATA_BFLOAT16
                              : k->dtype == CT_FLOAT16  ? CUDNN_DATA_HALF
                                                        : CUDNN_DATA_FLOAT;
    /* 16-bit data computes in float32 (PSEUDO_BFLOAT16 / PSEUDO_HALF configurations) */
    const cudnnDataType_t ct = k->dtype == CT_FLOAT64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    cudnnStatus_t s = cu_dnn.cudnnCreateTensorDescriptor(&p->xd);
    if (s == CUDNN_STATUS_SUCCESS) s = cu_dnn.cudnnCreateTensorDescriptor(&p->yd);
    if (s == CUDNN_STATUS_SUCCESS) s = cu_dnn.cudnnCreateFilterDescriptor(&p->wd);
    if (s == CUDNN_STATUS_SUCCESS) s = cu_dnn.cudnnCreateConvolutionDescriptor(&p->cd);
    if (s != CUDNN_STATUS_SUCCESS) return dnn_err(s, op, "descriptor creation");
    s = cu_dnn.cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NCHW, t, (int)k->x[0], (int)k->x[1],
                                          (int)k->x[2], (int)k->x[3]);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cu_dnn.cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NCHW, t, (int)k->y[0],
                                              (int)k->y[1], (int)k->y[2], (int)k->y[3]);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cu_dnn.cudnnSetFilter4dDescriptor(p->wd, t, CUDNN_TENSOR_NCHW, (int)k->w[0],
                                              (int)k->w[1], (int)k->w[2], (int)k->w[3]);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cu_dnn.cudnnSetConvolution2dDescriptor(p->cd, k->pad[0], k->pad[1], k->stride[0],
                                                   k->stride[1], k->dil[0], k->dil[1],
                                                   CUDNN_CROSS_CORRELATION, ct);
    if (s == CUDNN_STATUS_SUCCESS) s = cu_dnn.cudnnSetConvolutionGroupCount(p->cd, k->groups);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cu_dnn.cudnnSetConvolutionMathType(
            p->cd, k->dtype == CT_FLOAT32 && !k->tf32 ? CUDNN_FMA_MATH
                   : cu_is_lowp((ct_dtype)k->dtype)   ? CUDNN_TENSOR_OP_MATH
                                                      : CUDNN_DEFAULT_MATH);
    if (s != CUDNN_STATUS_SUCCESS) return dnn_err(s, op, "descriptor setup");
    return 0;
}

/* Whether an algorithm result may be used under the current settings. */
static int algo_ok(const conv_key *k, cudnnStatus_t status, cudnnDeterminism_t det,
                   cudnnMathType_t math) {
    if (status != CUDNN_STATUS_SUCCESS) return 0;
    if (k->det && det != CUDNN_DETERMINISTIC) return 0;
    if (k->dtype == CT_FLOAT32 && !k->tf32 &&
        (math == CUDNN_TENSOR_OP_MATH || math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
        return 0;
    return 1;
}

/* Largest workspace any algorithm of the direction asks for (capped), allocated. */
static void *find_workspace(cu_dev *d, conv_plan *p, size_t *size) {
    size_t best = 0;
    const int n = p->key.dir == DIR_FWD        ? CUDNN_CONVOLUTION_FWD_ALGO_COUNT
                  : p->key.dir == DIR_BWD_DATA ? CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                                               : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    for (int a = 0; a < n; a++) {
        size_t sz = 0;
        cudnnStatus_t s;
        if (p->key.dir == DIR_FWD)
            s = cu_dnn.cudnnGetConvolutionForwardWorkspaceSize(d->dnn, p->xd, p->wd, p->cd, p->yd,
                                                               (cudnnConvolutionFwdAlgo_t)a, &sz);
        else if (p->key.dir == DIR_BWD_DATA)
            s = cu_dnn.cudnnGetConvolutionBackwardDataWorkspaceSize(
                d->dnn, p->wd, p->yd, p->cd, p->xd, (cudnnConvolutionBwdDataAlgo_t)a, &sz);
        else
            s = cu_dnn.cudnnGetConvolutionBackwardFilterWorkspaceSize(
                d->dnn, p->xd, p->yd, p->cd, p->wd, (cudnnConvolutionBwdFilterAlgo_t)a, &sz);
        if (s == CUDNN_STATUS_SUCCESS && sz > best) best = sz;
    }
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError();
    const size_t cap = (size_t)1 << 30;
    if (best > cap) best = cap;
    if (fr && best > fr / 2) best = fr / 2;
    while (best > 0) {
        void *ws = cu_malloc_dev(d, best);
        if (ws) {
            *size = best;
            return ws;
        }
        best /= 2; /* out of memory: time only the algorithms that fit */
    }
    *size = 0;
    return NULL;
}

/* Picks the algorithm of plan p (buffers are the op's own: Find runs on them). */
static int plan_choose(cu_dev *d, conv_plan *p, const void *x, const void *w, const void *y,
                       const char *op) {
    const conv_key *k = &p->key;
    int cnt = 0;
    cudnnStatus_t s;
    if (k->dir == DIR_FWD) s = cu_dnn.cudnnGetConvolutionForwardAlgorithmMaxCount(d->dnn, &cnt);
    else if (k->dir == DIR_BWD_DATA)
        s = cu_dnn.cudnnGetConvolutionBackwardDataAlgorithmMaxCount(d->dnn, &cnt);
    else s = cu_dnn.cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(d->dnn, &cnt);
    if (s != CUDNN_STATUS_SUCCESS || cnt <= 0) cnt = 16;
    /* The three perf structs share their first members' meaning; keep one array each. */
    cudnnConvolutionFwdAlgoPerf_t *pf = NULL;
    cudnnConvolutionBwdDataAlgoPerf_t *pd = NULL;
    cudnnConvolutionBwdFilterAlgoPerf_t *pw = NULL;
    if (k->dir == DIR_FWD) pf = calloc((size_t)cnt, sizeof *pf);
    else if (k->dir == DIR_BWD_DATA) pd = calloc((size_t)cnt, sizeof *pd);
    else pw = calloc((size_t)cnt, sizeof *pw);
    if (!pf && !pd && !pw) return cu_error("%s: out of host memory", op);
    int got = 0;
    size_t wsz = 0;
    void *ws = NULL;
    if (k->bench) {
        ws = find_workspace(d, p, &wsz);
        cudaGetLastError();
        if (k->dir == DIR_FWD)
            s = cu_dnn.cudnnFindConvolutionForwardAlgorithmEx(d->dnn, p->xd, x, p->wd, w, p->cd,
                                                              p->yd, (void *)y, cnt, &got, pf, ws,
                                                              wsz);
        else if (k->dir == DIR_BWD_DATA)
            s = cu_dnn.cudnnFindConvolutionBackwardDataAlgorithmEx(
                d->dnn, p->wd, w, p->yd, y, p->cd, p->xd, (void *)x, cnt, &got, pd, ws, wsz);
        else
            s = cu_dnn.cudnnFindConvolutionBackwardFilterAlgorithmEx(
                d->dnn, p->xd, x, p->yd, y, p->cd, p->wd, (void *)w, cnt, &got, pw, ws, wsz);
        if (ws) cu_free(ws, d->index);
    } else {
        if (k->dir == DIR_FWD)
            s = cu_dnn.cudnnGetConvolutionForwardAlgorithm_v7(d->dnn, p->xd, p->wd, p->cd, p->yd,
                                                              cnt, &got, pf);
        else if (k->dir == DIR_BWD_DATA)
            s = cu_dnn.cudnnGetConvolutionBackwardDataAlgorithm_v7(d->dnn, p->wd, p->yd, p->cd,
                                                                   p->xd, cnt, &got, pd);
        else
            s = cu_dnn.cudnnGetConvolutionBackwardFilterAlgorithm_v7(d->dnn, p->xd, p->yd, p->cd,
                                                                     p->wd, cnt, &got, pw);
    }
    int rc = 0;
    if (s != CUDNN_STATUS_SUCCESS) {
        rc = dnn_err(s, op, k->bench ? "algorithm search" : "algorithm heuristics");
    } else {
        int chosen = -1;
        cudnnMathType_t math = CUDNN_DEFAULT_MATH;
        for (int i = 0; i < got && chosen < 0; i++) {
            cudnnStatus_t st;
            cudnnDeterminism_t det;
            cudnnMathType_t mt;
            size_t mem;
            int algo;
#define PERF_FIELDS(P)                                                                     \
    do {                                                                                   \
        st = (P)[i].status;                                                                \
        det = (P)[i].determinism;                                                          \
        mt = (P)[i].mathType;                                                              \
        mem = (P)[i].memory;                                                               \
        algo = (int)(P)[i].algo;                                                           \
    } while (0)
            if (pf) PERF_FIELDS(pf);
            else if (pd) PERF_FIELDS(pd);
            else PERF_FIELDS(pw);
#undef PERF_FIELDS
            if (!algo_ok(k, st, det, mt)) continue;
            if (k->bench && mem > wsz) continue;
            chosen = algo;
            math = mt;
            p->ws = mem;
        }
        if (chosen < 0) {
            rc = cu_error("%s: cuDNN offers no usable algorithm for input [%lld, %lld, %lld, "
                          "%lld], weight [%lld, %lld, %lld, %lld]%s",
                          op, (long long)k->x[0], (long long)k->x[1], (long long)k->x[2],
                          (long long)k->x[3], (long long)k->w[0], (long long)k->w[1],
                          (long long)k->w[2], (long long)k->w[3],
                          k->det ? " among its deterministic ones (drop --deterministic / unset CTORCH_DETERMINISTIC)"
                                 : "");
        } else {
            p->algo = chosen;
            /* With TF32 allowed (or float64) use the math type the algorithm was timed with;
             * otherwise the descriptor keeps CUDNN_FMA_MATH. */
            if (!(k->dtype == CT_FLOAT32 && !k->tf32)) {
                s = cu_dnn.cudnnSetConvolutionMathType(p->cd, math);
                if (s != CUDNN_STATUS_SUCCESS) rc = dnn_err(s, op, "math type");
            }
        }
    }
    free(pf);
    free(pd);
    free(pw);
    return rc;
}

/* The cached plan for this problem, created (and its algorithm chosen) on first use.
 * Caller holds d->lib_mu. */
static conv_plan *get_plan(cu_dev *d, const conv_key *key, const void *x, const void *w,
                           const void *y) {
    for (conv_plan *p = d->plans; p; p = p->next)
        if (memcmp(&p->key, key, sizeof *key) == 0) return p;
    const char *op = dir_name[key->dir];
    conv_plan *p = calloc(1, sizeof *p);
    if (!p) return cu_error_null("%s: out of host memory", op);
    memcpy(&p->key, key, sizeof *key); /* with its (zeroed) padding: keys are memcmp'ed */
    if (plan_descriptors(p, op) != 0 || plan_choose(d, p, x, w, y, op) != 0) {
        plan_free(p);
        return NULL;
    }
    p->next = d->plans;
    d->plans = p;
    return p;
}

static int conv_key_init(conv_key *k, int dir, const ct_tensor *x, const ct_tensor *w,
                         const ct_tensor *y, const ct_conv_params *cp, const char *op) {
    memset(k, 0, sizeof *k);
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return cu_error("%s: expected 4-D input, weight and output", op);
    if (!cu_is_float(x->dtype) && !cu_is_lowp(x->dtype))
        return cu_error("%s: dtype %s not supported on cuda (float32, float64, bfloat16 or "
                        "float16)",
                        op, cu_dtype_name(x->dtype));
    if (w->dtype != x->dtype || y->dtype != x->dtype)
        return cu_error("%s: input, weight and output dtypes differ (%s, %s, %s); convert with "
                        "ct_to_dtype",
                        op, cu_dtype_name(x->dtype), cu_dtype_name(w->dtype),
                        cu_dtype_name(y->dtype));
    if (!cu_is_contiguous(x) || !cu_is_contiguous(w) || !cu_is_contiguous(y))
        return cu_error("%s: the cuda kernel needs contiguous tensors", op);
    if (!fits_int(x->shape, 4) || !fits_int(w->shape, 4) || !fits_int(y->shape, 4))
        return cu_error("%s: a tensor has 2^31 or more elements, more than cuDNN's convolution "
                        "accepts; split the batch",
                        op);
    k->dir = dir;
    k->dtype = (int)x->dtype;
    k->tf32 = x->dtype == CT_FLOAT32 && cu_tf32;
    k->det = cu_deterministic;
    /* Timing picks whichever algorithm is fastest on this run, which can differ between
     * runs; deterministic mode takes cuDNN's heuristic choice instead (as PyTorch advises
     * cudnn.benchmark = False with deterministic algorithms). */
    k->bench = cu_benchmark && !cu_deterministic;
    memcpy(k->x, x->shape, sizeof k->x);
    memcpy(k->w, w->shape, sizeof k->w);
    memcpy(k->y, y->shape, sizeof k->y);
    for (int i = 0; i < 2; i++) {
        k->stride[i] = cp->stride[i];
        k->pad[i] = cp->padding[i];
        k->dil[i] = cp->dilation[i] > 0 ? cp->dilation[i] : 1;
    }
    k->groups = cp->groups > 0 ? cp->groups : 1;
    return 0;
}

static int zero_fill(cu_dev *d, ct_tensor *t, const char *op) {
    cuk_geom g;
    memset(&g, 0, sizeof g);
    int64_t n = cu_numel(t);
    g.ndim = 1;
    g.shape[0] = n;
    g.stride[0][0] = 1;
    return cu_fail(cuk_fill(&d->k, cu_dsize(t->dtype), &g, n, cu_ptr(t), 0), op);
}

/* Runs direction `dir` with x [N,C,H,W], w [O,C/g,kh,kw], y [N,O,Ho,Wo]; the output is y
 * (forward), x (backward data) or w (backward filter). */
static int conv_run(int dir, ct_tensor *x, ct_tensor *w, ct_tensor *y, const ct_conv_params *cp) {
    const char *op = dir_name[dir];
    conv_key key;
    if (conv_key_init(&key, dir, x, w, y, cp, op) != 0) return -1;
    ct_tensor *out = dir == DIR_FWD ? y : dir == DIR_BWD_DATA ? x : w;
    if (cu_numel(out) == 0) return 0;
    cu_dev *d = cu_dev_of(out);
    if (!d) return -1;
    /* Degenerate problems cuDNN rejects: the output is all zeros. */
    if (cu_numel(x) == 0 || cu_numel(w) == 0 || cu_numel(y) == 0) return zero_fill(d, out, op);
    void *px = cu_ptr(x), *pw = cu_ptr(w), *py = cu_ptr(y);
    pthread_mutex_lock(&d->lib_mu);
    conv_plan *p = get_plan(d, &key, px, pw, py);
    if (!p) {
        pthread_mutex_unlock(&d->lib_mu);
        return -1;
    }
    void *ws = NULL;
    if (p->ws > 0) {
        ws = cu_malloc_dev(d, p->ws);
        if (!ws) {
            pthread_mutex_unlock(&d->lib_mu);
            return -1;
        }
    }
    const double one = 1.0, zero = 0.0;
    const float onef = 1.0f, zerof = 0.0f;
    const int f64 = key.dtype == CT_FLOAT64;
    const void *alpha = f64 ? (const void *)&one : (const void *)&onef;
    const void *beta = f64 ? (const void *)&zero : (const void *)&zerof;
    cudnnStatus_t s;
    if (dir == DIR_FWD)
        s = cu_dnn.cudnnConvolutionForward(d->dnn, alpha, p->xd, px, p->wd, pw, p->cd,
                                           (cudnnConvolutionFwdAlgo_t)p->algo, ws, p->ws, beta,
                                           p->yd, py);
    else if (dir == DIR_BWD_DATA)
        s = cu_dnn.cudnnConvolutionBackwardData(d->dnn, alpha, p->wd, pw, p->yd, py, p->cd,
                                                (cudnnConvolutionBwdDataAlgo_t)p->algo, ws, p->ws,
                                                beta, p->xd, px);
    else
        s = cu_dnn.cudnnConvolutionBackwardFilter(d->dnn, alpha, p->xd, px, p->yd, py, p->cd,
                                                  (cudnnConvolutionBwdFilterAlgo_t)p->algo, ws,
                                                  p->ws, beta, p->wd, pw);
    if (ws) cu_free(ws, d->index);
    pthread_mutex_unlock(&d->lib_mu);
    if (s != CUDNN_STATUS_SUCCESS) return dnn_err(s, op, "convolution");
    return 0;
}

int cu_k_conv2d_forward(ct_tensor *y, const ct_tensor *x, const ct_tensor *w, const ct_tensor *bias,
                      const ct_conv_params *p) {
    if (conv_run(DIR_FWD, (ct_tensor *)x, (ct_tensor *)w, y, p) != 0) return -1;
    if (!bias || cu_numel(y) == 0) return 0;
    if (bias->dtype != y->dtype || !cu_is_contiguous(bias))
        return cu_error("conv2d: bias must be contiguous with the input's dtype (%s, got %s)",
                        cu_dtype_name(y->dtype), cu_dtype_name(bias->dtype));
    cu_dev *d = cu_dev_of(y);
    if (!d) return -1;
    return cu_fail(cuk_bias_add(&d->k, (int)y->dtype, cu_ptr(y), cu_ptr(bias), y->shape[0],
                                y->shape[1], y->shape[2] * y->shape[3]),
                   "conv2d");
}

int cu_k_conv2d_backward_input(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                            const ct_conv_params *p) {
    return conv_run(DIR_BWD_DATA, gx, (ct_tensor *)w, (ct_tensor *)gy, p);
}

int cu_k_conv2d_backward_weight(ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                                const ct_tensor *x, const ct_conv_params *p) {
    if (conv_run(DIR_BWD_FILTER, (ct_tensor *)x, gw, (ct_tensor *)gy, p) != 0) return -1;
    if (!gb) return 0;
    /* the bias gradient: gy summed over N, H and W, into gb seen as [1, O, 1, 1] (a view
     * made here: the plugin calls no function of the core) */
    ct_tensor gb4 = {.storage = gb->storage, .dtype = gb->dtype, .ndim = 4,
                     .shape = {1, gy->shape[1], 1, 1}, .stride = {0, gb->stride[0], 0, 0},
                     .offset = gb->offset};
    const int red[4] = {1, 0, 1, 1};
    return cu_k_reduce(CT_RED_SUM, &gb4, NULL, gy, red);
}

/* max_pool2d(relu(conv2d(x))): cuDNN's convolution into a scratch tensor, then one pass of
 * the codes pooling kernel with the ReLU fused. */
int cu_k_conv2d_relu_max_pool2d_forward(ct_tensor *yp, ct_tensor *codes, const ct_tensor *x,
                                        const ct_tensor *w, const ct_tensor *bias,
                                        const ct_conv_params *p, const ct_pool_params *pp) {
    int64_t sh[4] = {x->shape[0], w->shape[0],
                     (x->shape[2] + 2 * p->padding[0] - p->dilation[0] * (w->shape[2] - 1) - 1) /
                             p->stride[0] + 1,
                     (x->shape[3] + 2 * p->padding[1] - p->dilation[1] * (w->shape[3] - 1) - 1) /
                             p->stride[1] + 1};
    cu_dev *d = cu_dev_of(x);
    const size_t bytes = (size_t)(sh[0] * sh[1] * sh[2] * sh[3]) * cu_dsize(x->dtype);
    void *scratch = d && bytes ? cu_malloc_dev(d, bytes) : NULL;
    if (!d || (bytes && !scratch)) return -1;
    ct_storage st = {.data = scratch, .nbytes = bytes, .device = x->storage->device};
    ct_tensor y = {.storage = &st, .dtype = x->dtype, .ndim = 4,
                   .shape = {sh[0], sh[1], sh[2], sh[3]},
                   .stride = {sh[1] * sh[2] * sh[3], sh[2] * sh[3], sh[3], 1}};
    int rc = cu_k_conv2d_forward(&y, x, w, bias, p);
    if (rc == 0) rc = cu_k_max_pool2d_codes_forward(yp, codes, &y, pp, 1);
    cu_free(scratch, d->index); /* stream-ordered: reused only after the pooling ran */
    return rc;
}
