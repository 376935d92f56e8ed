/* emu_cudnn.c -- a CPU stand-in for cuDNN 9 (libcudnn.so.9), for the CUDA emulator.
 *
 * The emulator makes device memory ordinary host memory, so every "device pointer" handed
 * to this library is dereferenced directly. This file implements the legacy (descriptor)
 * convolution API that ctorch's CUDA plugin resolves (src/backends/cuda/cuda_host.h,
 * CU_DNN_FUNCS) and a few neighbours, following the cuDNN 9 API reference (cudnn_graph,
 * cudnn_ops and cudnn_cnn libraries):
 *
 *   Tensors. cudnnSetTensor4dDescriptor(format, type, n, c, h, w): NCHW gives the strides
 *   (c*h*w, h*w, w, 1), NHWC (h*w*c, 1, w*c, c); n, c, h, w must be positive
 *   (CUDNN_STATUS_BAD_PARAM), CUDNN_TENSOR_NCHW_VECT_C is for the vectorised int8 types
 *   only. Element (n, c, h, w) lives at n*nStride + c*cStride + h*hStride + w*wStride,
 *   whatever the format: every access here goes through the descriptor's strides.
 *   Filters. cudnnSetFilter4dDescriptor(type, format, k, c, h, w): NCHW is the KCRS layout,
 *   NHWC is KRSC (k output maps, c = input maps per group, r x s taps).
 *   Convolutions. cudnnSetConvolution2dDescriptor(pad_h, pad_w, u, v, dilation_h,
 *   dilation_w, mode, computeType): pads >= 0, strides and dilations > 0. Group count
 *   (default 1) and math type (default CUDNN_DEFAULT_MATH) are separate setters.
 *
 *   Forward, with G groups, K/G output maps and C/G input maps per group:
 *     y[n,k,p,q] = alpha * sum_{c<C/G, r<R, s<S} w[k,c,r',s'] *
 *                          x[n, g*C/G + c, p*u - pad_h + r*dil_h, q*v - pad_w + s*dil_w]
 *                  + beta * y[n,k,p,q]          (g = k / (K/G); out-of-range x reads 0)
 *   with r' = r, s' = s for CUDNN_CROSS_CORRELATION and r' = R-1-r, s' = S-1-s for
 *   CUDNN_CONVOLUTION (the flipped kernel). Backward data is the adjoint in x, backward
 *   filter the adjoint in w (same blending: out = alpha * result + beta * out). The output
 *   size must be 1 + (in + 2*pad - ((filter-1)*dilation + 1)) / stride.
 *   Products accumulate in double; the output is
 *   rounded once. beta == 0: the output is not read ("when beta is zero, the output is not
 *   read and may contain uninitialized data, including NaN"). alpha/beta are float for
 *   float, half and bfloat16 data and double for double data, in host memory.
 *
 *   Supported configurations: FLOAT_CONFIG (float data, float computeType),
 *   DOUBLE_CONFIG (double data and computeType), PSEUDO_HALF_CONFIG and
 *   PSEUDO_BFLOAT16_CONFIG (half / bfloat16 data, float computeType: the 16-bit inputs are
 *   widened exactly, the result is rounded once to the output through float, with
 *   src/core/half.h's round to nearest even); others (TRUE_HALF_CONFIG among them) give
 *   CUDNN_STATUS_NOT_SUPPORTED.
 *   Float data with math type CUDNN_DEFAULT_MATH / CUDNN_TENSOR_OP_MATH* run on the
 *   "tensor core" algorithms (forward IMPLICIT_GEMM and IMPLICIT_PRECOMP_GEMM, backward
 *   data ALGO_1, backward filter ALGO_1) round their inputs to TF32 as an Ampere+ GPU does;
 *   CUDNN_FMA_MATH never does; NVIDIA_TF32_OVERRIDE=0 turns TF32 off everywhere.
 *
 *   Argument checks, before anything is read or written (cudnnConvolutionForward,
 *   ...BackwardData, ...BackwardFilter "Returns"): a NULL handle, descriptor, data
 *   pointer, alpha or beta, an unset or destroyed descriptor, different data types, x's
 *   channels != filter's c * groups, y's channels != filter's k, different batch sizes, a
 *   filter larger than the padded input -> CUDNN_STATUS_BAD_PARAM; k not a multiple of the
 *   group count -> BAD_PARAM (forward, backward filter) / CUDNN_STATUS_NOT_SUPPORTED
 *   (backward data); y's spatial size not the one above -> NOT_SUPPORTED (forward) /
 *   BAD_PARAM (backward data and filter); negative strides, an unsupported configuration,
 *   or an algorithm that does not support the problem -> NOT_SUPPORTED; an algo outside its
 *   enum -> BAD_PARAM; a workspace smaller than Get*WorkspaceSize says (or NULL when one is
 *   needed) -> BAD_PARAM. The reason goes to cudnnGetLastErrorString, and to stderr with
 *   CUDNN_LOGERR_DBG=1 (destination CUDNN_LOGDEST_DBG) or CUDA_EMU_VERBOSE=1.
 *
 *   Algorithms. Every algorithm computes the same (exact) result; they differ in what
 *   they support, the workspace they need, their determinism and tensor-core use, as
 *   reported by Get*WorkspaceSize, Find*AlgorithmEx and Get*Algorithm_v7 (table below).
 *   An algorithm that needs a workspace scribbles over all of it before computing, so a
 *   workspace that aliases live data shows up as a wrong result.
 *   Find*AlgorithmEx runs the convolution on the caller's buffers, then (as documented:
 *   "the content of this tensor will be overwritten with arbitrary values") fills the
 *   output with NaN, and returns one cudnn*AlgoPerf_t per algorithm (at most
 *   requestedAlgoCount): those that ran first, sorted by a synthetic, reproducible time
 *   (2*MACs at 1 TFLOP/s plus 10 us, times a per-algorithm factor, halved for TF32), then
 *   the failures:
 *   CUDNN_STATUS_ALLOC_FAILED where the workspace passed is too small,
 *   CUDNN_STATUS_NOT_SUPPORTED where the algorithm does not apply (time -1).
 *   Get*Algorithm_v7 returns every algorithm in a fixed heuristic order with the same
 *   statuses, memory, determinism and math type, time -1. The environment variables
 *   CUDA_EMU_CUDNN_FWD_ALGO, CUDA_EMU_CUDNN_BWD_DATA_ALGO and CUDA_EMU_CUDNN_BWD_FILTER_ALGO
 *   (an algorithm number) make that algorithm the fastest and the heuristics' first choice,
 *   to exercise each path.
 *
 * cudnnGetVersion returns CUDNN_VERSION of the headers this is compiled against (9.19.0 ->
 * 91900); cudnnGetErrorString the real library's status names.
 *
 * Build (see LIBS.md):
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -fPIC -I/usr/local/cuda/include \
 *       -shared -o libcudnn.so.9 -Wl,-soname,libcudnn.so.9 emu_cudnn.c
 */
#include <cudnn.h>

#include "../../src/core/half.h"
#include "emu_flush.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC_HANDLE 0x454d4448u /* "EMDH" */
#define MAGIC_TENSOR 0x454d4454u
#define MAGIC_FILTER 0x454d4446u
#define MAGIC_CONV 0x454d4443u
#define MAGIC_DEAD 0xdeadd00du

struct cudnnContext {
    unsigned magic;
    cudaStream_t stream;
};

struct cudnnTensorStruct {
    unsigned magic;
    int set;
    cudnnDataType_t dt;
    int dim[4];        /* n, c, h, w */
    int64_t stride[4]; /* in elements */
};

struct cudnnFilterStruct {
    unsigned magic;
    int set;
    cudnnDataType_t dt;
    cudnnTensorFormat_t fmt;
    int dim[4]; /* k, c, r, s */
};

