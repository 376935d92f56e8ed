/* scaled_dot_product_attention (torch.nn.functional.scaled_dot_product_attention) as one
 * fused op: the batch dims of q, k and v are broadcast and merged into one (B), the mask
 * made additive, then the sdpa_forward kernel (flash style: see
 * src/backends/cpu/cpu_attention.c) writes the output and one log-sum-exp per query row.
 * Backward: the sdpa_backward kernel recomputes the probabilities tile by tile from q, k,
 * the mask and the saved log-sum-exp (out and lse are saved; never the score matrix).
 * Dropout draws one counter range of ctorch's generator (B*L*S numbers): weight (b, i, j)
 * is kept when ct_rng_uniform(seed, offset + (b*L + i)*S + j) > p, in the forward and the
 * backward alike; the kept positions differ from PyTorch's (another generator), as for
 * ct_dropout. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/random.h"

#include <math.h>

typedef struct {
    int q, k, v, out, lse, mask; /* saved slots; mask -1 when there is none */
    ct_sdpa_params p;
} sdpa_node_ctx;

typedef int (*sdpa_bwd_k)(ct_tensor *, ct_tensor *, ct_tensor *, const ct_tensor *,
                          const ct_tensor *, const ct_tensor *, const ct_tensor *,
                          const ct_tensor *, const ct_tensor *, const ct_tensor *,
                          const ct_sdpa_params *);

static int sdpa_backward_fn(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const sdpa_node_ctx *c = n->ctx;
    const ct_tensor *q = ct_node_saved(n, c->q), *k = ct_node_saved(n, c->k);
    const ct_tensor *v = ct_node_saved(n, c->v), *o = ct_node_saved(n, c->out);
    const ct_tensor *lse = ct_node_saved(n, c->lse);
    const ct_tensor *mask = c->mask >= 0 ? ct_node_saved(n, c->mask) : NULL;
    if (!q || !k || !v || !o || !lse || (c->mask >= 0 && !mask)) return -1;
    sdpa_bwd_k kb = CT_KERNEL(q, sdpa_backward, "scaled_dot_product_attention backward");
    if (!kb) return -1;
    const ct_device dev = q->storage->device;
    ct_tensor *g[3] = {NULL, NULL, NULL};
    const ct_tensor *in[3] = {q, k, v};
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (ct_node_needs_grad(n, i)) {
            g[i] = ct_empty_on(in[i]->shape, in[i]->ndim, in[i]->dtype, dev);
            if (!g[i]) rc = -1;
        }
    ct_tensor *gyc = rc == 0 ? ct_data_contiguous(gy) : NULL;
    rc = gyc ? kb(g[0], g[1], g[2], gyc, q, k, v, o, lse, mask, &c->p) : -1;
    ct_free(gyc);
    for (int i = 0; i < 3; i++) {
        if (rc != 0) ct_free(g[i]);
        else gx[i] = g[i];
    }
    return rc;
}

/* Broadcasts the batch dims (all but the last two) of a and b into out (right-aligned);
 * -1 with an error when they do not broadcast. */
static int broadcast_batch(const ct_tensor *t, int64_t *bs, int *nb, const char *what) {
    const int tn = t->ndim - 2;
    if (tn > *nb) {
        for (int i = *nb - 1; i >= 0; i--) bs[i + tn - *nb] = bs[i];
        for (int i = 0; i < tn - *nb; i++) bs[i] = 1;
        *nb = tn;
    }
    for (int i = 0; i < tn; i++) {
        int64_t *d = &bs[*nb - tn + i];
        const int64_t s = t->shape[i];
        if (s == *d || s == 1) continue;
        if (*d != 1)
            return ct_error("scaled_dot_product_attention: the batch dims of %s do not "
                            "broadcast with the others (size %lld against %lld)",
                            what, (long long)s, (long long)*d);
        *d = s;
    }
    return 0;
}

