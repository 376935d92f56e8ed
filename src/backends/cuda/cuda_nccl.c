/* NCCL inside the CUDA plugin: the collectives of CUDA tensors for data-parallel training
 * (include/ctorch_dist.h, docs/distributed.md). The core reaches these functions with
 * ct_backend_proc(CT_CUDA, "ct_cuda_nccl_..."); they are declared in cuda_plugin.h.
 *
 * Like cuBLAS and cuDNN, NCCL is never linked: libnccl.so.2 ($CTORCH_NCCL_LIBRARY when
 * set) is opened with dlopen at its first use, not at plugin initialisation, so that a
 * machine without NCCL still uses one GPU; a missing library is reported by name with the
 * fix. Every function is resolved with dlsym; nccl.h (or nccl_subset.h) gives the types.
 *
 * One communicator per process (one GPU per rank, as DistributedDataParallel). The
 * collectives are enqueued on the device's compute stream (cu_dev.k.stream), the stream
 * every kernel of the plugin runs on, so they run after the kernels that produced their
 * input (the gradients) and before the kernels queued after them; they return once
 * enqueued. ct_cuda_nccl_wait makes the host wait for them, with a timeout after which
 * the communicator is aborted (a lost or stuck peer would otherwise hang the process).
 *
 * Locks: g_op_mu serialises the calls that use the communicator (NCCL's calls on one
 * communicator must not run concurrently); g_mu guards the state below and is held only
 * briefly, so that ct_cuda_nccl_wait, which polls without g_op_mu, can abort a
 * communicator on which another thread is blocked (ncclCommAbort's documented use).
 * Order: g_op_mu before g_mu. */
#include "cuda_host.h"
#include "ctorch_dist.h"

#include "nccl_types.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NCCL_SONAME "libnccl.so.2"
#define NCCL_ENV "CTORCH_NCCL_LIBRARY"
#define NCCL_MIN_CODE 21000 /* 2.10: ncclAvg and bfloat16 */
#define NCCL_DEFAULT_TIMEOUT 300.0

#define CU_NC_STR(x) #x
#define CU_NC_XSTR(x) CU_NC_STR(x)

/* ---------------------------------------------------------------- the library */
#define CU_NCCL_FUNCS(X)                                                                   \
    X(ncclGetVersion)                                                                      \
    X(ncclGetErrorString)                                                                  \
    X(ncclGetUniqueId)                                                                     \
    X(ncclCommInitRank)                                                                    \
    X(ncclCommDestroy)                                                                     \
    X(ncclCommAbort)                                                                       \
    X(ncclCommGetAsyncError)                                                               \
    X(ncclAllReduce)                                                                       \
    X(ncclBroadcast)                                                                       \
    X(ncclAllGather)

typedef struct {
    CU_NCCL_FUNCS(CU_DECL_FN)
    __typeof__(&ncclGetLastError) ncclGetLastError; /* NCCL >= 2.13; NULL before */
} cu_nccl_api;

static pthread_mutex_t g_load_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_loaded; /* 1 once loaded (kept for the process); failures are retried */
static cu_nccl_api g_nc;
static int g_code; /* ncclGetVersion */

/* "2.28.9" from ncclGetVersion's code (1000*X + 100*Y + Z up to 2.8, 10000*X + 100*Y + Z
 * after). */
static void version_text(int code, char *buf, size_t n) {
    if (code >= 10000) snprintf(buf, n, "%d.%d.%d", code / 10000, code % 10000 / 100, code % 100);
    else snprintf(buf, n, "%d.%d.%d", code / 1000, code % 1000 / 100, code % 100);
}

