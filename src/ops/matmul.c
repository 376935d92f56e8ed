/* matmul (torch.matmul semantics) and linear, forward and backward.
 *
 * Everything funnels into the backend's bmm kernel over 3-D views [B, rows, cols].
 * Views are built directly on the storage (data-only, no autograd) so that
 * transposes and broadcast batch dims cost nothing; a copy is made only when the
 * strides cannot be expressed as a batched GEMM operand. When the right operand has
 * no batch (the common "[*, M, K] @ [K, N]" case) the batch is folded into M and a
 * single large GEMM runs instead of many small ones, forward and backward. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <string.h>

typedef int (*bmm_fn)(ct_tensor *c, const ct_tensor *a, const ct_tensor *b,
                      const ct_tensor *bias, double alpha, double beta);

/* ------------------------------------------------------------ view helpers */

/* Data-only view of t's storage with the given geometry (stride NULL: contiguous). */
static ct_tensor *restride(const ct_tensor *t, const int64_t *shape, const int64_t *stride,
                           int ndim, int64_t offset) {
    return ct_tensor_make(t->storage, t->dtype, shape, stride, ndim, offset);
}

/* View of a contiguous tensor with another shape of the same numel. */
static ct_tensor *reshape_contig(const ct_tensor *t, const int64_t *shape, int ndim) {
    return restride(t, shape, NULL, ndim, t->offset);
}

/* Data-only view with the last two dims swapped. */
static ct_tensor *transpose_last2(const ct_tensor *t) {
    ct_tensor *v = ct_alias(t);
    if (!v) return NULL;
    int d = v->ndim;
    int64_t s = v->shape[d - 1];
    v->shape[d - 1] = v->shape[d - 2];
    v->shape[d - 2] = s;
    s = v->stride[d - 1];
    v->stride[d - 1] = v->stride[d - 2];
    v->stride[d - 2] = s;
    return v;
}

/* Whether a (rows x cols) matrix with these strides is a valid BLAS operand (the same
 * rule as the cpu bmm kernel: one of the two dims has unit stride). */
static int layout_ok(int64_t rows, int64_t cols, int64_t s1, int64_t s2) {
    int64_t r1 = rows > 1 ? rows : 1, c1 = cols > 1 ? cols : 1;
    if ((cols <= 1 || s2 == 1) && (rows <= 1 || s1 >= c1)) return 1;
    if ((rows <= 1 || s1 == 1) && (cols <= 1 || s2 >= r1)) return 1;
    return 0;
}

static int is_float(ct_dtype dt) { return ct_is_floating(dt); }

static void device_name(const ct_tensor *t, char *buf, size_t n) {
    ct_device_str(t->storage->device, buf, n);
}

/* 3-D [B, rows, cols] view of t (matrix in its last two dims; batch dims right-aligned
 * with `batch` and broadcast to it) that the bmm kernel accepts. */
static ct_tensor *as_batched(const ct_tensor *t, const int64_t *batch, int nb, int64_t B) {
    int nd = t->ndim;
    int64_t rows = t->shape[nd - 2], cols = t->shape[nd - 1];
    ct_tensor *src = layout_ok(rows, cols, t->stride[nd - 2], t->stride[nd - 1])
                         ? ct_alias(t)
                         : ct_data_contiguous(t);
    if (!src) return NULL;
    int nbt = nd - 2;
    int64_t es[CT_MAX_DIMS];
    for (int i = 0; i < nb; i++) {
        int j = i - (nb - nbt);
        es[i] = (j < 0 || src->shape[j] == 1) ? 0 : src->stride[j];
    }
    int ok = 1, last = -1;
    for (int i = 0; i < nb; i++) {
        if (batch[i] == 1) continue;
        if (last >= 0 && es[last] != es[i] * batch[i]) ok = 0;
        last = i;
    }
    int64_t bs = last >= 0 ? es[last] : 0;
    if (!ok) {
        /* Batch dims mix broadcast and real strides: materialise the expansion. */
        int64_t sh[CT_MAX_DIMS], st[CT_MAX_DIMS];
        for (int i = 0; i < nb; i++) {
            sh[i] = batch[i];
            st[i] = es[i];
        }
        sh[nb] = rows;
        sh[nb + 1] = cols;
        st[nb] = src->stride[nd - 2];
        st[nb + 1] = src->stride[nd - 1];
        ct_tensor *ex = restride(src, sh, st, nb + 2, src->offset);
        ct_free(src);
        if (!ex) return NULL;
        src = ct_contiguous(ex);
        ct_free(ex);
        if (!src) return NULL;
        bs = rows * cols;
    }
    int sd = src->ndim;
    int64_t sh3[3] = {B, rows, cols}, st3[3] = {bs, src->stride[sd - 2], src->stride[sd - 1]};
    ct_tensor *v = restride(src, sh3, st3, 3, src->offset);
    ct_free(src);
    return v;
}

