/* emu_cublas.c -- a CPU stand-in for cuBLAS 13 (libcublas.so.13), for the CUDA emulator.
 *
 * The emulator makes device memory ordinary host memory, so every "device pointer" handed
 * to this library is dereferenced directly. This file implements the part of cuBLAS that
 * ctorch's CUDA plugin resolves (src/backends/cuda/cuda_host.h, CU_BLAS_FUNCS) and a few
 * neighbours, following the cuBLAS Library User Guide (CUDA 13):
 *
 *   - cublasCreate_v2 / cublasDestroy_v2: a real allocated handle; a NULL, destroyed or
 *     foreign handle gives CUBLAS_STATUS_NOT_INITIALIZED ("the library was not
 *     initialized"), as cuBLAS does for an invalid handle.
 *   - cublasSetStream_v2: records the stream and, as documented, "unconditionally resets
 *     the cuBLAS library workspace back to the default workspace pool".
 *   - cublasSetWorkspace_v2: a user-owned workspace; the pointer must be aligned to at
 *     least 256 bytes, otherwise CUBLAS_STATUS_INVALID_VALUE. cuBLAS may use it as scratch
 *     during any call on the handle: this emulator scribbles over its first and last
 *     4 KiB in every GEMM, so a workspace the caller still uses (or freed) shows up.
 *   - cublasGemmStridedBatchedEx: for every batch b in [0, batchCount)
 *         C_b = alpha * op(A_b) op(B_b) + beta * C_b,
 *     all matrices column-major: op(A) is m x k (A is m x k with lda >= max(1, m) when
 *     transa == CUBLAS_OP_N, k x m with lda >= max(1, k) otherwise), op(B) is k x n
 *     (ldb >= max(1, k) for N, >= max(1, n) otherwise), C is m x n with ldc >= max(1, m);
 *     X_b = X + b * strideX elements. CUBLAS_OP_C equals CUBLAS_OP_T for real types.
 *     alpha and beta are read from host memory (default pointer mode; in device pointer
 *     mode they are dereferenced the same way, device memory being host memory here) as
 *     the compute type's scale type (half for CUBLAS_COMPUTE_16F*, float for *_32F*,
 *     double for *_64F*). beta == 0: C is not read (it may hold NaN); alpha == 0 or
 *     k == 0: A and B are not read. Products are accumulated in double and rounded once
 *     to Ctype (via float for CUDA_R_16F / CUDA_R_16BF, as an FP32-accumulating GPU does;
 *     16-bit values are converted with src/core/half.h, round to nearest even). CUBLAS_STATUS_INVALID_VALUE for m, n, k or batchCount < 0, a transa /
 *     transb other than N, T, C, a leading dimension below the minimum above, alpha or
 *     beta NULL; CUBLAS_STATUS_NOT_SUPPORTED for an Atype/Btype/Ctype/computeType
 *     combination outside the cublasGemmEx table (emulated: the float types 16F, 16BF,
 *     32F, 64F) or an unknown algo; CUBLAS_STATUS_INVALID_VALUE for an unknown computeType.
 *     Arguments are validated before anything is read or written.
 *   - Precision as the compute type says: CUBLAS_COMPUTE_32F_FAST_TF32 rounds A and B to
 *     TF32 (10-bit mantissa) before multiplying, _FAST_16F to half, _FAST_16BF to
 *     bfloat16; CUBLAS_COMPUTE_32F and the _PEDANTIC types never (the math mode stays
 *     CUBLAS_DEFAULT_MATH: the plugin never sets one). NVIDIA_TF32_OVERRIDE=0 turns
 *     TF32 off, as it does for the real libraries.
 *   - cublasGetStatusString / cublasGetStatusName: the real library's strings.
 *   - cublasGetVersion_v2: CUBLAS_VERSION of the
 *     headers this is compiled against (13.1.0 -> 130100).
 * Symbols are exported under the names the real libcublas.so.13 exports: the header maps
 * cublasCreate to cublasCreate_v2 and so on, and the real library has no plain
 * cublasCreate, so neither does this one (a dlsym of the unmapped name fails here too).
 *
 * Diagnostics: with CUBLAS_LOGINFO_DBG=1 or CUDA_EMU_VERBOSE=1 every failing call prints
 * why to stderr (or to CUBLAS_LOGDEST_DBG: stdout, stderr or a file name).
 * Undefined behaviour in real cuBLAS that this emulator can see (batches of C that
 * overlap) is reported the same way; CUDA_EMU_STRICT=1 turns it into
 * CUBLAS_STATUS_INVALID_VALUE.
 *
 * Build (see LIBS.md):
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -fPIC -I/usr/local/cuda/include \
 *       -shared -o libcublas.so.13 -Wl,-soname,libcublas.so.13 emu_cublas.c
 */