/* Opens NCCL and resolves its functions; -1 with the reason and the fix in r. */
static int load(char *r, size_t n) {
    const char *env = getenv(NCCL_ENV);
    char shown[600];
    if (env && *env) snprintf(shown, sizeof shown, "%s (%s=%s)", NCCL_SONAME, NCCL_ENV, env);
    else snprintf(shown, sizeof shown, "%s", NCCL_SONAME);
    void *h = cu_open_lib(NCCL_SONAME, NCCL_ENV);
    if (!h) {
        const char *e = dlerror();
        snprintf(r, n,
                 "NCCL missing: %s cannot be opened (%s). NCCL carries the collectives of "
                 "CUDA tensors (data-parallel training on GPUs); one GPU works without it. "
                 "Fix: install NCCL 2 for CUDA %d (`apt install libnccl2` from NVIDIA's CUDA "
                 "repository, or `pip install nvidia-nccl-cu%d` and add its nvidia/nccl/lib "
                 "directory to LD_LIBRARY_PATH), or set %s to the library's path",
                 shown, e ? e : "not found", CUDART_VERSION / 1000, CUDART_VERSION / 1000,
                 NCCL_ENV);
        return -1;
    }
    cu_nccl_api a;
    memset(&a, 0, sizeof a);
    const char *missing = NULL;
#define CU_LOAD_NCCL(fn)                                                                   \
    if (!(*(void **)&a.fn = dlsym(h, CU_NC_XSTR(fn))) && !missing) missing = CU_NC_XSTR(fn);
    CU_NCCL_FUNCS(CU_LOAD_NCCL)
#undef CU_LOAD_NCCL
    *(void **)&a.ncclGetLastError = dlsym(h, "ncclGetLastError");
    if (missing) {
        snprintf(r, n,
                 "NCCL missing a function: %s lacks %s (not NCCL 2, or damaged). Fix: install "
                 "NCCL 2.10 or newer for CUDA %d, or point %s at it",
                 shown, missing, CUDART_VERSION / 1000, NCCL_ENV);
        dlclose(h);
        return -1;
    }
    int code = 0;
    ncclResult_t s = a.ncclGetVersion(&code);
    if (s != ncclSuccess || code < NCCL_MIN_CODE) {
        char v[32] = "unknown";
        if (s == ncclSuccess) version_text(code, v, sizeof v);
        snprintf(r, n,
                 "NCCL too old: %s is version %s, ctorch needs NCCL 2.10 or newer (average "
                 "reduction, bfloat16). Fix: install a newer NCCL 2 for CUDA %d, or point %s "
                 "at one",
                 shown, v, CUDART_VERSION / 1000, NCCL_ENV);
        dlclose(h);
        return -1;
    }
    g_nc = a; /* the handle stays open for the life of the process */
    g_code = code;
    return 0;
}

/* 0 when NCCL is loaded (loading it now if needed), else -1; the reason in r if given. */
static int ensure_loaded(char *r, size_t n) {
    if (__atomic_load_n(&g_loaded, __ATOMIC_ACQUIRE)) return 0;
    char why[1024];
    pthread_mutex_lock(&g_load_mu);
    int rc = g_loaded ? 0 : load(why, sizeof why);
    if (rc == 0) __atomic_store_n(&g_loaded, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_load_mu);
    if (rc != 0 && r && n) snprintf(r, n, "%s", why);
    return rc;
}

/* ensure_loaded, the reason reported through cu_error. */
static int need_nccl(void) {
    char why[1024];
    if (ensure_loaded(why, sizeof why) == 0) return 0;
    return cu_error("%s", why);
}

int cu_nccl_version_quiet(char *buf, size_t n) {
    if (ensure_loaded(NULL, 0) != 0) return -1;
    version_text(g_code, buf, n);
    return 0;
}

/* -------------------------------------------------------------- communicator */
static pthread_mutex_t g_op_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static ncclComm_t g_comm;      /* NULL: none (never created, finalized or aborted) */
static unsigned g_gen;         /* bumped when the communicator is replaced or aborted */
static int g_rank = -1, g_world, g_device = -1;
static char g_broken[640];     /* why the last communicator was aborted; "" otherwise */

