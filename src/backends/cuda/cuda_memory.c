/* Device memory: a caching allocator, host<->device copies, pinned host memory.
 *
 * Caching allocator. Sizes are rounded (512 B minimum; quarter-octave steps up to 64 MiB,
 * so at most 25% is lost to rounding; 2 MiB multiples above) and every rounded size has
 * its own free list. A freed block goes back to its list and is handed out again for the
 * next request of that size class: a training step allocates the same sizes every
 * iteration, so after the first step nearly nothing reaches cudaMalloc. All work of a
 * device runs on one stream, so a block freed by the host while kernels that use it are
 * still queued can be reused at once: later kernels are ordered after them. When
 * cudaMalloc fails, every cached block is released and the allocation retried; if it
 * still fails the error reports the statistics and what to try.
 *
 * Host-to-device copies go through a ring of pinned staging buffers: the host copies a
 * chunk into a free slot and queues the DMA, so the call returns without waiting for the
 * GPU (a pageable cudaMemcpyAsync would first wait for all queued work). Device-to-host
 * copies wait for the stream, then check the kernel-side error flag.
 *
 * Copy stream. Besides the compute stream (d->k.stream) each device gets, on first use, a
 * second non-blocking stream for host-to-device copies that overlap with compute (the
 * DataLoader's device prefetcher). The allocator's "reuse at once" rule holds only for
 * the compute stream, so every copy on the copy stream first waits, on the GPU, for the
 * work queued so far on the compute stream (an event, `copy_fence`); the caller makes the
 * compute stream wait for the copy (ct_cuda_stream_wait_event) before using or freeing the
 * destination. */
#include "cuda_host.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ size classes */
static size_t round_size(size_t n) {
    if (n <= 512) return 512;
    if (n > ((size_t)64 << 20)) {
        const size_t m = (size_t)2 << 20;
        return (n + m - 1) / m * m;
    }
    unsigned e = 63u - (unsigned)__builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n */
    size_t step = (size_t)1 << (e - 2);
    return (n + step - 1) & ~(step - 1);
}

static unsigned hash_size(size_t s) { return (unsigned)((s >> 9) * 2654435761u) % CU_BUCKET_HASH; }
static unsigned hash_ptr(const void *p) {
    uintptr_t v = (uintptr_t)p >> 9;
    return (unsigned)((v ^ (v >> 17)) * 2654435761u) % CU_USED_HASH;
}

static cu_bucket *bucket_for(cu_dev *d, size_t size, int create) {
    unsigned h = hash_size(size);
    for (cu_bucket *b = d->buckets[h]; b; b = b->next)
        if (b->size == size) return b;
    if (!create) return NULL;
    cu_bucket *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->size = size;
    b->next = d->buckets[h];
    d->buckets[h] = b;
    return b;
}

/* Frees the cached (unused) blocks. Caller holds mem_mu. cudaFree waits for the device. */
static void release_cached_locked(cu_dev *d) {
    for (int h = 0; h < CU_BUCKET_HASH; h++)
        for (cu_bucket *b = d->buckets[h]; b; b = b->next) {
            while (b->free) {
                cu_blk *k = b->free;
                b->free = k->next;
                cudaFree(k->ptr);
                d->st.reserved -= k->size;
                free(k);
            }
        }
}

void cu_release_cached(cu_dev *d) {
    pthread_mutex_lock(&d->mem_mu);
    release_cached_locked(d);
    pthread_mutex_unlock(&d->mem_mu);
}

static void *oom(cu_dev *d, size_t req, size_t rounded) {
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    cudaGetLastError();
    d->st.ooms++;
    char b[7][32];
    return cu_error_null(
        "CUDA out of memory on cuda:%d (%s): tried to allocate %s (%s rounded). The GPU has %s "
        "in total and %s free; ctorch holds %s in live tensors and %s reserved (its cached "
        "blocks were already released and the allocation retried), peak %s. Try: a smaller "
        "batch size; float32 instead of float64; freeing tensors no longer needed (ct_free) "
        "before the next step; stopping other processes on this GPU (see `nvidia-smi`)",
        d->index, d->name, cu_fmt_bytes(req, b[0], 32), cu_fmt_bytes(rounded, b[1], 32),
        cu_fmt_bytes(tot, b[2], 32), cu_fmt_bytes(fr, b[3], 32),
        cu_fmt_bytes(d->st.allocated, b[4], 32), cu_fmt_bytes(d->st.reserved, b[5], 32),
        cu_fmt_bytes(d->st.peak_allocated, b[6], 32));
}

