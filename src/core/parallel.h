/* The thread pool that owns the cores. One pool per process; BLAS runs single-threaded
 * inside it so nothing fights for the cores. */
#ifndef CT_PARALLEL_H
#define CT_PARALLEL_H

#include <stdint.h>

/* Calls fn(ctx, begin, end) over [0, n) split into contiguous chunks of at least
 * `grain` items, one chunk per thread. Runs inline when n < 2*grain, with one thread,
 * or when called from inside a parallel region. Under ct_use_deterministic_algorithms the
 * chunks are min(n / grain, ct_deterministic_split()) whatever the thread count (run one
 * after the other when there is one thread). */
typedef void (*ct_range_fn)(void *ctx, int64_t begin, int64_t end);
void ct_parallel_for(int64_t n, int64_t grain, ct_range_fn fn, void *ctx);
/* The same in up to 8 chunks per thread (of at least `grain` items), each claimed by
 * whichever thread is free: a thread slowed down (a busy machine, a vCPU the hypervisor
 * takes away) runs fewer of them instead of holding up the join. For kernels whose
 * result does not depend on where [0, n) is cut, and whose chunks are not so small that
 * a call per chunk costs more than the balance gains. */
void ct_parallel_for_dynamic(int64_t n, int64_t grain, ct_range_fn fn, void *ctx);
/* Index of the calling worker inside a parallel_for (0 on the main thread). */
int ct_thread_index(void);
/* The thread count a kernel should plan its split of the work for: ct_get_num_threads(),
 * or under ct_use_deterministic_algorithms a fixed count (ct_deterministic_split()) so that
 * per-slot partial sums, and the order they are added in, do not depend on the threads. */
int ct_plan_threads(void);
int ct_deterministic_split(void);
int ct_in_parallel(void);

#endif
