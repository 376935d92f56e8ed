/* Transformer modules and ViT against PyTorch 2.x / torchvision
 * (tests/fixtures/gen_transformer.py): MultiheadAttention (batch_first both ways, key
 * padding and attention masks, bool and float), TransformerEncoderLayer (norm_first both
 * ways, relu / gelu), TransformerEncoder and vit_tiny: forward outputs and the gradients of
 * sum(out * R) with formula-filled weights within 1e-4; vit_tiny's and vit_b_16's
 * state_dicts are torchvision's; initialisation statistics are PyTorch's / torchvision's. */
#include "model_check.h"
#include "test.h"
#include "cli_util.h"
#include "ctorch_nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static double h(int64_t i, int64_t k) {
    double v = sin(12.9898 * (double)i + 78.233 * (double)k) * 43758.5453;
    return (v - floor(v)) * 2 - 1;
}

/* gen_transformer.py's fill(): parameters only, in state_dict order. */
static void fill(ct_module *m) {
    ct_state_dict *sd = ct_module_state_dict(m);
    int k = 0, prev = ct_set_grad_enabled(0);
    for (int i = 0; i < sd->n; i++) {
        ct_tensor *t = sd->tensors[i];
        if (!ct_requires_grad(t)) continue;
        int64_t n = ct_numel(t);
        float *v = ct_data(t);
        for (int64_t j = 0; j < n; j++) {
            double x;
            if (ct_ndim(t) >= 2) x = h(j, k) * sqrt(3.0 / (double)(n / ct_size(t, 0)));
            else if (ends_with(sd->names[i], "weight")) x = 1 + 0.1 * h(j, k);
            else x = 0.1 * h(j, k);
            v[j] = (float)x;
        }
        k++;
    }
    ct_set_grad_enabled(prev);
    ct_state_dict_free(sd);
}

/* hx(): h(i, k) over a new float32 tensor (a leaf requiring grad when grad != 0). */
static ct_tensor *hx(const int64_t *shape, int nd, int64_t k, int grad) {
    ct_tensor *t = ct_empty(shape, nd, CT_FLOAT32);
    float *p = ct_data(t);
    for (int64_t i = 0; i < ct_numel(t); i++) p[i] = (float)h(i, k);
    if (grad) ct_set_requires_grad(t, 1);
    return t;
}

static void cmp(ct_fixture *fx, const char *key, const ct_tensor *got, double tol) {
    ct_tensor *want = ct_fixture_get(fx, key);
    CHECK_CLOSE(got, want, tol, key);
    ct_free(want);
}

/* A parameter's gradient, flattened, every `stride`-th element (stride 0: ceil(n / 256)). */
static void cmp_param_grad(ct_fixture *fx, const char *tag, ct_module *m, const char *name,
                           int sample) {
    char key[256];
    snprintf(key, sizeof key, "%s.grad.%s", tag, name);
    ct_tensor *p = ct_module_get_tensor(m, name);
    CHECK_MSG(p && ct_grad(p), "%s: no parameter or no gradient", key);
    if (!p || !ct_grad(p)) return;
    int64_t n = ct_numel(p), all = -1;
    ct_tensor *flat = ct_reshape(ct_grad(p), &all, 1);
    ct_tensor *s = sample ? ct_slice(flat, 0, 0, n, (n + 255) / 256) : ct_retain(flat);
    cmp(fx, key, s, 1e-4);
    ct_free(s), ct_free(flat);
}

/* y, the gradient of sum(y * R) (R = h(i, 777)) backpropagated */
static void backprop(ct_tensor *y) {
    ct_tensor *r = hx(ct_shape(y), ct_ndim(y), 777, 0);
    ct_tensor *yr = ct_mul(y, r), *loss = ct_sum(yr, NULL, 0, 0);
    CHECK_OK(ct_backward(loss, NULL, 0));
    ct_free(loss), ct_free(yr), ct_free(r);
}

enum { E = 8, H = 2, N = 3, L = 5, S = 6 };

