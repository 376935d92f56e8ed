/* A small SIMT emulator: runs CUDA kernels on the CPU, so the plugin's kernels and host
 * code can be tested on machines without a GPU (tests/cuda_emu/README.md).
 *
 * Model. A launch is queued on its stream (emu_streams.c decides when it runs: at once by
 * default) and runs its blocks one after another on the thread that runs it. Within a block
 * each CUDA thread is a fiber (ucontext) with its own stack; fibers run until they finish
 * or reach a barrier:
 *   - __syncthreads(): block barrier; released when every thread of the block waits on it.
 *   - __shfl_*_sync(mask, ...): warp exchange; every lane named in `mask` must take part.
 * A barrier that cannot be released (threads exited or waiting elsewhere) is reported as a
 * kernel error instead of hanging: the divergent-barrier bugs that deadlock or corrupt
 * data on a GPU. So are launch configurations a GPU rejects (more than 1024 threads,
 * empty grids), and pointer arguments that do not point into device memory.
 *
 * Not modelled: concurrency between threads outside barriers (a fiber runs until it
 * blocks, so data races between threads are invisible), memory-model details, timing,
 * and float rounding of the GPU's own math library (libm is used). */
#ifndef CT_CUDA_EMU_SIMT_H
#define CT_CUDA_EMU_SIMT_H

#include <cuda_runtime_api.h>

#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

namespace cuda_emu {

struct fiber;
struct block;

/* The running fiber and block (set by the scheduler on every switch). */
extern thread_local fiber *cur_fiber;
extern thread_local block *cur_block;

uint3 &thread_idx();
uint3 &block_idx();
dim3 &block_dim();
dim3 &grid_dim();

void sync_block();
/* Exchanges 8 bytes among the lanes of `mask`; returns lane src_lane's bytes. */
uint64_t warp_exchange(unsigned mask, uint64_t mine, int (*src_of)(int lane, int arg, int width),
                       int arg, int width);

/* Launch: checks the configuration, then queues on `stream` the running of body(ctx) for
 * every thread of the grid (at once, unless CT_EMU_STREAMS defers the stream's work).
 * Takes ownership of ctx (freed with dtor once run). Returns a cudaError_t. */
typedef void (*body_fn)(void *ctx);
int launch_grid(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, body_fn body,
                void *ctx, void (*dtor)(void *), const char *kernel);
/* Whether [p, p+1) lies in device memory (emu_runtime.c's allocations). */
extern "C" int ct_emu_is_device_ptr(const void *p);
/* A fault found while a kernel ran: sticky, like a GPU's (returned by later runtime calls). */
extern "C" void ct_emu_kernel_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A launch the GPU would refuse: returned once by cudaGetLastError. Returns err. */
extern "C" int ct_emu_launch_error(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
extern "C" void ct_emu_count_launch(void);
/* Queues fn(ctx) on stream s (emu_runtime.c: runs it now, or later under CT_EMU_STREAMS);
 * dtor(ctx) after it ran. */
extern "C" void ct_emu_enqueue(cudaStream_t s, void (*fn)(void *), void *ctx,
                               void (*dtor)(void *));
/* CT_EMU_SKIP_COMPUTE set: kernels are checked and counted but not run. */
extern "C" int ct_emu_skip_compute(void);
/* The thread order between barriers: "forward", "reverse" or "random" (CT_EMU_SCHEDULE). */
extern "C" void ct_emu_set_schedule(const char *name);

/* Pointer arguments must point into device memory (or be NULL). */
template <typename T> static inline bool check_arg(const char *kernel, int i, const T &v) {
    if constexpr (std::is_pointer<T>::value) {
        if (v != nullptr && !ct_emu_is_device_ptr((const void *)v)) {
            ct_emu_kernel_error("kernel %s: argument %d (%p) is not a device pointer", kernel,
                                i, (const void *)v);
            return false;
        }
    } else {
        (void)kernel, (void)i, (void)v;
    }
    return true;
}

template <typename... P> struct launch_args {
    void (*fn)(P...);
    std::tuple<typename std::decay<P>::type...> args;
    static void run(void *self) {
        launch_args *a = (launch_args *)self;
        std::apply(a->fn, a->args);
    }
    static void destroy(void *self) { delete (launch_args *)self; }
};

/* CUK_LAUNCH(grid, block, smem, stream, kernel)(args...) */
template <typename... P> struct launcher {
    dim3 grid, blk;
    size_t smem;
    cudaStream_t stream;
    void (*fn)(P...);
    const char *name;
    template <typename... A> void operator()(A &&...a) const {
        /* the arguments are copied, as a launch copies them: the kernel may run later */
        auto *la = new launch_args<P...>{fn, std::tuple<typename std::decay<P>::type...>(
                                                 (typename std::decay<P>::type)std::forward<A>(a)...)};
        int i = 0;
        bool ok = true;
        std::apply([&](const auto &...v) { ((ok = check_arg(name, i++, v) && ok), ...); },
                   la->args);
        if (ok)
            launch_grid(grid, blk, smem, stream, &launch_args<P...>::run, la,
                        &launch_args<P...>::destroy, name);
        else
            delete la;
    }
};

template <typename... P>
launcher<P...> make_launcher(dim3 g, dim3 b, size_t smem, cudaStream_t s, void (*fn)(P...),
                             const char *name) {
    return launcher<P...>{g, b, smem, s, fn, name};
}

} // namespace cuda_emu

#define CUK_EMU_LAUNCH(g, b, smem, s, ...)                                                 \
    ::cuda_emu::make_launcher(g, b, smem, s, __VA_ARGS__, #__VA_ARGS__)

/* ------------------------------------------------------------ built-in variables */
#define threadIdx (::cuda_emu::thread_idx())
#define blockIdx (::cuda_emu::block_idx())
#define blockDim (::cuda_emu::block_dim())
#define gridDim (::cuda_emu::grid_dim())
#define warpSize 32

/* ------------------------------------------------------------ intrinsics */
static inline void __syncthreads(void) { ::cuda_emu::sync_block(); }

static inline int cuda_emu_xor_src(int lane, int arg, int width) {
    int src = lane ^ arg;
    return (src / width == lane / width) ? src : lane;
}
static inline int cuda_emu_down_src(int lane, int arg, int width) {
    int src = lane + arg;
    return (src / width == lane / width) ? src : lane;
}
static inline int cuda_emu_up_src(int lane, int arg, int width) {
    int src = lane - arg;
    return (src >= 0 && src / width == lane / width) ? src : lane;
}
static inline int cuda_emu_idx_src(int lane, int arg, int width) {
    return (lane / width) * width + (arg % width);
}

template <typename T>
static inline T cuda_emu_shfl(unsigned mask, T v, int (*src)(int, int, int), int arg, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    uint64_t b = 0, r;
    memcpy(&b, &v, sizeof v);
    r = ::cuda_emu::warp_exchange(mask, b, src, arg, width);
    T out;
    memcpy(&out, &r, sizeof out);
    return out;
}
template <typename T> static inline T __shfl_xor_sync(unsigned m, T v, int lm, int w = 32) {
    return cuda_emu_shfl(m, v, cuda_emu_xor_src, lm, w);
}
template <typename T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    return cuda_emu_shfl(m, v, cuda_emu_down_src, (int)d, w);
}
template <typename T> static inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
    return cuda_emu_shfl(m, v, cuda_emu_up_src, (int)d, w);
}
template <typename T> static inline T __shfl_sync(unsigned m, T v, int lane, int w = 32) {
    return cuda_emu_shfl(m, v, cuda_emu_idx_src, lane, w);
}

