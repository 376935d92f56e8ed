/* One process-wide thread pool. ct_parallel_for splits [0, n) into at most one contiguous
 * chunk per thread. The caller runs chunk 0; the workers claim the others from a shared
 * ticket, and so does the caller once its own chunk is done, so a worker that is late
 * (asleep, or preempted on a busy machine) never holds the caller up: it only waits for
 * chunks a worker has actually started. Chunk c normally lands on thread c, so successive
 * ops over the same data (a weight-gradient GEMM, then the optimizer step, then the next
 * forward) find their part in the same core's cache. Workers spin (with `pause`, yielding
 * now and then in case they share a CPU with the caller) for a while after each job,
 * since in a training step the next parallel op follows within microseconds, then sleep
 * on a condition variable.
 * OpenBLAS is kept single-threaded (set here) so that BLAS calls made inside chunks never
 * start threads of their own. */
#include "parallel.h"
#include "backend.h"
#include "ctorch.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

extern void openblas_set_num_threads(int);

#define MAX_THREADS 256
/* How long an idle worker spins before sleeping, and how long the caller spins waiting
 * for a started chunk before it starts yielding the CPU. */
#define WORKER_SPIN_NS 300000
#define CALLER_SPIN_NS 50000

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th[MAX_THREADS];
    int nthreads; /* total including the caller */
    int started;  /* workers running */
    atomic_int shutdown;
    atomic_int sleepers;
    /* The current job. `ticket` is generation << 32 | chunks << 16 | next unclaimed chunk;
     * a chunk is claimed with a compare-and-swap on the whole ticket, so a worker that read
     * the job's fields just as the job ended can never run a chunk of another. */
    _Atomic uint64_t ticket;
    _Atomic(ct_range_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n;
    atomic_int done;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t g_submit = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;

/* OpenBLAS must never start threads of its own: ours own the cores. Done once, before
 * the first GEMM can run (every entry point of this file calls it). */
static void blas_single_thread(void) { openblas_set_num_threads(1); }
static _Thread_local int t_index;
static _Thread_local int t_in_parallel;
static atomic_int g_requested = 0;
static atomic_int g_deterministic = 0;

/* ct_use_deterministic_algorithms(1): work is split as if CT_DETERMINISTIC_SPLIT threads
 * ran, whatever the real count, so that every reduction adds its parts in the same order
 * with 1 thread or 64 (see ct_plan_threads and ct_parallel_for). */
#define CT_DETERMINISTIC_SPLIT 8
/* ct_parallel_for_dynamic: chunks per thread at most */
#define DYNAMIC_CHUNKS 8

void ct_use_deterministic_algorithms(int on) {
    atomic_store(&g_deterministic, on != 0);
    ct__backend_settings_changed(); /* the CUDA plugin: deterministic cuDNN algorithms */
}
int ct_are_deterministic_algorithms_enabled(void) { return atomic_load(&g_deterministic); }
int ct_deterministic_split(void) { return CT_DETERMINISTIC_SPLIT; }

int ct_plan_threads(void) {
    return atomic_load(&g_deterministic) ? CT_DETERMINISTIC_SPLIT : ct_get_num_threads();
}

int ct_thread_index(void) { return t_index; }
int ct_in_parallel(void) { return t_in_parallel; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint32_t ticket_gen(uint64_t t) { return (uint32_t)(t >> 32); }
static int ticket_chunks(uint64_t t) { return (int)((t >> 16) & 0xFFFF); }
static int ticket_next(uint64_t t) { return (int)(t & 0xFFFF); }

/* Claims and runs chunks of job `gen` until none is left. The ticket is read before the
 * job's fields: a job's fields are written before its ticket is published and are not
 * overwritten before all its chunks are done, so when the claim succeeds (the ticket
 * still shows this job with chunk c unclaimed) the fields read belong to it. */
static void run_chunks(uint32_t gen) {
    uint64_t t = atomic_load(&P.ticket);
    while (ticket_gen(t) == gen && ticket_next(t) < ticket_chunks(t)) {
        ct_range_fn fn = atomic_load(&P.fn);
        void *ctx = atomic_load(&P.ctx);
        int64_t n = atomic_load(&P.n);
        if (!atomic_compare_exchange_weak(&P.ticket, &t, t + 1)) continue;
        int64_t c = ticket_next(t), k = ticket_chunks(t);
        int64_t b = n * c / k, e = n * (c + 1) / k;
        if (b < e) fn(ctx, b, e);
        atomic_fetch_add(&P.done, 1);
        t = atomic_load(&P.ticket);
    }
}

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg;
    t_index = idx;
    t_in_parallel = 1;
    uint32_t seen = ticket_gen(atomic_load(&P.ticket));
    for (;;) {
        uint32_t g;
        int64_t t0 = 0;
        for (int spins = 0;; spins++) {
            g = ticket_gen(atomic_load(&P.ticket));
            if (g != seen || atomic_load(&P.shutdown)) break;
            cpu_relax();
            if ((spins & 255) == 255) {
                /* On a busy machine this thread may share a CPU with the caller: let it
                 * run (sched_yield returns at once when nothing else is runnable here). */
                sched_yield();
                int64_t t = now_ns();
                if (!t0) t0 = t;
                else if (t - t0 > WORKER_SPIN_NS) break;
            }
        }
        if (g == seen && !atomic_load(&P.shutdown)) {
            pthread_mutex_lock(&P.mu);
            atomic_fetch_add(&P.sleepers, 1);
            while ((g = ticket_gen(atomic_load(&P.ticket))) == seen && !atomic_load(&P.shutdown))
                pthread_cond_wait(&P.cv, &P.mu);
            atomic_fetch_sub(&P.sleepers, 1);
            pthread_mutex_unlock(&P.mu);
        }
        if (atomic_load(&P.shutdown)) return NULL;
        seen = g;
        run_chunks(g);
    }
}

static void stop_workers(void) {
    if (!P.started) return;
    pthread_mutex_lock(&P.mu);
    atomic_store(&P.shutdown, 1);
    atomic_fetch_add(&P.ticket, (uint64_t)1 << 32);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 1; i < P.nthreads; i++) pthread_join(P.th[i], NULL);
    P.started = 0;
    atomic_store(&P.shutdown, 0);
}