/* tag, batch_first, key padding mask key, attention mask key, pass the masks by keyword */
static void mha_case(const char *tag, int bf, const char *kname, const char *aname, int kw) {
    ct_fixture *fx = ct_fixture_load("transformer");
    if (!fx) return;
    ct_module *m = ct_nn_multihead_attention(E, H, &(ct_mha_opts){.batch_first = bf});
    CHECK_NN(m);
    if (!m) return;
    fill(m);
    int64_t sq[3] = {bf ? N : L, bf ? L : N, E}, sk[3] = {bf ? N : S, bf ? S : N, E};
    ct_tensor *q = hx(sq, 3, 1001, 1), *k = hx(sk, 3, 1002, 1), *v = hx(sk, 3, 1003, 1);
    ct_tensor *kpm = kname ? ct_fixture_get(fx, kname) : NULL;
    ct_tensor *am = aname ? ct_fixture_get(fx, aname) : NULL;
    ct_module_args in = {.n = 3, .tensors = {q, k, v}};
    if (kw) { /* keyword indices, attn_mask first */
        int kw_n = 0;
        if (am) {
            in.kwargs[kw_n++] = (ct_module_kwarg){"attn_mask", in.n};
            in.tensors[in.n++] = am;
        }
        if (kpm) {
            in.kwargs[kw_n++] = (ct_module_kwarg){"key_padding_mask", in.n};
            in.tensors[in.n++] = kpm;
        }
    } else {
        if (kpm || am) in.tensors[in.n++] = kpm;
        if (am) in.tensors[in.n++] = am;
    }
    ct_module_outputs out = {0};
    CHECK_OK(ct_module_call(m, &in, &out));
    char key[128];
    if (out.n == 1) {
        snprintf(key, sizeof key, "mha.%s.out", tag);
        cmp(fx, key, out.tensors[0], 1e-4);
        backprop(out.tensors[0]);
        const char *names[3] = {"q", "k", "v"};
        ct_tensor *ins[3] = {q, k, v};
        for (int i = 0; i < 3; i++) {
            snprintf(key, sizeof key, "mha.%s.grad.%s", tag, names[i]);
            cmp(fx, key, ct_grad(ins[i]), 1e-4);
        }
        snprintf(key, sizeof key, "mha.%s", tag);
        cmp_param_grad(fx, key, m, "in_proj_weight", 0);
        cmp_param_grad(fx, key, m, "in_proj_bias", 0);
        cmp_param_grad(fx, key, m, "out_proj.weight", 0);
    }
    ct_module_outputs_free(&out);
    ct_free(q), ct_free(k), ct_free(v), ct_free(kpm), ct_free(am);
    ct_module_free(m);
    ct_fixture_free(fx);
}

TEST(transformer_mha_batch_first_vs_torch) { mha_case("bf", 1, NULL, NULL, 0); }
TEST(transformer_mha_seq_first_key_padding_vs_torch) { mha_case("sf_kpm", 0, "mha.kpm", NULL, 0); }
TEST(transformer_mha_bool_masks_vs_torch) { mha_case("bf_am_kpm", 1, "mha.kpm", "mha.am", 0); }
TEST(transformer_mha_masks_by_keyword_vs_torch) { mha_case("bf_am_kpm", 1, "mha.kpm", "mha.am", 1); }
TEST(transformer_mha_float_attn_mask_vs_torch) { mha_case("bf_amf", 1, NULL, "mha.amf", 1); }
TEST(transformer_mha_float_kpm_seq_first_vs_torch) {
    mha_case("sf_kpmf_am", 0, "mha.kpmf", "mha.am", 0);
}

TEST(transformer_mha_self_attention_forward_and_errors) {
    ct_module *m = ct_nn_multihead_attention(E, H, &(ct_mha_opts){.batch_first = 1});
    CHECK_NN(m);
    int64_t sq[3] = {N, L, E}, bad[3] = {N, L, E + 1};
    ct_tensor *x = hx(sq, 3, 5, 0), *xb = hx(bad, 3, 5, 0);
    ct_tensor *y1 = ct_module_forward(m, x);
    ct_tensor *y2 = ct_nn_multihead_attention_forward(m, x, x, x, NULL, NULL);
    CHECK_NN(y1);
    CHECK_CLOSE(y1, y2, 0, "self-attention forward == call with query = key = value");
    ct_tensor *y3 = ct_module_forward(m, xb);
    CHECK(y3 == NULL && strstr(ct_last_error(), "embed_dim") &&
          strstr(ct_last_error(), "MultiheadAttention"));
    CHECK(ct_nn_multihead_attention(10, 3, NULL) == NULL &&
          strstr(ct_last_error(), "divisible"));
    ct_free(y1), ct_free(y2), ct_free(x), ct_free(xb);
    ct_module_free(m);
}

