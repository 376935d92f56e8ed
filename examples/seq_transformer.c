/* A Transformer encoder over token sequences (the shape of the seed's protein model):
 * Embedding (with a padding index) + learned positional embeddings + TransformerEncoder
 * with key padding masks + a per-token Linear head, trained with AdamW to SORT short
 * sequences of digits of varying length (2..8 digits, padded to 8).
 *
 *   x      = [3 1 4 1 5 PAD PAD PAD]          (PAD = 10, ignored by attention)
 *   target = [1 1 3 4 5 -100 -100 -100]       (-100: no loss on padding)
 *
 * As PyTorch:
 *     tok = nn.Embedding(11, 64, padding_idx=10); pos = nn.Parameter(torch.randn(1, 8, 64) * 0.02)
 *     enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0,
 *                                 batch_first=True, norm_first=True), 2, norm=nn.LayerNorm(64))
 *     logits = head(enc(tok(x) + pos, src_key_padding_mask=(x == 10)))
 * Prints the loss and, at the end, the accuracy on fresh sequences (per digit and per
 * whole sequence). Usage: seq_transformer [STEPS (default 400)]
 * Build: make examples; run: build/examples/seq_transformer */
#include "ctorch.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LMAX = 8, PAD = 10, VOCAB = 11, D = 64, HEADS = 4, FF = 128, LAYERS = 2, BATCH = 64 };

static uint64_t g_rng = 88172645463325252ull;
static int rnd(int n) { /* xorshift64, uniform in 0..n-1 */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (int)(g_rng % (uint64_t)n);
}

static int cmp_int(const void *a, const void *b) {
    return *(const int64_t *)a < *(const int64_t *)b ? -1 : *(const int64_t *)a > *(const int64_t *)b;
}

/* A batch: tokens [B, LMAX] (int64), targets [B * LMAX] (int64, -100 on padding), the key
 * padding mask [B, LMAX] (bool, true on padding). */
static void make_batch(ct_tensor **x, ct_tensor **t, ct_tensor **kpm) {
    int64_t tok[BATCH * LMAX], tgt[BATCH * LMAX];
    unsigned char pad[BATCH * LMAX];
    for (int b = 0; b < BATCH; b++) {
        int len = 2 + rnd(LMAX - 1);
        int64_t *row = tok + b * LMAX, *trow = tgt + b * LMAX;
        for (int i = 0; i < LMAX; i++) row[i] = i < len ? rnd(10) : PAD;
        memcpy(trow, row, sizeof(int64_t) * (size_t)len);
        qsort(trow, (size_t)len, sizeof *trow, cmp_int);
        for (int i = 0; i < LMAX; i++) {
            if (i >= len) trow[i] = -100;
            pad[b * LMAX + i] = i >= len;
        }
    }
    int64_t s2[2] = {BATCH, LMAX}, n = BATCH * LMAX;
    *x = ct_from_data(tok, s2, 2, CT_INT64);
    *t = ct_from_data(tgt, &n, 1, CT_INT64);
    *kpm = ct_from_data(pad, s2, 2, CT_BOOL);
}

/* logits [B * LMAX, 10] */
static ct_tensor *forward(ct_module *model, const ct_tensor *x, const ct_tensor *kpm) {
    ct_tensor *e = ct_module_forward(ct_module_get(model, "tok"), x); /* [B, L, D] */
    ct_tensor *h = e ? ct_add(e, ct_module_get_tensor(model, "pos_embedding")) : NULL;
    if (!h) return NULL;
    ct_module_args in = {.n = 2, .tensors = {h, kpm}, .kwargs = {{"src_key_padding_mask", 1}}};
    ct_module_outputs out = {0};
    if (ct_module_call(ct_module_get(model, "encoder"), &in, &out) != 0) return NULL;
    ct_tensor *y = ct_module_forward(ct_module_get(model, "head"), out.tensors[0]);
    int64_t s[2] = {-1, 10};
    return y ? ct_reshape(y, s, 2) : NULL;
}

