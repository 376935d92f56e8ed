/* The CUDA emulator's runtime: the subset of the CUDA runtime API (cudart) that the plugin
 * uses, on the CPU. Linked into the emulated plugin in place of the static cudart.
 *
 * Device memory is host memory from an allocation table, so that every API call and
 * every kernel launch can check that a "device pointer" really is one (and a copy stays
 * inside one allocation), as a GPU would fault:
 *   - cudaMalloc fills new memory with 0xff bytes (float NaN), so reads of memory nobody
 *     wrote show up as NaN in results instead of passing by luck;
 *   - capacity is CT_EMU_MEM_MB (default 4096) MiB, so out-of-memory paths can be tested;
 *   - cudaFree of a pointer that is not an allocation's base is an error (double free).
 * All work is synchronous (streams and events are bookkeeping). A fault found by a kernel
 * (simt.cc) is printed on stderr and returned by the next cudaGetLastError or
 * synchronising call, then cleared, so that one test run reports every faulty case. */
#include "emu_internal.h"

#include <cuda_runtime_api.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ allocation table */
typedef struct {
    uintptr_t base;
    size_t size;
    int pinned; /* host memory from cudaHostAlloc / cudaMallocHost */
} emu_alloc;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static emu_alloc *g_allocs; /* sorted by base */
static size_t g_nallocs, g_cap_allocs;
static size_t g_device_used;
static _Thread_local cudaError_t g_last_error = cudaSuccess; /* returned once by cudaGetLastError */
static _Thread_local cudaError_t g_fault = cudaSuccess;     /* a kernel fault, reported at the next sync */
static unsigned long long g_launches;

static size_t capacity(void) {
    static size_t cap;
    if (!cap) {
        const char *e = getenv("CT_EMU_MEM_MB");
        long mb = e && *e ? atol(e) : 4096;
        cap = (size_t)(mb > 0 ? mb : 4096) << 20;
    }
    return cap;
}

/* Index of the allocation containing p, or -1 (caller holds g_mu). */
static long find_alloc(uintptr_t p) {
    size_t lo = 0, hi = g_nallocs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_allocs[mid].base <= p) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return -1;
    const emu_alloc *a = &g_allocs[lo - 1];
    return p < a->base + (a->size ? a->size : 1) ? (long)(lo - 1) : -1;
}

static int add_alloc(void *p, size_t n, int pinned) {
    if (g_nallocs == g_cap_allocs) {
        size_t cap = g_cap_allocs ? 2 * g_cap_allocs : 256;
        emu_alloc *a = realloc(g_allocs, cap * sizeof *a);
        if (!a) return -1;
        g_allocs = a, g_cap_allocs = cap;
    }
    size_t i = g_nallocs;
    while (i > 0 && g_allocs[i - 1].base > (uintptr_t)p) {
        g_allocs[i] = g_allocs[i - 1];
        i--;
    }
    g_allocs[i] = (emu_alloc){(uintptr_t)p, n, pinned};
    g_nallocs++;
    return 0;
}

/* Faults are printed on stderr unless CT_EMU_QUIET is set (the emulator's own tests). */
static void emu_say(const char *fmt, va_list ap) {
    static int quiet = -1;
    if (quiet < 0) quiet = getenv("CT_EMU_QUIET") != NULL;
    if (quiet) return;
    char buf[2048];
    vsnprintf(buf, sizeof buf, fmt, ap);
    fprintf(stderr, "cuda-emu: %s\n", buf);
}

static cudaError_t api_error(cudaError_t e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static cudaError_t api_error(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emu_say(fmt, ap);
    va_end(ap);
    g_last_error = e;
    return e;
}

/* ------------------------------------------------------------ hooks for simt.cc */
int ct_emu_is_device_ptr(const void *p) {
    pthread_mutex_lock(&g_mu);
    long i = find_alloc((uintptr_t)p);
    int ok = i >= 0 && !g_allocs[i].pinned;
    pthread_mutex_unlock(&g_mu);
    return ok;
}

void ct_emu_kernel_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emu_say(fmt, ap);
    va_end(ap);
    g_fault = cudaErrorLaunchFailure;
}