/* Broadcast batch shape of two (>= 2-D) operands; returns the number of batch dims. */
static int batch_shape(const ct_tensor *a, const ct_tensor *b, int64_t *batch, int64_t *B) {
    int nba = a->ndim - 2, nbb = b->ndim - 2, nb = nba > nbb ? nba : nbb;
    *B = 1;
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - nba), ib = i - (nb - nbb);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        batch[i] = da == 1 ? db : da;
        *B *= batch[i];
    }
    return nb;
}

/* a [..., M, K] @ b [..., K, N] for data tensors (>= 2-D, already validated): a new
 * contiguous tensor of shape batch + [M, N]. */
static ct_tensor *mm_data(const ct_tensor *a, const ct_tensor *b, const char *op) {
    bmm_fn bmm = CT_KERNEL(a, bmm, op);
    if (!bmm) return NULL;
    int64_t batch[CT_MAX_DIMS], B;
    int nb = batch_shape(a, b, batch, &B);
    int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = b->shape[b->ndim - 1];
    int64_t osh[CT_MAX_DIMS];
    memcpy(osh, batch, sizeof(int64_t) * (size_t)nb);
    osh[nb] = M;
    osh[nb + 1] = N;
    ct_tensor *out = ct_empty_on(osh, nb + 2, a->dtype, a->storage->device);
    if (!out || ct_numel(out) == 0) return out;
    ct_tensor *a3 = as_batched(a, batch, nb, B);
    ct_tensor *b3 = a3 ? as_batched(b, batch, nb, B) : NULL;
    int64_t Bk = B, Mk = M;
    if (a3 && b3 && B > 1 && b3->stride[0] == 0 && a3->stride[0] == M * a3->stride[1] &&
        layout_ok(B * M, K, a3->stride[1], a3->stride[2])) {
        /* Fold the batch into the rows: one GEMM [B*M, K] @ [K, N]. */
        Bk = 1;
        Mk = B * M;
        a3->shape[0] = b3->shape[0] = 1;
        a3->shape[1] = Mk;
        a3->stride[0] = 0;
    }
    int64_t sh3[3] = {Bk, Mk, N};
    ct_tensor *o3 = (a3 && b3) ? restride(out, sh3, NULL, 3, out->offset) : NULL;
    int rc = o3 ? bmm(o3, a3, b3, NULL, 1.0, 0.0) : -1;
    ct_free(a3);
    ct_free(b3);
    ct_free(o3);
    if (rc != 0) {
        ct_error_context("%s", op);
        ct_free(out);
        return NULL;
    }
    return out;
}

/* >= 2-D data view of a matmul operand: a 1-D left operand becomes [1, K], a 1-D right
 * operand [K, 1]. */
static ct_tensor *promote(const ct_tensor *t, int left) {
    if (t->ndim != 1) return ct_alias(t);
    int64_t k = t->shape[0], s = t->stride[0];
    if (left) {
        int64_t sh[2] = {1, k}, st[2] = {s * (k > 1 ? k : 1), s};
        return restride(t, sh, st, 2, t->offset);
    }
    int64_t sh[2] = {k, 1}, st[2] = {s, 1};
    return restride(t, sh, st, 2, t->offset);
}