struct cudnnConvolutionStruct {
    unsigned magic;
    int set;
    int pad[2], stride[2], dil[2];
    cudnnConvolutionMode_t mode;
    cudnnDataType_t ctype;
    int groups;
    cudnnMathType_t math;
};

/* ------------------------------------------------------------------ diagnostics */
static _Thread_local char g_last_error[1024];

static int env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static void emit(const char *line) {
    const char *dest = getenv("CUDNN_LOGDEST_DBG");
    FILE *f = stderr, *g = NULL;
    if (dest && strcmp(dest, "stdout") == 0) f = stdout;
    else if (dest && *dest && strcmp(dest, "stderr") != 0 && (g = fopen(dest, "a"))) f = g;
    fprintf(f, "[emu cuDNN] %s\n", line);
    if (g) fclose(g);
    else fflush(f);
}

/* Records "fn: STATUS: why" as the thread's last error (and logs it); returns st. With
 * fn NULL (probing algorithms for a perf list) it only returns st. */
static cudnnStatus_t fail(const char *fn, cudnnStatus_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static cudnnStatus_t fail(const char *fn, cudnnStatus_t st, const char *fmt, ...) {
    if (!fn) return st;
    char why[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(g_last_error, sizeof g_last_error, "%s: %s: %s", fn, cudnnGetErrorString(st), why);
    if (env_on("CUDNN_LOGERR_DBG") || env_on("CUDA_EMU_VERBOSE")) emit(g_last_error);
    return st;
}

/* --------------------------------------------------------- version, error strings */
size_t CUDNNWINAPI cudnnGetVersion(void) { return CUDNN_VERSION; }

/* The strings of the real libcudnn.so.9: the enumerator's name. */
const char *CUDNNWINAPI cudnnGetErrorString(cudnnStatus_t status) {
    switch ((int)status) {
#define S(x) \
    case x: return #x;
        S(CUDNN_STATUS_SUCCESS)
        S(CUDNN_STATUS_NOT_INITIALIZED)
        S(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
        S(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
        S(CUDNN_STATUS_DEPRECATED)
        S(CUDNN_STATUS_LICENSE_ERROR)
        S(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
        S(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
        S(CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED)
        S(CUDNN_STATUS_BAD_PARAM)
        S(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
        S(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
        S(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
        S(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
        S(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
        S(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
        S(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
        S(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
        S(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
        S(CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH)
        S(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE)
        S(CUDNN_STATUS_NOT_SUPPORTED)
        S(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
        S(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
        S(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
        S(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
        S(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER)
        S(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART)
        S(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
        S(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING)
        S(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE)
        S(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT)
        S(CUDNN_STATUS_NOT_SUPPORTED_PADDING)
        S(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM)
        S(CUDNN_STATUS_NOT_SUPPORTED_CUDA_GRAPH_NATIVE_API)
        S(CUDNN_STATUS_NOT_SUPPORTED_INVALID_DYNAMIC_SHAPE)
        S(CUDNN_STATUS_INTERNAL_ERROR)
        S(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED)
        S(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE)
        S(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
        S(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
        S(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM)
        S(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED)
        S(CUDNN_STATUS_EXECUTION_FAILED)
        S(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)
        S(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS)
        S(CUDNN_STATUS_EXECUTION_FAILED_CUDART)
        S(CUDNN_STATUS_EXECUTION_FAILED_CURAND)
    case 2001: return "CUDNN_STATUS_INVALID_VALUE"; /* deprecated alias value */
#undef S
    }
    return "CUDNN_UNKNOWN_STATUS";
}

void CUDNNWINAPI cudnnGetLastErrorString(char *message, size_t max_size) {
    if (!message || !max_size) return;
    snprintf(message, max_size, "%s", g_last_error);
    g_last_error[0] = 0;
}

/* ------------------------------------------------- handles and descriptors: lifetime
 * Each object is a calloc'ed struct whose first member is a magic number, so that a NULL,
 * destroyed or foreign object is refused instead of used. */
static cudnnStatus_t object_create(const char *fn, void **out, size_t size, unsigned magic) {
    if (!out) return fail(fn, CUDNN_STATUS_BAD_PARAM, "the result pointer is NULL");
    unsigned *o = calloc(1, size);
    if (!o) return fail(fn, CUDNN_STATUS_ALLOC_FAILED, "out of host memory");
    *o = magic;
    *out = o;
    return CUDNN_STATUS_SUCCESS;
}

/* Destroying NULL is a no-op, as in cuDNN (except for handles: null_ok 0). */
static cudnnStatus_t object_destroy(const char *fn, void *obj, unsigned magic, int null_ok,
                                    const char *what) {
    if (!obj && null_ok) return CUDNN_STATUS_SUCCESS;
    unsigned *o = obj;
    if (!o || *o != magic)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "%p is not a live %s", obj, what);
    *o = MAGIC_DEAD;
    free(o);
    return CUDNN_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------ handle */
static int handle_ok(cudnnHandle_t h) { return h && h->magic == MAGIC_HANDLE; }

#define CHECK_HANDLE(fn, h)                                                                \
    do {                                                                                   \
        if (!handle_ok(h))                                                                 \
            return fail(fn, CUDNN_STATUS_BAD_PARAM,                                        \
                        "handle %p is NULL, destroyed or not a cuDNN handle", (void *)(h)); \
    } while (0)

cudnnStatus_t CUDNNWINAPI cudnnCreate(cudnnHandle_t *handle) {
    return object_create("cudnnCreate", (void **)handle, sizeof **handle, MAGIC_HANDLE);
}

cudnnStatus_t CUDNNWINAPI cudnnDestroy(cudnnHandle_t handle) {
    return object_destroy("cudnnDestroy", handle, MAGIC_HANDLE, 0, "cuDNN handle");
}

cudnnStatus_t CUDNNWINAPI cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId) {
    CHECK_HANDLE("cudnnSetStream", handle);
    handle->stream = streamId;
    return CUDNN_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------- data types */
static int dtype_valid(cudnnDataType_t t) { return (int)t >= 0 && (int)t <= CUDNN_DATA_COMPLEX_FP64; }

static size_t dtype_size(cudnnDataType_t t) {
    switch (t) {
    case CUDNN_DATA_FLOAT: return 4;
    case CUDNN_DATA_DOUBLE: return 8;
    case CUDNN_DATA_HALF: case CUDNN_DATA_BFLOAT16: return 2;
    default: return 0;
    }
}

static const char *dtype_name(cudnnDataType_t t) {
    switch (t) {
    case CUDNN_DATA_FLOAT: return "FLOAT";
    case CUDNN_DATA_DOUBLE: return "DOUBLE";
    case CUDNN_DATA_HALF: return "HALF";
    case CUDNN_DATA_BFLOAT16: return "BFLOAT16";
    default: return "another type";
    }
}

/* ------------------------------------------------------------ tensor descriptors */
static int tensor_ok(cudnnTensorDescriptor_t d) { return d && d->magic == MAGIC_TENSOR; }

cudnnStatus_t CUDNNWINAPI cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *tensorDesc) {
    return object_create("cudnnCreateTensorDescriptor", (void **)tensorDesc,
                         sizeof **tensorDesc, MAGIC_TENSOR);
}

cudnnStatus_t CUDNNWINAPI cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t tensorDesc) {
    return object_destroy("cudnnDestroyTensorDescriptor", tensorDesc, MAGIC_TENSOR, 1,
                          "tensor descriptor");
}

static cudnnStatus_t tensor_set(const char *fn, cudnnTensorDescriptor_t d, cudnnDataType_t dt,
                                const int dim[4], const int64_t stride[4]) {
    if (!tensor_ok(d))
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "%p is not a live tensor descriptor", (void *)d);
    if (!dtype_valid(dt)) return fail(fn, CUDNN_STATUS_BAD_PARAM, "dataType %d", (int)dt);
    int64_t total = 1;
    for (int i = 0; i < 4; i++) {
        if (dim[i] <= 0)
            return fail(fn, CUDNN_STATUS_BAD_PARAM, "dimension %d is %d (must be > 0)", i, dim[i]);
        total *= dim[i];
    }
    if (total > INT32_MAX)
        return fail(fn, CUDNN_STATUS_NOT_SUPPORTED,
                    "%lld elements: more than the 2 Giga-elements limit", (long long)total);
    d->dt = dt;
    memcpy(d->dim, dim, sizeof d->dim);
    memcpy(d->stride, stride, sizeof d->stride);
    d->set = 1;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t tensorDesc,
                                                     cudnnTensorFormat_t format,
                                                     cudnnDataType_t dataType, int n, int c, int h,
                                                     int w) {
    static const char fn[] = "cudnnSetTensor4dDescriptor";
    const int dim[4] = {n, c, h, w};
    int64_t st[4];
    if (format == CUDNN_TENSOR_NCHW) {
        st[3] = 1, st[2] = w, st[1] = (int64_t)h * w, st[0] = (int64_t)c * h * w;
    } else if (format == CUDNN_TENSOR_NHWC) {
        st[1] = 1, st[3] = c, st[2] = (int64_t)w * c, st[0] = (int64_t)h * w * c;
    } else if (format == CUDNN_TENSOR_NCHW_VECT_C) {
        return fail(fn, CUDNN_STATUS_BAD_PARAM,
                    "CUDNN_TENSOR_NCHW_VECT_C is for the vectorised int8 types, not %s",
                    dtype_name(dataType));
    } else {
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "format %d is not a cudnnTensorFormat_t", (int)format);
    }
    return tensor_set(fn, tensorDesc, dataType, dim, st);
}

/* ------------------------------------------------------------ filter descriptors */
static int filter_ok(cudnnFilterDescriptor_t d) { return d && d->magic == MAGIC_FILTER; }

cudnnStatus_t CUDNNWINAPI cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *filterDesc) {
    return object_create("cudnnCreateFilterDescriptor", (void **)filterDesc,
                         sizeof **filterDesc, MAGIC_FILTER);
}

cudnnStatus_t CUDNNWINAPI cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t filterDesc) {
    return object_destroy("cudnnDestroyFilterDescriptor", filterDesc, MAGIC_FILTER, 1,
                          "filter descriptor");
}

cudnnStatus_t CUDNNWINAPI cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t filterDesc,
                                                     cudnnDataType_t dataType,
                                                     cudnnTensorFormat_t format, int k, int c,
                                                     int h, int w) {
    static const char fn[] = "cudnnSetFilter4dDescriptor";
    if (!filter_ok(filterDesc))
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "%p is not a live filter descriptor", (void *)filterDesc);
    if (!dtype_valid(dataType)) return fail(fn, CUDNN_STATUS_BAD_PARAM, "dataType %d", (int)dataType);
    if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "format %d (NCHW = KCRS or NHWC = KRSC expected)",
                    (int)format);
    if (k <= 0 || c <= 0 || h <= 0 || w <= 0)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "k=%d c=%d h=%d w=%d (must be > 0)", k, c, h, w);
    filterDesc->dt = dataType;
    filterDesc->fmt = format;
    filterDesc->dim[0] = k, filterDesc->dim[1] = c, filterDesc->dim[2] = h, filterDesc->dim[3] = w;
    filterDesc->set = 1;
    return CUDNN_STATUS_SUCCESS;
}

/* ------------------------------------------------------- convolution descriptors */
static int conv_ok(cudnnConvolutionDescriptor_t d) { return d && d->magic == MAGIC_CONV; }

#define CHECK_CONV(fn, d)                                                                  \
    do {                                                                                   \
        if (!conv_ok(d))                                                                   \
            return fail(fn, CUDNN_STATUS_BAD_PARAM,                                        \
                        "%p is not a live convolution descriptor", (void *)(d));           \
    } while (0)

cudnnStatus_t CUDNNWINAPI cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc) {
    cudnnStatus_t st = object_create("cudnnCreateConvolutionDescriptor", (void **)convDesc,
                                     sizeof **convDesc, MAGIC_CONV);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    struct cudnnConvolutionStruct *d = *convDesc;
    d->groups = 1;
    d->math = CUDNN_DEFAULT_MATH;
    d->mode = CUDNN_CROSS_CORRELATION;
    d->ctype = CUDNN_DATA_FLOAT;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc) {
    return object_destroy("cudnnDestroyConvolutionDescriptor", convDesc, MAGIC_CONV, 1,
                          "convolution descriptor");
}

cudnnStatus_t CUDNNWINAPI cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t convDesc,
                                                          int pad_h, int pad_w, int u, int v,
                                                          int dilation_h, int dilation_w,
                                                          cudnnConvolutionMode_t mode,
                                                          cudnnDataType_t computeType) {
    static const char fn[] = "cudnnSetConvolution2dDescriptor";
    CHECK_CONV(fn, convDesc);
    if (pad_h < 0 || pad_w < 0)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "negative padding (%d, %d)", pad_h, pad_w);
    if (u <= 0 || v <= 0)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "stride (%d, %d) must be positive", u, v);
    if (dilation_h <= 0 || dilation_w <= 0)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "dilation (%d, %d) must be positive", dilation_h,
                    dilation_w);
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "mode %d is not a cudnnConvolutionMode_t", (int)mode);
    if (!dtype_valid(computeType))
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "computeType %d", (int)computeType);
    convDesc->pad[0] = pad_h, convDesc->pad[1] = pad_w;
    convDesc->stride[0] = u, convDesc->stride[1] = v;
    convDesc->dil[0] = dilation_h, convDesc->dil[1] = dilation_w;
    convDesc->mode = mode;
    convDesc->ctype = computeType;
    convDesc->set = 1;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t convDesc,
                                                        int groupCount) {
    CHECK_CONV("cudnnSetConvolutionGroupCount", convDesc);
    if (groupCount < 1)
        return fail("cudnnSetConvolutionGroupCount", CUDNN_STATUS_BAD_PARAM, "groupCount %d < 1",
                    groupCount);
    convDesc->groups = groupCount;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc,
                                                      cudnnMathType_t mathType) {
    CHECK_CONV("cudnnSetConvolutionMathType", convDesc);
    if (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
        mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH)
        return fail("cudnnSetConvolutionMathType", CUDNN_STATUS_BAD_PARAM,
                    "mathType %d is not a cudnnMathType_t", (int)mathType);
    convDesc->math = mathType;
    return CUDNN_STATUS_SUCCESS;
}

/* outputDim = 1 + (inputDim + 2*pad - (((filterDim-1)*dilation)+1)) / convolutionStride;
 * -1 when the filter is larger than the padded input. */
static int out_dim(int in, int pad, int filter, int dil, int stride) {
    const int ext = (filter - 1) * dil + 1;
    if (in + 2 * pad < ext) return -1;
    return 1 + (in + 2 * pad - ext) / stride;
}

/* ================================================================= convolution */
enum { DIR_FWD, DIR_BWD_DATA, DIR_BWD_FILTER };
static const int algo_count[3] = {CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                  CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT};

/* A validated problem: x [N, C, H, W], w [K, C/G, R, S], y [N, K, P, Q]. */
typedef struct {
    int N, C, H, W, K, Cg, R, S, P, Q, G;
    int ph, pw, u, v, dh, dw, flip;
    cudnnDataType_t dt;
    cudnnMathType_t math;
    int64_t xs[4], ys[4], ws[4]; /* element strides: x and y (n, c, h, w), w (k, c, r, s) */
} conv_prob;

/* Checks the descriptors of one direction against each other (see the header comment for
 * the statuses, taken from the "Returns" lists of the three cudnnConvolution* calls). */
static cudnnStatus_t conv_check(const char *fn, int dir, cudnnTensorDescriptor_t xd,
                                cudnnFilterDescriptor_t wd, cudnnConvolutionDescriptor_t cd,
                                cudnnTensorDescriptor_t yd, conv_prob *p) {
    const char *xn = dir == DIR_BWD_DATA ? "dxDesc" : "xDesc";
    const char *yn = dir == DIR_FWD ? "yDesc" : "dyDesc";
    const char *wn = dir == DIR_BWD_FILTER ? "dwDesc" : "wDesc";
    if (!tensor_ok(xd) || !xd->set)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "%s is NULL, not set or destroyed", xn);
    if (!tensor_ok(yd) || !yd->set)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "%s is NULL, not set or destroyed", yn);
    if (!filter_ok(wd) || !wd->set)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "%s is NULL, not set or destroyed", wn);
    if (!conv_ok(cd) || !cd->set)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "convDesc is NULL, not set or destroyed");
    if (xd->dt != wd->dt || xd->dt != yd->dt)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "data types differ: %s %s, %s %s, %s %s", xn,
                    dtype_name(xd->dt), wn, dtype_name(wd->dt), yn, dtype_name(yd->dt));
    memset(p, 0, sizeof *p);
    p->N = xd->dim[0], p->C = xd->dim[1], p->H = xd->dim[2], p->W = xd->dim[3];
    p->K = wd->dim[0], p->Cg = wd->dim[1], p->R = wd->dim[2], p->S = wd->dim[3];
    p->P = yd->dim[2], p->Q = yd->dim[3];
    p->G = cd->groups;
    p->ph = cd->pad[0], p->pw = cd->pad[1], p->u = cd->stride[0], p->v = cd->stride[1];
    p->dh = cd->dil[0], p->dw = cd->dil[1];
    p->flip = cd->mode == CUDNN_CONVOLUTION;
    p->dt = xd->dt;
    p->math = cd->math;
    if (p->C != p->Cg * p->G)
        return fail(fn, CUDNN_STATUS_BAD_PARAM,
                    "%s has %d channels but %s has %d input channels per group x %d groups = %d",
                    xn, p->C, wn, p->Cg, p->G, p->Cg * p->G);
    if (p->K % p->G != 0)
        return fail(fn, dir == DIR_BWD_DATA ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_BAD_PARAM,
                    "%s has %d output channels, not a multiple of the group count %d", wn, p->K, p->G);
    if (yd->dim[1] != p->K)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "%s has %d channels but %s has k = %d", yn,
                    yd->dim[1], wn, p->K);
    if (yd->dim[0] != p->N)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "batch sizes differ: %s %d, %s %d", xn, p->N, yn,
                    yd->dim[0]);
    const int P = out_dim(p->H, p->ph, p->R, p->dh, p->u);
    const int Q = out_dim(p->W, p->pw, p->S, p->dw, p->v);
    if (P < 0 || Q < 0)
        return fail(fn, CUDNN_STATUS_BAD_PARAM,
                    "the %dx%d filter (dilation %d, %d) is larger than the padded %dx%d input "
                    "(padding %d, %d)",
                    p->R, p->S, p->dh, p->dw, p->H, p->W, p->ph, p->pw);
    if (P != p->P || Q != p->Q)
        return fail(fn, dir == DIR_FWD ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_BAD_PARAM,
                    "%s is %dx%d but the convolution of a %dx%d input with a %dx%d filter "
                    "(padding %d,%d, stride %d,%d, dilation %d,%d) is %dx%d",
                    yn, p->P, p->Q, p->H, p->W, p->R, p->S, p->ph, p->pw, p->u, p->v, p->dh,
                    p->dw, P, Q);
    for (int i = 0; i < 4; i++) {
        if (xd->stride[i] < 0 || yd->stride[i] < 0)
            return fail(fn, CUDNN_STATUS_NOT_SUPPORTED, "%s or %s has negative strides", xn, yn);
        p->xs[i] = xd->stride[i];
        p->ys[i] = yd->stride[i];
    }
    if (wd->fmt == CUDNN_TENSOR_NCHW) { /* KCRS */
        p->ws[3] = 1, p->ws[2] = p->S, p->ws[1] = (int64_t)p->R * p->S;
        p->ws[0] = (int64_t)p->Cg * p->R * p->S;
    } else { /* KRSC */
        p->ws[1] = 1, p->ws[3] = p->Cg, p->ws[2] = (int64_t)p->S * p->Cg;
        p->ws[0] = (int64_t)p->R * p->S * p->Cg;
    }
    if (p->dt != CUDNN_DATA_FLOAT && p->dt != CUDNN_DATA_DOUBLE && p->dt != CUDNN_DATA_HALF &&
        p->dt != CUDNN_DATA_BFLOAT16)
        return fail(fn, CUDNN_STATUS_NOT_SUPPORTED,
                    "data type %s is not emulated (FLOAT, DOUBLE, HALF, BFLOAT16)",
                    dtype_name(p->dt));
    /* FLOAT_CONFIG, DOUBLE_CONFIG, PSEUDO_HALF_CONFIG and PSEUDO_BFLOAT16_CONFIG: 16-bit data
     * computes in float (TRUE_HALF_CONFIG, half arithmetic, is not emulated) */
    const cudnnDataType_t want = p->dt == CUDNN_DATA_DOUBLE ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    if (cd->ctype != want)
        return fail(fn, CUDNN_STATUS_NOT_SUPPORTED,
                    "%s data with a %s computeType is not a supported configuration "
                    "(FLOAT_CONFIG: float/float, DOUBLE_CONFIG: double/double, "
                    "PSEUDO_HALF_CONFIG: half/float, PSEUDO_BFLOAT16_CONFIG: bfloat16/float)",
                    dtype_name(p->dt), dtype_name(cd->ctype));
    return CUDNN_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- algorithm table */
