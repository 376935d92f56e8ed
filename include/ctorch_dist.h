/*
 * ctorch distributed: process groups and DistributedDataParallel (docs/distributed.md).
 *
 * The PyTorch analogue is torch.distributed + DistributedDataParallel, launched by
 * torchrun. ctorch's processes are started by OpenMPI (`mpirun -np 2 ctorch train ...`,
 * `srun --mpi=pmix ...`, or `ctorch launch`); the collectives run on engines loaded at
 * run time, never linked:
 *   - CPU tensors: OpenMPI, through the plugin libctorch_mpi.so (built when `mpicc` is
 *     found); it also bootstraps the other engines;
 *   - CUDA tensors: NCCL inside the CUDA plugin (libnccl.so.2 opened at run time; its
 *     unique id is broadcast over MPI).
 * A program that never calls ct_dist_init runs single-process without either.
 *
 * Every collective is queued on one communication thread in call order (the same order
 * on every rank, as MPI requires) and returns a handle; ct_dist_wait waits for it, at
 * most the group's timeout (default 300 s). A collective that does not complete in time
 * (a lost, stuck or crashed peer) fails with a message naming the operation, this rank
 * and its host; the process group is then broken (every later call fails at once) and
 * the process should exit: mpirun then ends the other ranks.
 */
#ifndef CTORCH_DIST_H
#define CTORCH_DIST_H

#include "ctorch.h"
#include "ctorch_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ the environment */
/* What the launcher says about this process, read from the environment without loading
 * anything: OpenMPI's OMPI_COMM_WORLD_{SIZE,RANK,LOCAL_RANK,LOCAL_SIZE}, PMIx's
 * PMIX_RANK with SLURM_NTASKS / SLURM_PROCID / SLURM_LOCALID (srun --mpi=pmix), or
 * torchrun-style WORLD_SIZE / RANK / LOCAL_RANK. Returns 1 when the world size is known
 * (and *world_size > 1 means a distributed launch), 0 when nothing says so (one
 * process). Any pointer may be NULL. */
int ct_dist_env(int *world_size, int *rank, int *local_rank, int *local_size);

/* -------------------------------------------------------------- process group */
typedef struct ct_dist_opts {
    double timeout_seconds; /* every collective; <= 0: 300 */
    const char *build_id;   /* compared across ranks at init with the library version
                               (NULL: the version alone), e.g. the CLI's commit */
} ct_dist_opts;

/* Joins the job's default process group: loads the MPI plugin, MPI_Init_thread, checks
 * that every rank runs the same ctorch (version and build_id; a mismatch is an error
 * naming both ranks' versions on every rank), starts the communication thread. Errors
 * say what is missing (plugin not built: install libopenmpi-dev and rebuild; no MPI
 * runtime: install openmpi-bin) and how to fix it. Calling it again is a no-op. */
int ct_dist_init(const ct_dist_opts *opts);
int ct_dist_is_initialized(void);
/* 1 when the MPI plugin can be loaded (without initialising anything), else 0 with the
 * reason in ct_last_error(). */
int ct_dist_is_available(void);
int ct_dist_rank(void);       /* 0 without an initialised group */
int ct_dist_world_size(void); /* 1 without an initialised group */
int ct_dist_local_rank(void); /* rank among the processes of this host */
int ct_dist_local_size(void);
const char *ct_dist_hostname(void);
/* The MPI library's own version text ("Open MPI v4.1.4, ..."), or NULL. */
const char *ct_dist_backend_version(void);
int ct_dist_set_timeout(double seconds);
double ct_dist_get_timeout(void);
/* Waits for every queued collective, then MPI_Finalize. Not needed before exit. */
int ct_dist_finalize(void);
/* Ends the whole job now (MPI_Abort with this exit code), after a fatal error on this
 * rank. Without a group: exit(code). */
void ct_dist_abort(int code);

/* ---------------------------------------------------------------- collectives */
typedef enum { CT_REDUCE_SUM = 0, CT_REDUCE_AVG, CT_REDUCE_MAX, CT_REDUCE_MIN } ct_reduce_op;
typedef struct ct_dist_work ct_dist_work;

/* In place on contiguous tensors of float32, float64, int64, int32 (float16 / bfloat16:
 * sum and average through float32 on the CPU). CPU tensors go over MPI, CUDA tensors
 * over NCCL. The tensor must stay alive and unmodified until the work completes.
 * NULL + error on bad arguments or a broken group. */