/* --------------------------------------------------------------------- matmul */

static int check_float_pair(const ct_tensor *a, const ct_tensor *b, const char *op,
                            const char *an, const char *bn) {
    char s1[96], s2[96];
    if (!is_float(a->dtype) || !is_float(b->dtype))
        return ct_error("%s: %s is %s and %s is %s; only floating dtypes are supported "
                        "(convert with ct_to_dtype)",
                        op, an, ct_dtype_name(a->dtype), bn, ct_dtype_name(b->dtype));
    if (a->dtype != b->dtype)
        return ct_error("%s: %s %s is %s but %s %s is %s; convert one with ct_to_dtype", op, an,
                        ct_shape_str(a, s1, sizeof s1), ct_dtype_name(a->dtype), bn,
                        ct_shape_str(b, s2, sizeof s2), ct_dtype_name(b->dtype));
    if (!ct_same_device(a, b)) {
        char d1[32], d2[32];
        device_name(a, d1, sizeof d1);
        device_name(b, d2, sizeof d2);
        return ct_error("%s: %s is on %s but %s is on %s; move them to one device "
                        "(ct_to_device)",
                        op, an, d1, bn, d2);
    }
    return 0;
}

/* The backward context of matmul and linear: the saved operands (slots, -1 when the other
 * operand needs no gradient) and, for linear, its rows and sizes. */
typedef struct {
    int a, b; /* matmul: a, b; linear: x (contiguous), weight */
    int64_t rows, in, out;
} mm_ctx;

/* A matmul's geometry from its inputs' recorded shapes: the operands promoted to >= 2-D,
 * the broadcast batch dims and the matrix sizes. */
typedef struct {
    int a_nd, b_nd, a2n, b2n, nb, nba;
    int64_t ash[CT_MAX_DIMS], bsh[CT_MAX_DIMS];      /* as recorded */
    int64_t a2s[CT_MAX_DIMS], b2s[CT_MAX_DIMS];      /* promoted */
    int64_t batch[CT_MAX_DIMS];                      /* broadcast batch dims (nb of them) */
    int64_t M, K, N, B, Bb;                          /* B: batch count, Bb: b's own */
} mm_geom;

static void mm_geom_init(mm_geom *g, const ct_node *n) {
    g->a_nd = n->inputs[0].ndim;
    g->b_nd = n->inputs[1].ndim;
    memcpy(g->ash, n->inputs[0].shape, sizeof g->ash);
    memcpy(g->bsh, n->inputs[1].shape, sizeof g->bsh);
    g->a2n = g->a_nd == 1 ? 2 : g->a_nd;
    g->b2n = g->b_nd == 1 ? 2 : g->b_nd;
    if (g->a_nd == 1) {
        g->a2s[0] = 1;
        g->a2s[1] = g->ash[0];
    } else memcpy(g->a2s, g->ash, sizeof(int64_t) * (size_t)g->a_nd);
    if (g->b_nd == 1) {
        g->b2s[0] = g->bsh[0];
        g->b2s[1] = 1;
    } else memcpy(g->b2s, g->bsh, sizeof(int64_t) * (size_t)g->b_nd);
    g->M = g->a2s[g->a2n - 2];
    g->K = g->a2s[g->a2n - 1];
    g->N = g->b2s[g->b2n - 1];
    g->nba = g->a2n - 2;
    int nbb = g->b2n - 2;
    g->nb = g->nba > nbb ? g->nba : nbb;
    g->B = g->Bb = 1;
    for (int i = 0; i < g->nb; i++) {
        int ia = i - (g->nb - g->nba), ib = i - (g->nb - nbb);
        int64_t da = ia >= 0 ? g->a2s[ia] : 1, db = ib >= 0 ? g->b2s[ib] : 1;
        g->batch[i] = da == 1 ? db : da;
        g->B *= g->batch[i];
        g->Bb *= db;
    }
}

