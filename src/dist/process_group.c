/* The default process group (include/ctorch_dist.h): the launcher's environment, the
 * MPI plugin loaded at run time, one communication thread that runs the collectives in
 * the order they were queued, handles with a timeout, and NCCL (inside the CUDA plugin)
 * for CUDA tensors.
 *
 * Why one thread: MPI requires every rank to issue collectives in the same order. The
 * program queues them in its own (deterministic) order; the thread runs them one after
 * the other with blocking MPI calls, so the caller goes on computing meanwhile (DDP's
 * overlap) and MPI needs no progress from the caller. A wait that passes the timeout
 * marks the group broken: the thread may be stuck inside MPI for good, so every later
 * call fails at once and the process is expected to exit (mpirun then ends the job). */
#include "ctorch_dist.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/tensor_impl.h"
#include "dist/dist_internal.h"
#include "dist/dist_plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ environment */
static int env_int(const char *name, int *out) {
    const char *s = getenv(name);
    char *end;
    if (!s || !*s) return 0;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 1 << 24) return 0;
    *out = (int)v;
    return 1;
}

int ct_dist_env(int *world_size, int *rank, int *local_rank, int *local_size) {
    int ws = 1, r = 0, lr = 0, ls = 1, found = 0;
    static const char *const sets[][4] = {
        {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
         "OMPI_COMM_WORLD_LOCAL_SIZE"},
        {"SLURM_NTASKS", "PMIX_RANK", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
        {"PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
        {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
    };
    for (size_t i = 0; i < sizeof sets / sizeof *sets && !found; i++) {
        if (!env_int(sets[i][0], &ws) || !env_int(sets[i][1], &r)) continue;
        found = 1;
        if (!env_int(sets[i][2], &lr)) lr = r;
        if (!env_int(sets[i][3], &ls)) ls = ws;
    }
    if (!found) ws = 1, r = 0, lr = 0, ls = 1;
    if (world_size) *world_size = ws;
    if (rank) *rank = r;
    if (local_rank) *local_rank = lr;
    if (local_size) *local_size = ls;
    return found;
}

/* ------------------------------------------------------------------ state */
typedef enum { W_ALL_REDUCE, W_BROADCAST, W_ALL_GATHER, W_BARRIER } work_kind;

struct ct_dist_work {
    work_kind kind;
    void *buf;
    const void *in;
    int64_t n; /* elements (all_reduce) or bytes */
    int type, op, root;
    int done, failed;
    char err[512];
    struct ct_dist_work *next;
    /* finished in ct_dist_wait, on the caller's thread */
    ct_tensor *stage, *target; /* float32 staging of a float16/bfloat16 tensor */
    double scale;              /* average: multiply by 1/world */
    int cuda_device;           /* >= 0: an NCCL collective on that device */
    uint64_t seq;
    const char *what;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    pthread_t thread;
    int started, initialized, broken, stopping;
    const ct_dist_plugin *pl;
    void *handle;
    int rank, size, local_rank, local_size;
    double timeout;
    ct_dist_work *head, *tail;
    uint64_t seq;
    char host[256];
    char broken_why[600];
    int nccl_ready;
    int waiting; /* callers blocked in ct_dist_wait (the plugin polls without naps then) */
} G = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv_work = PTHREAD_COND_INITIALIZER,
       .cv_done = PTHREAD_COND_INITIALIZER, .size = 1, .local_size = 1, .timeout = 300};

static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;

int ct_dist_is_initialized(void) { return G.initialized; }
int ct_dist_rank(void) { return G.initialized ? G.rank : 0; }
int ct_dist_world_size(void) { return G.initialized ? G.size : 1; }
int ct_dist_local_rank(void) { return G.initialized ? G.local_rank : 0; }
int ct_dist_local_size(void) { return G.initialized ? G.local_size : 1; }
double ct_dist_get_timeout(void) { return G.timeout; }
const char *ct_dist_backend_version(void) { return G.pl ? G.pl->version() : NULL; }

const char *ct_dist_hostname(void) {
    if (!G.host[0] && gethostname(G.host, sizeof G.host - 1) != 0) snprintf(G.host, sizeof G.host, "?");
    return G.host;
}

int ct_dist_set_timeout(double seconds) {
    if (!(seconds > 0) || !isfinite(seconds))
        return ct_error("dist: timeout %g s: give a positive number of seconds", seconds);
    G.timeout = seconds;
    return 0;
}

const char *ct__dist_where(char *buf, size_t n) {
    snprintf(buf, n, "rank %d on %s", ct_dist_rank(), ct_dist_hostname());
    return buf;
}

/* ------------------------------------------------------------------ the thread */
static int run_work(ct_dist_work *w, char *err, size_t errn) {
    const ct_dist_plugin *p = G.pl;
    switch (w->kind) {
    case W_ALL_REDUCE: return p->all_reduce(w->buf, w->n, w->type, w->op, err, errn);
    case W_BROADCAST: return p->broadcast(w->buf, w->n, w->root, err, errn);
    case W_ALL_GATHER: return p->all_gather(w->in, w->buf, w->n, err, errn);
    case W_BARRIER: return p->barrier(err, errn);
    }
    return -1;
}

static void *comm_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&G.mu);
    for (;;) {
        while (!G.head && !G.stopping) pthread_cond_wait(&G.cv_work, &G.mu);
        if (!G.head) break;
        ct_dist_work *w = G.head;
        pthread_mutex_unlock(&G.mu);
        char err[512] = "";
        int rc = run_work(w, err, sizeof err);
        pthread_mutex_lock(&G.mu);
        G.head = w->next;
        if (!G.head) G.tail = NULL;
        w->failed = rc != 0;
        if (rc != 0) {
            snprintf(w->err, sizeof w->err, "%s", err);
            if (!G.broken) {
                G.broken = 1;
                snprintf(G.broken_why, sizeof G.broken_why, "%s", err);
            }
        }
        w->done = 1;
        pthread_cond_broadcast(&G.cv_done);
    }
    pthread_mutex_unlock(&G.mu);
    return NULL;
}