/* CTORCH_NUM_THREADS, else OMP_NUM_THREADS (as PyTorch honours it; `ctorch launch` sets
 * both for each rank), else the cores this process may run on. */
static int default_threads(void) {
    const char *envs[] = {"CTORCH_NUM_THREADS", "OMP_NUM_THREADS"};
    for (int i = 0; i < 2; i++) {
        const char *e = getenv(envs[i]);
        char *end;
        long v = e && *e ? strtol(e, &end, 10) : 0;
        if (e && *e && !*end && v > 0) return (int)v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    return n > 0 ? (int)n : 1;
}

static void ensure_pool(void) {
    int want = atomic_load(&g_requested);
    if (want <= 0) want = default_threads();
    if (want > MAX_THREADS) want = MAX_THREADS;
    if (P.started && P.nthreads == want) return;
    stop_workers();
    P.nthreads = want;
    for (int i = 1; i < want; i++) pthread_create(&P.th[i], NULL, worker, (void *)(intptr_t)i);
    P.started = 1;
    static int registered;
    if (!registered) {
        registered = 1;
        atexit(stop_workers);
    }
}

void ct_set_num_threads(int n) {
    atomic_store(&g_requested, n);
    pthread_mutex_lock(&g_submit);
    if (P.started) ensure_pool();
    pthread_mutex_unlock(&g_submit);
}

int ct_get_num_threads(void) {
    pthread_once(&g_blas_once, blas_single_thread);
    int want = atomic_load(&g_requested);
    return want > 0 ? (want > MAX_THREADS ? MAX_THREADS : want) : default_threads();
}

/* Deterministic mode without the pool (one thread, or the pool busy with another
 * caller): the same chunks as the pool would run, one after the other, inside a
 * "parallel region" so that nested calls behave as they do on a worker. */
static void run_chunks_inline(int64_t n, int64_t chunks, ct_range_fn fn, void *ctx) {
    int was = t_in_parallel;
    t_in_parallel = 1;
    for (int64_t c = 0; c < chunks; c++) {
        int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
        if (b < e) fn(ctx, b, e);
    }
    t_in_parallel = was;
}

/* The pool runs [0, n) in chunks of at least grain items, at most per_thread per thread
 * (claimed in order by whichever thread is free). */
static void parallel_run(int64_t n, int64_t grain, int per_thread, ct_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = ct_get_num_threads();
    int det = atomic_load(&g_deterministic);
    int64_t det_chunks = n / grain < CT_DETERMINISTIC_SPLIT ? n / grain : CT_DETERMINISTIC_SPLIT;
    if (t_in_parallel || n < 2 * grain) {
        fn(ctx, 0, n);
        return;
    }
    if (nt <= 1 || pthread_mutex_trylock(&g_submit) != 0) {
        if (det) run_chunks_inline(n, det_chunks, fn, ctx);
        else fn(ctx, 0, n);
        return;
    }
    ensure_pool();
    int64_t chunks = n / grain;
    if (chunks > (int64_t)P.nthreads * per_thread) chunks = (int64_t)P.nthreads * per_thread;
    if (det) chunks = det_chunks;
    atomic_store(&P.fn, fn);
    atomic_store(&P.ctx, ctx);
    atomic_store(&P.n, n);
    atomic_store(&P.done, 0);
    /* Publish a new generation with chunk 0 already taken by the caller: chunk c goes to
     * thread c unless that thread is late, so consecutive ops over the same data (an
     * optimizer step, then the next forward) find it in the same core's cache. */
    uint32_t gen = ticket_gen(atomic_load(&P.ticket)) + 1;
    atomic_store(&P.ticket, (uint64_t)gen << 32 | (uint64_t)chunks << 16 | 1);
    if (atomic_load(&P.sleepers) > 0) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
    t_in_parallel = 1;
    int64_t e0 = n / chunks;
    if (e0 > 0) fn(ctx, 0, e0);
    atomic_fetch_add(&P.done, 1);
    run_chunks(gen); /* then whatever the workers have not claimed */
    t_in_parallel = 0;
    /* Every chunk is claimed; wait for the ones the workers are still running. */
    int64_t t0 = 0;
    for (int spins = 0; atomic_load(&P.done) < chunks; spins++) {
        if (t0 < 0) {
            sched_yield();
            continue;
        }
        cpu_relax();
        if ((spins & 255) == 255) {
            sched_yield(); /* the worker may be waiting for this CPU */
            int64_t t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > CALLER_SPIN_NS) t0 = -1;
        }
    }
    pthread_mutex_unlock(&g_submit);
}

void ct_parallel_for(int64_t n, int64_t grain, ct_range_fn fn, void *ctx) {
    parallel_run(n, grain, 1, fn, ctx);
}

void ct_parallel_for_dynamic(int64_t n, int64_t grain, ct_range_fn fn, void *ctx) {
    parallel_run(n, grain, DYNAMIC_CHUNKS, fn, ctx);
}