/* full summed over broadcast dims to the promoted shape s (n dims), contiguous. Consumes
 * full. */
static ct_tensor *reduce_to(ct_tensor *full, const int64_t *s, int n) {
    if (!full || (full->ndim == n && memcmp(full->shape, s, sizeof(int64_t) * (size_t)n) == 0))
        return full;
    ct_tensor *r = ct_sum_to_shape(full, s, n);
    ct_free(full);
    ct_tensor *c = r ? ct_data_contiguous(r) : NULL;
    ct_free(r);
    return c;
}

/* ga = gy @ b^T, summed over the dims a was broadcast along. */
static ct_tensor *matmul_grad_a(const mm_geom *g, const ct_tensor *gy2, const ct_tensor *b) {
    ct_tensor *b2 = promote(b, 0);
    ct_tensor *bT = b2 ? transpose_last2(b2) : NULL;
    ct_tensor *full = bT ? mm_data(gy2, bT, "matmul backward") : NULL;
    ct_free(bT);
    ct_free(b2);
    ct_tensor *ga = reduce_to(full, g->a2s, g->a2n);
    ct_tensor *r = ga ? reshape_contig(ga, g->ash, g->a_nd) : NULL;
    ct_free(ga);
    return r;
}

/* gb when b is shared by the whole batch: one GEMM over the folded rows, (B*M x K)^T @
 * (B*M x N). */
static ct_tensor *matmul_grad_b_folded(const mm_geom *g, const ct_tensor *gy2,
                                       const ct_tensor *a2) {
    int nb = g->nb;
    int64_t fa[2] = {g->B * g->M, g->K}, fg[2] = {g->B * g->M, g->N};
    int64_t esh[CT_MAX_DIMS];
    memcpy(esh, g->batch, sizeof(int64_t) * (size_t)nb);
    esh[nb] = g->M;
    esh[nb + 1] = g->K;
    ct_tensor *ac = NULL;
    if (g->a2n == nb + 2) {
        ac = ct_data_contiguous(a2);
    } else { /* a lacks leading size-1 batch dims of b: expand to the full batch */
        int64_t st[CT_MAX_DIMS];
        for (int i = 0; i < nb; i++) {
            int ia = i - (nb - g->nba);
            st[i] = ia >= 0 ? a2->stride[ia] : 0;
        }
        st[nb] = a2->stride[g->a2n - 2];
        st[nb + 1] = a2->stride[g->a2n - 1];
        ct_tensor *ex = restride(a2, esh, st, nb + 2, a2->offset);
        ac = ex ? ct_data_contiguous(ex) : NULL;
        ct_free(ex);
    }
    ct_tensor *af = ac ? reshape_contig(ac, fa, 2) : NULL;
    ct_tensor *afT = af ? transpose_last2(af) : NULL;
    ct_tensor *gf = reshape_contig(gy2, fg, 2);
    ct_tensor *r = (afT && gf) ? mm_data(afT, gf, "matmul backward") : NULL;
    ct_free(ac);
    ct_free(af);
    ct_free(afT);
    ct_free(gf);
    return r;
}

/* gb = a^T @ gy, summed over the dims b was broadcast along. */
static ct_tensor *matmul_grad_b(const mm_geom *g, const ct_tensor *gy2, const ct_tensor *a) {
    ct_tensor *a2 = promote(a, 1);
    if (!a2) return NULL;
    ct_tensor *gb;
    if (g->Bb == 1 && g->B > 1) {
        gb = matmul_grad_b_folded(g, gy2, a2);
    } else {
        ct_tensor *aT = transpose_last2(a2);
        ct_tensor *full = aT ? mm_data(aT, gy2, "matmul backward") : NULL;
        ct_free(aT);
        gb = reduce_to(full, g->b2s, g->b2n);
    }
    ct_free(a2);
    ct_tensor *r = gb ? reshape_contig(gb, g->bsh, g->b_nd) : NULL;
    ct_free(gb);
    return r;
}