static int broken_error(void) {
    char where[300];
    return ct_error("dist (%s): the process group is broken by an earlier failure (%s); exit and "
                    "restart the job (ctorch launch --max-restarts does this from the newest "
                    "checkpoint)", ct__dist_where(where, sizeof where), G.broken_why);
}

static ct_dist_work *new_work(work_kind kind, const char *what) {
    if (!G.initialized) return ct_error_null("dist: %s before ct_dist_init (start the program with "
                                             "mpirun or ctorch launch, and call ct_dist_init)", what);
    if (G.broken) {
        broken_error();
        return NULL;
    }
    ct_dist_work *w = calloc(1, sizeof *w);
    if (!w) return ct_error_null("dist: out of memory");
    w->kind = kind;
    w->what = what;
    w->cuda_device = -1;
    w->scale = 1;
    return w;
}

static ct_dist_work *enqueue(ct_dist_work *w) {
    pthread_mutex_lock(&G.mu);
    w->seq = ++G.seq;
    if (G.tail) G.tail->next = w;
    else G.head = w;
    G.tail = w;
    pthread_cond_signal(&G.cv_work);
    pthread_mutex_unlock(&G.mu);
    return w;
}

int ct_dist_is_completed(ct_dist_work *w) {
    if (!w) return 1;
    if (w->cuda_device >= 0) return 1; /* stream-ordered: complete for the host's purposes */
    pthread_mutex_lock(&G.mu);
    int d = w->done;
    pthread_mutex_unlock(&G.mu);
    return d;
}

static void free_work(ct_dist_work *w) {
    if (!w) return;
    ct_free(w->stage);     /* ct__own'd */
    ct__unhold(w->target); /* ct__hold'd */
    free(w);
}

static int64_t nbytes(const ct_tensor *t) { return ct_numel(t) * (int64_t)ct_dtype_size(ct_dtype_of(t)); }

/* NCCL's procs in the CUDA plugin. */
typedef int (*nccl_wait_fn)(double, int);

