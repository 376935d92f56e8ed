/* embedding (torch.nn.functional.embedding): rows of a weight table picked by int64
 * indices; the backward scatters the incoming gradient rows back onto the table (the
 * gradient of the indices is undefined: they are not differentiable). */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

typedef struct {
    int indices;         /* saved: the indices, flat [n] and contiguous */
    int64_t padding_idx; /* in [0, num_embeddings), or -1 for none */
} embedding_ctx;

/* t viewed as [rows, cols] (t contiguous with rows * cols elements). */
static ct_tensor *view2d(const ct_tensor *t, int64_t rows, int64_t cols) {
    int64_t sh[2] = {rows, cols};
    return ct_tensor_make(t->storage, t->dtype, sh, NULL, 2, t->offset);
}

static int embedding_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const embedding_ctx *c = n->ctx;
    const ct_tensor *idx = ct_node_saved(n, c->indices);
    if (!idx) return -1;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, int64_t) =
        CT_KERNEL(gy, embedding_backward, "embedding backward");
    const ct_edge *e = &n->inputs[0];
    ct_tensor *gw = k ? ct_empty_on(e->shape, 2, gy->dtype, gy->storage->device) : NULL;
    ct_tensor *gyc = gw ? ct_data_contiguous(gy) : NULL;
    ct_tensor *gy2 = gyc ? view2d(gyc, ct_numel(idx), e->shape[1]) : NULL;
    int rc = gy2 ? k(gw, gy2, idx, c->padding_idx) : -1;
    ct_free(gy2);
    ct_free(gyc);
    if (rc != 0) {
        ct_free(gw);
        return -1;
    }
    gx[0] = gw;
    return 0;
}

static int check_args(const ct_tensor *indices, const ct_tensor *weight, int64_t *padding_idx) {
    char s1[96], s2[96];
    if (!indices || !weight)
        return ct_error("embedding: %s is NULL", indices ? "weight" : "indices");
    if (ct__check_tensor(indices, "embedding") || ct__check_tensor(weight, "embedding"))
        return -1; /* a released tensor */
    if (weight->ndim != 2 || !ct_is_floating(weight->dtype))
        return ct_error("embedding: weight %s %s must be a 2-D floating tensor "
                        "[num_embeddings, embedding_dim]",
                        ct_shape_str(weight, s1, sizeof s1), ct_dtype_name(weight->dtype));
    if (indices->dtype != CT_INT64)
        return ct_error("embedding: indices %s have dtype %s; they must be int64 (convert with "
                        "ct_to_dtype(indices, CT_INT64))",
                        ct_shape_str(indices, s2, sizeof s2), ct_dtype_name(indices->dtype));
    if (indices->ndim + 1 > CT_MAX_DIMS)
        return ct_error("embedding: indices %s have too many dims (at most %d)",
                        ct_shape_str(indices, s2, sizeof s2), CT_MAX_DIMS - 1);
    if (!ct_same_device(indices, weight))
        return ct_error("embedding: indices and weight are on different devices; move them to "
                        "one device with ct_to_device");
    const int64_t num = weight->shape[0];
    if (*padding_idx == CT_NO_PADDING) {
        *padding_idx = -1;
    } else {
        if (*padding_idx < -num || *padding_idx >= num)
            return ct_error("embedding: padding_idx %lld must be within [%lld, %lld) for %lld "
                            "embeddings (or CT_NO_PADDING)",
                            (long long)*padding_idx, (long long)-num, (long long)num,
                            (long long)num);
        if (*padding_idx < 0) *padding_idx += num;
    }
    return 0;
}

ct_tensor *ct_embedding(const ct_tensor *indices, const ct_tensor *weight, int64_t padding_idx) {
    if (check_args(indices, weight, &padding_idx) != 0) return NULL;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *) =
        CT_KERNEL(weight, embedding_forward, "embedding");
    if (!k) return NULL;
    const int64_t n = ct_numel(indices), dim = weight->shape[1];
    int64_t ysh[CT_MAX_DIMS];
    for (int d = 0; d < indices->ndim; d++) ysh[d] = indices->shape[d];
    ysh[indices->ndim] = dim;
    ct_tensor *y = ct_empty_on(ysh, indices->ndim + 1, weight->dtype, weight->storage->device);
    ct_tensor *ic = ct_data_contiguous(indices), *wc = ct_data_contiguous(weight);
    ct_tensor *y2 = y ? view2d(y, n, dim) : NULL;
    ct_tensor *flat = ic ? ct_tensor_make(ic->storage, CT_INT64, &n, NULL, 1, ic->offset) : NULL;
    int rc = y2 && wc && flat ? k(y2, wc, flat) : -1;
    ct_node *node = NULL;
    if (rc == 0) y = ct_node_record("EmbeddingBackward", embedding_backward, &weight, 1, y, &node);
    if (node) *CT_NODE_CTX(node, embedding_ctx) = (embedding_ctx){ct_node_save(node, flat), padding_idx};
    ct_free(ic), ct_free(wc), ct_free(y2), ct_free(flat);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}