/* ------------------------------------------------------------ encoder layers */
static void enc_case(const char *tag, int norm_first, const char *act) {
    ct_fixture *fx = ct_fixture_load("transformer");
    if (!fx) return;
    ct_transformer_encoder_layer_opts o = {.dim_feedforward = 16, .no_dropout = 1,
                                           .activation = act, .batch_first = 1,
                                           .norm_first = norm_first};
    ct_module *m = ct_nn_transformer_encoder_layer(E, H, &o);
    CHECK_NN(m);
    if (!m) return;
    fill(m);
    int64_t sx[3] = {N, L, E};
    ct_tensor *x = hx(sx, 3, 1004, 1), *kpm = ct_fixture_get(fx, "enc.kpm");
    ct_module_args in = {.n = 2, .tensors = {x, kpm}, .kwargs = {{"src_key_padding_mask", 1}}};
    ct_module_outputs out = {0};
    CHECK_OK(ct_module_call(m, &in, &out));
    char key[128];
    if (out.n == 1) {
        snprintf(key, sizeof key, "enc.%s.out", tag);
        cmp(fx, key, out.tensors[0], 1e-4);
        backprop(out.tensors[0]);
        snprintf(key, sizeof key, "enc.%s.grad.x", tag);
        cmp(fx, key, ct_grad(x), 1e-4);
        static const char *const pn[] = {"self_attn.in_proj_weight", "linear1.weight",
                                         "linear2.bias", "norm1.weight", "norm2.bias"};
        snprintf(key, sizeof key, "enc.%s", tag);
        for (int i = 0; i < 5; i++) cmp_param_grad(fx, key, m, pn[i], 0);
    }
    ct_module_outputs_free(&out);
    ct_free(x), ct_free(kpm);
    ct_module_free(m);
    ct_fixture_free(fx);
}

TEST(transformer_encoder_layer_post_relu_vs_torch) { enc_case("post_relu", 0, "relu"); }
TEST(transformer_encoder_layer_post_gelu_vs_torch) { enc_case("post_gelu", 0, "gelu"); }
TEST(transformer_encoder_layer_pre_relu_vs_torch) { enc_case("pre_relu", 1, "relu"); }
TEST(transformer_encoder_layer_pre_gelu_vs_torch) { enc_case("pre_gelu", 1, "gelu"); }

TEST(transformer_encoder_vs_torch) {
    ct_fixture *fx = ct_fixture_load("transformer");
    if (!fx) return;
    ct_transformer_encoder_layer_opts o = {.dim_feedforward = 16, .no_dropout = 1};
    int64_t e = E;
    ct_module *m = ct_nn_transformer_encoder(ct_nn_transformer_encoder_layer(E, H, &o), 2,
                                             ct_nn_layer_norm(&e, 1, NULL));
    CHECK_NN(m);
    if (!m) {
        ct_fixture_free(fx);
        return;
    }
    /* PyTorch's names and its deep copies: both layers start equal */
    CHECK(ct_module_get(m, "layers.1.self_attn.out_proj") != NULL &&
          ct_module_get(m, "norm") != NULL);
    CHECK_CLOSE(ct_module_get_tensor(m, "layers.1.linear1.weight"),
                ct_module_get_tensor(m, "layers.0.linear1.weight"), 0, "layers start equal");
    fill(m);
    int64_t sx[3] = {L, N, E};
    ct_tensor *x = hx(sx, 3, 1005, 1), *mask = ct_fixture_get(fx, "encs.mask");
    ct_module_args in = {.n = 2, .tensors = {x, mask}};
    ct_module_outputs out = {0};
    CHECK_OK(ct_module_call(m, &in, &out));
    if (out.n == 1) {
        cmp(fx, "encs.out", out.tensors[0], 1e-4);
        backprop(out.tensors[0]);
        cmp(fx, "encs.grad.x", ct_grad(x), 1e-4);
        cmp_param_grad(fx, "encs", m, "layers.0.linear1.weight", 0);
        cmp_param_grad(fx, "encs", m, "layers.1.norm2.weight", 0);
        cmp_param_grad(fx, "encs", m, "norm.bias", 0);
    }
    ct_module_outputs_free(&out);
    ct_free(x), ct_free(mask);
    ct_module_free(m);
    ct_fixture_free(fx);
}

