/* emu_nccl.c -- a stand-in for NCCL 2 (libnccl.so.2) for the CUDA emulator: a world of one
 * rank, so that the CUDA plugin's NCCL code (src/backends/cuda/cuda_nccl.c) runs on a
 * machine without a GPU. Not a model of NCCL's algorithms: with one rank every collective
 * is a copy (all-reduce of any op, average included, and broadcast leave the data as it
 * is; all-gather copies the input to the output).
 *
 * What it checks, as the real library would fail on a GPU:
 *   - the unique id comes from ncclGetUniqueId, nranks == 1 and rank == 0 (ncclInvalidUsage
 *     with ncclGetLastError's text otherwise: more ranks need the real NCCL and GPUs);
 *   - the communicator is live (not destroyed or aborted), dtypes and ops are NCCL's;
 *   - the buffers are device memory of the emulator with room for the data: the work is a
 *     cudaMemcpyAsync (device to device) on the stream passed in, from the emulated
 *     plugin's runtime, which checks both ranges;
 *   - the stream: the copy is queued on it, so under CT_EMU_STREAMS=lazy the collective runs
 *     after the work queued before it on that stream only (a wrong stream reads data not
 *     yet written). ncclCommGetAsyncError runs the streams the communicator used, the
 *     newest first: in the emulator queued work progresses when something waits for it,
 *     and polling NCCL is how the plugin waits (a GPU progresses by itself).
 *
 * For tests/test_nccl.c (found with dlsym on this library; absent from the real one):
 *   ct_emu_nccl_set_fault("call")  the next collective returns ncclSystemError;
 *   ct_emu_nccl_set_fault("async") ncclCommGetAsyncError reports ncclRemoteError (a peer
 *                                  failed), as NCCL does after a failure in flight;
 *   ct_emu_nccl_set_fault("hang")  ncclCommGetAsyncError reports ncclInProgress until the
 *                                  communicator is aborted: a collective that never ends;
 *   ct_emu_nccl_set_fault("")      none. Faults apply to communicators created later too.
 *   ct_emu_nccl_stat(name)         counters and the last collective's arguments: "inits",
 *                                  "destroys", "aborts", "collectives", "live" (communicators
 *                                  alive), "dtype", "op", "root", "count" (elements or bytes
 *                                  as passed).
 *
 * ncclGetVersion reports 2.28.9. Built by tests/cuda_emu/emu.mk as build/cuda_emu/libnccl.so.2,
 * which the emulated plugin finds through its RUNPATH ($ORIGIN). */
#include "nccl_types.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMU_NCCL_CODE 22809
#define EMU_ID_MAGIC "ctorch-emu-nccl"
#define EMU_COMM_MAGIC 0x4e43434cu /* "NCCL" */

#define EMU_MAX_STREAMS 8