static int check_inputs(const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                        const ct_tensor *mask, double dropout_p, int is_causal) {
    const char *op = "scaled_dot_product_attention";
    char s1[96], s2[96], s3[96];
    if (!q || !k || !v) return ct_error("%s: q, k or v is NULL", op);
    if (ct__check_tensor(q, op) || ct__check_tensor(k, op) || ct__check_tensor(v, op) ||
        (mask && ct__check_tensor(mask, op)))
        return -1;
    ct_shape_str(q, s1, sizeof s1), ct_shape_str(k, s2, sizeof s2);
    ct_shape_str(v, s3, sizeof s3);
    if (q->ndim < 2 || k->ndim < 2 || v->ndim < 2)
        return ct_error("%s: q %s, k %s and v %s need at least 2 dims ([..., L, E], "
                        "[..., S, E], [..., S, Ev])", op, s1, s2, s3);
    if (q->shape[q->ndim - 1] != k->shape[k->ndim - 1] ||
        k->shape[k->ndim - 2] != v->shape[v->ndim - 2])
        return ct_error("%s: shapes q %s, k %s, v %s do not fit: q and k need the same last "
                        "dim (E), k and v the same sequence length (S)", op, s1, s2, s3);
    if (!ct_is_floating(q->dtype) || q->dtype != k->dtype || q->dtype != v->dtype)
        return ct_error("%s: q, k and v must have one floating dtype (got %s, %s, %s); convert "
                        "with ct_to_dtype", op, ct_dtype_name(q->dtype), ct_dtype_name(k->dtype),
                        ct_dtype_name(v->dtype));
    if (!ct_same_device(q, k) || !ct_same_device(q, v) || (mask && !ct_same_device(q, mask)))
        return ct_error("%s: q, k, v and the mask are on different devices; move them to one "
                        "with ct_to_device", op);
    if (mask && mask->dtype != CT_BOOL && !ct_is_floating(mask->dtype))
        return ct_error("%s: attn_mask has dtype %s; it must be bool (true = attend) or "
                        "floating (added to the scores)", op, ct_dtype_name(mask->dtype));
    if (mask && is_causal)
        return ct_error("%s: attn_mask and is_causal are both set; pass one (PyTorch refuses "
                        "both too)", op);
    if (!(dropout_p >= 0.0 && dropout_p <= 1.0))
        return ct_error("%s: dropout_p %g must be within [0, 1]", op, dropout_p);
    return 0;
}

/* t expanded to batch bs[0..nb) + its last two dims and viewed as [B, rows, cols]
 * (differentiable; a copy only when the expanded batch dims cannot be merged). */
static ct_tensor *to3d(const ct_tensor *t, const int64_t *bs, int nb, int64_t B) {
    int64_t sh[CT_MAX_DIMS];
    for (int i = 0; i < nb; i++) sh[i] = bs[i];
    sh[nb] = t->shape[t->ndim - 2], sh[nb + 1] = t->shape[t->ndim - 1];
    ct_tensor *e = ct_expand(t, sh, nb + 2);
    int64_t s3[3] = {B, sh[nb], sh[nb + 1]};
    ct_tensor *r = e ? ct_reshape(e, s3, 3) : NULL;
    ct_tensor *c = r ? ct_contiguous(r) : NULL;
    ct_free(e), ct_free(r);
    return c;
}

/* Merges dims [a, b) of shape/stride into one (size, stride); 0 when they do not merge. */
static int merge(const int64_t *sh, const int64_t *st, int a, int b, int64_t *n, int64_t *s) {
    *n = 1, *s = 0;
    for (int i = b - 1; i >= a; i--) {
        if (sh[i] == 1) continue;
        if (*n == 1) *s = st[i];
        else if (st[i] != *s * *n) return 0;
        *n *= sh[i];
    }
    return 1;
}

/* The mask as the kernel takes it: additive, dtype md, [B1, B2, L, S] (batch bs[0..nb)
 * split as its leading dims and its last one), a view of the user's mask where the
 * broadcast allows it. No autograd (the mask gets no gradient). */
static ct_tensor *kernel_mask(const ct_tensor *mask, ct_dtype md, const int64_t *bs, int nb,
                              int64_t L, int64_t S) {
    char s1[96];
    int64_t sh[CT_MAX_DIMS];
    for (int i = 0; i < nb; i++) sh[i] = bs[i];
    sh[nb] = L, sh[nb + 1] = S;
    if (mask->ndim > nb + 2)
        return ct_error_null("scaled_dot_product_attention: attn_mask %s has more dims than "
                             "the attention weights [..., L=%lld, S=%lld]",
                             ct_shape_str(mask, s1, sizeof s1), (long long)L, (long long)S);
    ct_tensor *m = ct_alias(mask), *f = NULL;
    if (m && mask->dtype == CT_BOOL) {
        ct_tensor *z = ct_scalar(0.0, md), *ni = ct_scalar(-INFINITY, md);
        ct_tensor *zd = z ? ct_to_device(z, mask->storage->device) : NULL;
        ct_tensor *nid = ni ? ct_to_device(ni, mask->storage->device) : NULL;
        f = zd && nid ? ct_where(m, zd, nid) : NULL;
        ct_free(z), ct_free(ni), ct_free(zd), ct_free(nid);
    } else if (m) {
        f = ct_to_dtype(m, md);
    }
    ct_free(m);
    ct_tensor *e = f ? ct_expand(f, sh, nb + 2) : NULL;
    ct_free(f);
    if (!e) return ct_error_null("scaled_dot_product_attention: attn_mask %s does not "
                                 "broadcast to the attention weights (%s): %s",
                                 ct_shape_str(mask, s1, sizeof s1), "[..., L, S]",
                                 ct_last_error());
    int64_t b1, s01, b2 = nb > 0 ? sh[nb - 1] : 1, s02 = nb > 0 ? e->stride[nb - 1] : 0;
    ct_tensor *src = e;
    if (!merge(e->shape, e->stride, 0, nb > 0 ? nb - 1 : 0, &b1, &s01) ||
        (S > 1 && e->stride[nb + 1] != 1)) {
        src = ct_data_contiguous(e); /* a broadcast the kernel cannot index: copied */
        ct_free(e);
        if (!src) return NULL;
        merge(src->shape, src->stride, 0, nb > 0 ? nb - 1 : 0, &b1, &s01);
        s02 = nb > 0 ? src->stride[nb - 1] : 0;
    }
    const int64_t ksh[4] = {b1, b2, L, S}, kst[4] = {s01, s02, src->stride[nb], 1};
    ct_tensor *k = ct_tensor_make(src->storage, md, ksh, kst, 4, src->offset);
    ct_free(src);
    return k;
}