int ct_dist_wait(ct_dist_work *w) {
    if (!w) return ct_error("dist: wait on a NULL work handle");
    char where[300];
    int rc = 0;
    if (w->cuda_device >= 0) {
        nccl_wait_fn f = (nccl_wait_fn)ct_backend_proc(CT_CUDA, "ct_cuda_nccl_wait");
        rc = f ? f(G.timeout, w->cuda_device) : -1;
        if (rc != 0 && !G.broken) {
            G.broken = 1;
            snprintf(G.broken_why, sizeof G.broken_why, "%s", ct_last_error());
        }
        free_work(w);
        return rc;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    double whole = floor(G.timeout);
    dl.tv_sec += (time_t)whole;
    dl.tv_nsec += (long)((G.timeout - whole) * 1e9);
    if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&G.mu);
    int timed_out = 0;
    __atomic_add_fetch(&G.waiting, 1, __ATOMIC_RELAXED);
    while (!w->done && !timed_out) {
        int e = pthread_cond_timedwait(&G.cv_done, &G.mu, &dl);
        if (e == ETIMEDOUT && !w->done) timed_out = 1;
    }
    __atomic_sub_fetch(&G.waiting, 1, __ATOMIC_RELAXED);
    if (timed_out) {
        /* the work stays queued (the thread may still be inside it): leak it */
        if (!G.broken) {
            G.broken = 1;
            snprintf(G.broken_why, sizeof G.broken_why, "%s #%llu did not complete within %g s",
                     w->what, (unsigned long long)w->seq, G.timeout);
        }
        pthread_mutex_unlock(&G.mu);
        return ct_error("dist (%s): %s #%llu did not complete within %g s (--dist-timeout): another "
                        "rank is lost, stuck or has crashed; see the other ranks' messages. The job "
                        "ends here; restart it from the newest checkpoint",
                        ct__dist_where(where, sizeof where), w->what, (unsigned long long)w->seq,
                        G.timeout);
    }
    pthread_mutex_unlock(&G.mu);
    if (w->failed) rc = ct_error("dist (%s): %s: %s", ct__dist_where(where, sizeof where), w->what, w->err);
    if (rc == 0 && w->stage) {
        if (w->scale != 1) ct_mul_scalar_(w->stage, w->scale);
        rc = ct_copy_(w->target, w->stage);
    } else if (rc == 0 && w->scale != 1 && w->target) {
        rc = ct_mul_scalar_(w->target, w->scale);
    }
    free_work(w);
    return rc;
}

/* ------------------------------------------------------------------ init */
static int load_plugin(void) {
    char why[512];
    void *h = ct__open_plugin("libctorch_mpi.so", "CTORCH_MPI_PLUGIN", RTLD_NOW | RTLD_GLOBAL,
                              why, sizeof why);
    const char *env = getenv("CTORCH_MPI_PLUGIN");
    if (!h && env && *env)
        return ct_error("dist: CTORCH_MPI_PLUGIN=%s could not be loaded: %s (unset it to use the "
                        "plugin built with ctorch)", env, why);
    if (!h) {
        if (strstr(why, "libctorch_mpi.so: cannot open") || strstr(why, "No such file"))
            return ct_error("dist: the MPI plugin libctorch_mpi.so was not found: this build has no "
                            "MPI support. Fix: install OpenMPI (apt-get install openmpi-bin "
                            "libopenmpi-dev) so that `make` finds mpicc, and rebuild");
        return ct_error("dist: the MPI plugin could not be loaded: %s (the MPI runtime library is "
                        "missing: install openmpi-bin, or set LD_LIBRARY_PATH to its directory)", why);
    }
    ct_dist_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, "ct_dist_plugin_entry");
    const ct_dist_plugin *p = entry ? entry() : NULL;
    if (!p || p->abi != CT_DIST_PLUGIN_ABI) {
        dlclose(h);
        return ct_error("dist: libctorch_mpi.so was built for another version of ctorch (plugin "
                        "table %d, this library %d); rebuild it with `make`, or point "
                        "CTORCH_MPI_PLUGIN at the plugin of this build", p ? p->abi : 0,
                        CT_DIST_PLUGIN_ABI);
    }
    G.pl = p;
    G.handle = h;
    return 0;
}

int ct_dist_is_available(void) {
    if (G.pl) return 1;
    pthread_mutex_lock(&g_init_mu);
    int rc = G.pl ? 0 : load_plugin();
    pthread_mutex_unlock(&g_init_mu);
    return rc == 0;
}