int ct_emu_launch_error(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emu_say(fmt, ap);
    va_end(ap);
    g_last_error = (cudaError_t)err;
    return err;
}

static unsigned long long g_copies, g_mallocs;

void ct_emu_count_launch(void) { __atomic_add_fetch(&g_launches, 1, __ATOMIC_RELAXED); }

int ct_emu_skip_compute(void) {
    static int skip = -1;
    if (skip < 0) skip = getenv("CT_EMU_SKIP_COMPUTE") != NULL;
    return skip;
}

/* CT_EMU_STATS: counts of kernel launches, copies and cudaMalloc calls at exit. */
static void print_stats(void) {
    fprintf(stderr, "cuda-emu: %llu kernel launches, %llu copies, %llu cudaMalloc calls\n",
            g_launches, g_copies, g_mallocs);
}

__attribute__((constructor)) static void stats_init(void) {
    if (getenv("CT_EMU_STATS")) atexit(print_stats);
}

/* The pending fault, cleared (synchronising calls return it). */
cudaError_t ct_emu_take_fault(void) {
    cudaError_t f = g_fault;
    g_fault = cudaSuccess;
    return f;
}

int ct_emu_is_pinned(const void *p, size_t n) {
    pthread_mutex_lock(&g_mu);
    long i = find_alloc((uintptr_t)p);
    int ok = i >= 0 && g_allocs[i].pinned && (uintptr_t)p + n <= g_allocs[i].base + g_allocs[i].size;
    pthread_mutex_unlock(&g_mu);
    return ok;
}

/* Whether [p, p+n) lies in one allocation of the wanted kind (device: pinned 0). */
static int range_ok(const void *p, size_t n, int want_device) {
    pthread_mutex_lock(&g_mu);
    long i = find_alloc((uintptr_t)p);
    int ok = i >= 0 && (want_device ? !g_allocs[i].pinned : 1) &&
             (uintptr_t)p + n <= g_allocs[i].base + g_allocs[i].size;
    pthread_mutex_unlock(&g_mu);
    return ok;
}

/* ------------------------------------------------------------ errors */
#define EMU_ERRORS(X)                                                                      \
    X(cudaSuccess, "no error")                                                             \
    X(cudaErrorInvalidValue, "invalid argument")                                           \
    X(cudaErrorMemoryAllocation, "out of memory")                                          \
    X(cudaErrorInitializationError, "initialization error")                                \
    X(cudaErrorInvalidConfiguration, "invalid configuration argument")                     \
    X(cudaErrorInvalidDevice, "invalid device ordinal")                                    \
    X(cudaErrorInvalidDevicePointer, "invalid device pointer")                             \
    X(cudaErrorInvalidResourceHandle, "invalid resource handle")                           \
    X(cudaErrorNotReady, "device not ready")                                               \
    X(cudaErrorLaunchFailure, "unspecified launch failure")                                \
    X(cudaErrorIllegalAddress, "an illegal memory access was encountered")                 \
    X(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device") \
    X(cudaErrorInvalidDeviceFunction, "invalid device function")                           \
    X(cudaErrorNoDevice, "no CUDA-capable device is detected")

const char *cudaGetErrorName(cudaError_t e) {
#define EMU_NAME(code, text)                                                               \
    if (e == code) return #code;
    EMU_ERRORS(EMU_NAME)
#undef EMU_NAME
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
#define EMU_TEXT(code, text)                                                               \
    if (e == code) return text;
    EMU_ERRORS(EMU_TEXT)
#undef EMU_TEXT
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    if (e == cudaSuccess) e = ct_emu_take_fault();
    return e;
}

/* ------------------------------------------------------------ devices */
cudaError_t cudaGetDeviceCount(int *n) {
    if (!n) return cudaErrorInvalidValue;
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) {
    if (d != 0) return api_error(cudaErrorInvalidDevice, "cudaSetDevice(%d): one device", d);
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    if (!p || d != 0) return cudaErrorInvalidValue;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "ctorch CUDA emulator (CPU)");
    p->totalGlobalMem = capacity();
    p->sharedMemPerBlock = 48 << 10;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
    p->major = 9, p->minor = 0;
    p->multiProcessorCount = 2;
    p->maxThreadsPerMultiProcessor = 2048;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    ct_emu_flush_all();
    return ct_emu_take_fault();
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
    pthread_mutex_lock(&g_mu);
    if (free_b) *free_b = capacity() - g_device_used;
    if (total) *total = capacity();
    pthread_mutex_unlock(&g_mu);
    return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *a, const void *fn) {
    if (!a || !fn) return cudaErrorInvalidDeviceFunction;
    memset(a, 0, sizeof *a);
    a->maxThreadsPerBlock = 1024;
    a->binaryVersion = 90;
    a->ptxVersion = 90;
    return cudaSuccess;
}