/* ---------------------------------------------------------------------- ViT */
TEST(transformer_vit_tiny_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("transformer");
    if (!fx) return;
    ct_module *m = ct_model_create("vit_tiny", 10);
    CHECK_NN(m);
    if (!m) {
        ct_fixture_free(fx);
        return;
    }
    fill(m);
    ct_module_train(m, 1);
    int64_t sx[4] = {2, 3, 32, 32};
    ct_tensor *x = hx(sx, 4, 1000, 1);
    ct_tensor *y = ct_module_forward(m, x);
    CHECK_NN(y);
    if (y) {
        cmp(fx, "vit.out", y, 1e-4);
        backprop(y);
        cmp(fx, "vit.grad.x", ct_grad(x), 1e-4);
        static const char *const pn[] = {
            "conv_proj.weight", "class_token", "encoder.pos_embedding",
            "encoder.layers.encoder_layer_5.self_attention.in_proj_weight",
            "encoder.layers.encoder_layer_11.mlp.0.bias", "encoder.ln.weight",
            "heads.head.weight"};
        for (int i = 0; i < 7; i++) cmp_param_grad(fx, "vit", m, pn[i], 1);
    }
    ct_free(y), ct_free(x);
    ct_module_free(m);
    ct_fixture_free(fx);
}

TEST(transformer_vit_state_dicts_are_torchvisions) {
    CHECK(check_state_dict_listing("transformer_names.txt", "gen_transformer.py") == 2);
}

/* ------------------------------------------------------------ initialisation */
static double stat(const ct_tensor *w, int want_mean) {
    ct_tensor *c = ct_contiguous(w);
    const float *p = ct_data(c);
    int64_t n = ct_numel(c);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += p[i], s2 += (double)p[i] * p[i];
    ct_free(c);
    double mean = s / (double)n;
    return want_mean ? mean : sqrt(fmax(s2 / (double)n - mean * mean, 0));
}

static double max_abs(const ct_tensor *w) {
    ct_tensor *c = ct_contiguous(w);
    const float *p = ct_data(c);
    double m = 0;
    for (int64_t i = 0; i < ct_numel(c); i++) m = fmax(m, fabs(p[i]));
    ct_free(c);
    return m;
}

#define STD_NEAR(m, name, want, rel)                                                          \
    do {                                                                                     \
        ct_tensor *t_ = ct_module_get_tensor(m, name);                                       \
        double s_ = t_ ? stat(t_, 0) : NAN;                                                  \
        CHECK_MSG(t_ && fabs(s_ - (want)) <= (rel) * (want), "%s: std %g, want %g", name, s_, \
                  (double)(want));                                                           \
    } while (0)

TEST(transformer_init_statistics) {
    ct_manual_seed(1);
    ct_module *m = ct_model_create("vit_tiny", 10);
    CHECK_NN(m);
    if (!m) return;
    CHECK(max_abs(ct_module_get_tensor(m, "class_token")) == 0);
    CHECK(max_abs(ct_module_get_tensor(m, "heads.head.weight")) == 0);
    CHECK(max_abs(ct_module_get_tensor(m, "heads.head.bias")) == 0);
    CHECK(max_abs(ct_module_get_tensor(m, "conv_proj.bias")) == 0);
    STD_NEAR(m, "conv_proj.weight", sqrt(1.0 / 48), 0.1);
    STD_NEAR(m, "encoder.pos_embedding", 0.02, 0.05);
    const char *b = "encoder.layers.encoder_layer_3.";
    char n[160];
    snprintf(n, sizeof n, "%smlp.0.weight", b);
    STD_NEAR(m, n, sqrt(2.0 / (192 + 768)), 0.05); /* xavier_uniform_ */
    snprintf(n, sizeof n, "%smlp.3.bias", b);
    STD_NEAR(m, n, 1e-6, 0.3);
    snprintf(n, sizeof n, "%sself_attention.in_proj_weight", b);
    STD_NEAR(m, n, sqrt(2.0 / (192 + 576)), 0.05);
    snprintf(n, sizeof n, "%sself_attention.in_proj_bias", b);
    CHECK(max_abs(ct_module_get_tensor(m, n)) == 0);
    snprintf(n, sizeof n, "%sself_attention.out_proj.bias", b);
    CHECK(max_abs(ct_module_get_tensor(m, n)) == 0);
    snprintf(n, sizeof n, "%sself_attention.out_proj.weight", b); /* U(+-1/sqrt(192)) */
    STD_NEAR(m, n, 1.0 / sqrt(3.0 * 192), 0.05);
    snprintf(n, sizeof n, "%sln_1.weight", b);
    CHECK(stat(ct_module_get_tensor(m, n), 1) == 1 && stat(ct_module_get_tensor(m, n), 0) == 0);
    ct_module_free(m);
    /* Embedding: N(0, 1), the padding row zero */
    ct_module *e = ct_nn_embedding(200, 16, &(ct_embedding_opts){.has_padding_idx = 1,
                                                                .padding_idx = -1});
    CHECK_NN(e);
    if (e) {
        ct_tensor *w = ct_module_get_tensor(e, "weight");
        ct_tensor *last = ct_narrow(w, 0, 199, 1);
        CHECK(max_abs(last) == 0);
        CHECK_MSG(fabs(stat(w, 0) - 1) < 0.05, "Embedding std %g", stat(w, 0));
        ct_free(last);
        ct_module_free(e);
    }
}