/* Every rank must run the same ctorch: the version and build id, with the hosts. */
enum { ID_BYTES = 256, HOST_BYTES = 128 };
static int check_same_build(const char *build_id, char *err, size_t errn) {
    char mine[ID_BYTES + HOST_BYTES] = {0};
    snprintf(mine, ID_BYTES, "ctorch %s%s%s", CT_VERSION, build_id ? " " : "",
             build_id ? build_id : "");
    snprintf(mine + ID_BYTES, HOST_BYTES, "%s", ct_dist_hostname());
    char *all = calloc((size_t)G.size, sizeof mine);
    if (!all) return snprintf(err, errn, "out of memory"), -1;
    if (G.pl->all_gather(mine, all, sizeof mine, err, errn) != 0) {
        free(all);
        return -1;
    }
    int rc = 0;
    for (int r = 0; r < G.size && rc == 0; r++) {
        const char *id = all + (size_t)r * sizeof mine;
        if (strcmp(id, all) == 0) continue;
        snprintf(err, errn, "the ranks run different builds of ctorch: rank 0 (%s) has \"%.120s\", "
                 "rank %d (%s) has \"%.120s\". Install the same ctorch on every host",
                 all + ID_BYTES, all, r, id + ID_BYTES, id);
        rc = -1;
    }
    free(all);
    return rc;
}

/* Polling while a caller waits is only free when this host's ranks have a core each
 * (oversubscribed ranks would take it from each other); CTORCH_DIST_POLL=0 turns it off. */
static int may_poll(void) {
    const char *e = getenv("CTORCH_DIST_POLL");
    if (e && strcmp(e, "0") == 0) return 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    /* a rank bound to one core sees one: count the host's cores then */
    int cpus = CPU_COUNT(&set) >= G.local_size ? CPU_COUNT(&set) : (int)online;
    return G.local_size <= cpus;
}

int ct_dist_init(const ct_dist_opts *opts) {
    pthread_mutex_lock(&g_init_mu);
    if (G.initialized) {
        pthread_mutex_unlock(&g_init_mu);
        return 0;
    }
    int rc = G.pl ? 0 : load_plugin();
    char err[700] = "";
    if (rc == 0 && opts && opts->timeout_seconds > 0) G.timeout = opts->timeout_seconds;
    if (rc == 0 && G.pl->init(&G.rank, &G.size, &G.local_rank, &G.local_size, err, sizeof err) != 0)
        rc = ct_error("dist: starting MPI failed: %s (start the program with mpirun -np N or "
                      "ctorch launch; under Slurm: srun --mpi=pmix)", err);
    if (rc == 0 && G.size > 1 && check_same_build(opts ? opts->build_id : NULL, err, sizeof err) != 0)
        rc = ct_error("dist (rank %d on %s): %s", G.rank, ct_dist_hostname(), err);
    if (rc == 0 && G.pl->set_waiting_flag && may_poll()) G.pl->set_waiting_flag(&G.waiting);
    if (rc == 0) {
        if (pthread_create(&G.thread, NULL, comm_main, NULL) != 0)
            rc = ct_error("dist: cannot start the communication thread");
        else G.started = G.initialized = 1;
    }
    pthread_mutex_unlock(&g_init_mu);
    return rc;
}

int ct_dist_finalize(void) {
    if (!G.initialized) return 0;
    int rc = 0;
    if (!G.broken) {
        pthread_mutex_lock(&G.mu);
        G.stopping = 1;
        pthread_cond_signal(&G.cv_work);
        pthread_mutex_unlock(&G.mu);
        pthread_join(G.thread, NULL);
        if (G.nccl_ready) {
            int (*fin)(void);
            *(void **)&fin = ct_backend_proc(CT_CUDA, "ct_cuda_nccl_finalize");
            if (fin) fin();
        }
        rc = G.pl->finalize();
    }
    G.initialized = 0;
    return rc;
}

void ct_dist_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    if (G.initialized && G.pl) G.pl->abort(code);
    _exit(code);
}

/* ------------------------------------------------------------------ collectives */
static int plugin_type(ct_dtype dt, int *out) {
    switch (dt) {
    case CT_FLOAT32: *out = CT_DIST_F32; return 0;
    case CT_FLOAT64: *out = CT_DIST_F64; return 0;
    case CT_INT64: *out = CT_DIST_I64; return 0;
    case CT_INT32: *out = CT_DIST_I32; return 0;
    case CT_UINT8: *out = CT_DIST_U8; return 0;
    default: return -1;
    }
}

