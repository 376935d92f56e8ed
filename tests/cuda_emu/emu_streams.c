/* The CUDA emulator's streams and events, and when queued work runs.
 *
 * CT_EMU_STREAMS chooses the model:
 *   sync    (default) every kernel, copy and memset runs when it is issued;
 *   lazy    work is queued per stream and runs only when something waits for it: a
 *           synchronisation of its stream, an event it records being waited on or
 *           synchronised, a synchronous copy, cudaFree, a cuBLAS/cuDNN call on its stream.
 *           Streams run as late as their dependencies allow, so work on two streams that
 *           is not ordered by an event runs in the order that exposes a missing
 *           cudaStreamWaitEvent: the consumer before the producer;
 *   mixed   the first stream created (the plugin's compute stream) is lazy, later ones
 *           (the copy stream) run at once: work on them runs before the queued compute
 *           work that it should have waited for.
 * Running `make test`'s CUDA cases in all three catches stream-ordering bugs that the
 * synchronous model cannot (tests/test_cuda_emu.c). The legacy default stream (NULL) is
 * treated as synchronising with everything. */
#include "emu_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MODE_SYNC, MODE_LAZY, MODE_MIXED };
enum { OP_FN, OP_RECORD, OP_WAIT };

typedef struct emu_op {
    int kind;
    void (*fn)(void *);
    void *ctx;
    void (*dtor)(void *);
    struct CUevent_st *ev; /* RECORD, WAIT (NULL: a wait already satisfied) */
    unsigned long long gen;
    struct emu_op *next;
} emu_op;

struct CUstream_st {
    unsigned flags;
    int id, lazy;
    emu_op *head, *tail;
    struct CUstream_st *next;
};

struct CUevent_st {
    unsigned flags;
    unsigned long long queued, done; /* generations of records issued / run */
};

static pthread_mutex_t g_q = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static struct CUstream_st *g_streams;
static int g_next_id = 1;
static int g_mode = -1;

static int mode_from(const char *e) {
    if (e && *e && strcmp(e, "sync") && strcmp(e, "lazy") && strcmp(e, "mixed"))
        fprintf(stderr, "cuda-emu: CT_EMU_STREAMS=%s is not sync, lazy or mixed; using sync\n",
                e);
    return e && !strcmp(e, "lazy") ? MODE_LAZY : e && !strcmp(e, "mixed") ? MODE_MIXED
                                                                            : MODE_SYNC;
}

static int mode(void) {
    if (g_mode < 0) g_mode = mode_from(getenv("CT_EMU_STREAMS"));
    return g_mode;
}

/* For the emulator's own tests: switch the model (streams created later follow it). */
void ct_emu_set_streams(const char *name) { g_mode = mode_from(name); }

static void run_op(emu_op *o) {
    if (o->kind == OP_FN && o->fn) o->fn(o->ctx);
    if (o->kind == OP_RECORD && o->ev && o->ev->done < o->gen) o->ev->done = o->gen;
    if (o->dtor) o->dtor(o->ctx);
    free(o);
}

static void run_stream(struct CUstream_st *s, const emu_op *stop, int depth);

/* Runs work until ev's record of generation >= gen has run. Caller holds g_q. */
static void satisfy(struct CUevent_st *ev, unsigned long long gen, int depth) {
    if (depth > 64) {
        fprintf(stderr, "cuda-emu: event waits nest more than 64 deep (a cycle of waits?)\n");
        ev->done = gen;
        return;
    }
    while (ev->done < gen) {
        emu_op *rec = NULL;
        struct CUstream_st *owner = NULL;
        for (struct CUstream_st *t = g_streams; t && !rec; t = t->next)
            for (emu_op *o = t->head; o; o = o->next)
                if (o->kind == OP_RECORD && o->ev == ev && o->gen >= gen) {
                    rec = o, owner = t;
                    break;
                }
        if (!rec) { /* recorded on the legacy stream, or never: complete */
            ev->done = gen;
            return;
        }
        run_stream(owner, rec, depth + 1);
    }
}

/* Runs s's queue up to and including `stop` (NULL: all of it). Caller holds g_q. */
static void run_stream(struct CUstream_st *s, const emu_op *stop, int depth) {
    while (s->head) {
        emu_op *o = s->head;
        if (o->kind == OP_WAIT && o->ev && o->ev->done < o->gen) {
            satisfy(o->ev, o->gen, depth);
            continue;
        }
        s->head = o->next;
        if (!s->head) s->tail = NULL;
        const int last = o == stop;
        run_op(o);
        if (last) return;
    }
}