static const char *nccl_hint(ncclResult_t s) {
    switch (s) {
    case ncclUnhandledCudaError:
        return " (a CUDA call inside NCCL failed: check the GPU with nvidia-smi)";
    case ncclSystemError:
        return " (a system call or the network failed: check that the hosts reach each "
               "other, NCCL_SOCKET_IFNAME, and /dev/shm's size in containers)";
    case ncclInternalError: return " (an NCCL bug or a corrupted state)";
    case ncclInvalidArgument:
    case ncclInvalidUsage:
        return " (the ranks disagree on the collective, its size or the device, or the "
               "communicator was used wrongly)";
    case ncclRemoteError: return " (a peer failed or disconnected)";
    default: return "";
    }
}

/* "op on rank r: NCCL error s (string) hint: last error" through cu_error; -1. Caller
 * holds g_mu; comm is read for ncclGetLastError only while it is still the live one (NULL:
 * NCCL's last error outside a communicator). */
static int nccl_fail_locked(ncclResult_t s, const char *op, ncclComm_t comm, unsigned gen,
                            int rank) {
    char where[32] = "";
    if (rank >= 0) snprintf(where, sizeof where, " on rank %d", rank);
    if (comm && (gen != g_gen || comm != g_comm))
        return cu_error("%s%s: NCCL error %d (%s); the communicator was aborted meanwhile: %s",
                        op, where, (int)s, g_nc.ncclGetErrorString(s),
                        g_broken[0] ? g_broken : "finalized");
    const char *last = g_nc.ncclGetLastError ? g_nc.ncclGetLastError(comm) : NULL;
    return cu_error("%s%s: NCCL error %d (%s)%s%s%s", op, where, (int)s,
                    g_nc.ncclGetErrorString(s), nccl_hint(s), last && *last ? ": " : "",
                    last && *last ? last : "");
}