static int check_tensor(const ct_tensor *t, const char *what) {
    if (!t) return ct_error("dist: %s: NULL tensor", what);
    if (ct__check_tensor(t, what)) return -1;
    if (!ct_is_contiguous(t))
        return ct_error("dist: %s needs a contiguous tensor (call ct_contiguous first)", what);
    return 0;
}

/* NCCL for CUDA tensors: the communicator is made at the first CUDA collective, its
 * unique id broadcast from rank 0 over MPI. */
static int nccl_ready(int device) {
    if (G.nccl_ready) return 0;
    int (*uid)(void *, size_t);
    int (*init)(const void *, size_t, int, int, int);
    *(void **)&uid = ct_backend_proc(CT_CUDA, "ct_cuda_nccl_unique_id");
    *(void **)&init = ct_backend_proc(CT_CUDA, "ct_cuda_nccl_init");
    if (!uid || !init) return -1;
    unsigned char id[128] = {0};
    if (G.rank == 0 && uid(id, sizeof id) != 0) return -1;
    if (ct_dist_broadcast_buf(id, sizeof id, 0) != 0) return -1;
    if (init(id, sizeof id, G.rank, G.size, device) != 0) return -1;
    G.nccl_ready = 1;
    return 0;
}

static ct_dist_work *cuda_collective(ct_dist_work *w, ct_tensor *t, const ct_tensor *in) {
    int dev = ct_device_of(t).index;
    int rc = nccl_ready(dev);
    if (rc == 0 && w->kind == W_ALL_REDUCE) {
        int (*f)(void *, int64_t, int, int, int);
        *(void **)&f = ct_backend_proc(CT_CUDA, "ct_cuda_nccl_all_reduce");
        rc = f ? f(ct_data(t), ct_numel(t), (int)ct_dtype_of(t), w->op, dev) : -1;
    } else if (rc == 0 && w->kind == W_BROADCAST) {
        int (*f)(void *, int64_t, int, int);
        *(void **)&f = ct_backend_proc(CT_CUDA, "ct_cuda_nccl_broadcast");
        rc = f ? f(ct_data(t), nbytes(t), w->root, dev) : -1;
    } else if (rc == 0) {
        int (*f)(const void *, void *, int64_t, int);
        *(void **)&f = ct_backend_proc(CT_CUDA, "ct_cuda_nccl_all_gather");
        rc = f ? f(ct_data(in), ct_data(t), nbytes(in), dev) : -1;
    }
    if (rc != 0) {
        free(w);
        return NULL;
    }
    w->cuda_device = dev;
    return w;
}

ct_dist_work *ct_dist_all_reduce_async(ct_tensor *t, ct_reduce_op op) {
    if (check_tensor(t, "all_reduce")) return NULL;
    if ((unsigned)op > CT_REDUCE_MIN) return ct_error_null("dist: all_reduce: unknown reduce op %d", (int)op);
    ct_dist_work *w = new_work(W_ALL_REDUCE, "all_reduce");
    if (!w) return NULL;
    w->op = (int)op;
    if (!ct_device_is_host(ct_device_of(t))) return cuda_collective(w, t, NULL);
    w->op = op == CT_REDUCE_MAX ? CT_DIST_MAX : op == CT_REDUCE_MIN ? CT_DIST_MIN : CT_DIST_SUM;
    if (op == CT_REDUCE_AVG) w->scale = 1.0 / G.size;
    ct_dtype dt = ct_dtype_of(t);
    if (dt == CT_FLOAT16 || dt == CT_BFLOAT16) { /* reduced in float32 */
        w->stage = ct__own(ct_to_dtype(t, CT_FLOAT32));
        if (!w->stage) return free(w), NULL;
        w->target = ct__hold(t);
        w->type = CT_DIST_F32;
        w->buf = ct_data(w->stage);
    } else if (plugin_type(dt, &w->type) != 0 || dt == CT_UINT8) {
        free(w);
        return ct_error_null("dist: all_reduce of %s tensors is not supported (float32, float64, "
                             "float16, bfloat16, int64, int32)", ct_dtype_name(dt));
    } else {
        w->buf = ct_data(t);
        if (w->scale != 1) {
            if (dt != CT_FLOAT32 && dt != CT_FLOAT64) {
                free(w);
                return ct_error_null("dist: all_reduce AVG of %s tensors: use SUM (integers do not "
                                     "average)", ct_dtype_name(dt));
            }
            w->target = ct__hold(t);
        }
    }
    w->n = ct_numel(t);
    return enqueue(w);
}