TEST(transformer_embedding_and_layer_norm_modules) {
    ct_module *e = ct_nn_embedding(10, 4, &(ct_embedding_opts){.has_padding_idx = 1});
    int64_t idx[4] = {0, 3, 0, 9}, s = 4, s2[2] = {2, 2};
    ct_tensor *i = ct_from_data(idx, s2, 2, CT_INT64);
    ct_tensor *y = ct_module_forward(e, i);
    CHECK_NN(y);
    CHECK(y && ct_ndim(y) == 3 && ct_size(y, 2) == 4);
    if (y) {
        ct_tensor *sum = ct_sum(y, NULL, 0, 0);
        CHECK_OK(ct_backward(sum, NULL, 0));
        ct_tensor *g = ct_grad(ct_module_get_tensor(e, "weight"));
        ct_tensor *g0 = g ? ct_narrow(g, 0, 0, 1) : NULL, *g3 = g ? ct_narrow(g, 0, 3, 1) : NULL;
        CHECK(g0 && max_abs(g0) == 0 && g3 && stat(g3, 1) == 1); /* padding row: no gradient */
        ct_free(g0), ct_free(g3), ct_free(sum);
    }
    ct_module *ln = ct_nn_layer_norm(&s, 1, &(ct_layer_norm_opts){.eps = 1e-6});
    CHECK_NN(ln);
    ct_tensor *z = y ? ct_module_forward(ln, y) : NULL;
    CHECK_NN(z);
    CHECK(ln && ln->n_params == 2 && !strcmp(ln->param_names[0], "weight"));
    ct_module *ln2 = ct_nn_layer_norm(&s, 1, &(ct_layer_norm_opts){.no_elementwise_affine = 1});
    CHECK(ln2 && ln2->n_params == 0);
    CHECK(ct_nn_embedding(0, 4, NULL) == NULL && strstr(ct_last_error(), "num_embeddings"));
    CHECK(ct_nn_transformer_encoder_layer(8, 2, &(ct_transformer_encoder_layer_opts){
                                                    .activation = "tanh"}) == NULL &&
          strstr(ct_last_error(), "relu/gelu"));
    ct_free(z), ct_free(y), ct_free(i);
    ct_module_free(ln), ct_module_free(ln2), ct_module_free(e);
}

/* ------------------------------------------------ torchvision's own ViT weights */
/* tests/peer_torchvision_vit.py's files (once per test process), or NULL without a peer. */
static const char *vit_peer_weights(void) {
    static char dir[512];
    static int done, ok;
    if (!done)
        done = 1, ok = peer_script_once("tests/peer_torchvision_vit.py", "tv_vit", dir,
                                           sizeof dir) == 0;
    return ok ? dir : NULL;
}

