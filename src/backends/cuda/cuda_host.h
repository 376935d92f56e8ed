/* Host-side internals of the CUDA plugin (C only): per-device state, the dlopened cuBLAS
 * and cuDNN entry points, the caching allocator, error helpers, tensor helpers. */
#ifndef CT_CUDA_HOST_H
#define CT_CUDA_HOST_H

#include "core/backend.h"
#include "cuda_internal.h"
#include "cuda_plugin.h"

#include <cublas_v2.h>
#include <pthread.h>

/* cuDNN 9's own header when it is installed; otherwise (or with -DCT_CUDA_NO_CUDNN_H) the
 * subset this plugin uses: cuDNN is dlopened, never linked, so it is not a build
 * dependency. */
#if defined(__has_include) && !defined(CT_CUDA_NO_CUDNN_H)
#if __has_include(<cudnn_version.h>)
#include <cudnn_version.h>
#if CUDNN_MAJOR >= 9
#define CT_HAVE_CUDNN_H 1
#else
#undef CUDNN_MAJOR
#undef CUDNN_MINOR
#undef CUDNN_PATCHLEVEL
#undef CUDNN_VERSION
#endif
#endif
#endif
#ifdef CT_HAVE_CUDNN_H
#include <cudnn.h>
#else
#include "cudnn_subset.h"
#endif
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CU_MAX_DEVICES 16

/* ---------------------------------------------------------- dlopened libraries
 * The plugin does not link cuBLAS / cuDNN (a missing library would make the plugin
 * itself fail to load with a loader message); ct_cuda_plugin_init dlopens them and
 * resolves these functions, typed from the libraries' own headers. Names that the
 * headers map to versioned symbols (cublasCreate -> cublasCreate_v2) are resolved
 * under the versioned name. */
#define CU_BLAS_FUNCS(X)                                                                   \
    X(cublasGetVersion)                                                                    \
    X(cublasGetStatusString)                                                               \
    X(cublasCreate)                                                                        \
    X(cublasDestroy)                                                                       \
    X(cublasSetStream)                                                                     \
    X(cublasSetWorkspace)                                                                  \
    X(cublasGemmStridedBatchedEx)

#define CU_DNN_FUNCS(X)                                                                    \
    X(cudnnGetVersion)                                                                     \
    X(cudnnGetErrorString)                                                                 \
    X(cudnnCreate)                                                                         \
    X(cudnnDestroy)                                                                        \
    X(cudnnSetStream)                                                                      \
    X(cudnnCreateTensorDescriptor)                                                         \
    X(cudnnSetTensor4dDescriptor)                                                          \
    X(cudnnDestroyTensorDescriptor)                                                        \
    X(cudnnCreateFilterDescriptor)                                                         \
    X(cudnnSetFilter4dDescriptor)                                                          \
    X(cudnnDestroyFilterDescriptor)                                                        \
    X(cudnnCreateConvolutionDescriptor)                                                    \
    X(cudnnSetConvolution2dDescriptor)                                                     \
    X(cudnnSetConvolutionGroupCount)                                                       \
    X(cudnnSetConvolutionMathType)                                                         \
    X(cudnnDestroyConvolutionDescriptor)                                                   \
    X(cudnnGetConvolutionForwardAlgorithmMaxCount)                                         \
    X(cudnnGetConvolutionBackwardDataAlgorithmMaxCount)                                    \
    X(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount)                                  \
    X(cudnnFindConvolutionForwardAlgorithmEx)                                              \
    X(cudnnFindConvolutionBackwardDataAlgorithmEx)                                         \
    X(cudnnFindConvolutionBackwardFilterAlgorithmEx)                                       \
    X(cudnnGetConvolutionForwardAlgorithm_v7)                                              \
    X(cudnnGetConvolutionBackwardDataAlgorithm_v7)                                         \
    X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                                       \
    X(cudnnGetConvolutionForwardWorkspaceSize)                                             \
    X(cudnnGetConvolutionBackwardDataWorkspaceSize)                                        \
    X(cudnnGetConvolutionBackwardFilterWorkspaceSize)                                      \
    X(cudnnConvolutionForward)                                                             \
    X(cudnnConvolutionBackwardData)                                                        \
    X(cudnnConvolutionBackwardFilter)