ct_dist_work *ct_dist_broadcast_async(ct_tensor *t, int root) {
    if (check_tensor(t, "broadcast")) return NULL;
    if (root < 0 || root >= ct_dist_world_size())
        return ct_error_null("dist: broadcast from rank %d: the job has ranks 0..%d", root,
                             ct_dist_world_size() - 1);
    ct_dist_work *w = new_work(W_BROADCAST, "broadcast");
    if (!w) return NULL;
    w->root = root;
    if (!ct_device_is_host(ct_device_of(t))) return cuda_collective(w, t, NULL);
    w->buf = ct_data(t);
    w->n = nbytes(t);
    return enqueue(w);
}

ct_dist_work *ct_dist_all_gather_async(ct_tensor *out, const ct_tensor *in) {
    if (check_tensor(out, "all_gather") || check_tensor(in, "all_gather")) return NULL;
    if (ct_dtype_of(out) != ct_dtype_of(in) || ct_numel(out) != ct_numel(in) * ct_dist_world_size() ||
        ct_device_of(out).type != ct_device_of(in).type)
        return ct_error_null("dist: all_gather: out must have world_size (%d) x %lld elements of "
                             "in's dtype and device", ct_dist_world_size(), (long long)ct_numel(in));
    ct_dist_work *w = new_work(W_ALL_GATHER, "all_gather");
    if (!w) return NULL;
    if (!ct_device_is_host(ct_device_of(out))) return cuda_collective(w, out, in);
    w->in = ct_data(in);
    w->buf = ct_data(out);
    w->n = nbytes(in);
    return enqueue(w);
}

ct_dist_work *ct_dist_barrier_async(void) {
    ct_dist_work *w = new_work(W_BARRIER, "barrier");
    return w ? enqueue(w) : NULL;
}

static int wait_or_fail(ct_dist_work *w) { return w ? ct_dist_wait(w) : -1; }

int ct_dist_all_reduce(ct_tensor *t, ct_reduce_op op) { return wait_or_fail(ct_dist_all_reduce_async(t, op)); }
int ct_dist_broadcast(ct_tensor *t, int root) { return wait_or_fail(ct_dist_broadcast_async(t, root)); }
int ct_dist_all_gather(ct_tensor *out, const ct_tensor *in) {
    return wait_or_fail(ct_dist_all_gather_async(out, in));
}
int ct_dist_barrier(void) { return wait_or_fail(ct_dist_barrier_async()); }

int ct_dist_all_reduce_buf(void *buf, int64_t n, ct_dtype dtype, ct_reduce_op op) {
    if (!buf && n > 0) return ct_error("dist: all_reduce_buf: NULL buffer");
    ct_dist_work *w = new_work(W_ALL_REDUCE, "all_reduce");
    if (!w) return -1;
    if (plugin_type(dtype, &w->type) != 0 || dtype == CT_UINT8 || op == CT_REDUCE_AVG) {
        free(w);
        return ct_error("dist: all_reduce_buf: %s with op %d is not supported (float32, float64, "
                        "int64, int32; SUM, MAX, MIN)", ct_dtype_name(dtype), (int)op);
    }
    w->op = op == CT_REDUCE_MAX ? CT_DIST_MAX : op == CT_REDUCE_MIN ? CT_DIST_MIN : CT_DIST_SUM;
    w->buf = buf;
    w->n = n;
    return ct_dist_wait(enqueue(w));
}

int ct_dist_broadcast_buf(void *buf, int64_t bytes, int root) {
    ct_dist_work *w = new_work(W_BROADCAST, "broadcast");
    if (!w) return -1;
    w->buf = buf;
    w->n = bytes;
    w->root = root;
    return ct_dist_wait(enqueue(w));
}

int ct_dist_all_gather_buf(const void *in, void *out, int64_t bytes) {
    ct_dist_work *w = new_work(W_ALL_GATHER, "all_gather");
    if (!w) return -1;
    w->in = in;
    w->buf = out;
    w->n = bytes;
    return ct_dist_wait(enqueue(w));
}