/* The op on [B, L, E] / [B, S, E] / [B, S, Ev] contiguous q, k, v (differentiable). */
static ct_tensor *sdpa3(const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                        const ct_tensor *kmask, const ct_sdpa_params *p) {
    int (*kf)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *,
              const ct_tensor *, const ct_sdpa_params *) =
        CT_KERNEL(q, sdpa_forward, "scaled_dot_product_attention");
    if (!kf) return NULL;
    const ct_device dev = q->storage->device;
    const int64_t osh[3] = {q->shape[0], q->shape[1], v->shape[2]}, lsh[2] = {q->shape[0],
                                                                               q->shape[1]};
    const ct_dtype ld = ct_is_low_precision(q->dtype) ? CT_FLOAT32 : q->dtype;
    ct_tensor *out = ct_empty_on(osh, 3, q->dtype, dev), *lse = ct_empty_on(lsh, 2, ld, dev);
    ct_tensor *qd = ct_alias(q), *kd = ct_alias(k), *vd = ct_alias(v);
    int rc = out && lse && qd && kd && vd ? kf(out, lse, qd, kd, vd, kmask, p) : -1;
    ct_node *n = NULL;
    if (rc == 0)
        out = ct_node_record("ScaledDotProductAttentionBackward", sdpa_backward_fn,
                             (const ct_tensor *[]){q, k, v}, 3, out, &n);
    if (n) {
        sdpa_node_ctx *c = CT_NODE_CTX(n, sdpa_node_ctx);
        *c = (sdpa_node_ctx){ct_node_save(n, qd), ct_node_save(n, kd), ct_node_save(n, vd),
                             ct_node_save(n, out), ct_node_save(n, lse),
                             kmask ? ct_node_save(n, kmask) : -1, *p};
    }
    ct_free(qd), ct_free(kd), ct_free(vd), ct_free(lse);
    if (rc != 0) {
        ct_free(out);
        return NULL;
    }
    return out;
}

ct_tensor *ct_scaled_dot_product_attention(const ct_tensor *q, const ct_tensor *k,
                                           const ct_tensor *v, const ct_tensor *attn_mask,
                                           double dropout_p, int is_causal, double scale) {
    if (check_inputs(q, k, v, attn_mask, dropout_p, is_causal) != 0) return NULL;
    /* autocast: in the region's dtype, as PyTorch's lower_precision_fp list (a float mask too) */
    CT_AUTOCAST(CT_AC_SDPA,
                ct_scaled_dot_product_attention(ac[0], ac[1], ac[2], ac[3], dropout_p, is_causal,
                                                scale),
                q, k, v, attn_mask);
    int64_t bs[CT_MAX_DIMS];
    int nb = 0;
    if (broadcast_batch(q, bs, &nb, "q") || broadcast_batch(k, bs, &nb, "k") ||
        broadcast_batch(v, bs, &nb, "v"))
        return NULL;
    const int64_t B = ct_shape_numel(bs, nb), L = q->shape[q->ndim - 2];
    const int64_t S = k->shape[k->ndim - 2], E = q->shape[q->ndim - 1];
    const int64_t Ev = v->shape[v->ndim - 1];
    ct_sdpa_params p = {scale == 0.0 ? 1.0 / sqrt((double)E) : scale, dropout_p, 0, 0,
                        is_causal != 0};
    if (dropout_p > 0) p.seed = ct_seed(), p.offset = ct_rng_reserve((uint64_t)(B * L * S));
    const ct_dtype md = ct_is_low_precision(q->dtype) ? CT_FLOAT32 : q->dtype;
    ct_tensor *km = attn_mask ? kernel_mask(attn_mask, md, bs, nb, L, S) : NULL;
    if (attn_mask && !km) return NULL;
    ct_tensor *q3 = to3d(q, bs, nb, B), *k3 = q3 ? to3d(k, bs, nb, B) : NULL;
    ct_tensor *v3 = k3 ? to3d(v, bs, nb, B) : NULL;
    ct_tensor *o3 = v3 ? sdpa3(q3, k3, v3, km, &p) : NULL;
    ct_free(q3), ct_free(k3), ct_free(v3), ct_free(km);
    if (!o3) return NULL;
    int64_t osh[CT_MAX_DIMS];
    for (int i = 0; i < nb; i++) osh[i] = bs[i];
    osh[nb] = L, osh[nb + 1] = Ev;
    ct_tensor *o = ct_reshape(o3, osh, nb + 2);
    ct_free(o3);
    return o;
}