typedef struct {
    const char *name;
    int det;       /* CUDNN_DETERMINISTIC? */
    int tc;        /* runs on (TF32) tensor cores for float data when the math type allows */
    int needs;     /* 0 any problem; 1 "FFT-like": float, stride 1, dilation 1; 2 Winograd 3x3; 3
                      Winograd nonfused 3x3 or 5x5; -1 never (not implemented in cuDNN) */
    float factor;  /* synthetic time factor for Find */
} algo_info;

static const algo_info fwd_algos[CUDNN_CONVOLUTION_FWD_ALGO_COUNT] = {
    [CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM] = {"IMPLICIT_GEMM", 1, 1, 0, 1.6f},
    [CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM] = {"IMPLICIT_PRECOMP_GEMM", 1, 1, 0, 1.0f},
    [CUDNN_CONVOLUTION_FWD_ALGO_GEMM] = {"GEMM", 1, 0, 0, 1.4f},
    [CUDNN_CONVOLUTION_FWD_ALGO_DIRECT] = {"DIRECT", 1, 0, -1, 9.0f},
    [CUDNN_CONVOLUTION_FWD_ALGO_FFT] = {"FFT", 1, 0, 1, 1.3f},
    [CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING] = {"FFT_TILING", 1, 0, 1, 1.2f},
    [CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD] = {"WINOGRAD", 1, 0, 2, 1.1f},
    [CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED] = {"WINOGRAD_NONFUSED", 1, 0, 3, 0.9f},
};
static const algo_info bwd_data_algos[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT] = {
    [CUDNN_CONVOLUTION_BWD_DATA_ALGO_0] = {"ALGO_0", 0, 0, 0, 1.0f},
    [CUDNN_CONVOLUTION_BWD_DATA_ALGO_1] = {"ALGO_1", 1, 1, 0, 0.95f},
    [CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT] = {"FFT", 1, 0, 1, 1.5f},
    [CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING] = {"FFT_TILING", 1, 0, 1, 1.4f},
    [CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD] = {"WINOGRAD", 1, 0, 2, 1.3f},
    [CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED] = {"WINOGRAD_NONFUSED", 1, 0, 3, 1.1f},
};
static const algo_info bwd_filter_algos[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT] = {
    [CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0] = {"ALGO_0", 0, 0, 0, 1.0f},
    [CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1] = {"ALGO_1", 1, 1, 0, 1.2f},
    [CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT] = {"FFT", 1, 0, 1, 1.5f},
    [CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3] = {"ALGO_3", 0, 0, 0, 0.9f},
    [CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD] = {"WINOGRAD", 1, 0, -1, 9.0f},
    [CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED] = {"WINOGRAD_NONFUSED", 1, 0, 3, 1.1f},
    [CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING] = {"FFT_TILING", 1, 0, 1, 1.4f},
};
static const algo_info *const algo_table[3] = {fwd_algos, bwd_data_algos, bwd_filter_algos};

