/* The MPI process-group engine, libctorch_mpi.so: built with mpicc when OpenMPI's
 * development files are found, loaded by the core at ct_dist_init (never linked into
 * libctorch or ctorch). Every call but abort comes from the core's communication thread;
 * abort may come from any thread, hence MPI_THREAD_MULTIPLE. Errors return: the
 * communicator uses MPI_ERRORS_RETURN and the text of MPI_Error_string. */
#include "dist/dist_plugin.h"

#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

static MPI_Comm g_world = MPI_COMM_NULL;
static char g_version[MPI_MAX_LIBRARY_VERSION_STRING];

static int fail(int rc, const char *what, char *err, size_t errn) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error %d", rc);
    snprintf(err, errn, "%s failed: %s", what, msg);
    return -1;
}

static int init(int *rank, int *size, int *local_rank, int *local_size, char *err, size_t errn) {
    int inited = 0, provided = 0, rc;
    MPI_Initialized(&inited);
    if (!inited) {
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) return fail(rc, "MPI_Init_thread", err, errn);
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED) {
        snprintf(err, errn, "the MPI library gives thread level %d, ctorch needs at least "
                 "MPI_THREAD_SERIALIZED (use OpenMPI 4 or newer)", provided);
        return -1;
    }
    if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &g_world)) != MPI_SUCCESS)
        return fail(rc, "MPI_Comm_dup", err, errn);
    MPI_Comm_set_errhandler(g_world, MPI_ERRORS_RETURN);
    MPI_Comm_rank(g_world, rank);
    MPI_Comm_size(g_world, size);
    MPI_Comm local;
    if ((rc = MPI_Comm_split_type(g_world, MPI_COMM_TYPE_SHARED, *rank, MPI_INFO_NULL, &local)) !=
        MPI_SUCCESS)
        return fail(rc, "MPI_Comm_split_type", err, errn);
    MPI_Comm_rank(local, local_rank);
    MPI_Comm_size(local, local_size);
    MPI_Comm_free(&local);
    return 0;
}

static MPI_Datatype mpi_type(int t) {
    switch (t) {
    case CT_DIST_F32: return MPI_FLOAT;
    case CT_DIST_F64: return MPI_DOUBLE;
    case CT_DIST_I64: return MPI_INT64_T;
    case CT_DIST_I32: return MPI_INT32_T;
    default: return MPI_UINT8_T;
    }
}

static size_t type_size(int t) {
    return t == CT_DIST_F64 || t == CT_DIST_I64 ? 8 : t == CT_DIST_U8 ? 1 : 4;
}

/* Waits for a non-blocking operation. While computation runs beside it (the core's
 * waiting counter is 0: buckets reduced during backward), it must not spin: MPI's blocking
 * calls busy-poll, and a communication thread that spins while its peer is still computing
 * takes the CPU from the ranks' computation when ranks share the cores (two ranks on two
 * cores: the slower rank gets slower still). So MPI_Test, then a 10 us sleep (with the
 * thread's timer slack at 1 ns, so that the sleep is 10 us and not the default 50 us),
 * which keeps each round of a large message's pipeline short. Once a caller is blocked
 * waiting for the result its core is idle: MPI_Test and sched_yield, no sleep, so the
 * rounds of the shared-memory pipeline follow each other at once. */
static const int *g_waiting;

static void set_waiting_flag(const int *waiting) { g_waiting = waiting; }

static int wait_req(MPI_Request *req) {
    static _Thread_local int slack_set;
    if (!slack_set) {
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        slack_set = 1;
    }
    int done = 0, rc;
    for (int spins = 0;; spins++) {
        if ((rc = MPI_Test(req, &done, MPI_STATUS_IGNORE)) != MPI_SUCCESS || done) return rc;
        if (spins < 64) continue;
        if (g_waiting && __atomic_load_n(g_waiting, __ATOMIC_RELAXED) > 0) {
            sched_yield();
            continue;
        }
        struct timespec nap = {0, 10000};
        nanosleep(&nap, NULL);
    }
}

/* MPI counts are int: large buffers go in pieces. */
enum { CHUNK = INT_MAX / 8 };

static int all_reduce(void *buf, int64_t n, int type, int op, char *err, size_t errn) {
    MPI_Op o = op == CT_DIST_MAX ? MPI_MAX : op == CT_DIST_MIN ? MPI_MIN : MPI_SUM;
    size_t es = type_size(type);
    for (int64_t off = 0; off < n; off += CHUNK) {
        int64_t k = n - off < CHUNK ? n - off : CHUNK;
        MPI_Request req;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + (size_t)off * es, (int)k, mpi_type(type),
                                o, g_world, &req);
        if (rc == MPI_SUCCESS) rc = wait_req(&req);
        if (rc != MPI_SUCCESS) return fail(rc, "MPI_Allreduce", err, errn);
    }
    return 0;
}

static int broadcast(void *buf, int64_t bytes, int root, char *err, size_t errn) {
    for (int64_t off = 0; off < bytes; off += CHUNK) {
        int64_t k = bytes - off < CHUNK ? bytes - off : CHUNK;
        MPI_Request req;
        int rc = MPI_Ibcast((char *)buf + off, (int)k, MPI_BYTE, root, g_world, &req);
        if (rc == MPI_SUCCESS) rc = wait_req(&req);
        if (rc != MPI_SUCCESS) return fail(rc, "MPI_Bcast", err, errn);
    }
    return 0;
}

static int all_gather(const void *in, void *out, int64_t bytes, char *err, size_t errn) {
    if (bytes > INT_MAX) {
        snprintf(err, errn, "all_gather of %lld bytes per rank: at most %d", (long long)bytes, INT_MAX);
        return -1;
    }
    MPI_Request req;
    int rc = MPI_Iallgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, g_world, &req);
    if (rc == MPI_SUCCESS) rc = wait_req(&req);
    return rc == MPI_SUCCESS ? 0 : fail(rc, "MPI_Allgather", err, errn);
}

static int barrier(char *err, size_t errn) {
    MPI_Request req;
    int rc = MPI_Ibarrier(g_world, &req);
    if (rc == MPI_SUCCESS) rc = wait_req(&req);
    return rc == MPI_SUCCESS ? 0 : fail(rc, "MPI_Barrier", err, errn);
}

static void abort_job(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

static int finalize(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin) return 0;
    if (g_world != MPI_COMM_NULL) MPI_Comm_free(&g_world);
    return MPI_Finalize() == MPI_SUCCESS ? 0 : -1;
}

static const char *version(void) {
    int len = 0;
    if (!g_version[0]) MPI_Get_library_version(g_version, &len);
    char *nl = strchr(g_version, '\n');
    if (nl) *nl = 0;
    return g_version;
}

static const ct_dist_plugin g_plugin = {CT_DIST_PLUGIN_ABI, "mpi", init, all_reduce, broadcast,
                                        all_gather, barrier, abort_job, finalize, version,
                                        set_waiting_flag};

__attribute__((visibility("default"))) const ct_dist_plugin *ct_dist_plugin_entry(void) {
    return &g_plugin;
}