void ct_emu_flush_all(void) {
    pthread_mutex_lock(&g_q);
    for (int again = 1; again;) {
        again = 0;
        for (struct CUstream_st *t = g_streams; t; t = t->next)
            if (t->head) {
                run_stream(t, NULL, 0);
                again = 1;
            }
    }
    pthread_mutex_unlock(&g_q);
}

void ct_emu_stream_flush(cudaStream_t s) {
    if (!s) {
        ct_emu_flush_all();
        return;
    }
    pthread_mutex_lock(&g_q);
    run_stream(s, NULL, 0);
    pthread_mutex_unlock(&g_q);
}

static void push(cudaStream_t s, emu_op *o) {
    pthread_mutex_lock(&g_q);
    if (mode() == MODE_SYNC || !s) {
        if (!s) ct_emu_flush_all();
        if (o->kind == OP_WAIT) free(o);
        else run_op(o);
    } else {
        o->next = NULL;
        if (s->tail) s->tail->next = o;
        else s->head = o;
        s->tail = o;
        if (!s->lazy) run_stream(s, NULL, 0);
    }
    pthread_mutex_unlock(&g_q);
}

void ct_emu_enqueue(cudaStream_t s, void (*fn)(void *), void *ctx, void (*dtor)(void *)) {
    emu_op *o = calloc(1, sizeof *o);
    if (!o) { /* no memory to queue it: run it now */
        if (fn) fn(ctx);
        if (dtor) dtor(ctx);
        return;
    }
    o->kind = OP_FN, o->fn = fn, o->ctx = ctx, o->dtor = dtor;
    push(s, o);
}

/* ------------------------------------------------------------ streams */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    if (!s) return cudaErrorInvalidValue;
    struct CUstream_st *t = calloc(1, sizeof *t);
    if (!t) return cudaErrorMemoryAllocation;
    pthread_mutex_lock(&g_q);
    t->flags = flags;
    t->id = g_next_id++;
    t->lazy = mode() == MODE_LAZY || (mode() == MODE_MIXED && t->id == 1);
    t->next = g_streams;
    g_streams = t;
    pthread_mutex_unlock(&g_q);
    *s = t;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return cudaErrorInvalidResourceHandle;
    pthread_mutex_lock(&g_q);
    run_stream(s, NULL, 0); /* queued work still completes */
    for (struct CUstream_st **p = &g_streams; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    pthread_mutex_unlock(&g_q);
    free(s);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    ct_emu_stream_flush(s);
    return ct_emu_take_fault();
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
    (void)flags;
    if (!e) return cudaErrorInvalidResourceHandle;
    pthread_mutex_lock(&g_q);
    const unsigned long long gen = e->queued;
    int pending = e->done < gen;
    pthread_mutex_unlock(&g_q);
    if (!pending) return cudaSuccess; /* nothing to wait for */
    emu_op *o = calloc(1, sizeof *o);
    if (!o) {
        ct_emu_flush_all();
        return cudaSuccess;
    }
    o->kind = OP_WAIT, o->ev = e, o->gen = gen;
    push(s, o);
    return cudaSuccess;
}

/* ------------------------------------------------------------ events */
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    if (!e) return cudaErrorInvalidValue;
    *e = calloc(1, sizeof **e);
    if (!*e) return cudaErrorMemoryAllocation;
    (*e)->flags = flags;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return cudaErrorInvalidResourceHandle;
    emu_op *o = calloc(1, sizeof *o);
    if (!o) return cudaErrorMemoryAllocation;
    pthread_mutex_lock(&g_q);
    o->kind = OP_RECORD, o->ev = e, o->gen = ++e->queued;
    push(s, o);
    pthread_mutex_unlock(&g_q);
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
    if (!e) return cudaErrorInvalidResourceHandle;
    pthread_mutex_lock(&g_q);
    int done = e->done >= e->queued;
    pthread_mutex_unlock(&g_q);
    return done ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return cudaErrorInvalidResourceHandle;
    pthread_mutex_lock(&g_q);
    satisfy(e, e->queued, 0);
    pthread_mutex_unlock(&g_q);
    return ct_emu_take_fault();
}

/* An event with a record still queued completes first (CUDA lets it complete after the
 * destroy); waits on it are then satisfied and forget it. */
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return cudaErrorInvalidResourceHandle;
    pthread_mutex_lock(&g_q);
    satisfy(e, e->queued, 0);
    for (struct CUstream_st *t = g_streams; t; t = t->next)
        for (emu_op *o = t->head; o; o = o->next)
            if (o->ev == e) o->ev = NULL;
    pthread_mutex_unlock(&g_q);
    free(e);
    return cudaSuccess;
}

