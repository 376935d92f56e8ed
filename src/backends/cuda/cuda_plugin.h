/* Functions exported by the CUDA plugin (libctorch_cuda.so) beyond its ct_backend table.
 *
 * The core loads the plugin with dlopen(RTLD_LOCAL) at the first CUDA use, so these
 * symbols are not visible to the rest of the process by plain linking. The ones every
 * accelerator backend may offer (device enumeration, streams and events, pinned memory)
 * also reach the core as the backend's extra entry points (ct_backend_procs, under generic
 * names); any of them is found with ct_backend_proc(CT_CUDA, "ct_cuda_...")
 * (src/core/backend.h), a dlsym on the handle the core opened, also when the plugin was
 * loaded from $CTORCH_CUDA_PLUGIN.
 *
 * Each function also has a typedef (ct_cuda_*_fn) for that purpose. All of them return
 * 0 / a value on success and -1 with ct_last_error() set on failure, like the rest of
 * ctorch. Tensors must be CUDA tensors of one device unless stated. */
#ifndef CT_CUDA_PLUGIN_H
#define CT_CUDA_PLUGIN_H

#include "ctorch.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define CT_CUDA_API __attribute__((visibility("default")))
#else
#define CT_CUDA_API
#endif

struct ct_backend;

/* Entry point called by src/core/dispatch.c. Returns the backend, or NULL after writing
 * to `reason` which piece is missing (driver not loaded, driver too old, no device,
 * cuDNN / cuBLAS missing, GPU architecture not in the build) and how to fix it. */
CT_CUDA_API const struct ct_backend *ct_cuda_plugin_init(char *reason, size_t n);
/* CT_BACKEND_ABI of the headers the plugin was built with (checked by the core first). */
CT_CUDA_API long ct_cuda_plugin_abi(void);
typedef const struct ct_backend *(*ct_cuda_plugin_init_fn)(char *reason, size_t n);

/* ------------------------------------------------------------------ devices */
/* The core's ct_cuda_device_count / ct_cuda_device_name call these (other names: the
 * plugin's calls must never bind to the core's functions of the same name). */
CT_CUDA_API int ct_cuda_plugin_device_count(void);
typedef int (*ct_cuda_plugin_device_count_fn)(void);
/* "NVIDIA H100 80GB HBM3 (cc 9.0, 132 SMs, 79.1 GiB)" into buf. */
CT_CUDA_API int ct_cuda_plugin_device_describe(int device, char *buf, size_t n);
typedef int (*ct_cuda_plugin_device_describe_fn)(int device, char *buf, size_t n);
/* Waits for all work queued on the device; reports asynchronous kernel errors. */
CT_CUDA_API int ct_cuda_synchronize(int device);
typedef int (*ct_cuda_synchronize_fn)(int device);

/* ------------------------------------------------------------------ settings
 * Initial values from the environment: CTORCH_TF32=1 allows TF32 tensor cores for
 * float32 GEMM and convolution (default off: full float32 precision);
 * CTORCH_DETERMINISTIC=1 restricts cuDNN to deterministic algorithms;
 * CTORCH_CUDNN_BENCHMARK=0 picks convolution algorithms by cuDNN's heuristics instead of
 * timing them (default: time once per shape and cache, like cudnn.benchmark = True). */
CT_CUDA_API void ct_cuda_set_tf32(int enabled);
CT_CUDA_API int ct_cuda_get_tf32(void);
CT_CUDA_API void ct_cuda_set_deterministic(int enabled);
CT_CUDA_API void ct_cuda_set_cudnn_benchmark(int enabled);

/* ----------------------------------------------------------- memory (caching) */
typedef struct {
    size_t allocated;      /* bytes in blocks handed out (rounded sizes) */
    size_t reserved;       /* bytes obtained from cudaMalloc (allocated + cached) */
    size_t peak_allocated; /* high-water marks since start / last reset */
    size_t peak_reserved;
    uint64_t alloc_calls;  /* allocations served */
    uint64_t cache_hits;   /* ... of which from the cache (no cudaMalloc) */
    uint64_t cuda_mallocs; /* cudaMalloc calls */
    uint64_t ooms;         /* allocations that failed even after emptying the cache */
} ct_cuda_memory_stats;

CT_CUDA_API int ct_cuda_memory_stats_get(int device, ct_cuda_memory_stats *out);
typedef int (*ct_cuda_memory_stats_get_fn)(int device, ct_cuda_memory_stats *out);
/* Returns cached, unused blocks to the driver (synchronises the device first). */
CT_CUDA_API int ct_cuda_empty_cache(int device);
typedef int (*ct_cuda_empty_cache_fn)(int device);
CT_CUDA_API void ct_cuda_reset_peak_stats(int device);