static int matmul_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const mm_ctx *c = n->ctx;
    const ct_tensor *a = c->a >= 0 ? ct_node_saved(n, c->a) : NULL;
    const ct_tensor *b = c->b >= 0 ? ct_node_saved(n, c->b) : NULL;
    if ((c->a >= 0 && !a) || (c->b >= 0 && !b)) return -1;
    mm_geom g;
    mm_geom_init(&g, n); /* the saved tensors may be absent: use the recorded shapes */
    int64_t gsh[CT_MAX_DIMS];
    memcpy(gsh, g.batch, sizeof(int64_t) * (size_t)g.nb);
    gsh[g.nb] = g.M;
    gsh[g.nb + 1] = g.N;
    ct_tensor *gyc = ct_data_contiguous(gy);
    ct_tensor *gy2 = gyc ? reshape_contig(gyc, gsh, g.nb + 2) : NULL;
    ct_free(gyc);
    if (!gy2) return -1;
    int rc = 0;
    if (ct_node_needs_grad(n, 0) && !(gx[0] = matmul_grad_a(&g, gy2, b))) rc = -1;
    if (rc == 0 && ct_node_needs_grad(n, 1) && !(gx[1] = matmul_grad_b(&g, gy2, a))) rc = -1;
    ct_free(gy2);
    return rc;
}

ct_tensor *ct_matmul(const ct_tensor *a, const ct_tensor *b) {
    CT_AUTOCAST(CT_AC_MATMUL, ct_matmul(ac[0], ac[1]), a, b);
    if (!a || !b) return ct_error_null("matmul: argument %s is NULL", a ? "b" : "a");
    if (ct__check_tensor(a, "matmul") || ct__check_tensor(b, "matmul")) return NULL; /* a released tensor */
    char s1[96], s2[96];
    if (a->ndim < 1 || b->ndim < 1)
        return ct_error_null("matmul: both arguments need at least 1 dimension, got shapes %s "
                             "and %s (use ct_mul for scalars)",
                             ct_shape_str(a, s1, sizeof s1), ct_shape_str(b, s2, sizeof s2));
    if (check_float_pair(a, b, "matmul", "a", "b") != 0) return NULL;
    int64_t ka = a->shape[a->ndim - 1], kb = b->ndim == 1 ? b->shape[0] : b->shape[b->ndim - 2];
    if (ka != kb)
        return ct_error_null("matmul: shapes %s and %s cannot be multiplied (%lld != %lld): the "
                             "last dim of a must equal the %s dim of b",
                             ct_shape_str(a, s1, sizeof s1), ct_shape_str(b, s2, sizeof s2),
                             (long long)ka, (long long)kb,
                             b->ndim == 1 ? "only" : "second-to-last");
    int nba = a->ndim > 2 ? a->ndim - 2 : 0, nbb = b->ndim > 2 ? b->ndim - 2 : 0;
    int nb = nba > nbb ? nba : nbb;
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - nba), ib = i - (nb - nbb);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return ct_error_null("matmul: batch dims of %s and %s do not broadcast (%lld vs "
                                 "%lld at batch dim %d)",
                                 ct_shape_str(a, s1, sizeof s1), ct_shape_str(b, s2, sizeof s2),
                                 (long long)da, (long long)db, i);
    }
    ct_tensor *a2 = promote(a, 1), *b2 = promote(b, 0);
    ct_tensor *full = (a2 && b2) ? mm_data(a2, b2, "matmul") : NULL;
    ct_free(a2);
    ct_free(b2);
    if (!full) return NULL;
    /* Drop the dims that 1-D operands added. */
    int64_t ysh[CT_MAX_DIMS];
    int yn = 0;
    for (int i = 0; i < full->ndim - 2; i++) ysh[yn++] = full->shape[i];
    if (a->ndim > 1) ysh[yn++] = full->shape[full->ndim - 2];
    if (b->ndim > 1) ysh[yn++] = full->shape[full->ndim - 1];
    ct_tensor *y = reshape_contig(full, ysh, yn);
    ct_free(full);
    if (!y) return NULL;
    ct_node *n;
    y = ct_node_record("MatmulBackward", matmul_backward, (const ct_tensor *[]){a, b}, 2, y, &n);
    if (n) {
        mm_ctx *c = CT_NODE_CTX(n, mm_ctx);
        c->a = ct_node_needs_grad(n, 1) ? ct_node_save(n, a) : -1;
        c->b = ct_node_needs_grad(n, 0) ? ct_node_save(n, b) : -1;
    }
    return y;
}