#include <cublas_v2.h>

#include "../../src/core/half.h"
#include "emu_flush.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMU_BLAS_MAGIC 0x454d4342u /* "EMCB" */
#define EMU_BLAS_DEAD 0xdeadcb1au

struct cublasContext {
    unsigned magic;
    cudaStream_t stream;
    void *workspace; /* user workspace (cublasSetWorkspace), NULL: the default pool */
    size_t workspace_size;
};

/* ------------------------------------------------------------------ diagnostics */
static int env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static int log_on(void) { return env_on("CUBLAS_LOGINFO_DBG") || env_on("CUDA_EMU_VERBOSE"); }

/* Prints one diagnostic line to CUBLAS_LOGDEST_DBG (stdout, stderr or a file; stderr when
 * unset). */
static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
    const char *dest = getenv("CUBLAS_LOGDEST_DBG");
    FILE *f = stderr, *g = NULL;
    if (dest && strcmp(dest, "stdout") == 0) f = stdout;
    else if (dest && *dest && strcmp(dest, "stderr") != 0 && (g = fopen(dest, "a"))) f = g;
    va_list ap;
    va_start(ap, fmt);
    fputs("[emu cuBLAS] ", f);
    vfprintf(f, fmt, ap);
    fputc('\n', f);
    va_end(ap);
    if (g) fclose(g);
    else fflush(f);
}

const char *CUBLASWINAPI cublasGetStatusName(cublasStatus_t status);

/* Logs "fn: STATUS: why" when logging is on; returns st. */
static cublasStatus_t fail(const char *fn, cublasStatus_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static cublasStatus_t fail(const char *fn, cublasStatus_t st, const char *fmt, ...) {
    if (log_on()) {
        char buf[768];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        emit("%s: %s: %s", fn, cublasGetStatusName(st), buf);
    }
    return st;
}

static int handle_ok(cublasHandle_t h) { return h && h->magic == EMU_BLAS_MAGIC; }

/* ---------------------------------------------------------------- status strings */
/* The strings of the real libcublas.so.13 (cublasGetStatusName / cublasGetStatusString). */
const char *CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "unrecognized status";
}

const char *CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "an unsupported value or parameter was passed to the function";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "the function requires an architectural feature absent from the device";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the function failed to launch on the GPU";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "the license check failed";
    }
    return "unrecognized status";
}