ct_dist_work *ct_dist_all_reduce_async(ct_tensor *t, ct_reduce_op op);
ct_dist_work *ct_dist_broadcast_async(ct_tensor *t, int root);
/* out: world_size * numel(in) elements of in's dtype, rank r's copy at r * numel(in). */
ct_dist_work *ct_dist_all_gather_async(ct_tensor *out, const ct_tensor *in);
ct_dist_work *ct_dist_barrier_async(void);
/* 1 when done (or failed), 0 while in flight. */
int ct_dist_is_completed(ct_dist_work *w);
/* Waits (at most the timeout) and frees w: 0, or -1 with the error. */
int ct_dist_wait(ct_dist_work *w);

/* Blocking forms: the async call then ct_dist_wait. */
int ct_dist_all_reduce(ct_tensor *t, ct_reduce_op op);
int ct_dist_broadcast(ct_tensor *t, int root);
int ct_dist_all_gather(ct_tensor *out, const ct_tensor *in);
int ct_dist_barrier(void);
/* Host buffers (no tensors): n values of dtype, in place. */
int ct_dist_all_reduce_buf(void *buf, int64_t n, ct_dtype dtype, ct_reduce_op op);
int ct_dist_broadcast_buf(void *buf, int64_t bytes, int root);
int ct_dist_all_gather_buf(const void *in, void *out, int64_t bytes);

/* Differentiable all-reduce (sum): y = the sum of x over the ranks; in backward the
 * gradient is all-reduced too (d(sum of every rank's loss)/dx). What SyncBatchNorm is
 * made of; usable in any model. */
ct_tensor *ct_dist_all_reduce_sum_autograd(const ct_tensor *x);

/* ----------------------------------------------------- DistributedDataParallel */
typedef struct ct_ddp_opts {
    double bucket_cap_mb;  /* gradient bucket size; <= 0: 25 (PyTorch's default) */
    int broadcast_buffers; /* broadcast rank 0's buffers (BN running stats) at each
                              ct_ddp_forward: default 1 */
} ct_ddp_opts;
ct_ddp_opts ct_ddp_default_opts(void);

typedef struct ct_ddp ct_ddp;
/* Wraps a model for data-parallel training on the default group. Checks that every rank
 * built the same model (parameter and buffer names, shapes, dtypes; the first difference
 * is named in the error on every rank), broadcasts rank 0's parameters and buffers, and
 * hooks the parameters: during ct_backward each bucket of gradients is all-reduced as
 * soon as all its gradients are final (overlapping the rest of backward), and at the end
 * of ct_backward the averaged gradients are in place, so the optimizer step follows as
 * usual. A parameter that got no gradient on some rank contributes zeros (no hang, no
 * flag needed); one that got none on any rank keeps no gradient. The module stays the
 * caller's; free the ct_ddp before it. Without an initialised group (one process) it is
 * a no-op wrapper. */
ct_ddp *ct_ddp_new(ct_module *model, const ct_ddp_opts *opts);
/* The forward pass (broadcasts buffers first when asked). Same as ct_module_forward
 * otherwise. */
ct_tensor *ct_ddp_forward(ct_ddp *d, const ct_tensor *x);
/* no_sync: while 0, backward accumulates local gradients without communicating
 * (gradient accumulation); the next backward with sync on reduces the accumulated
 * gradients. Returns the previous setting. */
int ct_ddp_set_require_sync(ct_ddp *d, int sync);
/* Seconds the last backward waited for communication after its last computation (the
 * part not hidden behind backward), and the total seconds of all-reduce work. */
double ct_ddp_last_wait_seconds(const ct_ddp *d);
/* Overlap off: the buckets are reduced only at the end of backward (for measuring what
 * the overlap hides). Default on. */
void ct_ddp_set_overlap(ct_ddp *d, int on);
int ct_ddp_num_buckets(const ct_ddp *d);
/* Up to CT_DDP_MAX_FLAGS booleans reduced with the gradients of the next backward,
 * without a collective of their own: set them before backward ("this rank's loss is NaN",
 * "this rank was asked to stop"); after it each reads 1 when any rank set it non-zero,
 * else 0. Without a group they read back as set. */
#define CT_DDP_MAX_FLAGS 8
int ct_ddp_set_flags(ct_ddp *d, const int32_t *flags, int n);
int ct_ddp_get_flags(const ct_ddp *d, int32_t *flags, int n);
void ct_ddp_free(ct_ddp *d);

/* SyncBatchNorm: batch statistics over every rank's batch in training (PyTorch's
 * nn.SyncBatchNorm.convert_sync_batchnorm). Marks every BatchNorm module of m; without
 * a group of more than one rank they behave as BatchNorm. Returns the number marked. */
int ct_nn_convert_sync_batchnorm(ct_module *m);

#ifdef __cplusplus
}
#endif
#endif