/* --------------------------------------------------------------------- linear */

/* [1, rows, cols] view of a 2-D tensor (optionally transposed) for bmm; copies when
 * the strides are not BLAS-compatible. */
static ct_tensor *mat3(const ct_tensor *t, int transpose) {
    int64_t r = t->shape[0], c = t->shape[1], sr = t->stride[0], sc = t->stride[1];
    ct_tensor *src = layout_ok(r, c, sr, sc) ? ct_alias(t) : ct_data_contiguous(t);
    if (!src) return NULL;
    sr = src->stride[0];
    sc = src->stride[1];
    int64_t sh[3] = {1, transpose ? c : r, transpose ? r : c};
    int64_t st[3] = {0, transpose ? sc : sr, transpose ? sr : sc};
    ct_tensor *v = restride(src, sh, st, 3, src->offset);
    ct_free(src);
    return v;
}

static int linear_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const mm_ctx *c = n->ctx;
    const ct_tensor *x = c->a >= 0 ? ct_node_saved(n, c->a) : NULL;
    const ct_tensor *w = c->b >= 0 ? ct_node_saved(n, c->b) : NULL;
    if ((c->a >= 0 && !x) || (c->b >= 0 && !w)) return -1;
    int64_t R = c->rows, in = c->in, out = c->out;
    bmm_fn bmm = CT_KERNEL(gy, bmm, "linear backward");
    if (!bmm) return -1;
    int rc = -1;
    ct_tensor *gyc = ct_data_contiguous(gy), *gy3 = NULL;
    if (!gyc) return -1;
    int64_t g3[3] = {1, R, out};
    gy3 = reshape_contig(gyc, g3, 3);
    if (!gy3) goto out;
    if (ct_node_needs_grad(n, 0)) {
        const ct_edge *e = &n->inputs[0];
        ct_tensor *g = ct_empty_on(e->shape, e->ndim, gy->dtype, gy->storage->device);
        if (!g) goto out;
        int64_t s3[3] = {1, R, in};
        ct_tensor *g3v = reshape_contig(g, s3, 3), *w3 = mat3(w, 0);
        int r = (g3v && w3) ? bmm(g3v, gy3, w3, NULL, 1.0, 0.0) : -1;
        ct_free(g3v);
        ct_free(w3);
        if (r != 0) {
            ct_free(g);
            goto out;
        }
        gx[0] = g;
    }
    if (ct_node_needs_grad(n, 1)) {
        int64_t ws[2] = {out, in};
        ct_tensor *g = ct_empty_on(ws, 2, gy->dtype, gy->storage->device);
        if (!g) goto out;
        int64_t s3[3] = {1, out, in}, t3[3] = {1, out, R}, ts[3] = {0, 1, out};
        int64_t x3s[3] = {1, R, in};
        ct_tensor *g3v = reshape_contig(g, s3, 3);
        ct_tensor *gyT = restride(gyc, t3, ts, 3, gyc->offset);
        ct_tensor *x3 = reshape_contig(x, x3s, 3);
        int r = (g3v && gyT && x3) ? bmm(g3v, gyT, x3, NULL, 1.0, 0.0) : -1;
        ct_free(g3v);
        ct_free(gyT);
        ct_free(x3);
        if (r != 0) {
            ct_free(g);
            goto out;
        }
        gx[1] = g;
    }
    if (n->n_inputs > 2 && ct_node_needs_grad(n, 2)) {
        int64_t s2[2] = {R, out};
        ct_tensor *g2 = reshape_contig(gyc, s2, 2);
        int d0 = 0;
        gx[2] = g2 ? ct_sum(g2, &d0, 1, 0) : NULL;
        ct_free(g2);
        if (!gx[2]) goto out;
    }
    rc = 0;
