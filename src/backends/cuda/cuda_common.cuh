/* Device-side helpers shared by the plugin's .cu files. */
#ifndef CT_CUDA_COMMON_CUH
#define CT_CUDA_COMMON_CUH

#include "core/half.h"
#include "cuda_internal.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#define CUK_THREADS 256

/* Records the first out-of-range index a kernel meets in the device's flag (cuk_ctx.flag):
 * [0] the kind (cu_flag_kind, a format registered by the host side), [1] the position,
 * [2] the value, [3] the bound. The host reports it at the next synchronisation: a kernel
 * cannot fail an op by itself. */
__device__ __forceinline__ void cuk_flag_out_of_range(long long *flag, int kind, int64_t pos,
                                                      long long value, int64_t bound) {
    if (atomicCAS((unsigned long long *)flag, 0ull, (unsigned long long)kind) == 0ull) {
        flag[1] = pos;
        flag[2] = value;
        flag[3] = bound;
    }
}

/* Kernel launch: CUK_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...) is
 * kernel<<<grid, block, shared_bytes, stream>>>(args...). Built for the CPU emulator
 * (tests/cuda_emu, CT_CUDA_EMU), the kernel runs there instead, so the kernels are tested
 * on machines without a GPU. */
#ifdef CT_CUDA_EMU
#define CUK_LAUNCH(grid, block, smem, stream, ...)                                         \
    CUK_EMU_LAUNCH(grid, block, smem, stream, __VA_ARGS__)
#else
#define CUK_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

/* Grid size for a grid-stride loop over n items: enough blocks to fill the GPU a few
 * times over, never more than the items need. */
static inline int cuk_blocks(const cuk_ctx *c, int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    int64_t cap = (int64_t)(c->sm_count > 0 ? c->sm_count : 108) * (2048 / threads) * 4;
    if (b > cap) b = cap;
    return b < 1 ? 1 : (int)b;
}

static inline int cuk_status(void) { return (int)cudaGetLastError(); }

/* Grid-stride loop over [0, n) with index type I (uint32_t when n < 2^31: the increment
 * can then never wrap). */
#define CUK_LOOP(I, i, n)                                                                  \
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < (I)(n);                 \
         i += (I)gridDim.x * (I)blockDim.x)

/* Offsets of linear index i into NOPS operands of a cuk_geom (dims innermost first). */
template <int NOPS, typename I>
__device__ __forceinline__ void cuk_offsets(const cuk_geom &g, I i, int64_t (&off)[NOPS]) {
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] = 0;
#pragma unroll
    for (int d = 0; d < CUK_MAX_DIMS; d++) {
        if (d == g.ndim) break;
        I sz = (I)g.shape[d];
        I q = i / sz;
        I r = i - q * sz;
        i = q;
#pragma unroll
        for (int k = 0; k < NOPS; k++) off[k] += (int64_t)r * g.stride[k][d];
    }
}

/* Type-generic math (float overloads map to the single-precision functions, as the CPU
 * kernels use expf/logf/... for float32). */
__device__ __forceinline__ float cu_exp(float x) { return expf(x); }
__device__ __forceinline__ double cu_exp(double x) { return exp(x); }
__device__ __forceinline__ float cu_log(float x) { return logf(x); }
__device__ __forceinline__ double cu_log(double x) { return log(x); }
__device__ __forceinline__ float cu_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double cu_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float cu_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double cu_abs(double x) { return fabs(x); }
__device__ __forceinline__ float cu_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double cu_pow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float cu_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double cu_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float cu_erf(float x) { return erff(x); }
__device__ __forceinline__ double cu_erf(double x) { return erf(x); }

#include "core/half.h"
/* bfloat16 / float16 storage. A 16-bit element is loaded as float (cuk_ld), computed in
 * float and stored rounded to nearest even (cuk_st<S>), with src/core/half.h's conversions:
 * the CPU widens to float32, computes and rounds once, so a kernel written over a storage
 * type S and its arithmetic type cuk_acc<S>::type gives the CPU's bits. For float32,
 * float64 (and the integer types) cuk_ld / cuk_st are the identity. */
struct cuk_bf16 {
    uint16_t bits;
};
struct cuk_f16 {
    uint16_t bits;
};
template <typename S>
struct cuk_acc {
    typedef S type;
};
template <>
struct cuk_acc<cuk_bf16> {
    typedef float type;
};
template <>
struct cuk_acc<cuk_f16> {
    typedef float type;
};
template <typename T>
__device__ __forceinline__ T cuk_ld(T v) {
    return v;
}
__device__ __forceinline__ float cuk_ld(cuk_bf16 v) { return ct_bf16_to_f32(v.bits); }
__device__ __forceinline__ float cuk_ld(cuk_f16 v) { return ct_f16_to_f32(v.bits); }
template <typename S>
struct cuk_store {
    __device__ __forceinline__ static S of(typename cuk_acc<S>::type v) { return v; }
};
template <>
struct cuk_store<cuk_bf16> {
    __device__ __forceinline__ static cuk_bf16 of(float v) { return cuk_bf16{ct_f32_to_bf16(v)}; }
};
template <>
struct cuk_store<cuk_f16> {
    __device__ __forceinline__ static cuk_f16 of(float v) { return cuk_f16{ct_f32_to_f16(v)}; }
};
template <typename S>
__device__ __forceinline__ S cuk_st(typename cuk_acc<S>::type v) {
    return cuk_store<S>::of(v);
}

/* Block-wide sum of a double (all threads get the result). blockDim.x a multiple of 32,
 * at most 1024. The order of additions is fixed, so results are deterministic. */
__device__ __forceinline__ double cuk_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double cuk_block_sum(double v, double *sh /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cuk_warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0;
    return cuk_warp_sum(v);
}

#endif