/* ------------------------------------------------------------ memory */
static void *aligned_block(size_t n) {
    void *p = NULL;
    size_t rounded = (n + 255) & ~(size_t)255;
    if (posix_memalign(&p, 256, rounded ? rounded : 256) != 0) return NULL;
    return p;
}

cudaError_t cudaMalloc(void **out, size_t n) {
    if (!out) return api_error(cudaErrorInvalidValue, "cudaMalloc: NULL result pointer");
    *out = NULL;
    if (n == 0) return cudaSuccess;
    pthread_mutex_lock(&g_mu);
    int full = g_device_used + n > capacity();
    pthread_mutex_unlock(&g_mu);
    if (full) {
        g_last_error = cudaErrorMemoryAllocation;
        return cudaErrorMemoryAllocation;
    }
    void *p = aligned_block(n);
    if (!p) return cudaErrorMemoryAllocation;
    __atomic_add_fetch(&g_mallocs, 1, __ATOMIC_RELAXED);
    memset(p, 0xff, n); /* uninitialised device memory reads as NaN */
    pthread_mutex_lock(&g_mu);
    int rc = add_alloc(p, n, 0);
    if (rc == 0) g_device_used += n;
    pthread_mutex_unlock(&g_mu);
    if (rc != 0) {
        free(p);
        return cudaErrorMemoryAllocation;
    }
    *out = p;
    return cudaSuccess;
}

/* cudaFree and cudaFreeHost wait for all queued work first, as CUDA's do. */
static cudaError_t free_kind(void *p, int pinned, const char *fn) {
    if (!p) return cudaSuccess;
    ct_emu_flush_all();
    pthread_mutex_lock(&g_mu);
    long i = find_alloc((uintptr_t)p);
    if (i < 0 || g_allocs[i].base != (uintptr_t)p || g_allocs[i].pinned != pinned) {
        pthread_mutex_unlock(&g_mu);
        return api_error(pinned ? cudaErrorInvalidValue : cudaErrorInvalidDevicePointer,
                         "%s(%p): not the start of a live %s allocation (double free, or "
                         "memory from elsewhere)",
                         fn, p, pinned ? "pinned host" : "device");
    }
    if (!pinned) g_device_used -= g_allocs[i].size;
    memmove(&g_allocs[i], &g_allocs[i + 1], (g_nallocs - (size_t)i - 1) * sizeof *g_allocs);
    g_nallocs--;
    pthread_mutex_unlock(&g_mu);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) { return free_kind(p, 0, "cudaFree"); }

cudaError_t cudaHostAlloc(void **out, size_t n, unsigned int flags) {
    (void)flags;
    if (!out) return cudaErrorInvalidValue;
    void *p = aligned_block(n);
    if (!p) return cudaErrorMemoryAllocation;
    pthread_mutex_lock(&g_mu);
    int rc = add_alloc(p, n, 1);
    pthread_mutex_unlock(&g_mu);
    if (rc != 0) {
        free(p);
        return cudaErrorMemoryAllocation;
    }
    *out = p;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **out, size_t n) { return cudaHostAlloc(out, n, 0); }
cudaError_t cudaFreeHost(void *p) { return free_kind(p, 1, "cudaFreeHost"); }

static const char *kind_name(enum cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    default: return "Default";
    }
}

