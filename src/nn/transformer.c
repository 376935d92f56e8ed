/* Transformer building blocks with PyTorch's names, defaults and initialisation:
 * nn.LayerNorm, nn.Embedding, nn.MultiheadAttention, nn.TransformerEncoderLayer and
 * nn.TransformerEncoder (torch/nn/modules/{normalization,sparse,activation,transformer}.py).
 *
 * The attention itself is one small function, mha_attention(): the fused
 * scaled_dot_product_attention op (src/ops/attention.c), which never holds the L x S
 * score matrix. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "ops/fused.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ LayerNorm */
typedef struct {
    int nnorm;
    int64_t shape[8];
    double eps;
    int affine, bias;
} layer_norm_cfg;

static ct_tensor *layer_norm_forward(ct_module *m, const ct_tensor *x) {
    const layer_norm_cfg *c = m->impl;
    ct_tensor *w = c->affine ? m->params[0] : NULL;
    ct_tensor *b = c->affine && c->bias ? m->params[1] : NULL;
    return ct_layer_norm(x, c->shape, c->nnorm, w, b, c->eps);
}

static void layer_norm_repr(const ct_module *m, char *buf, size_t n) {
    const layer_norm_cfg *c = m->impl;
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < c->nnorm && k < n; i++) /* a Python tuple: (192,) or (4, 5) */
        k += (size_t)snprintf(buf + k, n - k, "%s%lld%s", i ? ", " : "", (long long)c->shape[i],
                              c->nnorm == 1 ? "," : "");
    if (k < n)
        snprintf(buf + k, n - k, "), eps=%g, elementwise_affine=%s", c->eps,
                 c->affine ? "True" : "False");
}

ct_module *ct_nn_layer_norm(const int64_t *normalized_shape, int nnorm,
                            const ct_layer_norm_opts *o) {
    if (!normalized_shape || nnorm < 1 || nnorm > 8)
        return ct_error_null("LayerNorm: normalized_shape must have 1..8 dimensions (got %d)",
                             nnorm);
    double eps = o && o->eps != 0 ? o->eps : 1e-5;
    if (!(eps > 0))
        return ct_error_null("LayerNorm: options .eps = %g must be > 0 (0 means 1e-5)", eps);
    layer_norm_cfg *c = calloc(1, sizeof *c);
    if (!c) return ct_error_null("LayerNorm: out of memory");
    c->nnorm = nnorm;
    for (int i = 0; i < nnorm; i++) {
        if (normalized_shape[i] < 1) {
            free(c);
            return ct_error_null("LayerNorm: normalized_shape[%d] = %lld must be >= 1", i,
                                 (long long)normalized_shape[i]);
        }
        c->shape[i] = normalized_shape[i];
    }
    c->eps = eps;
    c->affine = !(o && o->no_elementwise_affine);
    c->bias = !(o && o->no_bias);
    ct_module *m = ct_module_new("LayerNorm", layer_norm_forward, c, free);
    if (!m) return NULL;
    m->extra_repr = layer_norm_repr;
    if (c->affine) {
        ct_tensor *w = ct_ones(c->shape, nnorm, CT_FLOAT32);
        ct_tensor *b = c->bias ? ct_zeros(c->shape, nnorm, CT_FLOAT32) : NULL;
        int ok = w && (!c->bias || b) && ct_module_add_parameter(m, "weight", w) >= 0 &&
                 (!c->bias || ct_module_add_parameter(m, "bias", b) >= 0);
        ct_free(w);
        ct_free(b);
        if (!ok) {
            ct_module_free(m);
            return NULL;
        }
    }
    return m;
}

/* ------------------------------------------------------------------ Embedding */
typedef struct {
    int64_t num, dim, padding_idx; /* CT_NO_PADDING: none */
} embedding_cfg;

static ct_tensor *embedding_forward(ct_module *m, const ct_tensor *x) {
    const embedding_cfg *c = m->impl;
    return ct_embedding(x, m->params[0], c->padding_idx);
}