void *cu_malloc_dev(cu_dev *d, size_t nbytes) {
    const size_t size = round_size(nbytes);
    pthread_mutex_lock(&d->mem_mu);
    cu_bucket *b = bucket_for(d, size, 1);
    if (!b) {
        pthread_mutex_unlock(&d->mem_mu);
        return cu_error_null("cuda allocator: out of host memory");
    }
    cu_blk *k = b->free;
    if (k) {
        b->free = k->next;
        d->st.cache_hits++;
    } else {
        void *p = NULL;
        cudaError_t e = cudaMalloc(&p, size);
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            release_cached_locked(d);
            e = cudaMalloc(&p, size);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            void *r = e == cudaErrorMemoryAllocation
                          ? oom(d, nbytes, size)
                          : cu_error_null("cuda:%d: cudaMalloc(%zu) failed: %s", d->index, size,
                                          cudaGetErrorString(e));
            pthread_mutex_unlock(&d->mem_mu);
            return r;
        }
        k = malloc(sizeof *k);
        if (!k) {
            cudaFree(p);
            pthread_mutex_unlock(&d->mem_mu);
            return cu_error_null("cuda allocator: out of host memory");
        }
        k->ptr = p;
        k->size = size;
        d->st.cuda_mallocs++;
        d->st.reserved += size;
        if (d->st.reserved > d->st.peak_reserved) d->st.peak_reserved = d->st.reserved;
    }
    unsigned h = hash_ptr(k->ptr);
    k->next = d->used[h];
    d->used[h] = k;
    d->st.alloc_calls++;
    d->st.allocated += size;
    if (d->st.allocated > d->st.peak_allocated) d->st.peak_allocated = d->st.allocated;
    void *p = k->ptr;
    pthread_mutex_unlock(&d->mem_mu);
    return p;
}

void *cu_malloc(size_t nbytes, int device) {
    cu_dev *d = cu_device(device);
    return d ? cu_malloc_dev(d, nbytes) : NULL;
}

void cu_free(void *p, int device) {
    if (!p || device < 0 || device >= cu_ndev) return;
    cu_dev *d = cu_device(device);
    if (!d) return;
    pthread_mutex_lock(&d->mem_mu);
    unsigned h = hash_ptr(p);
    cu_blk **pp = &d->used[h];
    while (*pp && (*pp)->ptr != p) pp = &(*pp)->next;
    cu_blk *k = *pp;
    if (k) {
        *pp = k->next;
        d->st.allocated -= k->size;
        cu_bucket *b = bucket_for(d, k->size, 1);
        if (b) {
            k->next = b->free;
            b->free = k;
        } else { /* no memory for bookkeeping: give the block back */
            cudaFree(k->ptr);
            d->st.reserved -= k->size;
            free(k);
        }
    }
    pthread_mutex_unlock(&d->mem_mu);
}

int ct_cuda_memory_stats_get(int device, ct_cuda_memory_stats *out) {
    cu_dev *d = cu_device(device);
    if (!d) return -1;
    if (!out) return cu_error("cuda memory stats: NULL output");
    pthread_mutex_lock(&d->mem_mu);
    *out = d->st;
    pthread_mutex_unlock(&d->mem_mu);
    return 0;
}

int ct_cuda_empty_cache(int device) {
    cu_dev *d = cu_device(device);
    if (!d) return -1;
    cudaError_t e = cudaStreamSynchronize(d->k.stream);
    cu_release_cached(d);
    return e == cudaSuccess ? 0 : cu_fail((int)e, "empty_cache");
}

void ct_cuda_reset_peak_stats(int device) {
    cu_dev *d = cu_device(device);
    if (!d) return;
    pthread_mutex_lock(&d->mem_mu);
    d->st.peak_allocated = d->st.allocated;
    d->st.peak_reserved = d->st.reserved;
    pthread_mutex_unlock(&d->mem_mu);
}