out:
    ct_free(gy3);
    ct_free(gyc);
    return rc;
}

ct_tensor *ct_linear(const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias) {
    CT_AUTOCAST(CT_AC_LINEAR, ct_linear(ac[0], ac[1], ac[2]), x, weight, bias);
    char s1[96], s2[96], s3[96];
    if (!x || !weight)
        return ct_error_null("linear: %s is NULL", x ? "weight" : "input");
    if (ct__check_tensor(x, "linear") || ct__check_tensor(weight, "linear") ||
        (bias && ct__check_tensor(bias, "linear")))
        return NULL; /* a released tensor */
    if (x->ndim < 1)
        return ct_error_null("linear: input %s must have at least 1 dim [*, in_features]",
                             ct_shape_str(x, s1, sizeof s1));
    if (weight->ndim != 2)
        return ct_error_null("linear: weight %s must be 2-D [out_features, in_features]",
                             ct_shape_str(weight, s1, sizeof s1));
    if (check_float_pair(x, weight, "linear", "input", "weight") != 0) return NULL;
    int64_t in = weight->shape[1], out = weight->shape[0];
    if (x->shape[x->ndim - 1] != in)
        return ct_error_null("linear: input %s has %lld features in its last dim but weight %s "
                             "expects %lld; weight must be [out_features, in_features]",
                             ct_shape_str(x, s1, sizeof s1), (long long)x->shape[x->ndim - 1],
                             ct_shape_str(weight, s2, sizeof s2), (long long)in);
    if (bias) {
        if (check_float_pair(weight, bias, "linear", "weight", "bias") != 0) return NULL;
        if (bias->ndim != 1 || bias->shape[0] != out)
            return ct_error_null("linear: bias %s must be 1-D [%lld] to match weight %s",
                                 ct_shape_str(bias, s3, sizeof s3), (long long)out,
                                 ct_shape_str(weight, s2, sizeof s2));
    }
    bmm_fn bmm = CT_KERNEL(x, bmm, "linear");
    if (!bmm) return NULL;
    int64_t R = 1;
    for (int i = 0; i < x->ndim - 1; i++) R *= x->shape[i];
    int64_t ysh[CT_MAX_DIMS];
    memcpy(ysh, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    ysh[x->ndim - 1] = out;
    ct_tensor *y = ct_empty_on(ysh, x->ndim, x->dtype, x->storage->device);
    if (!y) return NULL;
    ct_tensor *xc = ct_data_contiguous(x), *x3 = NULL, *w3 = NULL, *y3 = NULL;
    int rc = -1;
    if (!xc) goto out;
    if (R > 0 && out > 0) {
        int64_t xs[3] = {1, R, in}, ys[3] = {1, R, out};
        x3 = reshape_contig(xc, xs, 3);
        w3 = mat3(weight, 1);
        y3 = reshape_contig(y, ys, 3);
        if (!x3 || !w3 || !y3) goto out;
        if (bmm(y3, x3, w3, bias, 1.0, 0.0) != 0) goto out;
    }
    const ct_tensor *ins[3] = {x, weight, bias};
    ct_node *n;
    y = ct_node_record("LinearBackward", linear_backward, ins, bias ? 3 : 2, y, &n);
    rc = y ? 0 : -1;
    if (n) {
        mm_ctx *c = CT_NODE_CTX(n, mm_ctx);
        c->a = ct_node_needs_grad(n, 1) ? ct_node_save(n, xc) : -1;
        c->b = ct_node_needs_grad(n, 0) ? ct_node_save(n, weight) : -1;
        c->rows = R;
        c->in = in;
        c->out = out;
    }
out:
    ct_free(x3);
    ct_free(w3);
    ct_free(y3);
    ct_free(xc);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}