/* A queued copy or memset (owned: a snapshot of pageable source memory). */
typedef struct {
    void *dst;
    const void *src;
    size_t n;
    int value; /* memset */
    void *owned;
} copy_work;

static void copy_run(void *p) {
    copy_work *w = p;
    memmove(w->dst, w->src, w->n);
}

static void memset_run(void *p) {
    copy_work *w = p;
    memset(w->dst, w->value, w->n);
}

static void copy_free(void *p) {
    copy_work *w = p;
    free(w->owned);
    free(w);
}

/* Copies with CUDA's ordering rules for the host side (emu_streams.c decides when queued
 * work runs): a synchronous copy waits for all work; an asynchronous one is queued on s,
 * except into pageable host memory (it returns when done, after s's queued work); from
 * pageable host memory the source is read when the call is made (CUDA stages it), from
 * pinned memory when the copy runs. */
static cudaError_t copy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k,
                        cudaStream_t s, int sync, const char *fn) {
    if (n == 0) return cudaSuccess;
    __atomic_add_fetch(&g_copies, 1, __ATOMIC_RELAXED);
    if (k == cudaMemcpyDefault) /* by what the pointers are (unified addressing) */
        k = range_ok(src, n, 1) ? (range_ok(dst, n, 1) ? cudaMemcpyDeviceToDevice
                                                       : cudaMemcpyDeviceToHost)
                                : (range_ok(dst, n, 1) ? cudaMemcpyHostToDevice
                                                       : cudaMemcpyHostToHost);
    const int dst_dev = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
    const int src_dev = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
    if ((dst_dev && !range_ok(dst, n, 1)) || (src_dev && !range_ok(src, n, 1)))
        return api_error(cudaErrorInvalidValue,
                         "%s(%p <- %p, %zu bytes, %s): the %s range is not inside one device "
                         "allocation",
                         fn, dst, src, n, kind_name(k),
                         dst_dev && !range_ok(dst, n, 1) ? "destination" : "source");
    if (k == cudaMemcpyHostToDevice && range_ok(src, n, 1))
        return api_error(cudaErrorInvalidValue, "%s: HostToDevice from device memory %p", fn, src);
    if (k == cudaMemcpyDeviceToHost && range_ok(dst, n, 1))
        return api_error(cudaErrorInvalidValue, "%s: DeviceToHost into device memory %p", fn, dst);
    if (sync || k == cudaMemcpyHostToHost ||
        (k == cudaMemcpyDeviceToHost && !ct_emu_is_pinned(dst, n))) {
        if (sync) ct_emu_flush_all();
        else ct_emu_stream_flush(s);
        memmove(dst, src, n);
        return cudaSuccess;
    }
    copy_work *w = calloc(1, sizeof *w);
    if (!w) return cudaErrorMemoryAllocation;
    w->dst = dst, w->src = src, w->n = n;
    if (k == cudaMemcpyHostToDevice && !ct_emu_is_pinned(src, n)) {
        w->owned = malloc(n);
        if (!w->owned) {
            free(w);
            return cudaErrorMemoryAllocation;
        }
        memcpy(w->owned, src, n);
        w->src = w->owned;
    }
    ct_emu_enqueue(s, copy_run, w, copy_free);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k) {
    cudaError_t e = copy(dst, src, n, k, NULL, 1, "cudaMemcpy");
    return e != cudaSuccess ? e : ct_emu_take_fault();
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind k,
                            cudaStream_t s) {
    return copy(dst, src, n, k, s, 0, "cudaMemcpyAsync");
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    if (n == 0) return cudaSuccess;
    if (!range_ok(p, n, 1))
        return api_error(cudaErrorInvalidValue,
                         "cudaMemsetAsync(%p, %zu bytes): not inside one device allocation", p, n);
    copy_work *w = calloc(1, sizeof *w);
    if (!w) return cudaErrorMemoryAllocation;
    w->dst = p, w->n = n, w->value = v;
    ct_emu_enqueue(s, memset_run, w, copy_free);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int v, size_t n) {
    cudaError_t e = cudaMemsetAsync(p, v, n, NULL);
    return e != cudaSuccess ? e : ct_emu_take_fault();
}