/* Pinned (page-locked) host memory, cached. A block freed while a copy from it is still
 * queued is reused only after that copy has completed. */
CT_CUDA_API void *ct_cuda_host_alloc(size_t nbytes);
CT_CUDA_API void ct_cuda_host_free(void *p);
typedef void *(*ct_cuda_host_alloc_fn)(size_t nbytes);
typedef void (*ct_cuda_host_free_fn)(void *p);

/* Non-blocking host-to-device copy of a contiguous CPU tensor into a contiguous CUDA
 * tensor of the same dtype and numel. When src's memory comes from ct_cuda_host_alloc the
 * copy is a DMA queued on the device's stream and this returns at once: the caller must
 * not modify src until ct_cuda_synchronize() (or a later blocking copy back) — the
 * pinned block itself is protected from reuse by ct_cuda_host_free. Pageable memory goes
 * through the plugin's pinned staging ring (also non-blocking for the caller). Kernels
 * queued later on the device see the data. */
CT_CUDA_API int ct_cuda_copy_h2d_async(ct_tensor *dst, const ct_tensor *src);
typedef int (*ct_cuda_copy_h2d_async_fn)(ct_tensor *dst, const ct_tensor *src);

/* ------------------------------------------------------- streams and events
 * Every device has two streams. The compute stream runs every kernel, cuBLAS / cuDNN call
 * and ordinary copy of the device in program order. The copy stream (created on first
 * use) runs host-to-device copies that overlap with the compute stream's work: the
 * DataLoader's device prefetcher copies batch k+1 there while the model computes on batch
 * k. Events order work across the two streams without the host waiting, like
 * torch.cuda.Event and Stream.wait_event:
 *
 *     copy_h2d_async_on(dst, pinned_src, CT_CUDA_STREAM_COPY);  // returns at once
 *     event_record(ev, CT_CUDA_STREAM_COPY);                    // "dst is complete"
 *     ... kernels on the compute stream (batch k) ...
 *     stream_wait_event(CT_CUDA_STREAM_COMPUTE, ev);            // later kernels see dst
 *
 * An event belongs to the device it was created for and may be recorded on either of its
 * streams, again and again; a wait uses the state of the last record before it. */
typedef enum { CT_CUDA_STREAM_COMPUTE = 0, CT_CUDA_STREAM_COPY = 1 } ct_cuda_stream_id;
typedef struct ct_event ct_cuda_event; /* the generic ct_event of src/core/backend.h */

/* A new event on `device` (NULL + error). Until first recorded it counts as complete. */
CT_CUDA_API ct_cuda_event *ct_cuda_event_create(int device);
typedef ct_cuda_event *(*ct_cuda_event_create_fn)(int device);
/* Destroys an event, also one whose work is still queued (the driver releases it when
 * that work completes; waits already issued on it stay valid). NULL is fine. */
CT_CUDA_API void ct_cuda_event_destroy(ct_cuda_event *ev);
typedef void (*ct_cuda_event_destroy_fn)(ct_cuda_event *ev);
/* Captures the work queued so far on `stream` (a ct_cuda_stream_id) of the event's device. */
CT_CUDA_API int ct_cuda_event_record(ct_cuda_event *ev, int stream);
typedef int (*ct_cuda_event_record_fn)(ct_cuda_event *ev, int stream);
/* 1 when the captured work has completed, 0 when it has not yet, -1 on error. */
CT_CUDA_API int ct_cuda_event_query(ct_cuda_event *ev);
typedef int (*ct_cuda_event_query_fn)(ct_cuda_event *ev);
/* The host waits until the captured work has completed. */
CT_CUDA_API int ct_cuda_event_synchronize(ct_cuda_event *ev);
typedef int (*ct_cuda_event_synchronize_fn)(ct_cuda_event *ev);
/* Work queued later on `stream` of the event's device runs after the work the event
 * captured; the host does not wait. */
CT_CUDA_API int ct_cuda_stream_wait_event(int stream, ct_cuda_event *ev);
typedef int (*ct_cuda_stream_wait_event_fn)(int stream, ct_cuda_event *ev);
/* ct_cuda_copy_h2d_async on a chosen stream of dst's device. On CT_CUDA_STREAM_COPY the
 * copy first waits (on the GPU) for the work queued so far on the compute stream, because
 * dst's memory may come from the caching allocator still in use by queued kernels; the
 * caller must make the compute stream wait for the copy (an event recorded on the copy
 * stream after it) before kernels use dst, and also before freeing dst. A pinned source
 * block (ct_cuda_host_alloc) is not handed out again until the copy has completed. */
CT_CUDA_API int ct_cuda_copy_h2d_async_on(ct_tensor *dst, const ct_tensor *src, int stream);
typedef int (*ct_cuda_copy_h2d_async_on_fn)(ct_tensor *dst, const ct_tensor *src, int stream);

