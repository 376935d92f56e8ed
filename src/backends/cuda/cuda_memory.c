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
 * copies wait for the stream, then check the kernel-side error flag. */
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
int cu_check_flag(cu_dev *d) {
    if (!d->flag_pending) return 0;
    d->flag_pending = 0;
    cudaError_t e = cudaMemcpyAsync(d->flag_host, d->k.flag, 4 * sizeof(long long),
                                    cudaMemcpyDeviceToHost, d->k.stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(d->k.stream);
    if (e != cudaSuccess) return cu_fail((int)e, "cuda");
    if (!d->flag_host[0]) return 0;
    long long pos = d->flag_host[1], tgt = d->flag_host[2], C = d->flag_host[3];
    cudaMemsetAsync(d->k.flag, 0, 4 * sizeof(long long), d->k.stream);
    return cu_error("nll_loss: target %lld at position %lld is out of bounds for %lld classes "
                    "(targets must be in [0, %lld) or equal ignore_index); found by a kernel "
                    "on cuda:%d and reported at this synchronisation, so the loss computed "
                    "with it is invalid",
                    tgt, pos, C, C, d->index);
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

static int h2d_staged(cu_dev *d, void *dst, const void *src, size_t n) {
    pthread_mutex_lock(&d->stage_mu);
    cudaError_t e = cudaSuccess;
    if (stage_init(d) < 0) {
        /* No pinned memory: the driver stages pageable memory itself (and returns once
         * the source has been read). */
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, d->k.stream);
    } else {
        for (size_t off = 0; off < n && e == cudaSuccess; off += CU_STAGE_BYTES) {
            size_t len = n - off < CU_STAGE_BYTES ? n - off : CU_STAGE_BYTES;
            int s = d->stage_next;
            d->stage_next = (s + 1) % CU_STAGE_SLOTS;
            e = cudaEventSynchronize(d->stage_ev[s]); /* the slot's previous DMA is done */
            if (e != cudaSuccess) break;
            memcpy(d->stage[s], (const char *)src + off, len);
            e = cudaMemcpyAsync((char *)dst + off, d->stage[s], len, cudaMemcpyHostToDevice,
                                d->k.stream);
            if (e == cudaSuccess) e = cudaEventRecord(d->stage_ev[s], d->k.stream);
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
    case CT_MEMCPY_H2D: return h2d_staged(d, dst, src, n);
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
    cudaEvent_t ev;
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

int ct_cuda_copy_h2d_async(ct_tensor *dst, const ct_tensor *src) {
    if (!dst || !src) return cu_error("copy_h2d_async: NULL tensor");
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
    const void *sp = cu_ptr(src);
    void *dp = cu_ptr(dst);
    pthread_mutex_lock(&g_host_mu);
    hblk *b = host_find(sp);
    if (b && (const char *)sp + n <= (const char *)b->ptr + b->size) {
        cudaError_t e = cudaSuccess;
        if (b->ev_dev != d->index) {
            if (b->ev_dev >= 0) cudaEventDestroy(b->ev);
            b->ev_dev = -1;
            e = cudaEventCreateWithFlags(&b->ev, cudaEventDisableTiming);
            if (e == cudaSuccess) b->ev_dev = d->index;
        }
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(dp, sp, n, cudaMemcpyHostToDevice, d->k.stream);
        if (e == cudaSuccess) e = cudaEventRecord(b->ev, d->k.stream);
        pthread_mutex_unlock(&g_host_mu);
        return e == cudaSuccess ? 0 : cu_fail((int)e, "copy_h2d_async");
    }
    pthread_mutex_unlock(&g_host_mu);
    return h2d_staged(d, dp, sp, n);
}
