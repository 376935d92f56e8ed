/* The SIMT emulator's scheduler: blocks run one after another; the threads of a block are
 * fibers switched at barriers (see include/simt.h for the model). */
#include "simt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

namespace cuda_emu {

enum { F_RUN, F_WAIT_BLOCK, F_WAIT_WARP, F_DONE };

struct fiber {
    ucontext_t ctx;
    int state;
    int linear; /* threadIdx linearised: x + y*bx + z*bx*by */
    uint3 tid;
    /* pending warp exchange */
    unsigned mask;
    uint64_t xval, xres;
    int (*src_of)(int, int, int);
    int arg, width;
};

struct block {
    uint3 bid;
    dim3 bdim, gdim;
    int n;
    fiber *f;
    ucontext_t sched;
    body_fn body;
    void *ctx;
    const char *kernel;
    int failed;
};

thread_local fiber *cur_fiber;
thread_local block *cur_block;

uint3 &thread_idx() { return cur_fiber->tid; }
uint3 &block_idx() { return cur_block->bid; }
dim3 &block_dim() { return cur_block->bdim; }
dim3 &grid_dim() { return cur_block->gdim; }

/* Fiber stacks, allocated once per OS thread for the largest block seen. */
#define STACK_BYTES ((size_t)256 << 10)
static thread_local char *g_stacks;
static thread_local int g_nstacks;
static thread_local fiber *g_fibers;

static int ensure_fibers(int n) {
    if (n <= g_nstacks) return 0;
    if (g_stacks) munmap(g_stacks, (size_t)g_nstacks * STACK_BYTES);
    free(g_fibers);
    g_stacks = (char *)mmap(NULL, (size_t)n * STACK_BYTES, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    g_fibers = (fiber *)calloc((size_t)n, sizeof(fiber));
    if (g_stacks == MAP_FAILED || !g_fibers) {
        if (g_stacks != MAP_FAILED && g_stacks) munmap(g_stacks, (size_t)n * STACK_BYTES);
        free(g_fibers);
        g_stacks = NULL, g_fibers = NULL, g_nstacks = 0;
        return -1;
    }
    g_nstacks = n;
    return 0;
}

static void fiber_main(void) {
    cur_block->body(cur_block->ctx);
    cur_fiber->state = F_DONE; /* returns to cur_block->sched through uc_link */
}

static void yield_to_scheduler(void) {
    swapcontext(&cur_fiber->ctx, &cur_block->sched);
}

void sync_block() {
    cur_fiber->state = F_WAIT_BLOCK;
    yield_to_scheduler();
}

uint64_t warp_exchange(unsigned mask, uint64_t mine, int (*src_of)(int, int, int), int arg,
                       int width) {
    fiber *f = cur_fiber;
    f->mask = mask, f->xval = mine, f->src_of = src_of, f->arg = arg, f->width = width;
    f->state = F_WAIT_WARP;
    yield_to_scheduler();
    return f->xres;
}

static const char *state_name(int s) {
    switch (s) {
    case F_RUN: return "running";
    case F_WAIT_BLOCK: return "at __syncthreads";
    case F_WAIT_WARP: return "at a warp shuffle";
    default: return "exited";
    }
}

/* Releases the warp exchange of warp w if every lane of its mask is waiting on it. 1 when
 * released, 0 when not (yet), -1 on an error that can never resolve. */
static int try_release_warp(block *b, int w) {
    const int lo = w * 32, hi = b->n < lo + 32 ? b->n : lo + 32;
    fiber *first = NULL;
    for (int i = lo; i < hi; i++)
        if (b->f[i].state == F_WAIT_WARP) {
            first = &b->f[i];
            break;
        }
    if (!first) return 0;
    const unsigned mask = first->mask;
    for (int lane = 0; lane < 32; lane++) {
        if (!(mask >> lane & 1u)) continue;
        const int i = lo + lane;
        if (i >= hi) {
            ct_emu_kernel_error("kernel %s, block (%u,%u,%u): warp shuffle with mask 0x%08x names "
                                "lane %d, which does not exist (block of %d threads)",
                                b->kernel, b->bid.x, b->bid.y, b->bid.z, mask, lane, b->n);
            return -1;
        }
        if (b->f[i].state == F_DONE) {
            ct_emu_kernel_error("kernel %s, block (%u,%u,%u): warp shuffle with mask 0x%08x, but "
                                "lane %d (thread %d) has exited",
                                b->kernel, b->bid.x, b->bid.y, b->bid.z, mask, lane, i);
            return -1;
        }
        if (b->f[i].state != F_WAIT_WARP) return 0;
        if (b->f[i].mask != mask) {
            ct_emu_kernel_error("kernel %s, block (%u,%u,%u): lanes of warp %d shuffle with "
                                "different masks (0x%08x, 0x%08x)",
                                b->kernel, b->bid.x, b->bid.y, b->bid.z, w, mask, b->f[i].mask);
            return -1;
        }
    }
    for (int lane = 0; lane < 32; lane++) {
        if (!(mask >> lane & 1u)) continue;
        fiber *f = &b->f[lo + lane];
        const int src = f->src_of(lane, f->arg, f->width);
        if (src < 0 || src > 31 || !(mask >> src & 1u)) {
            ct_emu_kernel_error("kernel %s: lane %d reads lane %d, which is not in the shuffle "
                                "mask 0x%08x (undefined on a GPU)",
                                b->kernel, lane, src, mask);
            return -1;
        }
        f->xres = b->f[lo + src].xval;
    }
    for (int lane = 0; lane < 32; lane++)
        if (mask >> lane & 1u) b->f[lo + lane].state = F_RUN;
    return 1;
}

static void report_stuck(block *b) {
    char buf[1024];
    int len = 0;
    for (int i = 0; i < b->n && len < (int)sizeof buf - 80; i++) {
        if (i > 0 && b->f[i].state == b->f[i - 1].state) continue;
        len += snprintf(buf + len, sizeof buf - (size_t)len, "%sthread %d.. %s", i ? ", " : "", i,
                        state_name(b->f[i].state));
    }
    ct_emu_kernel_error("kernel %s, block (%u,%u,%u): barrier can never be released (%s): a "
                        "__syncthreads or shuffle not reached by every thread it needs",
                        b->kernel, b->bid.x, b->bid.y, b->bid.z, buf);
}

/* Context operations kept out of line, so that no local of the scheduler's loops lives
 * across a getcontext/swapcontext (the compiler treats them like setjmp). */
static __attribute__((noinline)) void init_fiber(block *b, int i) {
    fiber *f = &b->f[i];
    f->state = F_RUN;
    f->linear = i;
    f->tid.x = (unsigned)i % b->bdim.x;
    f->tid.y = ((unsigned)i / b->bdim.x) % b->bdim.y;
    f->tid.z = (unsigned)i / (b->bdim.x * b->bdim.y);
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = g_stacks + (size_t)i * STACK_BYTES;
    f->ctx.uc_stack.ss_size = STACK_BYTES;
    f->ctx.uc_link = &b->sched;
    makecontext(&f->ctx, fiber_main, 0);
}

static __attribute__((noinline)) void resume_fiber(block *b, int i) {
    cur_fiber = &b->f[i];
    swapcontext(&b->sched, &b->f[i].ctx);
}

/* The order in which runnable threads run between barriers (CT_EMU_SCHEDULE): `forward`
 * (thread 0 first, the default), `reverse`, or `random` (a new order each round, seeded by
 * CT_EMU_SEED). A kernel that reads shared or global memory another thread of the block
 * writes in the same barrier interval gives different results under different orders:
 * the data races that a fixed order would hide. */
enum { SCHED_FORWARD, SCHED_REVERSE, SCHED_RANDOM };
static int g_schedule = -1;

static int schedule_from(const char *e) {
    if (e && *e && strcmp(e, "forward") && strcmp(e, "reverse") && strcmp(e, "random"))
        fprintf(stderr, "cuda-emu: CT_EMU_SCHEDULE=%s is not forward, reverse or random; using "
                        "forward\n",
                e);
    return e && !strcmp(e, "reverse") ? SCHED_REVERSE
           : e && !strcmp(e, "random") ? SCHED_RANDOM
                                       : SCHED_FORWARD;
}

static int schedule_kind(void) {
    if (g_schedule < 0) g_schedule = schedule_from(getenv("CT_EMU_SCHEDULE"));
    return g_schedule;
}

static thread_local int *g_order;
static thread_local int g_order_cap;
static thread_local uint64_t g_rng;

static const int *run_order(int n) {
    if (n > g_order_cap) {
        free(g_order);
        g_order = (int *)malloc((size_t)n * sizeof *g_order);
        g_order_cap = g_order ? n : 0;
        if (!g_order) return NULL;
    }
    const int kind = schedule_kind();
    for (int i = 0; i < n; i++) g_order[i] = kind == SCHED_REVERSE ? n - 1 - i : i;
    if (kind == SCHED_RANDOM) {
        if (!g_rng) {
            const char *e = getenv("CT_EMU_SEED");
            g_rng = (e && *e ? strtoull(e, NULL, 10) : 12345) * 2654435761u + 1;
        }
        for (int i = n - 1; i > 0; i--) { /* Fisher-Yates with xorshift64 */
            g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
            int j = (int)(g_rng % (uint64_t)(i + 1)), t = g_order[i];
            g_order[i] = g_order[j], g_order[j] = t;
        }
    }
    return g_order;
}

static int run_block(block *b) {
    for (int i = 0; i < b->n; i++) init_fiber(b, i);
    for (;;) {
        const int *order = run_order(b->n);
        if (!order) {
            ct_emu_kernel_error("kernel %s: no memory for the schedule", b->kernel);
            return -1;
        }
        for (int k = 0; k < b->n; k++)
            if (b->f[order[k]].state == F_RUN) resume_fiber(b, order[k]);
        int ndone = 0, nblock = 0, released = 0;
        for (int i = 0; i < b->n; i++) {
            ndone += b->f[i].state == F_DONE;
            nblock += b->f[i].state == F_WAIT_BLOCK;
        }
        if (ndone == b->n) return 0;
        for (int w = 0; w * 32 < b->n; w++) {
            int r = try_release_warp(b, w);
            if (r < 0) return -1;
            released += r;
        }
        if (!released && nblock > 0 && nblock + ndone == b->n) {
            if (ndone > 0) {
                ct_emu_kernel_error("kernel %s, block (%u,%u,%u): __syncthreads reached by %d "
                                    "threads after %d others exited (undefined on a GPU)",
                                    b->kernel, b->bid.x, b->bid.y, b->bid.z, nblock, ndone);
                return -1;
            }
            for (int i = 0; i < b->n; i++) b->f[i].state = F_RUN;
            released = 1;
        }
        if (!released) {
            report_stuck(b);
            return -1;
        }
    }
}

/* A queued launch. */
struct grid_work {
    dim3 grid, blk;
    body_fn body;
    void *ctx;
    void (*dtor)(void *);
    const char *kernel;
};

static void run_grid(dim3 grid, dim3 blk, body_fn body, void *ctx, const char *kernel);

static void grid_work_run(void *p) {
    grid_work *w = (grid_work *)p;
    run_grid(w->grid, w->blk, w->body, w->ctx, w->kernel);
}

static void grid_work_free(void *p) {
    grid_work *w = (grid_work *)p;
    w->dtor(w->ctx);
    delete w;
}

int launch_grid(dim3 grid, dim3 blk, size_t smem, cudaStream_t stream, body_fn body, void *ctx,
                void (*dtor)(void *), const char *kernel) {
    const unsigned long long nthreads = (unsigned long long)blk.x * blk.y * blk.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 || nthreads > 1024 ||
        blk.z > 64 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 ||
        smem > 48 * 1024) {
        dtor(ctx);
        return ct_emu_launch_error(cudaErrorInvalidConfiguration,
                                   "kernel %s: invalid launch configuration: grid (%u,%u,%u), "
                                   "block (%u,%u,%u), %zu bytes of dynamic shared memory",
                                   kernel, grid.x, grid.y, grid.z, blk.x, blk.y, blk.z, smem);
    }
    ct_emu_count_launch();
    if (ct_emu_skip_compute()) { /* launch checked and counted, not run */
        dtor(ctx);
        return 0;
    }
    ct_emu_enqueue(stream, grid_work_run, new grid_work{grid, blk, body, ctx, dtor, kernel},
                   grid_work_free);
    return 0;
}

static void run_grid(dim3 grid, dim3 blk, body_fn body, void *ctx, const char *kernel) {
    const unsigned long long nthreads = (unsigned long long)blk.x * blk.y * blk.z;
    if (ensure_fibers((int)nthreads) != 0) {
        ct_emu_kernel_error("kernel %s: no memory for %llu fiber stacks", kernel, nthreads);
        return;
    }
    block b{};
    b.bdim = blk, b.gdim = grid, b.n = (int)nthreads, b.f = g_fibers;
    b.body = body, b.ctx = ctx, b.kernel = kernel;
    block *saved_b = cur_block;
    fiber *saved_f = cur_fiber;
    cur_block = &b;
    int rc = 0;
    for (unsigned z = 0; z < grid.z && rc == 0; z++)
        for (unsigned y = 0; y < grid.y && rc == 0; y++)
            for (unsigned x = 0; x < grid.x && rc == 0; x++) {
                b.bid.x = x, b.bid.y = y, b.bid.z = z;
                rc = run_block(&b);
            }
    cur_block = saved_b, cur_fiber = saved_f;
}

} // namespace cuda_emu

extern "C" void ct_emu_set_schedule(const char *name) {
    cuda_emu::g_schedule = cuda_emu::schedule_from(name);
}