static void vit_logits(const char *model, const char *ext) {
    const char *dir = vit_peer_weights();
    if (!dir) SKIP("no Python with torch, torchvision and safetensors (bench/setup-peer.sh)");
    char w[700], p[700];
    snprintf(w, sizeof w, "%s/%s.%s", dir, model, ext);
    snprintf(p, sizeof p, "%s/%s_logits.safetensors", dir, model);
    ct_state_dict *sd = ct_state_dict_load(w), *ref = ct_state_dict_load(p);
    CHECK_NN(sd);
    CHECK_NN(ref);
    ct_module *m = ct_model_create(model, 1000);
    CHECK_NN(m);
    if (sd && ref && m) {
        CHECK_OK(ct_module_load_state_dict(m, sd, 1));
        ct_module_eval(m);
        int prev = ct_set_grad_enabled(0);
        ct_tensor *y = ct_module_forward(m, ct_state_dict_get(ref, "x"));
        ct_set_grad_enabled(prev);
        CHECK_NN(y);
        CHECK_CLOSE(y, ct_state_dict_get(ref, "logits"), 1e-4, w);
        ct_free(y);
    }
    ct_module_free(m);
    ct_state_dict_free(sd);
    ct_state_dict_free(ref);
}

TEST(transformer_peer_vit_tiny_safetensors_logits) { vit_logits("vit_tiny", "safetensors"); }
TEST(transformer_peer_vit_b_16_torch_save_logits) { vit_logits("vit_b_16", "pt"); }

/* bfloat16 autocast (--amp bf16): the model runs (the class token joins 16-bit patches as
 * torch.cat promotes), close to float32, and the masks of MultiheadAttention work. */
TEST(transformer_vit_tiny_bf16_autocast) {
    ct_module *m = ct_model_create("vit_tiny", 10);
    CHECK_NN(m);
    if (!m) return;
    fill(m);
    int64_t sx[4] = {2, 3, 32, 32};
    ct_tensor *x = hx(sx, 4, 1000, 0);
    ct_tensor *y = ct_module_forward(m, x);
    CHECK_OK(ct_autocast_push(CT_CPU, CT_BFLOAT16));
    ct_tensor *yb = ct_module_forward(m, x);
    ct_autocast_pop();
    CHECK_NN(yb);
    ct_tensor *yf = yb ? ct_to_dtype(yb, CT_FLOAT32) : NULL;
    CHECK_CLOSE(yf, y, 0.1, "vit_tiny logits under bf16 autocast vs float32");
    ct_module *a = ct_nn_multihead_attention(E, H, &(ct_mha_opts){.batch_first = 1});
    int64_t qs[3] = {N, L, E}, ks[2] = {N, L};
    ct_tensor *q = hx(qs, 3, 3, 0), *kpm = ct_zeros(ks, 2, CT_BOOL);
    CHECK_OK(ct_autocast_push(CT_CPU, CT_BFLOAT16));
    ct_tensor *o = ct_nn_multihead_attention_forward(a, q, q, q, kpm, NULL);
    ct_autocast_pop();
    CHECK_NN(o);
    ct_free(o), ct_free(q), ct_free(kpm), ct_free(yf), ct_free(yb), ct_free(y), ct_free(x);
    ct_module_free(a);
    ct_module_free(m);
}

TEST(transformer_vit_errors) {
    CHECK(ct_model_create_ex("vit_tiny", 10, 3, 64, 64) == NULL &&
          strstr(ct_last_error(), "32x32") != NULL);
    CHECK(ct_model_create_ex("vit_b_16", 10, 3, 32, 32) == NULL &&
          strstr(ct_last_error(), "224x224") != NULL);
    CHECK(!strcmp(ct_model_head("vit_tiny"), "heads.head."));
    ct_module *m = ct_model_create("vit_tiny", 10);
    CHECK_NN(m);
    int64_t bad[4] = {1, 3, 28, 28}, gray[4] = {1, 1, 32, 32};
    ct_tensor *x = ct_zeros(bad, 4, CT_FLOAT32), *g = ct_zeros(gray, 4, CT_FLOAT32);
    ct_tensor *y = m ? ct_module_forward(m, x) : NULL;
    CHECK(y == NULL && strstr(ct_last_error(), "[N, C, 32, 32]") != NULL);
    y = m ? ct_module_forward(m, g) : NULL;
    CHECK(y == NULL && strstr(ct_last_error(), "conv_proj") != NULL);
    ct_free(x), ct_free(g);
    ct_module_free(m);
}

/* Attention dropout acts in training only; the encoder's layers are copies, not shared;
 * float64 modules take bool masks. */