static void embedding_repr(const ct_module *m, char *buf, size_t n) {
    const embedding_cfg *c = m->impl;
    if (c->padding_idx == CT_NO_PADDING)
        snprintf(buf, n, "%lld, %lld", (long long)c->num, (long long)c->dim);
    else
        snprintf(buf, n, "%lld, %lld, padding_idx=%lld", (long long)c->num, (long long)c->dim,
                 (long long)c->padding_idx);
}

ct_module *ct_nn_embedding(int64_t num_embeddings, int64_t embedding_dim,
                           const ct_embedding_opts *o) {
    if (num_embeddings < 1 || embedding_dim < 1)
        return ct_error_null("Embedding: num_embeddings (%lld) and embedding_dim (%lld) must be "
                             ">= 1", (long long)num_embeddings, (long long)embedding_dim);
    int64_t pad = CT_NO_PADDING;
    if (o && o->has_padding_idx) {
        pad = o->padding_idx;
        if (pad < -num_embeddings || pad >= num_embeddings)
            return ct_error_null("Embedding: padding_idx %lld must be within num_embeddings "
                                 "(%lld)", (long long)pad, (long long)num_embeddings);
        if (pad < 0) pad += num_embeddings; /* PyTorch stores it non-negative */
    }
    embedding_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("Embedding: out of memory");
    c->num = num_embeddings;
    c->dim = embedding_dim;
    c->padding_idx = pad;
    ct_module *m = ct_module_new("Embedding", embedding_forward, c, free);
    if (!m) return NULL;
    m->extra_repr = embedding_repr;
    int64_t ws[2] = {num_embeddings, embedding_dim};
    ct_tensor *w = ct_empty(ws, 2, CT_FLOAT32);
    int ok = w && ct_init_normal_(w, 0, 1) == 0;
    if (ok && pad != CT_NO_PADDING) { /* reset_parameters: the padding row is zero */
        float *p = ct_data(w);
        memset(p + pad * embedding_dim, 0, (size_t)embedding_dim * sizeof *p);
    }
    ok = ok && ct_module_add_parameter(m, "weight", w) >= 0;
    ct_free(w);
    if (!ok) {
        ct_error_context("Embedding(%lld, %lld)", (long long)num_embeddings,
                         (long long)embedding_dim);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* --------------------------------------------------------- MultiheadAttention */
typedef struct {
    int64_t embed_dim, num_heads;
    double dropout;
    int bias, batch_first;
} mha_cfg;

/* The attention core: softmax(q k^T / sqrt(E) + mask) v, dropout on the weights in
 * training. q [..., L, E], k [..., S, E], v [..., S, Ev]; mask NULL or float, added,
 * broadcastable to [..., L, S]. Returns a new reference [..., L, Ev]. */
static ct_tensor *mha_attention(const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                                const ct_tensor *mask, double dropout_p, int training) {
    return ct_scaled_dot_product_attention(q, k, v, mask, training ? dropout_p : 0.0, 0,
                                           CT_SDPA_DEFAULT_SCALE);
}

/* A mask as an additive float mask: bool True (= not allowed) becomes -inf, False 0;
 * float masks as they are. A new reference (in the current scope) or NULL. */
static ct_tensor *float_mask(const ct_tensor *mask, ct_dtype dt, const char *what) {
    if (ct_dtype_of(mask) == CT_BOOL) {
        ct_tensor *ninf = ct_scalar(-INFINITY, dt), *zero = ct_scalar(0.0, dt);
        ct_device d = ct_device_of(mask);
        if (ninf && zero && !ct_device_is_host(d)) /* the scalars on the mask's device */
            ninf = ct_to_device(ninf, d), zero = ninf ? ct_to_device(zero, d) : NULL;
        return ninf && zero ? ct_where(mask, ninf, zero) : NULL;
    }
    if (ct_dtype_of(mask) == CT_FLOAT32 || ct_dtype_of(mask) == CT_FLOAT64)
        return ct_dtype_of(mask) == dt ? ct_retain((ct_tensor *)mask) : ct_to_dtype(mask, dt);
    return ct_error_null("%s must be bool (True = not attended) or floating point (added "
                         "to the scores), got %s", what, ct_dtype_name(ct_dtype_of(mask)));
}

/* query [N, L, E] (batch_first) or [L, N, E] / unbatched [L, E]; returns the attention
 * output in the same layout. key_padding_mask [N, S] (or [S]); attn_mask [L, S] or
 * [N * num_heads, L, S]. */
static ct_tensor *mha_forward_impl(ct_module *m, const ct_tensor *query, const ct_tensor *key,
                                   const ct_tensor *value, const ct_tensor *key_padding_mask,
                                   const ct_tensor *attn_mask) {
    const mha_cfg *c = m->impl;
    CT_SCOPE(s);
    char s1[96], s2[96], s3[96];
    int nd = ct_ndim(query);
    if ((nd != 2 && nd != 3) || ct_ndim(key) != nd || ct_ndim(value) != nd)
        return ct_error_null("query %s, key %s and value %s must all be 3-D (%s) or 2-D "
                             "(unbatched [L, E])", ct_shape_str(query, s1, sizeof s1),
                             ct_shape_str(key, s2, sizeof s2), ct_shape_str(value, s3, sizeof s3),
                             c->batch_first ? "[N, L, E] with batch_first" : "[L, N, E]");
    int64_t E = c->embed_dim, H = c->num_heads, d = E / H;
    if (ct_size(query, -1) != E || ct_size(key, -1) != E || ct_size(value, -1) != E)
        return ct_error_null("query %s, key %s and value %s must end with embed_dim = %lld",
                             ct_shape_str(query, s1, sizeof s1), ct_shape_str(key, s2, sizeof s2),
                             ct_shape_str(value, s3, sizeof s3), (long long)E);
    /* to [N, L, E] */
    const ct_tensor *q = query, *k = key, *v = value;
    int self = query == key && key == value;
    if (nd == 2) {
        q = ct_unsqueeze(q, 0), k = self ? q : ct_unsqueeze(k, 0), v = self ? q : ct_unsqueeze(v, 0);
    } else if (!c->batch_first) {
        q = ct_transpose(q, 0, 1), k = self ? q : ct_transpose(k, 0, 1),
        v = self ? q : ct_transpose(v, 0, 1);
    }
    if (!q || !k || !v) return NULL;
    int64_t N = ct_size(q, 0), L = ct_size(q, 1), S = ct_size(k, 1);
    if (ct_size(k, 0) != N || ct_size(v, 0) != N || ct_size(v, 1) != S)
        return ct_error_null("key %s and value %s must have query's batch size (%lld) and the "
                             "same length", ct_shape_str(key, s2, sizeof s2),
                             ct_shape_str(value, s3, sizeof s3), (long long)N);
    ct_tensor *w = m->params[0], *b = c->bias ? m->params[1] : NULL;
    ct_tensor *qkv = NULL, *qp = NULL, *kp = NULL, *vp = NULL;
    if (self) { /* self-attention: one GEMM for the three projections */
        qkv = ct_linear(q, w, b);
        if (!qkv) return NULL;
    } else {
        ct_tensor *wq = ct_narrow(w, 0, 0, E), *wk = ct_narrow(w, 0, E, E),
                  *wv = ct_narrow(w, 0, 2 * E, E);
        ct_tensor *bq = b ? ct_narrow(b, 0, 0, E) : NULL, *bk = b ? ct_narrow(b, 0, E, E) : NULL,
                  *bv = b ? ct_narrow(b, 0, 2 * E, E) : NULL;
        qp = ct_linear(q, wq, bq), kp = ct_linear(k, wk, bk), vp = ct_linear(v, wv, bv);
        if (!qp || !kp || !vp) return NULL;
    }
    const ct_dtype pd = ct_dtype_of(self ? qkv : qp);
    /* one additive mask broadcastable to [N, H, L, S] */
    ct_tensor *mask = NULL;
    if (attn_mask) {
        ct_tensor *am = float_mask(attn_mask, pd, "attn_mask");
        if (!am) return NULL;
        if (ct_ndim(am) == 2 && ct_size(am, 0) == L && ct_size(am, 1) == S) {
            mask = am;
        } else if (ct_ndim(am) == 3 && ct_size(am, 0) == N * H && ct_size(am, 1) == L &&
                   ct_size(am, 2) == S) {
            int64_t ms[4] = {N, H, L, S};
            mask = ct_reshape(am, ms, 4);
        } else {
            return ct_error_null("attn_mask %s must be [L, S] = [%lld, %lld] or [N * num_heads, "
                                 "L, S] = [%lld, %lld, %lld]", ct_shape_str(attn_mask, s1, sizeof s1),
                                 (long long)L, (long long)S, (long long)(N * H), (long long)L,
                                 (long long)S);
        }
    }
    if (key_padding_mask) {
        int kd = ct_ndim(key_padding_mask);
        int ok = nd == 2 ? kd == 1 && ct_size(key_padding_mask, 0) == S
                         : kd == 2 && ct_size(key_padding_mask, 0) == N &&
                               ct_size(key_padding_mask, 1) == S;
        if (!ok)
            return ct_error_null("key_padding_mask %s must be [N, S] = [%lld, %lld]",
                                 ct_shape_str(key_padding_mask, s1, sizeof s1), (long long)N,
                                 (long long)S);
        ct_tensor *kpm = float_mask(key_padding_mask, pd, "key_padding_mask");
        int64_t ms[4] = {N, 1, 1, S};
        kpm = kpm ? ct_reshape(kpm, ms, 4) : NULL;
        if (!kpm) return NULL;
        mask = mask ? ct_add(mask, kpm) : kpm;
        if (!mask) return NULL;
    }
    ct_tensor *merged; /* the heads' outputs side by side, [N, L, E] */
    if (self) { /* the heads read in place from qkv (ops/fused.h) */
        merged = ct_sdpa_packed_qkv(qkv, H, mask, m->training ? c->dropout : 0.0, 0,
                                    CT_SDPA_DEFAULT_SCALE);
    } else { /* [N, L, E] -> [N, H, L, d] views; the output comes back in [N, L, H, d] order */
        int64_t qs[4] = {N, L, H, d}, ks[4] = {N, S, H, d}, os[3] = {N, L, E};
        ct_tensor *qh = ct_transpose(ct_reshape(qp, qs, 4), 1, 2);
        ct_tensor *kh = ct_transpose(ct_reshape(kp, ks, 4), 1, 2);
        ct_tensor *vh = ct_transpose(ct_reshape(vp, ks, 4), 1, 2);
        if (!qh || !kh || !vh) return NULL;
        ct_tensor *att = mha_attention(qh, kh, vh, mask, c->dropout, m->training);
        merged = att ? ct_reshape(ct_transpose(att, 1, 2), os, 3) : NULL;
    }
    ct_tensor *y = merged ? ct_module_forward(m->children[0], merged) : NULL;
    if (!y) return NULL;
    if (nd == 2) y = ct_squeeze(y, 0);
    else if (!c->batch_first) y = ct_transpose(y, 0, 1);
    return ct_keep(y);
}

/* The input tensors holding two optional arguments a and b (-1: absent). Without keyword
 * arguments they are positional: tensors[first] and tensors[first + 1]; a keyword argument
 * named a or b gives the index of the input tensor holding it (then only keywords count). */
static int opt_args(const ct_module_args *in, const char *a, const char *b, int first, int *ia,
                    int *ib) {
    double va = ct_module_args_get(in, a, NAN), vb = ct_module_args_get(in, b, NAN);
    if (isnan(va) && isnan(vb)) {
        *ia = first < in->n ? first : -1;
        *ib = first + 1 < in->n ? first + 1 : -1;
        if (in->n > first + 2)
            return ct_error("%d input tensors: at most %d (the last two: %s, %s)", in->n,
                            first + 2, a, b);
        return 0;
    }
    const char *nm[2] = {a, b};
    double v[2] = {va, vb};
    int *out[2] = {ia, ib};
    for (int i = 0; i < 2; i++) {
        *out[i] = -1;
        if (isnan(v[i])) continue;
        int idx = (int)v[i];
        if (v[i] != (double)idx || idx < first || idx >= in->n)
            return ct_error("%s=%g must be the index (%d..%d) of the input tensor that holds it",
                            nm[i], v[i], first, in->n - 1);
        *out[i] = idx;
    }
    if (*ia >= 0 && *ia == *ib) return ct_error("%s and %s name the same input tensor", a, b);
    return 0;
}

static const char *const g_mha_kwargs[] = {"key_padding_mask", "attn_mask", "need_weights", NULL};

static int mha_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    if (in->n != 1 && in->n < 3)
        return ct_error("MultiheadAttention takes query, key, value[, key_padding_mask[, "
                        "attn_mask]] (or one tensor for self-attention), got %d tensors", in->n);
    const ct_tensor *q = in->tensors[0];
    const ct_tensor *k = in->n >= 3 ? in->tensors[1] : q, *v = in->n >= 3 ? in->tensors[2] : q;
    int kpm = -1, am = -1;
    if (opt_args(in, "key_padding_mask", "attn_mask", 3, &kpm, &am) != 0) return -1;
    ct_tensor *y = mha_forward_impl(m, q, k, v, kpm >= 0 ? in->tensors[kpm] : NULL,
                                    am >= 0 ? in->tensors[am] : NULL);
    if (!y) return -1;
    out->tensors[out->n++] = y;
    return 0;
}

static ct_tensor *mha_forward(ct_module *m, const ct_tensor *x) {
    return mha_forward_impl(m, x, x, x, NULL, NULL);
}

ct_tensor *ct_nn_multihead_attention_forward(ct_module *m, const ct_tensor *query,
                                             const ct_tensor *key, const ct_tensor *value,
                                             const ct_tensor *key_padding_mask,
                                             const ct_tensor *attn_mask) {
    if (!m || m->forward != mha_forward)
        return ct_error_null("ct_nn_multihead_attention_forward: not a MultiheadAttention");
    if (!query || !key || !value)
        return ct_error_null("MultiheadAttention: query, key and value must not be NULL");
    ct_tensor *y = mha_forward_impl(m, query, key, value, key_padding_mask, attn_mask);
    if (!y) {
        char path[256];
        ct_error_context("MultiheadAttention '%s'", ct_module_path(m, path, sizeof path));
    }
    return y;
}

ct_module *ct_nn_multihead_attention(int64_t embed_dim, int64_t num_heads, const ct_mha_opts *o) {
    if (embed_dim < 1 || num_heads < 1 || embed_dim % num_heads)
        return ct_error_null("MultiheadAttention: embed_dim (%lld) must be >= 1 and divisible by "
                             "num_heads (%lld)", (long long)embed_dim, (long long)num_heads);
    double p = o ? o->dropout : 0.0;
    if (!(p >= 0 && p <= 1))
        return ct_error_null("MultiheadAttention: options .dropout = %g must be in [0, 1]", p);
    mha_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("MultiheadAttention: out of memory");
    c->embed_dim = embed_dim;
    c->num_heads = num_heads;
    c->dropout = p;
    c->bias = !(o && o->no_bias);
    c->batch_first = o && o->batch_first;
    ct_module *m = ct_module_new("MultiheadAttention", mha_forward, c, free);
    if (!m) return NULL;
    /* no extra_repr: PyTorch's repr shows only (out_proj) */
    /* PyTorch's order: in_proj_weight, in_proj_bias, out_proj (its Linear init draws
     * first), then _reset_parameters: xavier_uniform_(in_proj_weight), biases 0. */
    int64_t ws[2] = {3 * embed_dim, embed_dim}, bs = 3 * embed_dim;
    ct_tensor *w = ct_empty(ws, 2, CT_FLOAT32);
    ct_tensor *b = c->bias ? ct_zeros(&bs, 1, CT_FLOAT32) : NULL;
    int ok = w && (!c->bias || b) && ct_module_add_parameter(m, "in_proj_weight", w) >= 0 &&
             (!c->bias || ct_module_add_parameter(m, "in_proj_bias", b) >= 0) &&
             ct_module_add_child(m, "out_proj", ct_nn_linear(embed_dim, embed_dim, c->bias)) == 0 &&
             ct_init_xavier_uniform_(w, 1.0) == 0 &&
             (!c->bias || ct_init_zeros_(m->children[0]->params[1]) == 0) &&
             ct_module_set_call(m, mha_call, -1, g_mha_kwargs) == 0;
    ct_free(w);
    ct_free(b);
    if (!ok) {
        ct_error_context("MultiheadAttention(%lld, %lld)", (long long)embed_dim,
                         (long long)num_heads);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* ---------------------------------------------------- TransformerEncoderLayer */
typedef struct {
    int64_t d_model, nhead;
    ct_transformer_encoder_layer_opts o; /* resolved: every default filled in */
} tel_cfg;

enum { T_ATTN, T_LIN1, T_DROP, T_LIN2, T_NORM1, T_NORM2, T_DROP1, T_DROP2 };

/* x + dropout1(self_attn(x, x, x)) pieces */
static ct_tensor *tel_sa(ct_module *m, const ct_tensor *x, const ct_tensor *mask,
                         const ct_tensor *kpm) {
    ct_tensor *a = mha_forward_impl(m->children[T_ATTN], x, x, x, kpm, mask);
    if (!a) {
        char path[256];
        ct_error_context("MultiheadAttention '%s'",
                         ct_module_path(m->children[T_ATTN], path, sizeof path));
        return NULL;
    }
    return ct_module_forward(m->children[T_DROP1], a);
}

static ct_tensor *tel_ff(ct_module *m, const ct_tensor *x) {
    const tel_cfg *c = m->impl;
    ct_tensor *h = ct_module_forward(m->children[T_LIN1], x);
    if (h) h = c->o.activation && !strcmp(c->o.activation, "gelu") ? ct_gelu(h, 0) : ct_relu(h);
    if (h) h = ct_module_forward(m->children[T_DROP], h);
    if (h) h = ct_module_forward(m->children[T_LIN2], h);
    return h ? ct_module_forward(m->children[T_DROP2], h) : NULL;
}

static ct_tensor *tel_forward_impl(ct_module *m, const ct_tensor *src, const ct_tensor *mask,
                                   const ct_tensor *kpm) {
    const tel_cfg *c = m->impl;
    CT_SCOPE(s);
    ct_tensor *x = (ct_tensor *)src, *t;
    if (c->o.norm_first) {
        t = ct_module_forward(m->children[T_NORM1], x);
        t = t ? tel_sa(m, t, mask, kpm) : NULL;
        x = t ? ct_add(x, t) : NULL;
        t = x ? ct_module_forward(m->children[T_NORM2], x) : NULL;
        t = t ? tel_ff(m, t) : NULL;
        x = t ? ct_add(x, t) : NULL;
    } else {
        t = tel_sa(m, x, mask, kpm);
        x = t ? ct_add(x, t) : NULL;
        x = x ? ct_module_forward(m->children[T_NORM1], x) : NULL;
        t = x ? tel_ff(m, x) : NULL;
        x = t ? ct_add(x, t) : NULL;
        x = x ? ct_module_forward(m->children[T_NORM2], x) : NULL;
    }
    return ct_keep(x);
}

static ct_tensor *tel_forward(ct_module *m, const ct_tensor *x) {
    return tel_forward_impl(m, x, NULL, NULL);
}

/* forward(src, src_mask=None, src_key_padding_mask=None): positional, or keyword arguments
 * giving the index of the input tensor that holds each mask. */
static const char *const g_tel_kwargs[] = {"src_mask", "src_key_padding_mask", NULL};

static int enc_masks(const ct_module_args *in, const char *mask_name, const ct_tensor **mask,
                     const ct_tensor **kpm) {
    int mi = -1, ki = -1;
    if (opt_args(in, mask_name, "src_key_padding_mask", 1, &mi, &ki) != 0) return -1;
    *mask = mi >= 0 ? in->tensors[mi] : NULL;
    *kpm = ki >= 0 ? in->tensors[ki] : NULL;
    return 0;
}

static int tel_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    if (in->n < 1 || in->n > 3)
        return ct_error("TransformerEncoderLayer takes src[, src_mask[, src_key_padding_mask]], "
                        "got %d tensors", in->n);
    const ct_tensor *mask, *kpm;
    if (enc_masks(in, "src_mask", &mask, &kpm) != 0) return -1;
    ct_tensor *y = tel_forward_impl(m, in->tensors[0], mask, kpm);
    if (!y) return -1;
    out->tensors[out->n++] = y;
    return 0;
}

ct_module *ct_nn_transformer_encoder_layer(int64_t d_model, int64_t nhead,
                                           const ct_transformer_encoder_layer_opts *o) {
    ct_transformer_encoder_layer_opts r = o ? *o : (ct_transformer_encoder_layer_opts){0};
    if (r.dim_feedforward == 0) r.dim_feedforward = 2048;
    if (r.dropout == 0 && !r.no_dropout) r.dropout = 0.1;
    if (r.no_dropout) r.dropout = 0;
    if (r.layer_norm_eps == 0) r.layer_norm_eps = 1e-5;
    if (!r.activation) r.activation = "relu";
    if (strcmp(r.activation, "relu") && strcmp(r.activation, "gelu"))
        return ct_error_null("TransformerEncoderLayer: activation should be relu/gelu, not %s",
                             r.activation);
    if (r.activation[0] == 'r') r.activation = "relu";
    else r.activation = "gelu";
    if (r.dim_feedforward < 1 || !(r.dropout >= 0 && r.dropout <= 1) || !(r.layer_norm_eps > 0))
        return ct_error_null("TransformerEncoderLayer: options .dim_feedforward = %lld (>= 1), "
                             ".dropout = %g (in [0, 1]) and .layer_norm_eps = %g (> 0) out of range",
                             (long long)r.dim_feedforward, r.dropout, r.layer_norm_eps);
    tel_cfg *c = malloc(sizeof *c);
    if (!c) return ct_error_null("TransformerEncoderLayer: out of memory");
    c->d_model = d_model;
    c->nhead = nhead;
    c->o = r;
    ct_module *m = ct_module_new("TransformerEncoderLayer", tel_forward, c, free);
    if (!m) return NULL;
    int bias = !r.no_bias;
    ct_layer_norm_opts lo = {.eps = r.layer_norm_eps, .no_bias = r.no_bias};
    int rc = ct_module_add_child(m, "self_attn", ct_nn_multihead_attention(
                                     d_model, nhead, &(ct_mha_opts){.dropout = r.dropout,
                                                                    .no_bias = r.no_bias,
                                                                    .batch_first = r.batch_first}));
    if (!rc) rc = ct_module_add_child(m, "linear1", ct_nn_linear(d_model, r.dim_feedforward, bias));
    if (!rc) rc = ct_module_add_child(m, "dropout", ct_nn_dropout(r.dropout));
    if (!rc) rc = ct_module_add_child(m, "linear2", ct_nn_linear(r.dim_feedforward, d_model, bias));
    if (!rc) rc = ct_module_add_child(m, "norm1", ct_nn_layer_norm(&d_model, 1, &lo));
    if (!rc) rc = ct_module_add_child(m, "norm2", ct_nn_layer_norm(&d_model, 1, &lo));
    if (!rc) rc = ct_module_add_child(m, "dropout1", ct_nn_dropout(r.dropout));
    if (!rc) rc = ct_module_add_child(m, "dropout2", ct_nn_dropout(r.dropout));
    if (!rc) rc = ct_module_set_call(m, tel_call, -1, g_tel_kwargs);
    if (rc) {
        ct_error_context("TransformerEncoderLayer(d_model=%lld, nhead=%lld)", (long long)d_model,
                         (long long)nhead);
        ct_module_free(m);
        return NULL;
    }
    return m;
}

/* --------------------------------------------------------- TransformerEncoder */
static ct_tensor *te_forward_impl(ct_module *m, const ct_tensor *src, const ct_tensor *mask,
                                  const ct_tensor *kpm) {
    CT_SCOPE(s);
    ct_module *layers = m->children[0];
    ct_tensor *x = (ct_tensor *)src;
    for (int i = 0; i < layers->n_children && x; i++)
        x = tel_forward_impl(layers->children[i], x, mask, kpm);
    if (x && m->n_children > 1) x = ct_module_forward(m->children[1], x);
    return ct_keep(x);
}

static ct_tensor *te_forward(ct_module *m, const ct_tensor *x) {
    return te_forward_impl(m, x, NULL, NULL);
}

static const char *const g_te_kwargs[] = {"mask", "src_key_padding_mask", NULL};

static int te_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    if (in->n < 1 || in->n > 3)
        return ct_error("TransformerEncoder takes src[, mask[, src_key_padding_mask]], got %d "
                        "tensors", in->n);
    const ct_tensor *mask, *kpm;
    if (enc_masks(in, "mask", &mask, &kpm) != 0) return -1;
    ct_tensor *y = te_forward_impl(m, in->tensors[0], mask, kpm);
    if (!y) return -1;
    out->tensors[out->n++] = y;
    return 0;
}

ct_module *ct_nn_transformer_encoder(ct_module *encoder_layer, int num_layers, ct_module *norm) {
    if (!encoder_layer || encoder_layer->forward != tel_forward || num_layers < 1 ||
        encoder_layer->parent) {
        ct_module_free(norm);
        if (!encoder_layer) return NULL; /* keeps the failed constructor's message */
        if (!encoder_layer->parent) ct_module_free(encoder_layer);
        return ct_error_null("TransformerEncoder: needs a TransformerEncoderLayer of no parent "
                             "and num_layers >= 1 (got %d)", num_layers);
    }
    ct_module *m = ct_module_new("TransformerEncoder", te_forward, NULL, NULL);
    ct_module *layers = m ? ct_nn_sequential(NULL, 0) : NULL;
    const tel_cfg *c = encoder_layer->impl;
    int64_t d_model = c->d_model, nhead = c->nhead;
    ct_transformer_encoder_layer_opts o = c->o;
    int training = encoder_layer->training;
    /* layers.0 is the given layer; PyTorch deep-copies it, so every layer starts with its
     * values. */
    int rc = layers ? ct_nn_sequential_append(layers, encoder_layer) : -1;
    if (!layers) ct_module_free(encoder_layer);
    ct_state_dict *sd = rc ? NULL : ct_module_state_dict(layers->children[0]);
    if (!rc && !sd) rc = -1;
    for (int i = 1; i < num_layers && !rc; i++) {
        ct_module *l = ct_nn_transformer_encoder_layer(d_model, nhead, &o);
        if (l && ct_module_load_state_dict(l, sd, 1) != 0) {
            ct_module_free(l);
            l = NULL;
        }
        if (l) ct_module_train(l, training);
        rc = l ? ct_nn_sequential_append(layers, l) : -1;
    }
    ct_state_dict_free(sd);
    if (!rc) {
        rc = ct_module_add_child(m, "layers", layers);
        layers = NULL;
    }
    if (!rc && norm) {
        rc = ct_module_add_child(m, "norm", norm);
        norm = NULL;
    }
    if (!rc) rc = ct_module_set_call(m, te_call, -1, g_te_kwargs);
    if (rc) {
        ct_error_context("TransformerEncoder(num_layers=%d)", num_layers);
        ct_module_free(layers);
        ct_module_free(norm);
        ct_module_free(m);
        return NULL;
    }
    return m;
}