/* Heuristic order (Get*Algorithm_v7). */
static const int fwd_heur[] = {1, 0, 2, 6, 7, 5, 4, 3};
static const int bwd_data_heur[] = {0, 1, 5, 4, 3, 2};
static const int bwd_filter_heur[] = {0, 3, 1, 5, 2, 6, 4};
static const int *const heur_order[3] = {fwd_heur, bwd_data_heur, bwd_filter_heur};
static const char *const algo_env[3] = {"CUDA_EMU_CUDNN_FWD_ALGO", "CUDA_EMU_CUDNN_BWD_DATA_ALGO",
                                        "CUDA_EMU_CUDNN_BWD_FILTER_ALGO"};
static const char *const dir_fn_name[3] = {"forward", "backward data", "backward filter"};

static int forced_algo(int dir) {
    const char *v = getenv(algo_env[dir]);
    if (!v || !*v) return -1;
    char *end;
    long a = strtol(v, &end, 10);
    return *end == 0 && a >= 0 && a < algo_count[dir] ? (int)a : -1;
}

static size_t cdiv(size_t a, size_t b) { return (a + b - 1) / b; }
static size_t pow2_at_least(size_t n) {
    size_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* Whether `algo` of direction `dir` runs problem p (NOT_SUPPORTED with a reason if not), and
 * the workspace it needs. */
static cudnnStatus_t algo_check(const char *fn, int dir, int algo, const conv_prob *p,
                                size_t *ws_bytes) {
    if (algo < 0 || algo >= algo_count[dir])
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "algo %d is not a %s algorithm (0..%d)", algo,
                    dir_fn_name[dir], algo_count[dir] - 1);
    const algo_info *a = &algo_table[dir][algo];
    const int f32 = p->dt == CUDNN_DATA_FLOAT;
    const int unit = p->u == 1 && p->v == 1 && p->dh == 1 && p->dw == 1;
    switch (a->needs) {
    case -1:
        return fail(fn, CUDNN_STATUS_NOT_SUPPORTED, "%s algorithm %s is not implemented by cuDNN",
                    dir_fn_name[dir], a->name);
    case 1:
        if (!f32 || !unit || p->ph >= p->R || p->pw >= p->S || p->H + 2 * p->ph > 256 ||
            p->W + 2 * p->pw > 256)
            return fail(fn, CUDNN_STATUS_NOT_SUPPORTED,
                        "%s algorithm %s needs float data, stride 1, dilation 1, padding below "
                        "the filter size and a padded input of at most 256x256",
                        dir_fn_name[dir], a->name);
        break;
    case 2:
    case 3:
        if (!f32 || !unit || p->R != p->S || !(p->R == 3 || (a->needs == 3 && p->R == 5)))
            return fail(fn, CUDNN_STATUS_NOT_SUPPORTED,
                        "%s algorithm %s needs float data, stride 1, dilation 1 and a %s filter",
                        dir_fn_name[dir], a->name, a->needs == 2 ? "3x3" : "3x3 or 5x5");
        break;
    default: break;
    }
    const size_t es = dtype_size(p->dt);
    const size_t N = (size_t)p->N, C = (size_t)p->C, K = (size_t)p->K, Cg = (size_t)p->Cg;
    const size_t RS = (size_t)p->R * (size_t)p->S, PQ = (size_t)p->P * (size_t)p->Q;
    const size_t fft = pow2_at_least((size_t)(p->H + 2 * p->ph)) *
                       (pow2_at_least((size_t)(p->W + 2 * p->pw)) / 2 + 1) * 2 * 4;
    const size_t tiles = cdiv((size_t)p->P, 4) * cdiv((size_t)p->Q, 4);
    const size_t wino = (size_t)(p->R + 3) * (size_t)(p->S + 3) * 4; /* transformed tile */
    size_t ws = 0;
    if (dir == DIR_FWD) {
        switch (algo) {
        case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: ws = Cg * RS * 2 * sizeof(int); break;
        case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: ws = Cg * RS * PQ * es; break;
        case CUDNN_CONVOLUTION_FWD_ALGO_FFT: ws = (N * C + K * Cg + N * K) * fft; break;
        case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING: ws = (C + K * Cg + K) * 32 * 17 * 8; break;
        case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: ws = (K * Cg + (N * C + N * K) * tiles) * wino; break;
        default: break;
        }
    } else if (dir == DIR_BWD_DATA) {
        switch (algo) {
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1: ws = K * Cg * RS * es; break;
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT: ws = (N * C + K * Cg + N * K) * fft; break;
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING: ws = (C + K * Cg + K) * 32 * 17 * 8; break;
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED: ws = (K * Cg + (N * C + N * K) * tiles) * wino; break;
        default: break;
        }
    } else {
        switch (algo) {
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1: ws = Cg * RS * PQ * es; break;
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT: ws = (N * C + K * Cg + N * K) * fft; break;
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3: ws = 4 * K * Cg * RS * es; break;
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED: ws = (K * Cg + (N * C + N * K) * tiles) * wino; break;
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING: ws = (C + K * Cg + K) * 32 * 17 * 8; break;
        default: break;
        }
    }
    *ws_bytes = ws;
    return CUDNN_STATUS_SUCCESS;
}

