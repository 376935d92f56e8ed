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
#include "ops/fused.h"

#include <math.h>

typedef struct {
    int q, k, v, out, lse, mask; /* saved slots; mask -1 when there is none */
    int nb;                      /* batch dims of q, k, v, out (public op) */
    int64_t heads;               /* packed op: the heads of qkv [N, L, 3E]; 0: public op */
    ct_sdpa_params p;
} sdpa_node_ctx;

typedef int (*sdpa_bwd_k)(ct_tensor *, ct_tensor *, ct_tensor *, const ct_tensor *,
                          const ct_tensor *, const ct_tensor *, const ct_tensor *,
                          const ct_tensor *, const ct_tensor *, const ct_tensor *,
                          const ct_sdpa_params *);

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

/* The kernels' [B1, B2, rows, cols] view (no autograd) of t [batch dims (nb), rows, cols]:
 * batch dims [0, nb-1) merged into B1, the last one B2 (nb 0: 1 x 1). NULL, without an
 * error, when the strides do not merge or the rows are not contiguous. */
static ct_tensor *kview(const ct_tensor *t, int nb) {
    int64_t b1, s1, b2 = nb > 0 ? t->shape[nb - 1] : 1, s2 = nb > 0 ? t->stride[nb - 1] : 0;
    if (!merge(t->shape, t->stride, 0, nb > 0 ? nb - 1 : 0, &b1, &s1)) return NULL;
    if (t->shape[nb + 1] > 1 && t->stride[nb + 1] != 1) return NULL;
    const int64_t sh[4] = {b1, b2, t->shape[nb], t->shape[nb + 1]};
    const int64_t st[4] = {s1, s2, t->stride[nb], 1};
    return ct_tensor_make(t->storage, t->dtype, sh, st, 4, t->offset);
}

/* A new tensor shaped like t with its last dim `last`, dense, its dims laid out in t's
 * memory order (as PyTorch's empty_like keeps a layout: the attention of heads split
 * from [N, L, H, d] comes out [N, L, H, d] in memory); contiguous when the kernels could
 * not index that order with nb batch dims. Its kernel view in *kv. */