/* ------------------------------------------------------------ version, properties */
cublasStatus_t CUBLASWINAPI cublasGetVersion_v2(cublasHandle_t handle, int *version) {
    (void)handle; /* the real library answers without a handle too */
    if (!version) return fail("cublasGetVersion_v2", CUBLAS_STATUS_INVALID_VALUE, "version is NULL");
    *version = CUBLAS_VERSION;
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------ handle */
cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t *handle) {
    if (!handle) return fail("cublasCreate_v2", CUBLAS_STATUS_INVALID_VALUE, "handle is NULL");
    struct cublasContext *h = calloc(1, sizeof *h);
    if (!h) return fail("cublasCreate_v2", CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
    h->magic = EMU_BLAS_MAGIC;
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
    if (!handle_ok(handle))
        return fail("cublasDestroy_v2", CUBLAS_STATUS_NOT_INITIALIZED,
                    "handle %p is NULL, destroyed or not a cuBLAS handle", (void *)handle);
    handle->magic = EMU_BLAS_DEAD;
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
    if (!handle_ok(handle))
        return fail("cublasSetStream_v2", CUBLAS_STATUS_NOT_INITIALIZED, "invalid handle %p",
                    (void *)handle);
    handle->stream = streamId;
    /* "cublasSetStream() unconditionally resets the cuBLAS library workspace back to the
     * default workspace pool" */
    handle->workspace = NULL;
    handle->workspace_size = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace,
                                                  size_t workspaceSizeInBytes) {
    if (!handle_ok(handle))
        return fail("cublasSetWorkspace_v2", CUBLAS_STATUS_NOT_INITIALIZED, "invalid handle %p",
                    (void *)handle);
    if (workspace && ((uintptr_t)workspace & 255u) != 0)
        return fail("cublasSetWorkspace_v2", CUBLAS_STATUS_INVALID_VALUE,
                    "workspace %p is not aligned to 256 bytes (cudaMalloc memory is)", workspace);
    if (!workspace && workspaceSizeInBytes > 0)
        return fail("cublasSetWorkspace_v2", CUBLAS_STATUS_INVALID_VALUE,
                    "workspace is NULL but its size is %zu bytes", workspaceSizeInBytes);
    handle->workspace = workspaceSizeInBytes ? workspace : NULL;
    handle->workspace_size = workspace ? workspaceSizeInBytes : 0;
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------- element types, rounding */
static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* bfloat16 / float16 <-> float: src/core/half.h's conversions (round to nearest even, the
 * ones ctorch's CPU kernels and the plugin's own kernels use), so that an emulated 16-bit
 * GEMM is "compute exactly, round once" with the same rounding as everything else. */
static float half_to_float(uint16_t h) { return ct_f16_to_f32(h); }
static uint16_t float_to_half(float f) { return ct_f32_to_f16(f); }
static float bf16_to_float(uint16_t b) { return ct_bf16_to_f32(b); }
static uint16_t float_to_bf16(float f) { return ct_f32_to_bf16(f); }

/* Rounds a float to TF32 (8-bit exponent, 10-bit mantissa), to nearest even. */
static float round_tf32(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return f; /* inf, nan */
    u += 0xfffu + ((u >> 13) & 1u);
    u &= ~0x1fffu;
    return f32_from_bits(u);
}

typedef enum { RND_NONE, RND_TF32, RND_HALF, RND_BF16 } rnd_mode;

static double round_input(double v, rnd_mode r) {
    switch (r) {
    case RND_NONE: return v;
    case RND_TF32: return round_tf32((float)v);
    case RND_HALF: return half_to_float(float_to_half((float)v));
    case RND_BF16: return bf16_to_float(float_to_bf16((float)v));
    }
    return v;
}

static size_t type_size(cudaDataType t) {
    switch (t) {
    case CUDA_R_16F: case CUDA_R_16BF: return 2;
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    default: return 0;
    }
}

static double load(cudaDataType t, const void *base, int64_t i) {
    switch (t) {
    case CUDA_R_16F: return half_to_float(((const uint16_t *)base)[i]);
    case CUDA_R_16BF: return bf16_to_float(((const uint16_t *)base)[i]);
    case CUDA_R_32F: return ((const float *)base)[i];
    case CUDA_R_64F: return ((const double *)base)[i];
    default: return 0;
    }
}

static void store(cudaDataType t, void *base, int64_t i, double v) {
    switch (t) {
    case CUDA_R_16F: ((uint16_t *)base)[i] = float_to_half((float)v); break;
    case CUDA_R_16BF: ((uint16_t *)base)[i] = float_to_bf16((float)v); break;
    case CUDA_R_32F: ((float *)base)[i] = (float)v; break;
    case CUDA_R_64F: ((double *)base)[i] = v; break;
    default: break;
    }
}

static const char *type_name(cudaDataType t) {
    switch (t) {
    case CUDA_R_16F: return "CUDA_R_16F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_64F: return "CUDA_R_64F";
    case CUDA_R_8I: return "CUDA_R_8I";
    case CUDA_R_32I: return "CUDA_R_32I";
    default: return "another cudaDataType";
    }
}

static int tf32_allowed(void) {
    const char *v = getenv("NVIDIA_TF32_OVERRIDE");
    return !(v && strcmp(v, "0") == 0);
}

/* The cublasGemmEx type table (cuBLAS guide, "cublasGemmEx": Atype/Btype/Ctype per
 * computeType and the scale type of alpha/beta), restricted to the real floating types. */
static cublasStatus_t check_types(const char *fn, cudaDataType at,
                                  cudaDataType bt, cudaDataType ct, cublasComputeType_t comp,
                                  cudaDataType *scale, rnd_mode *rnd) {
    *rnd = RND_NONE;
    const int tf32 = tf32_allowed();
    switch (comp) {
    case CUBLAS_COMPUTE_16F:
    case CUBLAS_COMPUTE_16F_PEDANTIC:
        *scale = CUDA_R_16F;
        if (at == CUDA_R_16F && bt == CUDA_R_16F && ct == CUDA_R_16F) return CUBLAS_STATUS_SUCCESS;
        break;
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        *scale = CUDA_R_32F;
        if (at == bt && (at == CUDA_R_32F || at == CUDA_R_16F || at == CUDA_R_16BF) &&
            (ct == at || ct == CUDA_R_32F)) {
            return CUBLAS_STATUS_SUCCESS;
        }
        break;
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUBLAS_COMPUTE_32F_EMULATED_16BFX9:
        *scale = CUDA_R_32F;
        if (at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F) {
            if (comp == CUBLAS_COMPUTE_32F_FAST_16F) *rnd = RND_HALF;
            else if (comp == CUBLAS_COMPUTE_32F_FAST_16BF) *rnd = RND_BF16;
            else if (comp == CUBLAS_COMPUTE_32F_FAST_TF32) *rnd = tf32 ? RND_TF32 : RND_NONE;
            return CUBLAS_STATUS_SUCCESS;
        }
        break;
    case CUBLAS_COMPUTE_64F:
    case CUBLAS_COMPUTE_64F_PEDANTIC:
    case CUBLAS_COMPUTE_64F_EMULATED_FIXEDPOINT:
        *scale = CUDA_R_64F;
        if (at == CUDA_R_64F && bt == CUDA_R_64F && ct == CUDA_R_64F) return CUBLAS_STATUS_SUCCESS;
        break;
    case CUBLAS_COMPUTE_32I:
    case CUBLAS_COMPUTE_32I_PEDANTIC:
        *scale = CUDA_R_32I;
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                    "CUBLAS_COMPUTE_32I is not emulated (floating types only)");
    default:
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "computeType %d is not a cublasComputeType_t",
                    (int)comp);
    }
    return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                "Atype %s, Btype %s, Ctype %s are not a supported combination for computeType %d",
                type_name(at), type_name(bt), type_name(ct), (int)comp);
}