/* --------------------------------------------------------- synchronisation */
/* The caller has synchronised d's stream, so the copies of the flag that flag_raised
 * (cuda_kernels.c) queued after each flagging kernel are complete: flag_host holds the
 * flag as the last such kernel left it. */
/* The kinds of out-of-range report (cuk_flag_out_of_range): printf formats of the value,
 * the position and the bound (twice), registered by the kernels' host sides. */
#define FLAG_KINDS 16
static const char *g_flag_fmt[FLAG_KINDS];
static int g_flag_kinds;
static pthread_mutex_t g_flag_mu = PTHREAD_MUTEX_INITIALIZER;

int cu_flag_kind(const char *fmt) {
    pthread_mutex_lock(&g_flag_mu);
    int k = 0;
    while (k < g_flag_kinds && g_flag_fmt[k] != fmt) k++;
    if (k == g_flag_kinds && k < FLAG_KINDS) g_flag_fmt[g_flag_kinds++] = fmt;
    pthread_mutex_unlock(&g_flag_mu);
    return k < FLAG_KINDS ? k + 1 : 0; /* 0: the flag then reports without a format */
}

int cu_flag_raised(cu_dev *d, const char *op) {
    cudaError_t e = cudaMemcpyAsync(d->flag_host, d->k.flag, 4 * sizeof(long long),
                                    cudaMemcpyDeviceToHost, d->k.stream);
    if (e != cudaSuccess) return cu_fail((int)e, op);
    d->flag_pending = 1;
    return cu_sync_checks ? cu_sync(d, op) : 0;
}

int cu_check_flag(cu_dev *d) {
    if (!d->flag_pending) return 0;
    d->flag_pending = 0;
    long long kind = d->flag_host[0];
    if (!kind) return 0;
    long long pos = d->flag_host[1], val = d->flag_host[2], bound = d->flag_host[3];
    d->flag_host[0] = 0;
    cudaMemsetAsync(d->k.flag, 0, 4 * sizeof(long long), d->k.stream);
    char what[512];
    const char *fmt = kind > 0 && kind <= g_flag_kinds ? g_flag_fmt[kind - 1] : NULL;
    if (fmt)
        snprintf(what, sizeof what, fmt, val, pos, bound, bound);
    else
        snprintf(what, sizeof what, "index %lld at position %lld is out of range [0, %lld)", val,
                 pos, bound);
    return cu_error("%s; found by a kernel on cuda:%d and reported at this synchronisation, so "
                    "the result computed with it is invalid",
                    what, d->index);
}

int cu_sync(cu_dev *d, const char *op) {
    cudaError_t e = cudaStreamSynchronize(d->k.stream);
    if (e != cudaSuccess) return cu_fail((int)e, op);
    return cu_check_flag(d);
}

/* ------------------------------------------------------------------ copies */
static int stage_init(cu_dev *d) {
    if (d->stage_state) return d->stage_state;
    d->stage_state = -1;
    for (int i = 0; i < CU_STAGE_SLOTS; i++) {
        if (cudaHostAlloc(&d->stage[i], CU_STAGE_BYTES, cudaHostAllocPortable) != cudaSuccess ||
            cudaEventCreateWithFlags(&d->stage_ev[i], cudaEventDisableTiming) != cudaSuccess) {
            cudaGetLastError();
            for (int j = 0; j <= i; j++) {
                if (d->stage[j]) cudaFreeHost(d->stage[j]);
                d->stage[j] = NULL;
            }
            return -1;
        }
        cudaEventRecord(d->stage_ev[i], d->k.stream);
    }
    d->stage_state = 1;
    return 1;
}