static ct_tensor *alloc_like(const ct_tensor *t, int64_t last, int nb, ct_device dev,
                             ct_tensor **kv) {
    const int nd = t->ndim;
    int order[CT_MAX_DIMS] = {0};
    for (int i = 0; i < nd; i++) order[i] = i;
    for (int i = 1; i < nd; i++) /* stable insertion sort: larger strides first */
        for (int j = i; j > 0 && t->stride[order[j]] > t->stride[order[j - 1]]; j--) {
            int x = order[j];
            order[j] = order[j - 1], order[j - 1] = x;
        }
    int64_t sh[CT_MAX_DIMS] = {0}, psh[CT_MAX_DIMS] = {0}, pst[CT_MAX_DIMS], st[CT_MAX_DIMS];
    for (int i = 0; i < nd; i++) sh[i] = t->shape[i];
    sh[nd - 1] = last;
    *kv = NULL;
    if (order[nd - 1] == nd - 1) {
        for (int i = 0; i < nd; i++) psh[i] = sh[order[i]];
        ct_tensor *d = ct_empty_on(psh, nd, t->dtype, dev);
        if (!d) return NULL;
        ct_contiguous_strides(psh, nd, pst);
        for (int i = 0; i < nd; i++) st[order[i]] = pst[i];
        ct_tensor *r = ct_tensor_make(d->storage, t->dtype, sh, st, nd, 0);
        ct_free(d);
        if (!r) return NULL;
        if ((*kv = kview(r, nb)) != NULL) return r;
        ct_free(r);
    }
    ct_tensor *r = ct_empty_on(sh, nd, t->dtype, dev);
    if (r && !(*kv = kview(r, nb))) ct_free(r), r = NULL;
    return r;
}

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
    const int nb = c->nb;
    ct_tensor *g[3] = {NULL, NULL, NULL}, *kg[3] = {NULL, NULL, NULL};
    const ct_tensor *in[3] = {q, k, v};
    ct_tensor *kq = kview(q, nb), *kk = kview(k, nb), *kv = kview(v, nb), *ko = kview(o, nb);
    ct_tensor *kgy = kview(gy, nb), *gyc = NULL;
    if (!kgy) { /* a gradient laid out in a way the kernel cannot index: copied */
        gyc = ct_data_contiguous(gy);
        kgy = gyc ? kview(gyc, nb) : NULL;
    }
    int rc = kq && kk && kv && ko && kgy ? 0 : -1;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (ct_node_needs_grad(n, i)) {
            g[i] = alloc_like(in[i], in[i]->shape[in[i]->ndim - 1], nb, dev, &kg[i]);
            if (!g[i]) rc = -1;
        }
    if (rc == 0) rc = kb(kg[0], kg[1], kg[2], kgy, kq, kk, kv, ko, lse, mask, &c->p);
    ct_free(kq), ct_free(kk), ct_free(kv), ct_free(ko), ct_free(kgy), ct_free(gyc);
    for (int i = 0; i < 3; i++) {
        ct_free(kg[i]);
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

/* t expanded to batch bs[0..nb) + its last two dims (differentiable), copied contiguous
 * only when the kernels cannot index the expanded view (batch dims that do not merge, or
 * rows that are not contiguous). */
static ct_tensor *kernel_input(const ct_tensor *t, const int64_t *bs, int nb) {
    int64_t sh[CT_MAX_DIMS];
    for (int i = 0; i < nb; i++) sh[i] = bs[i];
    sh[nb] = t->shape[t->ndim - 2], sh[nb + 1] = t->shape[t->ndim - 1];
    ct_tensor *e = ct_expand(t, sh, nb + 2);
    ct_tensor *kv = e ? kview(e, nb) : NULL;
    if (e && !kv) {
        ct_tensor *c = ct_contiguous(e);
        ct_free(e);
        return c;
    }
    ct_free(kv);
    return e;
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

/* The kernels' scalars (*p: the scale, 1/sqrt(E) unless given; dropout's counter range of
 * B*L*S numbers) and the additive mask (*km, NULL without attn_mask) over batch bs[0..nb)
 * of B batches; -1 with an error when the mask does not fit. */
static int sdpa_setup(const ct_tensor *q, const ct_tensor *attn_mask, const int64_t *bs, int nb,
                      int64_t B, int64_t L, int64_t S, int64_t E, double dropout_p, int is_causal,
                      double scale, ct_sdpa_params *p, ct_tensor **km) {
    *p = (ct_sdpa_params){scale == 0.0 ? 1.0 / sqrt((double)E) : scale, dropout_p, 0, 0,
                          is_causal != 0};
    if (dropout_p > 0) p->seed = ct_seed(), p->offset = ct_rng_reserve((uint64_t)(B * L * S));
    const ct_dtype md = ct_is_low_precision(q->dtype) ? CT_FLOAT32 : q->dtype;
    *km = attn_mask ? kernel_mask(attn_mask, md, bs, nb, L, S) : NULL;
    return attn_mask && !*km ? -1 : 0;
}

typedef int (*sdpa_fwd_k)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *,
                          const ct_tensor *, const ct_tensor *, const ct_sdpa_params *);

/* The op on q [bs (nb dims), L, E], k [bs, S, E], v [bs, S, Ev] that the kernels can
 * index (kernel_input): out [bs, L, Ev] in q's memory order (differentiable). */
static ct_tensor *sdpa_run(const ct_tensor *q, const ct_tensor *k, const ct_tensor *v, int nb,
                           const ct_tensor *kmask, const ct_sdpa_params *p) {
    sdpa_fwd_k kf = CT_KERNEL(q, sdpa_forward, "scaled_dot_product_attention");
    if (!kf) return NULL;
    const ct_device dev = q->storage->device;
    const int64_t L = q->shape[nb];
    const int64_t lsh[2] = {ct_shape_numel(q->shape, nb), L};
    const ct_dtype ld = ct_is_low_precision(q->dtype) ? CT_FLOAT32 : q->dtype;
    ct_tensor *ko = NULL, *out = alloc_like(q, v->shape[nb + 1], nb, dev, &ko);
    ct_tensor *lse = ct_empty_on(lsh, 2, ld, dev);
    ct_tensor *kq = kview(q, nb), *kk = kview(k, nb), *kv = kview(v, nb);
    int rc = out && lse && kq && kk && kv ? kf(ko, lse, kq, kk, kv, kmask, p) : -1;
    ct_free(ko), ct_free(kq), ct_free(kk), ct_free(kv);
    ct_node *n = NULL;
    if (rc == 0)
        out = ct_node_record("ScaledDotProductAttentionBackward", sdpa_backward_fn,
                             (const ct_tensor *[]){q, k, v}, 3, out, &n);
    if (n) {
        ct_tensor *qd = ct_alias(q), *kd = ct_alias(k), *vd = ct_alias(v);
        sdpa_node_ctx *c = CT_NODE_CTX(n, sdpa_node_ctx);
        *c = (sdpa_node_ctx){ct_node_save(n, qd), ct_node_save(n, kd), ct_node_save(n, vd),
                             ct_node_save(n, out), ct_node_save(n, lse),
                             kmask ? ct_node_save(n, kmask) : -1, nb, 0, *p};
        ct_free(qd), ct_free(kd), ct_free(vd);
    }
    ct_free(lse);
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
    ct_sdpa_params p;
    ct_tensor *km;
    if (sdpa_setup(q, attn_mask, bs, nb, B, L, S, E, dropout_p, is_causal, scale, &p, &km) != 0)
        return NULL;
    ct_tensor *qe = kernel_input(q, bs, nb), *ke = qe ? kernel_input(k, bs, nb) : NULL;
    ct_tensor *ve = ke ? kernel_input(v, bs, nb) : NULL;
    ct_tensor *o = ve ? sdpa_run(qe, ke, ve, nb, km, &p) : NULL;
    ct_free(qe), ct_free(ke), ct_free(ve), ct_free(km);
    return o;
}

/* ------------------------------------------------ packed self-attention (ops/fused.h) */

/* The [N, H, L, d] kernel view of part `part` of the `parts` equal parts of t's last dim
 * (t [N, L, parts * H * d], rows contiguous); NULL (no error) when t's last dim is strided. */
static ct_tensor *heads_view(const ct_tensor *t, int64_t H, int part, int parts) {
    if (t->ndim != 3 || (t->shape[2] > 1 && t->stride[2] != 1)) return NULL;
    const int64_t E = t->shape[2] / parts, d = E / H;
    const int64_t sh[4] = {t->shape[0], H, t->shape[1], d};
    const int64_t st[4] = {t->stride[0], d, t->stride[1], 1};
    return ct_tensor_make(t->storage, t->dtype, sh, st, 4, t->offset + part * E);
}

static int sdpa_packed_backward_fn(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const sdpa_node_ctx *c = n->ctx;
    const ct_tensor *qkv = ct_node_saved(n, c->q), *o = ct_node_saved(n, c->out);
    const ct_tensor *lse = ct_node_saved(n, c->lse);
    const ct_tensor *mask = c->mask >= 0 ? ct_node_saved(n, c->mask) : NULL;
    if (!qkv || !o || !lse || (c->mask >= 0 && !mask)) return -1;
    sdpa_bwd_k kb = CT_KERNEL(qkv, sdpa_backward, "scaled_dot_product_attention backward");
    if (!kb) return -1;
    const int64_t H = c->heads;
    ct_tensor *g = ct_empty_on(qkv->shape, 3, qkv->dtype, qkv->storage->device);
    ct_tensor *kg[3] = {NULL, NULL, NULL}, *kin[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) {
        kg[i] = g ? heads_view(g, H, i, 3) : NULL;
        kin[i] = heads_view(qkv, H, i, 3);
    }
    ct_tensor *ko = heads_view(o, H, 0, 1), *kgy = heads_view(gy, H, 0, 1), *gyc = NULL;
    if (!kgy) { /* a gradient with a strided last dim: copied */
        gyc = ct_data_contiguous(gy);
        kgy = gyc ? heads_view(gyc, H, 0, 1) : NULL;
    }
    int rc = g && kg[0] && kg[1] && kg[2] && kin[0] && kin[1] && kin[2] && ko && kgy
                 ? kb(kg[0], kg[1], kg[2], kgy, kin[0], kin[1], kin[2], ko, lse, mask, &c->p)
                 : -1;
    for (int i = 0; i < 3; i++) ct_free(kg[i]), ct_free(kin[i]);
    ct_free(ko), ct_free(kgy), ct_free(gyc);
    if (rc != 0) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

ct_tensor *ct_sdpa_packed_qkv(const ct_tensor *qkv, int64_t num_heads, const ct_tensor *attn_mask,
                              double dropout_p, int is_causal, double scale) {
    const char *op = "scaled_dot_product_attention (packed q, k, v)";
    char s1[96];
    if (check_inputs(qkv, qkv, qkv, attn_mask, dropout_p, is_causal) != 0) return NULL;
    if (qkv->ndim != 3 || num_heads <= 0 || qkv->shape[2] % (3 * num_heads) != 0)
        return ct_error_null("%s: qkv %s must be [N, L, 3 * E] with E a multiple of num_heads "
                             "(%lld)", op, ct_shape_str(qkv, s1, sizeof s1), (long long)num_heads);
    CT_AUTOCAST(CT_AC_SDPA,
                ct_sdpa_packed_qkv(ac[0], num_heads, ac[1], dropout_p, is_causal, scale), qkv,
                attn_mask);
    const int64_t N = qkv->shape[0], L = qkv->shape[1], E = qkv->shape[2] / 3, H = num_heads;
    const int64_t bs[2] = {N, H};
    ct_sdpa_params p;
    ct_tensor *km;
    if (sdpa_setup(qkv, attn_mask, bs, 2, N * H, L, L, E / H, dropout_p, is_causal, scale, &p,
                   &km) != 0)
        return NULL;
    sdpa_fwd_k kf = CT_KERNEL(qkv, sdpa_forward, "scaled_dot_product_attention");
    ct_tensor *x = kf ? ct_contiguous(qkv) : NULL; /* itself unless its last dim is strided */
    const ct_device dev = qkv->storage->device;
    const int64_t osh[3] = {N, L, E}, lsh[2] = {N * H, L};
    const ct_dtype ld = ct_is_low_precision(qkv->dtype) ? CT_FLOAT32 : qkv->dtype;
    ct_tensor *out = x ? ct_empty_on(osh, 3, qkv->dtype, dev) : NULL;
    ct_tensor *lse = out ? ct_empty_on(lsh, 2, ld, dev) : NULL;
    ct_tensor *ko = out ? heads_view(out, H, 0, 1) : NULL, *kin[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3 && x; i++) kin[i] = heads_view(x, H, i, 3);
    int rc = lse && ko && kin[0] && kin[1] && kin[2] ? kf(ko, lse, kin[0], kin[1], kin[2], km, &p)
                                                     : -1;
    for (int i = 0; i < 3; i++) ct_free(kin[i]);
    ct_free(ko);
    ct_node *n = NULL;
    if (rc == 0)
        out = ct_node_record("ScaledDotProductAttentionBackward", sdpa_packed_backward_fn,
                             (const ct_tensor *[]){x}, 1, out, &n);
    if (n) {
        ct_tensor *xd = ct_alias(x);
        sdpa_node_ctx *c = CT_NODE_CTX(n, sdpa_node_ctx);
        *c = (sdpa_node_ctx){ct_node_save(n, xd), -1, -1, ct_node_save(n, out),
                             ct_node_save(n, lse), km ? ct_node_save(n, km) : -1, 2, H, p};
        ct_free(xd);
    }
    ct_free(x), ct_free(lse), ct_free(km);
    if (rc != 0) {
        ct_free(out);
        return NULL;
    }
    return out;
}