static int algo_valid(cublasGemmAlgo_t a) {
    const int v = (int)a;
    return v == CUBLAS_GEMM_DEFAULT || (v >= CUBLAS_GEMM_ALGO0 && v <= CUBLAS_GEMM_ALGO23) ||
           (v >= CUBLAS_GEMM_DEFAULT_TENSOR_OP && v <= CUBLAS_GEMM_ALGO15_TENSOR_OP) ||
           v == CUBLAS_GEMM_AUTOTUNE;
}

static double load_scalar(cudaDataType scale, const void *p) {
    switch (scale) {
    case CUDA_R_16F: return half_to_float(*(const uint16_t *)p);
    case CUDA_R_32F: return *(const float *)p;
    case CUDA_R_64F: return *(const double *)p;
    default: return 0;
    }
}

static const char *op_name(cublasOperation_t op) {
    return op == CUBLAS_OP_N ? "N" : op == CUBLAS_OP_T ? "T" : op == CUBLAS_OP_C ? "C" : "?";
}

/* Scribbles over the ends of the handle's user workspace: cuBLAS may use it as scratch. */
static void touch_workspace(cublasHandle_t h) {
    if (!h->workspace || !h->workspace_size) return;
    const size_t n = h->workspace_size < 4096 ? h->workspace_size : 4096;
    memset(h->workspace, 0xcb, n);
    memset((char *)h->workspace + h->workspace_size - n, 0xcb, n);
}