static int tf32_allowed(void) {
    const char *v = getenv("NVIDIA_TF32_OVERRIDE");
    return !(v && strcmp(v, "0") == 0);
}

/* Whether algorithm `algo` rounds its inputs to TF32 for problem p. */
static int uses_tf32(int dir, int algo, const conv_prob *p) {
    return p->dt == CUDNN_DATA_FLOAT && p->math != CUDNN_FMA_MATH && algo_table[dir][algo].tc &&
           tf32_allowed();
}

/* The math type a perf result reports (16-bit data: tensor cores, no rounding of inputs
 * that are 16-bit already, float32 accumulation). */
static cudnnMathType_t perf_math(int dir, int algo, const conv_prob *p) {
    if (p->dt != CUDNN_DATA_DOUBLE && p->math != CUDNN_FMA_MATH && algo_table[dir][algo].tc)
        return CUDNN_TENSOR_OP_MATH;
    return p->math;
}

/* ----------------------------------------------------------------- computation */
static double tf32_round(double v) {
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    u += 0xfffu + ((u >> 13) & 1u);
    u &= ~0x1fffu;
    memcpy(&f, &u, sizeof f);
    return f;
}

static double ld(cudnnDataType_t dt, const void *base, int64_t i) {
    switch (dt) {
    case CUDNN_DATA_FLOAT: return ((const float *)base)[i];
    case CUDNN_DATA_HALF: return ct_f16_to_f32(((const uint16_t *)base)[i]);
    case CUDNN_DATA_BFLOAT16: return ct_bf16_to_f32(((const uint16_t *)base)[i]);
    default: return ((const double *)base)[i];
    }
}

/* Stores v, rounded once to dt (16-bit data: through the float32 result, as an FP32-computing
 * GPU rounds it; src/core/half.h's round to nearest even). */
static void store_el(cudnnDataType_t dt, void *base, int64_t i, double v) {
    switch (dt) {
    case CUDNN_DATA_FLOAT: ((float *)base)[i] = (float)v; break;
    case CUDNN_DATA_HALF: ((uint16_t *)base)[i] = ct_f32_to_f16((float)v); break;
    case CUDNN_DATA_BFLOAT16: ((uint16_t *)base)[i] = ct_f32_to_bf16((float)v); break;
    default: ((double *)base)[i] = v; break;
    }
}