/* dlopen(RTLD_NOW | RTLD_LOCAL) of $env (a full path) when set, else of soname through
 * the loader, else $CUDA_HOME/lib64 or /usr/local/cuda/lib64; NULL with dlerror() set
 * (cuda_plugin.c). */
void *cu_open_lib(const char *soname, const char *env);
/* The NCCL version, "2.28.9", into buf when libnccl.so.2 loads (cuda_nccl.c; opens it on
 * the first call, ~2 ms); 0, or -1 without setting an error when NCCL is missing. */
int cu_nccl_version_quiet(char *buf, size_t n);

#ifndef __cplusplus /* C++ sees overloads of some of these (the .cu files do not call them) */
#define CU_DECL_FN(fn) __typeof__(&fn) fn;
typedef struct {
    CU_BLAS_FUNCS(CU_DECL_FN)
} cu_blas_api;
typedef struct {
    CU_DNN_FUNCS(CU_DECL_FN)
} cu_dnn_api;
extern cu_blas_api cu_blas;
extern cu_dnn_api cu_dnn;
#endif

/* ----------------------------------------------------------------- settings */
extern int cu_tf32;          /* CTORCH_TF32 */
extern int cu_deterministic; /* CTORCH_DETERMINISTIC */
extern int cu_benchmark;     /* CTORCH_CUDNN_BENCHMARK (default 1) */
extern int cu_sync_checks;   /* CTORCH_CUDA_SYNC: check kernel-side errors at once */

/* ------------------------------------------------------------------ devices */
typedef struct cu_blk {
    void *ptr;
    size_t size;
    struct cu_blk *next;
} cu_blk;

typedef struct cu_bucket {
    size_t size;
    cu_blk *free;
    struct cu_bucket *next;
} cu_bucket;

#define CU_BUCKET_HASH 512
#define CU_USED_HASH 16384
#define CU_STAGE_SLOTS 4
#define CU_STAGE_BYTES ((size_t)4 << 20)

struct conv_plan;

typedef struct cu_dev {
    int ready; /* 0 not yet, 1 initialised, -1 failed (reason in `why`) */
    int index;
    char name[256];
    int cc_major, cc_minor;
    size_t total_mem;
    cuk_ctx k;
    cublasHandle_t blas;
    cudnnHandle_t dnn;
    void *blas_ws;
    pthread_mutex_t lib_mu; /* cuBLAS / cuDNN handles, the conv plan cache */
    struct conv_plan *plans;
    /* caching allocator */
    pthread_mutex_t mem_mu;
    cu_bucket *buckets[CU_BUCKET_HASH];
    cu_blk *used[CU_USED_HASH];
    ct_cuda_memory_stats st;
    /* pinned staging ring for host-to-device copies */
    pthread_mutex_t stage_mu;
    void *stage[CU_STAGE_SLOTS];
    cudaEvent_t stage_ev[CU_STAGE_SLOTS];
    int stage_next, stage_state; /* 0 untried, 1 ready, -1 unavailable */
    /* copy stream for non-blocking host-to-device copies that overlap with compute, and
     * the event through which it waits for the compute stream (cuda_memory.c; created on
     * first use, under a lock of cuda_memory.c: copy_ready 0 not yet, 1 created) */
    int copy_ready;
    cudaStream_t copy_stream;
    cudaEvent_t copy_fence;
    /* kernel-side error flag (cuk_ctx.flag) */
    int flag_pending;
    long long *flag_host;
    char why[512];
} cu_dev;

extern int cu_ndev;
/* The initialised device `index`, made current on this thread; NULL + error. */
cu_dev *cu_device(int index);
/* The device of a CUDA tensor, made current. */
cu_dev *cu_dev_of(const ct_tensor *t);

