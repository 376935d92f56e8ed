/* Strided iteration over up to four same-shape tensors: dimensions that are laid out
 * contiguously in every operand are merged, then the work is split into rows of the
 * innermost dimension and spread over the thread pool. */
#ifndef CT_CPU_ITER_H
#define CT_CPU_ITER_H

#include "core/parallel.h"
#include "core/tensor_impl.h"

#define CT_ITER_MAX_OPS 4

typedef struct {
    int ndim;              /* after coalescing, >= 1 */
    int64_t shape[CT_MAX_DIMS];
    int64_t st[CT_ITER_MAX_OPS][CT_MAX_DIMS]; /* element strides per operand */
    char *base[CT_ITER_MAX_OPS];
    size_t esize[CT_ITER_MAX_OPS];
    int nops;
} ct_iter;

/* Row callback: n elements, pointers to the first element of each operand, element
 * strides of the inner dimension. */
typedef void (*ct_row_fn)(void *ctx, int64_t n, char **p, const int64_t *s);

/* nops <= CT_ITER_MAX_OPS tensors of ops[0]'s shape. */
void ct_iter_init(ct_iter *it, int nops, const ct_tensor *const *ops);
/* Runs fn over all rows; parallel when the tensor is large enough. */
void ct_iter_run(const ct_iter *it, ct_row_fn fn, void *ctx);

#endif