/* Gathers a tensor (n, c, h, w strides st) into a dense NCHW double array. */
static double *gather4(cudnnDataType_t dt, const void *src, const int dim[4],
                       const int64_t st[4], int tf32) {
    const size_t n = (size_t)dim[0] * dim[1] * dim[2] * dim[3];
    double *d = malloc((n ? n : 1) * sizeof *d), *o = d;
    if (!d) return NULL;
    for (int a = 0; a < dim[0]; a++)
        for (int b = 0; b < dim[1]; b++)
            for (int c = 0; c < dim[2]; c++)
                for (int e = 0; e < dim[3]; e++) {
                    double v = ld(dt, src, a * st[0] + b * st[1] + c * st[2] + e * st[3]);
                    *o++ = tf32 ? tf32_round(v) : v;
                }
    return d;
}

/* out[i] = alpha * res + beta * out[i]; beta == 0: out is not read. */
static void scatter4(cudnnDataType_t dt, void *dst, const int dim[4], const int64_t str[4],
                     const double *res, double alpha, double beta) {
    const double *r = res;
    for (int a = 0; a < dim[0]; a++)
        for (int b = 0; b < dim[1]; b++)
            for (int c = 0; c < dim[2]; c++)
                for (int e = 0; e < dim[3]; e++) {
                    const int64_t i = a * str[0] + b * str[1] + c * str[2] + e * str[3];
                    double v = alpha * *r++;
                    if (beta != 0) v += beta * ld(dt, dst, i);
                    store_el(dt, dst, i, v);
                }
}

/* Output positions q in [*lo, *hi] whose input position q*stride - pad + off is in [0, in). */
static void valid_range(int out, int in, int stride, int pad, int off, int *lo, int *hi) {
    const int a = pad - off;                      /* q*stride >= a */
    const int b = in - 1 + pad - off;             /* q*stride <= b */
    *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
    *hi = b < 0 ? -1 : b / stride;
    if (*hi > out - 1) *hi = out - 1;
}

/* The three directions on dense NCHW / KCRS double arrays, cross-correlation form
 * (a CUDNN_CONVOLUTION filter has been flipped by the caller). */
static void core(int dir, const conv_prob *p, double *X, double *Wt, double *Y) {
    const int Kg = p->K / p->G, R = p->R, S = p->S, P = p->P, Q = p->Q, H = p->H, W = p->W;
    int rlo[R], rhi[R], slo[S], shi[S];
    for (int r = 0; r < R; r++) valid_range(P, H, p->u, p->ph, r * p->dh, &rlo[r], &rhi[r]);
    for (int s = 0; s < S; s++) valid_range(Q, W, p->v, p->pw, s * p->dw, &slo[s], &shi[s]);
    for (int n = 0; n < p->N; n++)
        for (int k = 0; k < p->K; k++) {
            const int g = k / Kg;
            double *yk = Y + ((size_t)n * p->K + k) * P * Q;
            for (int c = 0; c < p->Cg; c++) {
                double *xc = X + ((size_t)n * p->C + (size_t)g * p->Cg + c) * H * W;
                double *wkc = Wt + ((size_t)k * p->Cg + c) * R * S;
                for (int r = 0; r < R; r++)
                    for (int s = 0; s < S; s++) {
                        const int off_w = s * p->dw - p->pw;
                        double acc = 0, wv = wkc[r * S + s];
                        for (int oh = rlo[r]; oh <= rhi[r]; oh++) {
                            double *xrow = xc + (size_t)(oh * p->u - p->ph + r * p->dh) * W + off_w;
                            double *yrow = yk + (size_t)oh * Q;
                            if (dir == DIR_FWD)
                                for (int q = slo[s]; q <= shi[s]; q++) yrow[q] += wv * xrow[q * p->v];
                            else if (dir == DIR_BWD_DATA)
                                for (int q = slo[s]; q <= shi[s]; q++) xrow[q * p->v] += wv * yrow[q];
                            else
                                for (int q = slo[s]; q <= shi[s]; q++) acc += yrow[q] * xrow[q * p->v];
                        }
                        if (dir == DIR_BWD_FILTER) wkc[r * S + s] += acc;
                    }
            }
        }
}

/* Runs one direction on the caller's buffers: the output (y, dx or dw) gets
 * alpha * result + beta * output. */
static cudnnStatus_t run_conv(const char *fn, int dir, int algo, const conv_prob *p,
                              const void *x, const void *w, const void *y, void *out,
                              double alpha, double beta, void *ws, size_t ws_need) {
    /* CT_EMU_SKIP_COMPUTE: validated, not computed (host-overhead measurements) */
    if (getenv("CT_EMU_SKIP_COMPUTE")) {
        (void)x, (void)w, (void)y, (void)out, (void)alpha, (void)beta, (void)ws, (void)ws_need;
        (void)algo;
        return CUDNN_STATUS_SUCCESS;
    }
    const int tf32 = uses_tf32(dir, algo, p);
    const int xdim[4] = {p->N, p->C, p->H, p->W}, ydim[4] = {p->N, p->K, p->P, p->Q};
    const int wdim[4] = {p->K, p->Cg, p->R, p->S};
    const size_t nx = (size_t)p->N * p->C * p->H * p->W, ny = (size_t)p->N * p->K * p->P * p->Q;
    const size_t nw = (size_t)p->K * p->Cg * p->R * p->S;
    double *X = NULL, *Y = NULL, *Wt = NULL;
    X = dir == DIR_BWD_DATA ? calloc(nx, sizeof *X) : gather4(p->dt, x, xdim, p->xs, tf32);
    Y = dir == DIR_FWD ? calloc(ny, sizeof *Y) : gather4(p->dt, y, ydim, p->ys, tf32);
    Wt = dir == DIR_BWD_FILTER ? calloc(nw, sizeof *Wt) : gather4(p->dt, w, wdim, p->ws, tf32);
    if (!X || !Y || !Wt) {
        free(X), free(Y), free(Wt);
        return fail(fn, CUDNN_STATUS_ALLOC_FAILED, "out of host memory");
    }
    if (p->flip && dir != DIR_BWD_FILTER) { /* CUDNN_CONVOLUTION: w[k,c,R-1-r,S-1-s] */
        for (size_t kc = 0; kc < (size_t)p->K * p->Cg; kc++) {
            double *f = Wt + kc * p->R * p->S;
            for (int i = 0, j = p->R * p->S - 1; i < j; i++, j--) {
                double t = f[i];
                f[i] = f[j], f[j] = t;
            }
        }
    }
    if (ws && ws_need) memset(ws, 0xa5, ws_need); /* the algorithm's scratch */
    core(dir, p, X, Wt, Y);
    if (dir == DIR_FWD) {
        scatter4(p->dt, out, ydim, p->ys, Y, alpha, beta);
    } else if (dir == DIR_BWD_DATA) {
        scatter4(p->dt, out, xdim, p->xs, X, alpha, beta);
    } else {
        if (p->flip) /* the gradient of w[k,c,R-1-r,S-1-s] */
            for (size_t kc = 0; kc < (size_t)p->K * p->Cg; kc++) {
                double *f = Wt + kc * p->R * p->S;
                for (int i = 0, j = p->R * p->S - 1; i < j; i++, j--) {
                    double t = f[i];
                    f[i] = f[j], f[j] = t;
                }
            }
        scatter4(p->dt, out, wdim, p->ws, Wt, alpha, beta);
    }
    free(X), free(Y), free(Wt);
    return CUDNN_STATUS_SUCCESS;
}

static double scalar(cudnnDataType_t dt, const void *v) {
    return dt == CUDNN_DATA_DOUBLE ? *(const double *)v : (double)*(const float *)v;
}