TEST(transformer_dropout_copies_and_float64) {
    ct_manual_seed(3);
    ct_module *m = ct_nn_multihead_attention(E, H, &(ct_mha_opts){.dropout = 0.5,
                                                                 .batch_first = 1});
    CHECK_NN(m);
    if (!m) return;
    int64_t qs[3] = {N, L, E}, ks[2] = {N, L};
    ct_tensor *q = hx(qs, 3, 9, 0), *kpm = ct_zeros(ks, 2, CT_BOOL);
    ct_tensor *t1 = ct_module_forward(m, q), *t2 = ct_module_forward(m, q);
    ct_module_eval(m);
    ct_tensor *e1 = ct_module_forward(m, q), *e2 = ct_module_forward(m, q);
    CHECK_NN(t1);
    CHECK_CLOSE(e1, e2, 0, "eval: no dropout");
    ct_tensor *d = ct_sub(t1, t2), *ad = ct_abs(d), *mx = ct_max_all(ad);
    CHECK_MSG(ct_item(mx) > 1e-3, "training: dropout on the attention weights (max diff %g)",
              ct_item(mx));
    ct_free(mx), ct_free(ad), ct_free(d), ct_free(t1), ct_free(t2), ct_free(e1), ct_free(e2);
    /* float64 */
    CHECK_OK(ct_module_to(m, ct_cpu(), CT_FLOAT64));
    ct_tensor *q64 = ct_to_dtype(q, CT_FLOAT64);
    ct_tensor *y64 = ct_nn_multihead_attention_forward(m, q64, q64, q64, kpm, NULL);
    CHECK_NN(y64);
    CHECK(y64 && ct_dtype_of(y64) == CT_FLOAT64);
    ct_free(y64), ct_free(q64), ct_free(q), ct_free(kpm);
    ct_module_free(m);
    /* TransformerEncoder: layers.1 starts equal to layers.0 but is its own tensor */
    ct_module *enc = ct_nn_transformer_encoder(
        ct_nn_transformer_encoder_layer(E, H, &(ct_transformer_encoder_layer_opts){
                                                  .dim_feedforward = 16}), 3, NULL);
    CHECK_NN(enc);
    if (!enc) return;
    ct_tensor *w0 = ct_module_get_tensor(enc, "layers.0.linear1.weight");
    ct_tensor *w2 = ct_module_get_tensor(enc, "layers.2.linear1.weight");
    CHECK(w0 && w2 && w0 != w2 && ct_data(w0) != ct_data(w2));
    CHECK(ct_module_get(enc, "norm") == NULL && ct_module_get(enc, "layers.3") == NULL);
    ct_module_free(enc);
    CHECK(ct_nn_transformer_encoder(NULL, 2, NULL) == NULL);
    CHECK(ct_nn_transformer_encoder(ct_nn_linear(2, 2, 1), 2, NULL) == NULL &&
          strstr(ct_last_error(), "TransformerEncoderLayer"));
}

TEST(transformer_call_argument_errors) {
    ct_module *m = ct_nn_multihead_attention(E, H, &(ct_mha_opts){.batch_first = 1});
    int64_t qs[3] = {N, L, E}, ks[2] = {N, L + 1};
    ct_tensor *q = hx(qs, 3, 9, 0), *kpm = ct_zeros(ks, 2, CT_BOOL);
    ct_module_outputs out = {0};
    ct_module_args a1 = {.n = 4, .tensors = {q, q, q, kpm}, .kwargs = {{"attn_mask", 1}}};
    CHECK(ct_module_call(m, &a1, &out) != 0 && strstr(ct_last_error(), "index (3..3)"));
    ct_module_args a2 = {.n = 4, .tensors = {q, q, q, kpm}};
    CHECK(ct_module_call(m, &a2, &out) != 0 && strstr(ct_last_error(), "key_padding_mask") &&
          strstr(ct_last_error(), "[N, S] = [3, 5]"));
    ct_module_args a3 = {.n = 2, .tensors = {q, q}};
    CHECK(ct_module_call(m, &a3, &out) != 0 && strstr(ct_last_error(), "got 2 tensors"));
    ct_module_args a4 = {.n = 1, .tensors = {q}, .kwargs = {{"attn_mask", 1}}};
    CHECK(ct_module_call(m, &a4, &out) != 0 && strstr(ct_last_error(), "attn_mask=1"));
    ct_module_args a5 = {.n = 6, .tensors = {q, q, q, kpm, kpm, kpm}};
    CHECK(ct_module_call(m, &a5, &out) != 0 && strstr(ct_last_error(), "at most 5"));
    CHECK(out.n == 0);
    ct_free(q), ct_free(kpm);
    ct_module_free(m);
}