/* ------------------------------------------------------------------- memory */
void *cu_malloc(size_t nbytes, int device);
void *cu_malloc_dev(cu_dev *d, size_t nbytes); /* d current on this thread */
void cu_free(void *p, int device);
int cu_memcpy(void *dst, const void *src, size_t n, int kind, int device);
/* Frees every cached block of d (caller holds no allocator lock). */
void cu_release_cached(cu_dev *d);
/* Waits for d's stream, then reports asynchronous errors and kernel-side flags. */
int cu_sync(cu_dev *d, const char *op);
/* Reports a pending kernel-side flag (after a synchronisation). */
int cu_check_flag(cu_dev *d);
/* The kind number for the device flag (cuk_flag_out_of_range) of a report whose message is
 * the printf format fmt (a static string) of the value, the position and the bound twice,
 * e.g. "embedding: index %lld at position %lld is out of range for %lld rows (indices in
 * [0, %lld))". */
int cu_flag_kind(const char *fmt);
/* After a kernel that may raise the flag: queues the flag's copy to pinned host memory
 * behind it (the next synchronisation reports it without another round trip); with
 * CTORCH_CUDA_SYNC=1 synchronises at once. */
int cu_flag_raised(cu_dev *d, const char *op);
const char *cu_fmt_bytes(size_t n, char *buf, size_t len);

/* ------------------------------------------------------------------- errors */
/* Sets ctorch's error message (ct_error, found in the process at init); returns -1. */
int cu_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *cu_error_null(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Launcher status -> 0, or -1 with "<op>: CUDA error ..." (CUK_ENOMEM: already set). */
int cu_fail(int status, const char *op);
const char *cu_blas_str(cublasStatus_t s);
const char *cu_dnn_str(cudnnStatus_t s);

/* ------------------------------------------------------------------ tensors */
size_t cu_dsize(ct_dtype dt);
const char *cu_dtype_name(ct_dtype dt);
int64_t cu_numel(const ct_tensor *t);
int cu_is_contiguous(const ct_tensor *t);
static inline void *cu_ptr(const ct_tensor *t) {
    return (char *)t->storage->data + (size_t)t->offset * cu_dsize(t->dtype);
}
static inline int cu_is_float(ct_dtype dt) { return dt == CT_FLOAT32 || dt == CT_FLOAT64; }
/* bfloat16 / float16: autocast's compute dtypes (cuda_lowp.c says which kernel takes them
 * natively and which through float32 stand-ins). */
static inline int cu_is_lowp(ct_dtype dt) { return dt == CT_BFLOAT16 || dt == CT_FLOAT16; }

/* Iteration space over nops (<= 3) tensors of t[0]'s shape (cuda_kernels.c): size-1 dims
 * dropped, dims contiguous in every operand merged, innermost first; returns the numel. A
 * linear index into it is the row-major index into t[0]'s shape. */
int64_t cu_make_geom(cuk_geom *g, int nops, const ct_tensor *const *t);

/* --------------------------------------------------------------- kernel table */
/* cu_k_<name> for every row of CT_KERNEL_LIST: the plugin's own kernels (cuda_kernels.c)
 * and cuBLAS / cuDNN (cuda_dnn.c); the table is in cuda_plugin.c. */
#define CT__CUDA_PROTO(name, params) int cu_k_##name params;
CT_KERNEL_LIST(CT__CUDA_PROTO)
#undef CT__CUDA_PROTO
void cu_dnn_release(cu_dev *d);           /* destroys d's conv plans */

/* The entries that take bfloat16 / float16 operands through float32 stand-ins
 * (cuda_lowp.c): cu_k_<name> widens the 16-bit operands with the copy kernel, calls
 * cu_k_<name>_full (the float32 / float64 kernel) and rounds the results back. The
 * prototypes are generated for every row; only these rows define a _full kernel:
 * softmax, nll_loss, cross_entropy, batch_norm, layer_norm, embedding (forward and
 * backward). The other entries take 16-bit operands natively or refuse them by name. */
#define CT__CUDA_FULL_PROTO(name, params) int cu_k_##name##_full params;
CT_KERNEL_LIST(CT__CUDA_FULL_PROTO)
#undef CT__CUDA_FULL_PROTO

#ifdef __cplusplus
}
#endif

#endif