/* Fills the addressed elements of an output with NaN (Find: "overwritten with arbitrary
 * values"). */
static void poison(const conv_prob *p, int dir, void *out) {
    const int xdim[4] = {p->N, p->C, p->H, p->W}, ydim[4] = {p->N, p->K, p->P, p->Q};
    const int wdim[4] = {p->K, p->Cg, p->R, p->S};
    const int *dim = dir == DIR_FWD ? ydim : dir == DIR_BWD_DATA ? xdim : wdim;
    const int64_t *st = dir == DIR_FWD ? p->ys : dir == DIR_BWD_DATA ? p->xs : p->ws;
    for (int a = 0; a < dim[0]; a++)
        for (int b = 0; b < dim[1]; b++)
            for (int c = 0; c < dim[2]; c++)
                for (int e = 0; e < dim[3]; e++) {
                    const int64_t i = a * st[0] + b * st[1] + c * st[2] + e * st[3];
                    store_el(p->dt, out, i, NAN);
                }
}

/* ------------------------------------------------------- compute entry points */
static cudnnStatus_t compute(const char *fn, int dir, cudnnHandle_t handle, const void *alpha,
                             cudnnTensorDescriptor_t xd, const void *x, cudnnFilterDescriptor_t wd,
                             const void *w, cudnnConvolutionDescriptor_t cd, int algo,
                             void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
                             cudnnTensorDescriptor_t yd, const void *y, void *out) {
    CHECK_HANDLE(fn, handle);
    if (!alpha || !beta) return fail(fn, CUDNN_STATUS_BAD_PARAM, "alpha or beta is NULL");
    if (!x || !w || !y)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "a data pointer is NULL (x %p, w %p, y %p)", x, w, y);
    conv_prob p;
    cudnnStatus_t st = conv_check(fn, dir, xd, wd, cd, yd, &p);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    size_t need = 0;
    st = algo_check(fn, dir, algo, &p, &need);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (need > 0 && (!workSpace || workSpaceSizeInBytes < need))
        return fail(fn, CUDNN_STATUS_BAD_PARAM,
                    "%s algorithm %s needs a %zu-byte workspace; got %zu bytes at %p",
                    dir_fn_name[dir], algo_table[dir][algo].name, need,
                    workSpaceSizeInBytes, workSpace);
    emu_flush_stream(handle->stream);
    return run_conv(fn, dir, algo, &p, x, w, y, out, scalar(p.dt, alpha), scalar(p.dt, beta),
                    workSpace, need);
}

cudnnStatus_t CUDNNWINAPI cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha,
                                                  const cudnnTensorDescriptor_t xDesc,
                                                  const void *x,
                                                  const cudnnFilterDescriptor_t wDesc,
                                                  const void *w,
                                                  const cudnnConvolutionDescriptor_t convDesc,
                                                  cudnnConvolutionFwdAlgo_t algo, void *workSpace,
                                                  size_t workSpaceSizeInBytes, const void *beta,
                                                  const cudnnTensorDescriptor_t yDesc, void *y) {
    return compute("cudnnConvolutionForward", DIR_FWD, handle, alpha, xDesc, x, wDesc, w,
                   convDesc, (int)algo, workSpace, workSpaceSizeInBytes, beta, yDesc, y, y);
}

cudnnStatus_t CUDNNWINAPI cudnnConvolutionBackwardData(
    cudnnHandle_t handle, const void *alpha, const cudnnFilterDescriptor_t wDesc, const void *w,
    const cudnnTensorDescriptor_t dyDesc, const void *dy,
    const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionBwdDataAlgo_t algo,
    void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
    const cudnnTensorDescriptor_t dxDesc, void *dx) {
    return compute("cudnnConvolutionBackwardData", DIR_BWD_DATA, handle, alpha, dxDesc, dx, wDesc,
                   w, convDesc, (int)algo, workSpace, workSpaceSizeInBytes, beta, dyDesc, dy, dx);
}

cudnnStatus_t CUDNNWINAPI cudnnConvolutionBackwardFilter(
    cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xDesc, const void *x,
    const cudnnTensorDescriptor_t dyDesc, const void *dy,
    const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionBwdFilterAlgo_t algo,
    void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
    const cudnnFilterDescriptor_t dwDesc, void *dw) {
    return compute("cudnnConvolutionBackwardFilter", DIR_BWD_FILTER, handle, alpha, xDesc, x,
                   dwDesc, dw, convDesc, (int)algo, workSpace, workSpaceSizeInBytes, beta, dyDesc,
                   dy, dw);
}

/* ------------------------------------------------------------ workspace sizes */
static cudnnStatus_t ws_size(const char *fn, int dir, cudnnHandle_t handle,
                             cudnnTensorDescriptor_t xd, cudnnFilterDescriptor_t wd,
                             cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t yd, int algo,
                             size_t *sizeInBytes) {
    CHECK_HANDLE(fn, handle);
    if (!sizeInBytes) return fail(fn, CUDNN_STATUS_BAD_PARAM, "sizeInBytes is NULL");
    conv_prob p;
    cudnnStatus_t st = conv_check(fn, dir, xd, wd, cd, yd, &p);
    if (st == CUDNN_STATUS_SUCCESS) st = algo_check(fn, dir, algo, &p, sizeInBytes);
    return st;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc,
    cudnnConvolutionFwdAlgo_t algo, size_t *sizeInBytes) {
    return ws_size("cudnnGetConvolutionForwardWorkspaceSize", DIR_FWD, handle, xDesc, wDesc,
                   convDesc, yDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc,
    cudnnConvolutionBwdDataAlgo_t algo, size_t *sizeInBytes) {
    return ws_size("cudnnGetConvolutionBackwardDataWorkspaceSize", DIR_BWD_DATA, handle, dxDesc,
                   wDesc, convDesc, dyDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t gradDesc,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t *sizeInBytes) {
    return ws_size("cudnnGetConvolutionBackwardFilterWorkspaceSize", DIR_BWD_FILTER, handle, xDesc,
                   gradDesc, convDesc, dyDesc, (int)algo, sizeInBytes);
}

/* ------------------------------------------------------- algorithm max counts */
static cudnnStatus_t max_count(const char *fn, int dir, cudnnHandle_t handle, int *count) {
    CHECK_HANDLE(fn, handle);
    if (!count) return fail(fn, CUDNN_STATUS_BAD_PARAM, "count is NULL");
    *count = algo_count[dir];
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t handle, int *count) {
    return max_count("cudnnGetConvolutionForwardAlgorithmMaxCount", DIR_FWD, handle, count);
}
cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t handle,
                                                                            int *count) {
    return max_count("cudnnGetConvolutionBackwardDataAlgorithmMaxCount", DIR_BWD_DATA, handle, count);
}
cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t handle,
                                                                              int *count) {
    return max_count("cudnnGetConvolutionBackwardFilterAlgorithmMaxCount", DIR_BWD_FILTER, handle,
                     count);
}

/* ------------------------------------------------- Find (timed) and heuristics */
typedef struct {
    int algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t det;
    cudnnMathType_t math;
} perf_t;

/* Successes by time (then algorithm number), then failures in algorithm order. */
static int perf_cmp(const void *a, const void *b) {
    const perf_t *x = a, *y = b;
    const int fx = x->status != CUDNN_STATUS_SUCCESS, fy = y->status != CUDNN_STATUS_SUCCESS;
    if (fx != fy) return fx - fy;
    if (!fx && x->time != y->time) return x->time < y->time ? -1 : 1;
    return x->algo - y->algo;
}

/* One perf_t per algorithm of `dir`, in result order. timed: Find (ws_avail bytes of
 * workspace available), else the heuristics. */