/* Atomics: fibers switch only at barriers, so a read-modify-write is atomic as written. */
template <typename T> static inline T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T> static inline T atomicCAS(T *p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}
template <typename T> static inline T atomicExch(T *p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <typename T> static inline T atomicMax(T *p, T v) {
    T old = *p;
    if (v > old) *p = v;
    return old;
}
template <typename T> static inline T atomicMin(T *p, T v) {
    T old = *p;
    if (v < old) *p = v;
    return old;
}

/* Bit reinterpretations. */
template <typename To, typename From> static inline To cuda_emu_bits(From x) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between sizes");
    To t;
    memcpy(&t, &x, sizeof t);
    return t;
}
static inline unsigned __float_as_uint(float x) { return cuda_emu_bits<unsigned>(x); }
static inline float __uint_as_float(unsigned u) { return cuda_emu_bits<float>(u); }
static inline int __float_as_int(float x) { return cuda_emu_bits<int>(x); }
static inline float __int_as_float(int u) { return cuda_emu_bits<float>(u); }
static inline long long __double_as_longlong(double x) { return cuda_emu_bits<long long>(x); }
static inline double __longlong_as_double(long long u) { return cuda_emu_bits<double>(u); }

/* cudaFuncGetAttributes(&attr, kernel): the runtime's C++ overload. */
template <typename T> static inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, T *fn) {
    return ::cudaFuncGetAttributes(a, (const void *)fn);
}

#endif