int main(int argc, char **argv) {
    long steps = 400;
    if (argc > 1) {
        char *end;
        steps = strtol(argv[1], &end, 10);
        if (*end || steps < 1) {
            fprintf(stderr, "usage: seq_transformer [STEPS >= 1] (got \"%s\")\n", argv[1]);
            return 2;
        }
    }
    ct_manual_seed(0);
    ct_module *model = ct_module_new("SortTransformer", NULL, NULL, NULL);
    int64_t d = D, ps[3] = {1, LMAX, D};
    ct_tensor *pos = ct_empty(ps, 3, CT_FLOAT32);
    ct_transformer_encoder_layer_opts lo = {.dim_feedforward = FF, .no_dropout = 1,
                                            .batch_first = 1, .norm_first = 1};
    int ok = model && pos && ct_init_normal_(pos, 0, 0.02) == 0 &&
             ct_module_add_parameter(model, "pos_embedding", pos) >= 0 &&
             ct_module_add_child(model, "tok", ct_nn_embedding(VOCAB, D, &(ct_embedding_opts){
                                                                   .has_padding_idx = 1,
                                                                   .padding_idx = PAD})) == 0 &&
             ct_module_add_child(model, "encoder",
                                 ct_nn_transformer_encoder(ct_nn_transformer_encoder_layer(D, HEADS, &lo),
                                                           LAYERS, ct_nn_layer_norm(&d, 1, NULL))) == 0 &&
             ct_module_add_child(model, "head", ct_nn_linear(D, 10, 1)) == 0;
    ct_free(pos);
    int np = 0;
    ct_tensor **params = ok ? ct_module_parameters(model, &np) : NULL;
    ct_optimizer *opt = params ? ct_optim_adamw_opt(params, np, &(ct_adam_opts){.lr = 2e-3})
                               : NULL;
    free(params);
    if (!opt) {
        fprintf(stderr, "error: %s\n", ct_last_error());
        ct_module_free(model);
        return 1;
    }
    printf("SortTransformer: %lld parameters\n", (long long)ct_module_num_parameters(model));
    int rc = 0;
    for (long step = 0; step < steps && rc == 0; step++) {
        ct_scope *s = ct_scope_push();
        ct_tensor *x, *t, *kpm;
        make_batch(&x, &t, &kpm);
        ct_tensor *logits = forward(model, x, kpm);
        ct_tensor *loss = logits ? ct_cross_entropy(logits, t, CT_REDUCTION_MEAN, 0, -100) : NULL;
        if (!loss || ct_backward(loss, NULL, 0) != 0 || ct_optim_step(opt) != 0) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            rc = 1;
        }
        ct_optim_zero_grad(opt);
        if (rc == 0 && (step % 50 == 0 || step == steps - 1))
            printf("step %4ld  loss %.4f\n", step, ct_item(loss));
        ct_scope_pop(s);
    }
    /* accuracy on fresh batches */
    long right = 0, total = 0, seq_right = 0, seqs = 0;
    ct_module_eval(model);
    int prev = ct_set_grad_enabled(0);
    for (int b = 0; b < 8 && rc == 0; b++) {
        ct_scope *s = ct_scope_push();
        ct_tensor *x, *t, *kpm;
        make_batch(&x, &t, &kpm);
        ct_tensor *logits = forward(model, x, kpm);
        ct_tensor *pred = logits ? ct_argmax(logits, 1, 0) : NULL;
        if (!pred) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            rc = 1;
        } else {
            const int64_t *p = ct_data(pred), *tt = ct_data(t);
            for (int i = 0; i < BATCH; i++) {
                int all = 1;
                for (int j = 0; j < LMAX; j++) {
                    if (tt[i * LMAX + j] < 0) continue;
                    int hit = p[i * LMAX + j] == tt[i * LMAX + j];
                    right += hit, total++, all &= hit;
                }
                seq_right += all, seqs++;
            }
        }
        ct_scope_pop(s);
    }
    ct_set_grad_enabled(prev);
    if (rc == 0)
        printf("digit accuracy %.2f%%  sequence accuracy %.2f%% (%ld sequences)\n",
               100.0 * (double)right / (double)total, 100.0 * (double)seq_right / (double)seqs,
               seqs);
    ct_optim_free(opt);
    ct_module_free(model);
    return rc;
}