static int build_perf(int dir, const conv_prob *p, int timed, size_t ws_avail, perf_t *out) {
    const int n = algo_count[dir], forced = forced_algo(dir);
    const double macs = (double)p->N * p->K * p->Cg * p->R * p->S * p->P * p->Q;
    for (int i = 0; i < n; i++) {
        const int a = timed ? i : heur_order[dir][i];
        perf_t *r = &out[i];
        memset(r, 0, sizeof *r);
        r->algo = a;
        r->det = algo_table[dir][a].det ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
        r->math = perf_math(dir, a, p);
        r->status = algo_check(NULL, dir, a, p, &r->memory); /* not an error here */
        r->time = -1.0f;
        if (r->status != CUDNN_STATUS_SUCCESS) continue;
        if (timed && r->memory > ws_avail) {
            r->status = CUDNN_STATUS_ALLOC_FAILED; /* "the provided workspace is insufficient" */
            continue;
        }
        if (timed) {
            double f = algo_table[dir][a].factor * (uses_tf32(dir, a, p) ? 0.5 : 1.0);
            if (a == forced) f = 0.01;
            /* ms: 2*MACs at 1 TFLOP/s plus 10 us of launch overhead, times the factor */
            r->time = (float)((2.0 * macs / 1e9 + 0.01) * f);
        }
    }
    if (timed) {
        qsort(out, (size_t)n, sizeof *out, perf_cmp);
    } else if (forced >= 0) { /* move the forced algorithm to the front */
        for (int i = 0; i < n; i++)
            if (out[i].algo == forced) {
                perf_t t = out[i];
                memmove(out + 1, out, (size_t)i * sizeof *out);
                out[0] = t;
                break;
            }
    }
    return n;
}

#define COPY_PERF(dst, src, T)                                                             \
    do {                                                                                   \
        memset(&(dst), 0, sizeof(dst));                                                    \
        (dst).algo = (T)(src).algo;                                                        \
        (dst).status = (src).status;                                                       \
        (dst).time = (src).time;                                                           \
        (dst).memory = (src).memory;                                                       \
        (dst).determinism = (src).det;                                                     \
        (dst).mathType = (src).math;                                                       \
    } while (0)

/* Shared part of the three Find*AlgorithmEx / Get*Algorithm_v7: validation and the
 * perf list (perf has algo_count[dir] entries). Find also runs the convolution. */
static cudnnStatus_t search(const char *fn, int dir, int timed, cudnnHandle_t handle,
                            cudnnTensorDescriptor_t xd, const void *x, cudnnFilterDescriptor_t wd,
                            const void *w, cudnnConvolutionDescriptor_t cd,
                            cudnnTensorDescriptor_t yd, const void *y, void *out, int requested,
                            int *returned, void *results, void *workSpace, size_t wsSize,
                            perf_t *perf, int *count) {
    CHECK_HANDLE(fn, handle);
    if (!returned || !results)
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "returnedAlgoCount or perfResults is NULL");
    if (requested < 1) return fail(fn, CUDNN_STATUS_BAD_PARAM, "requestedAlgoCount %d < 1", requested);
    if (timed && (!x || !w || !y))
        return fail(fn, CUDNN_STATUS_BAD_PARAM, "a data pointer is NULL");
    conv_prob p;
    cudnnStatus_t st = conv_check(fn, dir, xd, wd, cd, yd, &p);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const int n = build_perf(dir, &p, timed, workSpace ? wsSize : 0, perf);
    if (timed) {
        emu_flush_stream(handle->stream);
        /* Run the fastest algorithm on the caller's buffers, then leave arbitrary values. */
        if (perf[0].status == CUDNN_STATUS_SUCCESS) {
            st = run_conv(fn, dir, perf[0].algo, &p, x, w, y, out, 1.0, 0.0, workSpace,
                          perf[0].memory);
            if (st != CUDNN_STATUS_SUCCESS) return st;
        }
        poison(&p, dir, out);
    }
    *count = n < requested ? n : requested;
    *returned = *count;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnFindConvolutionForwardAlgorithmEx(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const void *x,
    const cudnnFilterDescriptor_t wDesc, const void *w, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t yDesc, void *y, const int requestedAlgoCount,
    int *returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t *perfResults, void *workSpace,
    size_t workSpaceSizeInBytes) {
    perf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = search("cudnnFindConvolutionForwardAlgorithmEx", DIR_FWD, 1, handle, xDesc,
                              x, wDesc, w, convDesc, yDesc, y, y, requestedAlgoCount,
                              returnedAlgoCount, perfResults, workSpace, workSpaceSizeInBytes,
                              perf, &n);
    for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < n; i++)
        COPY_PERF(perfResults[i], perf[i], cudnnConvolutionFwdAlgo_t);
    return st;
}

cudnnStatus_t CUDNNWINAPI cudnnFindConvolutionBackwardDataAlgorithmEx(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc, const void *w,
    const cudnnTensorDescriptor_t dyDesc, const void *dy,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc, void *dx,
    const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t *perfResults, void *workSpace, size_t workSpaceSizeInBytes) {
    perf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = search("cudnnFindConvolutionBackwardDataAlgorithmEx", DIR_BWD_DATA, 1,
                              handle, dxDesc, dx, wDesc, w, convDesc, dyDesc, dy, dx,
                              requestedAlgoCount, returnedAlgoCount, perfResults, workSpace,
                              workSpaceSizeInBytes, perf, &n);
    for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < n; i++)
        COPY_PERF(perfResults[i], perf[i], cudnnConvolutionBwdDataAlgo_t);
    return st;
}

cudnnStatus_t CUDNNWINAPI cudnnFindConvolutionBackwardFilterAlgorithmEx(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const void *x,
    const cudnnTensorDescriptor_t dyDesc, const void *y, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t dwDesc, void *dw, const int requestedAlgoCount,
    int *returnedAlgoCount, cudnnConvolutionBwdFilterAlgoPerf_t *perfResults, void *workSpace,
    size_t workSpaceSizeInBytes) {
    perf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = search("cudnnFindConvolutionBackwardFilterAlgorithmEx", DIR_BWD_FILTER, 1,
                              handle, xDesc, x, dwDesc, dw, convDesc, dyDesc, y, dw,
                              requestedAlgoCount, returnedAlgoCount, perfResults, workSpace,
                              workSpaceSizeInBytes, perf, &n);
    for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < n; i++)
        COPY_PERF(perfResults[i], perf[i], cudnnConvolutionBwdFilterAlgo_t);
    return st;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnFilterDescriptor_t filterDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t destDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionFwdAlgoPerf_t *perfResults) {
    perf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = search("cudnnGetConvolutionForwardAlgorithm_v7", DIR_FWD, 0, handle, srcDesc,
                              NULL, filterDesc, NULL, convDesc, destDesc, NULL, NULL,
                              requestedAlgoCount, returnedAlgoCount, perfResults, NULL, 0, perf, &n);
    for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < n; i++)
        COPY_PERF(perfResults[i], perf[i], cudnnConvolutionFwdAlgo_t);
    return st;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t filterDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t gradDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t *perfResults) {
    perf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = search("cudnnGetConvolutionBackwardDataAlgorithm_v7", DIR_BWD_DATA, 0,
                              handle, gradDesc, NULL, filterDesc, NULL, convDesc, diffDesc, NULL,
                              NULL, requestedAlgoCount, returnedAlgoCount, perfResults, NULL, 0,
                              perf, &n);
    for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < n; i++)
        COPY_PERF(perfResults[i], perf[i], cudnnConvolutionBwdDataAlgo_t);
    return st;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t gradDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdFilterAlgoPerf_t *perfResults) {
    perf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = search("cudnnGetConvolutionBackwardFilterAlgorithm_v7", DIR_BWD_FILTER, 0,
                              handle, srcDesc, NULL, gradDesc, NULL, convDesc, diffDesc, NULL,
                              NULL, requestedAlgoCount, returnedAlgoCount, perfResults, NULL, 0,
                              perf, &n);
    for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < n; i++)
        COPY_PERF(perfResults[i], perf[i], cudnnConvolutionBwdFilterAlgo_t);
    return st;
}