/* dst <- src (pageable host memory) on `stream` of d, through the staging ring. */
static int h2d_staged(cu_dev *d, void *dst, const void *src, size_t n, cudaStream_t stream) {
    pthread_mutex_lock(&d->stage_mu);
    cudaError_t e = cudaSuccess;
    if (stage_init(d) < 0) {
        /* No pinned memory: the driver stages pageable memory itself (and returns once
         * the source has been read). */
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream);
    } else {
        for (size_t off = 0; off < n && e == cudaSuccess; off += CU_STAGE_BYTES) {
            size_t len = n - off < CU_STAGE_BYTES ? n - off : CU_STAGE_BYTES;
            int s = d->stage_next;
            d->stage_next = (s + 1) % CU_STAGE_SLOTS;
            e = cudaEventSynchronize(d->stage_ev[s]); /* the slot's previous DMA is done */
            if (e != cudaSuccess) break;
            memcpy(d->stage[s], (const char *)src + off, len);
            e = cudaMemcpyAsync((char *)dst + off, d->stage[s], len, cudaMemcpyHostToDevice,
                                stream);
            if (e == cudaSuccess) e = cudaEventRecord(d->stage_ev[s], stream);
        }
    }
    pthread_mutex_unlock(&d->stage_mu);
    return e == cudaSuccess ? 0 : cu_fail((int)e, "copy to cuda");
}

int cu_memcpy(void *dst, const void *src, size_t n, int kind, int device) {
    cu_dev *d = cu_device(device);
    if (!d) return -1;
    if (n == 0) return 0;
    cudaError_t e;
    switch (kind) {
    case CT_MEMCPY_H2D: return h2d_staged(d, dst, src, n, d->k.stream);
    case CT_MEMCPY_D2H:
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, d->k.stream);
        if (e != cudaSuccess) return cu_fail((int)e, "copy to the cpu");
        return cu_sync(d, "copy to the cpu (an earlier asynchronous CUDA error surfaced here)");
    case CT_MEMCPY_D2D:
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, d->k.stream);
        return e == cudaSuccess ? 0 : cu_fail((int)e, "copy on cuda");
    default: return cu_error("cuda memcpy: unknown direction %d", kind);
    }
}

/* ------------------------------------------------------- pinned host memory */
typedef struct hblk {
    void *ptr;
    size_t size;
    int in_use;
    int ev_dev; /* device of ev, -1 none */
    cudaEvent_t ev;     /* recorded after the last copy from the block */
    cudaStream_t ev_st; /* ... on this stream */
    struct hblk *next;
} hblk;

static pthread_mutex_t g_host_mu = PTHREAD_MUTEX_INITIALIZER;
static hblk *g_host;

static hblk *host_find(const void *p) {
    for (hblk *b = g_host; b; b = b->next)
        if ((const char *)p >= (const char *)b->ptr && (const char *)p < (char *)b->ptr + b->size)
            return b;
    return NULL;
}

void *ct_cuda_host_alloc(size_t nbytes) {
    const size_t size = round_size(nbytes);
    pthread_mutex_lock(&g_host_mu);
    for (hblk *b = g_host; b; b = b->next) {
        if (b->in_use || b->size != size) continue;
        if (b->ev_dev >= 0 && cudaEventQuery(b->ev) != cudaSuccess) {
            cudaGetLastError(); /* cudaErrorNotReady: a copy from it is still queued */
            continue;
        }
        b->in_use = 1;
        pthread_mutex_unlock(&g_host_mu);
        return b->ptr;
    }
    hblk *b = calloc(1, sizeof *b);
    void *p = NULL;
    cudaError_t e = b ? cudaHostAlloc(&p, size, cudaHostAllocPortable) : cudaErrorMemoryAllocation;
    if (e != cudaSuccess) {
        cudaGetLastError();
        free(b);
        pthread_mutex_unlock(&g_host_mu);
        char s[32];
        return cu_error_null("cuda host_alloc: cannot allocate %s of pinned host memory: %s "
                             "(pinned memory is limited by RAM and `ulimit -l`)",
                             cu_fmt_bytes(size, s, sizeof s), cudaGetErrorString(e));
    }
    b->ptr = p;
    b->size = size;
    b->in_use = 1;
    b->ev_dev = -1;
    b->next = g_host;
    g_host = b;
    pthread_mutex_unlock(&g_host_mu);
    return p;
}

void ct_cuda_host_free(void *p) {
    if (!p) return;
    pthread_mutex_lock(&g_host_mu);
    hblk *b = host_find(p);
    if (b && b->ptr == p) b->in_use = 0;
    pthread_mutex_unlock(&g_host_mu);
}

/* ------------------------------------------------------- streams and events */
struct ct_event {
    int device;
    cudaEvent_t ev;
};

/* Guards the lazy creation of the copy streams and each device's copy_fence (recorded and
 * waited on as one step). */