/* ---------------------------------------------------------------------- NCCL
 * The collectives of CUDA tensors (include/ctorch_dist.h), in cuda_nccl.c. NCCL is not
 * linked: libnccl.so.2 ($CTORCH_NCCL_LIBRARY when set) is opened at the first call of
 * any of these, never at plugin initialisation, so one GPU works without NCCL. A missing
 * library fails with "NCCL missing: libnccl.so.2 cannot be opened (...). ... Fix: install
 * NCCL 2 ..." (NCCL 2.10 or newer is needed).
 *
 * One communicator per process, on one device (one GPU per rank). The collectives are
 * enqueued on that device's compute stream, after the kernels queued before them and
 * before those queued after, and return once enqueued: the buffers must stay allocated
 * and unmodified until ct_cuda_nccl_wait (or a synchronisation) has returned. Every rank
 * must make the same calls in the same order with the same sizes. All return 0, or -1
 * with the error set (the NCCL error string and ncclGetLastError's text), unless stated. */
/* 1 when libnccl.so.2 loads and is recent enough, else 0 with the reason set. */
CT_CUDA_API int ct_cuda_nccl_available(void);
typedef int (*ct_cuda_nccl_available_fn)(void);
/* "NCCL 2.28.9" (the library loaded) into buf. */
CT_CUDA_API int ct_cuda_nccl_version(char *buf, size_t n);
typedef int (*ct_cuda_nccl_version_fn)(char *buf, size_t n);
/* A new ncclUniqueId into id (n must be its size, 128 bytes): rank 0 makes it and sends
 * it to the other ranks (ctorch does so over MPI). */
CT_CUDA_API int ct_cuda_nccl_unique_id(void *id, size_t n);
typedef int (*ct_cuda_nccl_unique_id_fn)(void *id, size_t n);
/* ncclCommInitRank for rank `rank` of `world` on cuda:`device`; blocks until every rank
 * has joined. An error when a communicator exists (ct_cuda_nccl_finalize first). */
CT_CUDA_API int ct_cuda_nccl_init(const void *id, size_t n, int rank, int world, int device);
typedef int (*ct_cuda_nccl_init_fn)(const void *id, size_t n, int rank, int world,
                                    int device);
/* In place on `count` elements of `dtype`, a ct_dtype (float32, float64, float16,
 * bfloat16, int64, int32, uint8; others fail naming the dtype); op is a ct_reduce_op
 * (AVG is NCCL's ncclAvg). */
CT_CUDA_API int ct_cuda_nccl_all_reduce(void *buf, int64_t count, int dtype, int op,
                                        int device);
typedef int (*ct_cuda_nccl_all_reduce_fn)(void *buf, int64_t count, int dtype, int op,
                                          int device);
/* In place: rank root's `bytes` bytes to every rank. */
CT_CUDA_API int ct_cuda_nccl_broadcast(void *buf, int64_t bytes, int root, int device);
typedef int (*ct_cuda_nccl_broadcast_fn)(void *buf, int64_t bytes, int root, int device);
/* out (world * bytes_per_rank bytes): rank r's `in` at r * bytes_per_rank. */
CT_CUDA_API int ct_cuda_nccl_all_gather(const void *in, void *out, int64_t bytes_per_rank,
                                        int device);
typedef int (*ct_cuda_nccl_all_gather_fn)(const void *in, void *out, int64_t bytes_per_rank,
                                          int device);
/* The host waits until the work enqueued so far on the device's compute stream (the
 * collectives and what precedes them) has completed, polling the stream and NCCL's
 * asynchronous error state. A failed collective, or none completed within
 * timeout_seconds (<= 0: 300), aborts the communicator (ncclCommAbort) and fails: "NCCL
 * collective did not complete within T s on rank R ...: a peer is lost or stuck ...";
 * every later call then fails too. Does not block the collectives of other threads. */
CT_CUDA_API int ct_cuda_nccl_wait(double timeout_seconds, int device);
typedef int (*ct_cuda_nccl_wait_fn)(double timeout_seconds, int device);
/* ncclCommAbort now, from any thread (also while another is blocked in an NCCL call):
 * for a caller whose own timeout expired. Later calls fail. 0 also without a communicator. */
CT_CUDA_API int ct_cuda_nccl_abort(void);
typedef int (*ct_cuda_nccl_abort_fn)(void);
/* ncclCommDestroy (waits for the communicator's outstanding work). 0 without one. */
CT_CUDA_API int ct_cuda_nccl_finalize(void);
typedef int (*ct_cuda_nccl_finalize_fn)(void);

#ifdef __cplusplus
}
#endif
#endif