struct ncclComm {
    unsigned magic;
    cudaStream_t streams[EMU_MAX_STREAMS]; /* the streams collectives were queued on */
    int nstreams;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_last[512];
static char g_fault[16];
static unsigned g_id_counter;
static int g_inits, g_destroys, g_aborts, g_collectives, g_live;
static int g_dtype = -1, g_op = -1, g_root = -1;
static long long g_count = -1;

/* The emulated plugin's runtime (it exports the cudart functions it implements). */
static void *plugin_sym(const char *name) {
    void *h = dlopen("libctorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
    return h ? dlsym(h, name) : NULL;
}

static ncclResult_t fail(ncclResult_t r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static ncclResult_t fail(ncclResult_t r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last, sizeof g_last, fmt, ap);
    va_end(ap);
    return r;
}

/* ----------------------------------------------------------------- for the tests */
__attribute__((visibility("default"))) void ct_emu_nccl_set_fault(const char *mode) {
    pthread_mutex_lock(&g_mu);
    snprintf(g_fault, sizeof g_fault, "%s", mode ? mode : "");
    pthread_mutex_unlock(&g_mu);
}

__attribute__((visibility("default"))) long long ct_emu_nccl_stat(const char *name) {
    pthread_mutex_lock(&g_mu);
    long long v = !strcmp(name, "inits")         ? g_inits
                  : !strcmp(name, "destroys")    ? g_destroys
                  : !strcmp(name, "aborts")      ? g_aborts
                  : !strcmp(name, "collectives") ? g_collectives
                  : !strcmp(name, "live")        ? g_live
                  : !strcmp(name, "dtype")       ? g_dtype
                  : !strcmp(name, "op")          ? g_op
                  : !strcmp(name, "root")        ? g_root
                  : !strcmp(name, "count")       ? g_count
                                                 : -1;
    pthread_mutex_unlock(&g_mu);
    return v;
}

/* ------------------------------------------------------------------- NCCL's API */
ncclResult_t ncclGetVersion(int *version) {
    if (!version) return fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
    *version = EMU_NCCL_CODE;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError:
        return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError:
        return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError:
        return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return g_last;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    memset(id, 0, sizeof *id);
    pthread_mutex_lock(&g_mu);
    unsigned n = ++g_id_counter;
    pthread_mutex_unlock(&g_mu);
    snprintf(id->internal, sizeof id->internal, "%s %u", EMU_ID_MAGIC, n);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    if (strncmp(id.internal, EMU_ID_MAGIC, strlen(EMU_ID_MAGIC)) != 0)
        return fail(ncclInvalidArgument,
                    "ncclCommInitRank: the unique id does not come from ncclGetUniqueId");
    if (nranks != 1 || rank != 0)
        return fail(ncclInvalidUsage,
                    "the CUDA emulator's NCCL runs a world of one rank (rank %d of %d "
                    "requested): more ranks need GPUs and the real NCCL",
                    rank, nranks);
    struct ncclComm *c = calloc(1, sizeof *c);
    if (!c) return fail(ncclSystemError, "ncclCommInitRank: out of memory");
    c->magic = EMU_COMM_MAGIC;
    pthread_mutex_lock(&g_mu);
    g_inits++;
    g_live++;
    pthread_mutex_unlock(&g_mu);
    *comm = c;
    return ncclSuccess;
}

static int live(ncclComm_t c) { return c && c->magic == EMU_COMM_MAGIC; }

static void flush_streams(ncclComm_t c) {
    void (*flush)(cudaStream_t);
    *(void **)&flush = plugin_sym("ct_emu_stream_flush");
    /* newest first: with a stream other than the kernels' (the plugin's mistake), the
     * collective's copy runs before the kernels that produce its input */
    for (int i = c->nstreams - 1; flush && i >= 0; i--) flush(c->streams[i]);
}

static ncclResult_t release(ncclComm_t c, int aborted, const char *fn) {
    if (!live(c)) return fail(ncclInvalidArgument, "%s: not a live communicator", fn);
    flush_streams(c); /* work already queued completes (or, on a GPU, is cancelled) */
    c->magic = 0;
    free(c);
    pthread_mutex_lock(&g_mu);
    if (aborted) g_aborts++;
    else g_destroys++;
    g_live--;
    pthread_mutex_unlock(&g_mu);
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t c) { return release(c, 0, "ncclCommDestroy"); }
ncclResult_t ncclCommAbort(ncclComm_t c) { return release(c, 1, "ncclCommAbort"); }

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *err) {
    if (!live(c) || !err)
        return fail(ncclInvalidArgument, "ncclCommGetAsyncError: not a live communicator");
    flush_streams(c);
    pthread_mutex_lock(&g_mu);
    *err = !strcmp(g_fault, "async") ? ncclRemoteError
           : !strcmp(g_fault, "hang") ? ncclInProgress
                                      : ncclSuccess;
    if (*err == ncclRemoteError)
        snprintf(g_last, sizeof g_last, "emulated: peer rank 1 closed the connection");
    pthread_mutex_unlock(&g_mu);
    return ncclSuccess;
}

static size_t dtype_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

/* Validates, records the call and queues the copy recv <- send (n bytes) on stream. */
static ncclResult_t collective(const char *fn, const void *send, void *recv, size_t count,
                               ncclDataType_t dt, int op, int root, ncclComm_t c,
                               cudaStream_t stream) {
    if (!live(c)) return fail(ncclInvalidArgument, "%s: not a live communicator", fn);
    const size_t es = dtype_size(dt);
    if (!es) return fail(ncclInvalidArgument, "%s: invalid datatype %d", fn, (int)dt);
    if (op < -1 || op > (int)ncclAvg)
        return fail(ncclInvalidArgument, "%s: invalid reduction operation %d", fn, op);
    pthread_mutex_lock(&g_mu);
    g_collectives++;
    g_dtype = (int)dt, g_op = op, g_root = root, g_count = (long long)count;
    const int fault = !strcmp(g_fault, "call");
    pthread_mutex_unlock(&g_mu);
    if (fault) return fail(ncclSystemError, "emulated: socket error while connecting to rank 1");
    if (count == 0) return ncclSuccess;
    if (!send || !recv) return fail(ncclInvalidArgument, "%s: NULL buffer", fn);
    cudaError_t (*copy)(void *, const void *, size_t, enum cudaMemcpyKind, cudaStream_t);
    *(void **)&copy = plugin_sym("cudaMemcpyAsync");
    if (!copy)
        return fail(ncclUnhandledCudaError,
                    "%s: the emulated plugin (libctorch_cuda.so) is not loaded", fn);
    cudaError_t e = copy(recv, send, count * es, cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess)
        return fail(ncclUnhandledCudaError,
                    "%s: Cuda failure %d on %zu bytes at %p <- %p (not device memory of that "
                    "size?)",
                    fn, (int)e, count * es, recv, send);
    int known = 0;
    for (int i = 0; i < c->nstreams; i++) known |= c->streams[i] == stream;
    if (!known && c->nstreams < EMU_MAX_STREAMS) c->streams[c->nstreams++] = stream;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t dt,
                           ncclRedOp_t op, ncclComm_t c, cudaStream_t stream) {
    if ((int)op < 0) return fail(ncclInvalidArgument, "ncclAllReduce: invalid op %d", (int)op);
    return collective("ncclAllReduce", send, recv, count, dt, (int)op, -1, c, stream);
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t dt,
                           int root, ncclComm_t c, cudaStream_t stream) {
    if (root != 0)
        return fail(ncclInvalidArgument, "ncclBroadcast: root %d is not a rank (1 rank)", root);
    return collective("ncclBroadcast", send, recv, count, dt, -1, root, c, stream);
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t dt,
                           ncclComm_t c, cudaStream_t stream) {
    return collective("ncclAllGather", send, recv, count, dt, -1, -1, c, stream);
}