static int nccl_fail(ncclResult_t s, const char *op, ncclComm_t comm, unsigned gen) {
    pthread_mutex_lock(&g_mu);
    int rc = nccl_fail_locked(s, op, comm, gen, g_rank);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

/* Aborts the live communicator (caller holds g_mu), keeping why for later calls. */
static void abort_locked(const char *why) {
    if (!g_comm) return;
    snprintf(g_broken, sizeof g_broken, "%s", why);
    g_nc.ncclCommAbort(g_comm);
    g_comm = NULL;
    g_gen++;
}

/* Checks that a communicator exists on `device` (caller holds g_mu). */
static int check_comm_locked(const char *op, int device) {
    if (!g_comm) {
        if (g_broken[0])
            return cu_error("%s: the NCCL communicator was aborted after an earlier failure "
                            "(%s); the process group is broken: exit and restart the job",
                            op, g_broken);
        return cu_error("%s: NCCL is not initialised in this process (ct_cuda_nccl_init "
                        "first)",
                        op);
    }
    if (device != g_device)
        return cu_error("%s: the tensor is on cuda:%d but this process's NCCL communicator "
                        "is on cuda:%d (one GPU per process: move the tensor, or choose the "
                        "device with the local rank)",
                        op, device, g_device);
    return 0;
}

/* Starts a collective: takes g_op_mu (released by coll_end), checks the communicator and
 * makes the device current. */
static cu_dev *coll_begin(const char *op, int device, ncclComm_t *comm, unsigned *gen) {
    if (need_nccl() != 0) return NULL;
    pthread_mutex_lock(&g_op_mu);
    pthread_mutex_lock(&g_mu);
    int rc = check_comm_locked(op, device);
    *comm = g_comm;
    *gen = g_gen;
    pthread_mutex_unlock(&g_mu);
    cu_dev *d = rc == 0 ? cu_device(device) : NULL;
    if (!d) pthread_mutex_unlock(&g_op_mu);
    return d;
}

static int coll_end(ncclResult_t s, const char *op, ncclComm_t comm, unsigned gen) {
    int rc = s == ncclSuccess ? 0 : nccl_fail(s, op, comm, gen);
    pthread_mutex_unlock(&g_op_mu);
    return rc;
}

static int nccl_dtype(int dt, ncclDataType_t *out) {
    switch (dt) {
    case CT_FLOAT32: *out = ncclFloat32; return 0;
    case CT_FLOAT64: *out = ncclFloat64; return 0;
    case CT_FLOAT16: *out = ncclFloat16; return 0;
    case CT_BFLOAT16: *out = ncclBfloat16; return 0;
    case CT_INT64: *out = ncclInt64; return 0;
    case CT_INT32: *out = ncclInt32; return 0;
    case CT_UINT8: *out = ncclUint8; return 0;
    default: return -1;
    }
}

static int nccl_op(int op, ncclRedOp_t *out) {
    switch (op) {
    case CT_REDUCE_SUM: *out = ncclSum; return 0;
    case CT_REDUCE_AVG: *out = ncclAvg; return 0;
    case CT_REDUCE_MAX: *out = ncclMax; return 0;
    case CT_REDUCE_MIN: *out = ncclMin; return 0;
    default: return -1;
    }
}

/* ------------------------------------------------------------- exported API */
int ct_cuda_nccl_available(void) { return need_nccl() == 0 ? 1 : 0; }

int ct_cuda_nccl_version(char *buf, size_t n) {
    if (!buf || !n) return cu_error("ct_cuda_nccl_version: no buffer");
    if (need_nccl() != 0) return -1;
    char v[32];
    version_text(g_code, v, sizeof v);
    snprintf(buf, n, "NCCL %s", v);
    return 0;
}

int ct_cuda_nccl_unique_id(void *id, size_t n) {
    if (!id || n != sizeof(ncclUniqueId))
        return cu_error("ct_cuda_nccl_unique_id: the buffer must have %zu bytes (NCCL's "
                        "ncclUniqueId), got %zu%s",
                        sizeof(ncclUniqueId), n, id ? "" : " and no pointer");
    if (need_nccl() != 0) return -1;
    ncclUniqueId uid;
    ncclResult_t s = g_nc.ncclGetUniqueId(&uid);
    if (s != ncclSuccess) {
        pthread_mutex_lock(&g_mu);
        int rc = nccl_fail_locked(s, "ncclGetUniqueId", NULL, 0, -1);
        pthread_mutex_unlock(&g_mu);
        return rc;
    }
    memcpy(id, &uid, sizeof uid);
    return 0;
}

int ct_cuda_nccl_init(const void *id, size_t n, int rank, int world, int device) {
    if (!id || n != sizeof(ncclUniqueId))
        return cu_error("ct_cuda_nccl_init: the unique id must have %zu bytes, got %zu",
                        sizeof(ncclUniqueId), id ? n : 0);
    if (world < 1 || rank < 0 || rank >= world)
        return cu_error("ct_cuda_nccl_init: rank %d of %d ranks is not a valid rank", rank,
                        world);
    if (need_nccl() != 0) return -1;
    pthread_mutex_lock(&g_op_mu);
    pthread_mutex_lock(&g_mu);
    int busy = g_comm != NULL, old_rank = g_rank, old_world = g_world, old_dev = g_device;
    pthread_mutex_unlock(&g_mu);
    if (busy) {
        pthread_mutex_unlock(&g_op_mu);
        return cu_error("ct_cuda_nccl_init: NCCL is already initialised in this process "
                        "(rank %d of %d on cuda:%d; one communicator per process): call "
                        "ct_cuda_nccl_finalize first",
                        old_rank, old_world, old_dev);
    }
    /* NCCL binds the communicator to the calling thread's current device. */
    if (!cu_device(device)) {
        pthread_mutex_unlock(&g_op_mu);
        return -1;
    }
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclComm_t comm = NULL;
    /* Blocks until every rank has called it with the same id. */
    ncclResult_t s = g_nc.ncclCommInitRank(&comm, world, uid, rank);
    pthread_mutex_lock(&g_mu);
    int rc = 0;
    if (s != ncclSuccess) {
        rc = nccl_fail_locked(s, "ncclCommInitRank", NULL, 0, rank);
    } else {
        g_comm = comm;
        g_gen++;
        g_rank = rank;
        g_world = world;
        g_device = device;
        g_broken[0] = 0;
    }
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_unlock(&g_op_mu);
    return rc;
}

int ct_cuda_nccl_all_reduce(void *buf, int64_t count, int dtype, int op, int device) {
    static const char *what = "NCCL all_reduce";
    ncclDataType_t dt;
    ncclRedOp_t rop;
    if (nccl_dtype(dtype, &dt) != 0)
        return cu_error("%s: dtype %s is not supported (NCCL reduces float32, float64, "
                        "float16, bfloat16, int64, int32 and uint8): convert the tensor first",
                        what, cu_dtype_name((ct_dtype)dtype));
    if (nccl_op(op, &rop) != 0)
        return cu_error("%s: unknown reduce op %d (ct_reduce_op: SUM, AVG, MAX or MIN)", what,
                        op);
    if (count < 0) return cu_error("%s: negative element count %lld", what, (long long)count);
    if (count > 0 && !buf) return cu_error("%s: no buffer", what);
    ncclComm_t comm;
    unsigned gen;
    cu_dev *d = coll_begin(what, device, &comm, &gen);
    if (!d) return -1;
    ncclResult_t s = ncclSuccess;
    if (count > 0)
        s = g_nc.ncclAllReduce(buf, buf, (size_t)count, dt, rop, comm, d->k.stream);
    return coll_end(s, what, comm, gen);
}

int ct_cuda_nccl_broadcast(void *buf, int64_t bytes, int root, int device) {
    static const char *what = "NCCL broadcast";
    if (bytes < 0) return cu_error("%s: negative size %lld", what, (long long)bytes);
    if (bytes > 0 && !buf) return cu_error("%s: no buffer", what);
    ncclComm_t comm;
    unsigned gen;
    cu_dev *d = coll_begin(what, device, &comm, &gen);
    if (!d) return -1;
    pthread_mutex_lock(&g_mu);
    int world = g_world;
    pthread_mutex_unlock(&g_mu);
    if (root < 0 || root >= world) {
        pthread_mutex_unlock(&g_op_mu);
        return cu_error("%s: root %d is not a rank (%d ranks)", what, root, world);
    }
    ncclResult_t s = ncclSuccess;
    if (bytes > 0)
        s = g_nc.ncclBroadcast(buf, buf, (size_t)bytes, ncclUint8, root, comm, d->k.stream);
    return coll_end(s, what, comm, gen);
}

int ct_cuda_nccl_all_gather(const void *in, void *out, int64_t bytes_per_rank, int device) {
    static const char *what = "NCCL all_gather";
    if (bytes_per_rank < 0)
        return cu_error("%s: negative size %lld", what, (long long)bytes_per_rank);
    if (bytes_per_rank > 0 && (!in || !out)) return cu_error("%s: no buffer", what);
    ncclComm_t comm;
    unsigned gen;
    cu_dev *d = coll_begin(what, device, &comm, &gen);
    if (!d) return -1;
    ncclResult_t s = ncclSuccess;
    if (bytes_per_rank > 0)
        s = g_nc.ncclAllGather(in, out, (size_t)bytes_per_rank, ncclUint8, comm, d->k.stream);
    return coll_end(s, what, comm, gen);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The host waits for the work queued so far on the device's compute stream (the
 * collectives and whatever precedes them), polling the stream and NCCL's asynchronous
 * error state; a failure or the timeout aborts the communicator. */
int ct_cuda_nccl_wait(double timeout_seconds, int device) {
    static const char *what = "NCCL wait";
    if (need_nccl() != 0) return -1;
    if (!(timeout_seconds > 0)) timeout_seconds = NCCL_DEFAULT_TIMEOUT;
    pthread_mutex_lock(&g_mu);
    int rc = check_comm_locked(what, device);
    const unsigned gen = g_gen;
    const int rank = g_rank, world = g_world;
    pthread_mutex_unlock(&g_mu);
    if (rc != 0) return -1;
    cu_dev *d = cu_device(device);
    if (!d) return -1;
    cudaEvent_t ev;
    cudaError_t ce = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (ce == cudaSuccess) {
        ce = cudaEventRecord(ev, d->k.stream);
        if (ce != cudaSuccess) cudaEventDestroy(ev);
    }
    if (ce != cudaSuccess) return cu_fail((int)ce, what);
    const double t0 = now_seconds();
    long sleep_ns = 10000; /* 10 us, doubling to 500 us */
    for (;;) {
        ce = cudaEventQuery(ev);
        const int done = ce == cudaSuccess;
        if (!done && ce != cudaErrorNotReady) {
            cudaEventDestroy(ev);
            return cu_fail((int)ce, what); /* a kernel fault: the context is unusable */
        }
        pthread_mutex_lock(&g_mu);
        if (g_gen != gen || !g_comm) {
            rc = g_broken[0] ? cu_error("%s: the NCCL communicator was aborted: %s", what,
                                        g_broken)
                             : cu_error("%s: the NCCL communicator was finalized meanwhile",
                                        what);
            pthread_mutex_unlock(&g_mu);
            break;
        }
        ncclResult_t ae = ncclSuccess;
        ncclResult_t s = g_nc.ncclCommGetAsyncError(g_comm, &ae);
        if (s != ncclSuccess || (ae != ncclSuccess && ae != ncclInProgress)) {
            ncclResult_t e = s != ncclSuccess ? s : ae;
            const char *last = g_nc.ncclGetLastError ? g_nc.ncclGetLastError(g_comm) : NULL;
            char why[sizeof g_broken];
            snprintf(why, sizeof why,
                     "NCCL collective failed on rank %d of %d (cuda:%d): NCCL error %d (%s)%s%s%s",
                     rank, world, device, (int)e, g_nc.ncclGetErrorString(e), nccl_hint(e),
                     last && *last ? ": " : "", last && *last ? last : "");
            abort_locked(why);
            rc = cu_error("%s; the communicator was aborted", why);
            pthread_mutex_unlock(&g_mu);
            break;
        }
        /* ncclInProgress: a nonblocking NCCL operation is still running */
        if (done && ae == ncclSuccess) {
            pthread_mutex_unlock(&g_mu);
            rc = 0;
            break;
        }
        const double waited = now_seconds() - t0;
        if (waited >= timeout_seconds) {
            char why[sizeof g_broken];
            snprintf(why, sizeof why,
                     "NCCL collective did not complete within %g s on rank %d of %d "
                     "(cuda:%d): a peer is lost or stuck (crashed, hung, or not making the "
                     "same collective calls in the same order)",
                     timeout_seconds, rank, world, device);
            abort_locked(why);
            rc = cu_error("%s; the communicator was aborted. Fix: look at the other ranks' "
                          "output for the first failure; raise the timeout if one "
                          "collective legitimately takes longer",
                          why);
            pthread_mutex_unlock(&g_mu);
            break;
        }
        pthread_mutex_unlock(&g_mu);
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 500000) sleep_ns *= 2;
    }
    cudaEventDestroy(ev);
    return rc;
}

int ct_cuda_nccl_abort(void) {
    if (!__atomic_load_n(&g_loaded, __ATOMIC_ACQUIRE)) return 0;
    pthread_mutex_lock(&g_mu);
    abort_locked("aborted by ct_cuda_nccl_abort (an error elsewhere in the process)");
    pthread_mutex_unlock(&g_mu);
    return 0;
}

int ct_cuda_nccl_finalize(void) {
    if (!__atomic_load_n(&g_loaded, __ATOMIC_ACQUIRE)) return 0;
    pthread_mutex_lock(&g_op_mu);
    pthread_mutex_lock(&g_mu);
    int rc = 0;
    if (g_comm) {
        /* waits for the communicator's outstanding work */
        ncclResult_t s = g_nc.ncclCommDestroy(g_comm);
        g_comm = NULL;
        g_gen++;
        if (s != ncclSuccess)
            rc = cu_error("ncclCommDestroy on rank %d: NCCL error %d (%s)%s", g_rank, (int)s,
                          g_nc.ncclGetErrorString(s), nccl_hint(s));
    }
    g_broken[0] = 0;
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_unlock(&g_op_mu);
    return rc;
}