/* ------------------------------------------------------------------------- GEMM */
cublasStatus_t CUBLASWINAPI cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
    const void *alpha, const void *A, cudaDataType Atype, int lda, long long int strideA,
    const void *B, cudaDataType Btype, int ldb, long long int strideB, const void *beta, void *C,
    cudaDataType Ctype, int ldc, long long int strideC, int batchCount,
    cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    static const char fn[] = "cublasGemmStridedBatchedEx";
    if (!handle_ok(handle))
        return fail(fn, CUBLAS_STATUS_NOT_INITIALIZED,
                    "handle %p is NULL, destroyed or not a cuBLAS handle", (void *)handle);
    /* --- argument checks (cuBLAS guide, cublasGemmEx / cublas<t>gemmStridedBatched) --- */
    if (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T && transa != CUBLAS_OP_C)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "transa %d is not N, T or C", (int)transa);
    if (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T && transb != CUBLAS_OP_C)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "transb %d is not N, T or C", (int)transb);
    if (m < 0 || n < 0 || k < 0)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "negative size m=%d n=%d k=%d", m, n, k);
    if (batchCount < 0)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "batchCount %d < 0", batchCount);
    const int ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    const int rows_a = ta ? k : m, rows_b = tb ? n : k;
    const int min_lda = rows_a > 1 ? rows_a : 1, min_ldb = rows_b > 1 ? rows_b : 1,
              min_ldc = m > 1 ? m : 1;
    if (lda < min_lda)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                    "lda=%d < max(1, %s)=%d (transa=%s, m=%d, k=%d: A is stored %d x %d)", lda,
                    ta ? "k" : "m", min_lda, op_name(transa), m, k, rows_a, ta ? m : k);
    if (ldb < min_ldb)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                    "ldb=%d < max(1, %s)=%d (transb=%s, n=%d, k=%d: B is stored %d x %d)", ldb,
                    tb ? "n" : "k", min_ldb, op_name(transb), n, k, rows_b, tb ? k : n);
    if (ldc < min_ldc)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "ldc=%d < max(1, m)=%d", ldc, min_ldc);
    if (!alpha || !beta)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "%s is NULL", !alpha ? "alpha" : "beta");
    cudaDataType scale = CUDA_R_32F;
    rnd_mode rnd;
    cublasStatus_t st = check_types(fn, Atype, Btype, Ctype, computeType, &scale, &rnd);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (!algo_valid(algo))
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "algo %d is not a cublasGemmAlgo_t", (int)algo);

    /* --- quick return --- */
    if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;

    const double al = load_scalar(scale, alpha), be = load_scalar(scale, beta);
    const int use_ab = k > 0 && al != 0;
    if (!C) return fail(fn, CUBLAS_STATUS_EXECUTION_FAILED, "C is NULL (illegal address on a GPU)");
    if (use_ab && (!A || !B))
        return fail(fn, CUBLAS_STATUS_EXECUTION_FAILED, "%s is NULL (illegal address on a GPU)",
                    !A ? "A" : "B");
    if (batchCount > 1) {
        /* The C matrices of different batches must not overlap (undefined in cuBLAS). */
        const long long span = (long long)ldc * (n - 1) + m; /* elements one C covers */
        const long long sc = strideC < 0 ? -strideC : strideC;
        if (sc < span) {
            if (env_on("CUDA_EMU_STRICT"))
                return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                            "strideC=%lld: the %d C matrices (each %lld elements apart at "
                            "least) overlap",
                            strideC, batchCount, span);
            if (log_on())
                emit("%s: warning: strideC=%lld < ldc*(n-1)+m=%lld: the C matrices of the %d "
                 "batches overlap (undefined behaviour in cuBLAS)",
                 fn, strideC, span, batchCount);
        }
    }
    emu_flush_stream(handle->stream);
    touch_workspace(handle);
    /* CT_EMU_SKIP_COMPUTE: validated, not computed (host-overhead measurements) */
    if (env_on("CT_EMU_SKIP_COMPUTE")) return CUBLAS_STATUS_SUCCESS;

    const size_t esa = type_size(Atype), esb = type_size(Btype), esc = type_size(Ctype);
    double *Ad = NULL, *Bd = NULL;
    if (use_ab) {
        Ad = malloc((size_t)m * (size_t)k * sizeof *Ad); /* op(A) row i: Ad[i*k + l] */
        Bd = malloc((size_t)n * (size_t)k * sizeof *Bd); /* op(B) column j: Bd[j*k + l] */
        if (!Ad || !Bd) {
            free(Ad);
            free(Bd);
            return fail(fn, CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
        }
    }
    for (int b = 0; b < batchCount; b++) {
        char *Cb = (char *)C + (ptrdiff_t)((long long)b * strideC) * (ptrdiff_t)esc;
        if (use_ab) {
            const char *Ab = (const char *)A + (ptrdiff_t)((long long)b * strideA) * (ptrdiff_t)esa;
            const char *Bb = (const char *)B + (ptrdiff_t)((long long)b * strideB) * (ptrdiff_t)esb;
            /* op(A)(i, l) = A[i + l*lda] (N) or A[l + i*lda] (T/C) */
            for (int i = 0; i < m; i++)
                for (int l = 0; l < k; l++) {
                    const int64_t idx = ta ? (int64_t)l + (int64_t)i * lda : (int64_t)i + (int64_t)l * lda;
                    Ad[(size_t)i * k + l] = round_input(load(Atype, Ab, idx), rnd);
                }
            /* op(B)(l, j) = B[l + j*ldb] (N) or B[j + l*ldb] (T/C) */
            for (int j = 0; j < n; j++)
                for (int l = 0; l < k; l++) {
                    const int64_t idx = tb ? (int64_t)j + (int64_t)l * ldb : (int64_t)l + (int64_t)j * ldb;
                    Bd[(size_t)j * k + l] = round_input(load(Btype, Bb, idx), rnd);
                }
        }
        for (int j = 0; j < n; j++) {
            const double *bj = use_ab ? Bd + (size_t)j * k : NULL;
            for (int i = 0; i < m; i++) {
                double acc = 0;
                if (use_ab) {
                    const double *ai = Ad + (size_t)i * k;
                    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                    int l = 0;
                    for (; l + 4 <= k; l += 4) {
                        s0 += ai[l] * bj[l];
                        s1 += ai[l + 1] * bj[l + 1];
                        s2 += ai[l + 2] * bj[l + 2];
                        s3 += ai[l + 3] * bj[l + 3];
                    }
                    for (; l < k; l++) s0 += ai[l] * bj[l];
                    acc = al * ((s0 + s1) + (s2 + s3));
                }
                const int64_t ci = (int64_t)i + (int64_t)j * ldc;
                if (be != 0) acc += be * load(Ctype, Cb, ci); /* beta == 0: C is not read */
                store(Ctype, Cb, ci, acc);
            }
        }
    }
    free(Ad);
    free(Bd);
    return CUBLAS_STATUS_SUCCESS;
}