static pthread_mutex_t g_copy_mu = PTHREAD_MUTEX_INITIALIZER;

/* Creates d's copy stream and fence if needed. Caller holds g_copy_mu; d is current. */
static int copy_stream_init_locked(cu_dev *d) {
    if (d->copy_ready) return 0;
    cudaError_t e = cudaStreamCreateWithFlags(&d->copy_stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) {
        e = cudaEventCreateWithFlags(&d->copy_fence, cudaEventDisableTiming);
        if (e != cudaSuccess) cudaStreamDestroy(d->copy_stream);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        return cu_error("cuda:%d: creating the copy stream for non-blocking host-to-device "
                        "copies failed: %s. Fix: check the GPU with `nvidia-smi`; after a "
                        "failed kernel the CUDA context stays unusable until the process "
                        "restarts",
                        d->index, cudaGetErrorString(e));
    }
    d->copy_ready = 1;
    return 0;
}

static int check_stream_id(const char *op, int stream) {
    if (stream == CT_CUDA_STREAM_COMPUTE || stream == CT_CUDA_STREAM_COPY) return 0;
    return cu_error("%s: stream %d is neither CT_CUDA_STREAM_COMPUTE (0) nor "
                    "CT_CUDA_STREAM_COPY (1)",
                    op, stream);
}

/* The cudaStream_t of `stream` on d (d current); the copy stream is created on first use. */
static int stream_of(cu_dev *d, int stream, const char *op, cudaStream_t *out) {
    if (check_stream_id(op, stream) != 0) return -1;
    if (stream == CT_CUDA_STREAM_COMPUTE) {
        *out = d->k.stream;
        return 0;
    }
    pthread_mutex_lock(&g_copy_mu);
    int rc = copy_stream_init_locked(d);
    pthread_mutex_unlock(&g_copy_mu);
    if (rc == 0) *out = d->copy_stream;
    return rc;
}

/* Later work on d's copy stream waits for the work queued so far on its compute stream. */
static int copy_after_compute(cu_dev *d) {
    pthread_mutex_lock(&g_copy_mu);
    cudaError_t e = cudaEventRecord(d->copy_fence, d->k.stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(d->copy_stream, d->copy_fence, 0);
    pthread_mutex_unlock(&g_copy_mu);
    return e == cudaSuccess ? 0 : cu_fail((int)e, "copy stream: waiting for the compute stream");
}

/* The event's device, made current; NULL + error naming `op` for a NULL event. */
static cu_dev *event_dev(const ct_cuda_event *ev, const char *op) {
    if (!ev) return cu_error_null("%s: event is NULL (create one with ct_cuda_event_create)", op);
    return cu_device(ev->device);
}

ct_cuda_event *ct_cuda_event_create(int device) {
    cu_dev *d = cu_device(device);
    if (!d) return NULL;
    ct_cuda_event *ev = calloc(1, sizeof *ev);
    if (!ev) return cu_error_null("ct_cuda_event_create: out of host memory");
    cudaError_t e = cudaEventCreateWithFlags(&ev->ev, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        cudaGetLastError();
        free(ev);
        return cu_error_null("ct_cuda_event_create: cudaEventCreateWithFlags on cuda:%d failed: "
                             "%s",
                             device, cudaGetErrorString(e));
    }
    ev->device = device;
    return ev;
}

void ct_cuda_event_destroy(ct_cuda_event *ev) {
    if (!ev) return;
    if (cu_device(ev->device)) cudaEventDestroy(ev->ev);
    free(ev);
}

int ct_cuda_event_record(ct_cuda_event *ev, int stream) {
    cu_dev *d = event_dev(ev, "ct_cuda_event_record");
    cudaStream_t s;
    if (!d || stream_of(d, stream, "ct_cuda_event_record", &s) != 0) return -1;
    cudaError_t e = cudaEventRecord(ev->ev, s);
    return e == cudaSuccess ? 0 : cu_fail((int)e, "ct_cuda_event_record");
}

int ct_cuda_event_query(ct_cuda_event *ev) {
    cu_dev *d = event_dev(ev, "ct_cuda_event_query");
    if (!d) return -1;
    cudaError_t e = cudaEventQuery(ev->ev);
    if (e == cudaSuccess) return 1;
    if (e == cudaErrorNotReady) {
        cudaGetLastError(); /* not an error: the work is still queued */
        return 0;
    }
    return cu_fail((int)e, "ct_cuda_event_query");
}

int ct_cuda_event_synchronize(ct_cuda_event *ev) {
    cu_dev *d = event_dev(ev, "ct_cuda_event_synchronize");
    if (!d) return -1;
    cudaError_t e = cudaEventSynchronize(ev->ev);
    return e == cudaSuccess ? 0 : cu_fail((int)e, "ct_cuda_event_synchronize");
}

int ct_cuda_stream_wait_event(int stream, ct_cuda_event *ev) {
    cu_dev *d = event_dev(ev, "ct_cuda_stream_wait_event");
    cudaStream_t s;
    if (!d || stream_of(d, stream, "ct_cuda_stream_wait_event", &s) != 0) return -1;
    cudaError_t e = cudaStreamWaitEvent(s, ev->ev, 0);
    return e == cudaSuccess ? 0 : cu_fail((int)e, "ct_cuda_stream_wait_event");
}

/* Records b->ev on stream s of d after a copy from the block. An earlier copy from it on
 * another stream (or device) is folded in first (s waits for it), so that the one event
 * covers every copy still reading the block. Caller holds g_host_mu; d is current. */
static cudaError_t host_block_record(hblk *b, cu_dev *d, cudaStream_t s) {
    cudaError_t e = cudaSuccess;
    if (b->ev_dev >= 0 && (b->ev_dev != d->index || b->ev_st != s))
        e = cudaStreamWaitEvent(s, b->ev, 0); /* events may come from another device */
    if (e == cudaSuccess && b->ev_dev != d->index) {
        if (b->ev_dev >= 0) cudaEventDestroy(b->ev); /* released once its work completes */
        b->ev_dev = -1;
        e = cudaEventCreateWithFlags(&b->ev, cudaEventDisableTiming);
        if (e == cudaSuccess) b->ev_dev = d->index;
    }
    if (e == cudaSuccess) e = cudaEventRecord(b->ev, s);
    if (e == cudaSuccess) b->ev_st = s;
    return e;
}

int ct_cuda_copy_h2d_async_on(ct_tensor *dst, const ct_tensor *src, int stream) {
    if (!dst || !src) return cu_error("copy_h2d_async: NULL tensor");
    if (check_stream_id("copy_h2d_async", stream) != 0) return -1;
    if (dst->storage->device.type != CT_CUDA || src->storage->device.type != CT_CPU)
        return cu_error("copy_h2d_async: expected a CPU source and a CUDA destination");
    if (dst->dtype != src->dtype || cu_numel(dst) != cu_numel(src) || !cu_is_contiguous(dst) ||
        !cu_is_contiguous(src))
        return cu_error("copy_h2d_async: source and destination must be contiguous with the "
                        "same dtype and number of elements");
    cu_dev *d = cu_dev_of(dst);
    if (!d) return -1;
    size_t n = (size_t)cu_numel(src) * cu_dsize(src->dtype);
    if (n == 0) return 0;
    cudaStream_t s;
    if (stream_of(d, stream, "copy_h2d_async", &s) != 0) return -1;
    if (stream == CT_CUDA_STREAM_COPY && copy_after_compute(d) != 0) return -1;
    const void *sp = cu_ptr(src);
    void *dp = cu_ptr(dst);
    pthread_mutex_lock(&g_host_mu);
    hblk *b = host_find(sp);
    if (b && (const char *)sp + n <= (const char *)b->ptr + b->size) {
        cudaError_t e = cudaMemcpyAsync(dp, sp, n, cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess) e = host_block_record(b, d, s);
        pthread_mutex_unlock(&g_host_mu);
        return e == cudaSuccess ? 0 : cu_fail((int)e, "copy_h2d_async");
    }
    pthread_mutex_unlock(&g_host_mu);
    return h2d_staged(d, dp, sp, n, s);
}

int ct_cuda_copy_h2d_async(ct_tensor *dst, const ct_tensor *src) {
    return ct_cuda_copy_h2d_async_on(dst, src, CT_CUDA_STREAM_COMPUTE);
}
