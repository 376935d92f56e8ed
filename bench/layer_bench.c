/* Per-layer GFLOP/s of ctorch's convolutions and linear layers, through the public API
 * (ct_conv2d / ct_linear and ct_backward), against a given GEMM peak.
 *
 * build (as the examples): cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude bench/layer_bench.c \
 *           build/libctorch.a -o build/bench/layer_bench -lopenblas -lz -lpthread -ldl -lm
 * run:   build/bench/layer_bench [--model simple_cnn|resnet18_cifar|vit_tiny|all] [--batch-size B]
 *           [--threads T] [--peak GFLOPS] [--min-time S] [--json] [--amp bf16|off]
 *
 * For each layer shape: forward with autograd on (the training forward), forward under
 * no-grad (inference), backward to the input only (x requires grad, the weight not) and
 * backward to the weight (and bias) only (the weight requires grad, x not). FLOPs use the
 * --amp bf16: the input and output gradient in bfloat16 and each forward under a bf16 autocast
 * region (weights cast per call, as once per training step). FLOPs use the
 * standard formulas: forward 2*N*Cout*Hout*Wout*Cin*KH*KW/groups, and the same count for
 * each of the two backward products. Each measurement is the best of several repetitions
 * (at least 2 and at least --min-time seconds) after a warm-up, like the GEMM peak it is
 * compared with. --json prints one object per layer; otherwise a table. */
#include "ctorch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *name;
    int count;         /* how many times the shape occurs in the model */
    int linear;        /* 1: ct_linear [N, cin] -> [N, cout] */
    int cin, cout, k, stride, pad, h, w;
    int bias;
    int data_grad_in_training; /* whether training computes this layer's input gradient */
} layer;

static const layer simple_cnn_layers[] = {
    {"conv1 3->32 3x3 @32x32", 1, 0, 3, 32, 3, 1, 1, 32, 32, 1, 0},
    {"conv2 32->64 3x3 @16x16", 1, 0, 32, 64, 3, 1, 1, 16, 16, 1, 1},
    {"fc 4096->10", 1, 1, 4096, 10, 0, 0, 0, 0, 0, 1, 1},
};

static const layer resnet18_layers[] = {
    {"conv1 3->64 3x3 @32", 1, 0, 3, 64, 3, 1, 1, 32, 32, 0, 0},
    {"layer1 64->64 3x3 @32", 4, 0, 64, 64, 3, 1, 1, 32, 32, 0, 1},
    {"layer2.0 64->128 3x3 s2 @32", 1, 0, 64, 128, 3, 2, 1, 32, 32, 0, 1},
    {"layer2 128->128 3x3 @16", 3, 0, 128, 128, 3, 1, 1, 16, 16, 0, 1},
    {"layer2 down 64->128 1x1 s2 @32", 1, 0, 64, 128, 1, 2, 0, 32, 32, 0, 1},
    {"layer3.0 128->256 3x3 s2 @16", 1, 0, 128, 256, 3, 2, 1, 16, 16, 0, 1},
    {"layer3 256->256 3x3 @8", 3, 0, 256, 256, 3, 1, 1, 8, 8, 0, 1},
    {"layer3 down 128->256 1x1 s2 @16", 1, 0, 128, 256, 1, 2, 0, 16, 16, 0, 1},
    {"layer4.0 256->512 3x3 s2 @8", 1, 0, 256, 512, 3, 2, 1, 8, 8, 0, 1},
    {"layer4 512->512 3x3 @4", 3, 0, 512, 512, 3, 1, 1, 4, 4, 0, 1},
    {"layer4 down 256->512 1x1 s2 @8", 1, 0, 256, 512, 1, 2, 0, 8, 8, 0, 1},
    {"fc 512->10", 1, 1, 512, 10, 0, 0, 0, 0, 0, 1, 1},
};

/* vit_tiny's linear layers: rows = batch x 65 tokens (64 patches + the class token) */
static const layer vit_tiny_layers[] = {
    {"qkv 192->576 (x65 tokens)", 12, 1, 192, 576, 0, 0, 0, 0, 0, 1, 1},
    {"out_proj 192->192", 12, 1, 192, 192, 0, 0, 0, 0, 0, 1, 1},
    {"mlp.0 192->768", 12, 1, 192, 768, 0, 0, 0, 0, 0, 1, 1},
    {"mlp.3 768->192", 12, 1, 768, 192, 0, 0, 0, 0, 0, 1, 1},
};

enum { FWD_TRAIN, FWD_INFER, BWD_DATA, BWD_WEIGHT, NPHASE };
static const char *phase_names[NPHASE] = {"fwd_train", "fwd_infer", "bwd_data", "bwd_weight"};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "layer_bench: %s: %s\n", what, ct_last_error());
    exit(1);
}

static int amp_bf16; /* --amp bf16: bf16 activations, forward under autocast */

static ct_tensor *forward(const layer *L, ct_tensor *x, ct_tensor *w, ct_tensor *b) {
    if (amp_bf16) ct_autocast_push(CT_CPU, CT_BFLOAT16); /* per call, as per training step */
    ct_tensor *y;
    if (L->linear) y = ct_linear(x, w, b);
    else {
        int st[2] = {L->stride, L->stride}, pd[2] = {L->pad, L->pad}, dl[2] = {1, 1};
        y = ct_conv2d(x, w, b, st, pd, dl, 1);
    }
    if (amp_bf16) ct_autocast_pop();
    return y;
}

/* Best time of one phase: x/w/b requires-grad flags as the phase needs. */
static double time_phase(const layer *L, int phase, ct_tensor *x, ct_tensor *w, ct_tensor *b,
                         ct_tensor *gout, double min_time) {
    ct_set_requires_grad(x, phase == BWD_DATA);
    ct_set_requires_grad(w, phase != BWD_DATA);
    if (b) ct_set_requires_grad(b, phase != BWD_DATA);
    int prev = ct_set_grad_enabled(phase != FWD_INFER);
    double best = 1e30, spent = 0;
    for (int rep = 0; rep < 3 || spent < min_time; rep++) { /* rep 0 is the warm-up */
        double t0 = now();
        ct_tensor *y = forward(L, x, w, b);
        if (!y) die("forward");
        double t1 = now();
        if (phase == BWD_DATA || phase == BWD_WEIGHT) {
            if (ct_backward(y, gout, 0) != 0) die("backward");
        }
        double t2 = now();
        ct_free(y);
        ct_zero_grad(x);
        ct_zero_grad(w);
        if (b) ct_zero_grad(b);
        double t = (phase == FWD_TRAIN || phase == FWD_INFER) ? t1 - t0 : t2 - t1;
        if (rep > 0 && t < best) best = t;
        if (rep > 0) spent += t2 - t0;
        if (rep > 200) break;
    }
    ct_set_grad_enabled(prev);
    return best;
}

static void bench_layer(const layer *L, const char *model, int64_t n, double peak, double min_time,
                        int json, double *tot_flops, double *tot_time) {
    int64_t xs[4], ws[4], bs[1] = {L->cout}, os[4];
    int xd, wd, od;
    double flops;
    if (L->linear) {
        xs[0] = n, xs[1] = L->cin, xd = 2;
        ws[0] = L->cout, ws[1] = L->cin, wd = 2;
        os[0] = n, os[1] = L->cout, od = 2;
        flops = 2.0 * (double)n * L->cin * L->cout;
    } else {
        int ho = (L->h + 2 * L->pad - L->k) / L->stride + 1, wo = (L->w + 2 * L->pad - L->k) / L->stride + 1;
        xs[0] = n, xs[1] = L->cin, xs[2] = L->h, xs[3] = L->w, xd = 4;
        ws[0] = L->cout, ws[1] = L->cin, ws[2] = L->k, ws[3] = L->k, wd = 4;
        os[0] = n, os[1] = L->cout, os[2] = ho, os[3] = wo, od = 4;
        flops = 2.0 * (double)n * L->cout * ho * wo * L->cin * L->k * L->k;
    }
    ct_tensor *x = ct_randn(xs, xd, CT_FLOAT32), *w = ct_randn(ws, wd, CT_FLOAT32);
    ct_tensor *b = L->bias ? ct_randn(bs, 1, CT_FLOAT32) : NULL;
    ct_tensor *g = ct_randn(os, od, CT_FLOAT32);
    if (!x || !w || (L->bias && !b) || !g) die("allocating inputs");
    if (amp_bf16) { /* activations arrive in bf16 from the layer before, as in training */
        ct_tensor *xb = ct_to_dtype(x, CT_BFLOAT16), *gb = ct_to_dtype(g, CT_BFLOAT16);
        if (!xb || !gb) die("casting inputs to bf16");
        ct_free(x);
        ct_free(g);
        x = xb, g = gb;
    }
    double t[NPHASE];
    for (int p = 0; p < NPHASE; p++) t[p] = time_phase(L, p, x, w, b, g, min_time);
    /* what one training step spends on this layer: forward, weight grad, data grad if needed */
    double train_flops = flops * (L->data_grad_in_training ? 3 : 2);
    double train_time = t[FWD_TRAIN] + t[BWD_WEIGHT] + (L->data_grad_in_training ? t[BWD_DATA] : 0);
    tot_flops[0] += L->count * train_flops;
    tot_time[0] += L->count * train_time;
    for (int p = 0; p < NPHASE; p++) {
        tot_flops[1 + p] += L->count * flops;
        tot_time[1 + p] += L->count * t[p];
    }
    if (json) {
        printf("{\"model\": \"%s\", \"layer\": \"%s\", \"count\": %d, \"batch_size\": %lld, "
               "\"threads\": %d, \"gflop\": %.4f, \"data_grad_in_training\": %s",
               model, L->name, L->count, (long long)n, ct_get_num_threads(), flops * 1e-9,
               L->data_grad_in_training ? "true" : "false");
        for (int p = 0; p < NPHASE; p++)
            printf(", \"%s_ms\": %.4f, \"%s_gflops\": %.2f", phase_names[p], t[p] * 1e3, phase_names[p],
                   flops / t[p] * 1e-9);
        printf(", \"train_gflops\": %.2f, \"peak_gflops\": %.1f}\n", train_flops / train_time * 1e-9, peak);
    } else {
        printf("%-34s %3d %8.3f", L->name, L->count, flops * 1e-9);
        for (int p = 0; p < NPHASE; p++) {
            double gf = flops / t[p] * 1e-9;
            if (peak > 0) printf(" %7.1f (%3.0f%%)", gf, 100 * gf / peak);
            else printf(" %7.1f       ", gf);
        }
        if (!L->data_grad_in_training) printf("  (data grad not used in training)");
        printf("\n");
    }
    fflush(stdout);
    ct_free(x);
    ct_free(w);
    ct_free(b);
    ct_free(g);
}

static void bench_model(const char *model, const layer *ls, int nl, int64_t n, double peak,
                        double min_time, int json) {
    double tf[1 + NPHASE] = {0}, tt[1 + NPHASE] = {0};
    if (!json) {
        printf("\n%s, batch %lld, %d threads: GFLOP/s (%% of the %.1f GFLOP/s GEMM peak), best of reps\n",
               model, (long long)n, ct_get_num_threads(), peak);
        printf("%-34s %3s %8s %16s %16s %16s %16s\n", "layer", "n", "GFLOP", "fwd (train)",
               "fwd (no_grad)", "bwd data", "bwd weight");
    }
    for (int i = 0; i < nl; i++) bench_layer(&ls[i], model, n, peak, min_time, json, tf, tt);
    double train = tf[0] / tt[0] * 1e-9;
    if (json) {
        printf("{\"model\": \"%s\", \"layer\": \"all\", \"batch_size\": %lld, \"threads\": %d",
               model, (long long)n, ct_get_num_threads());
        for (int p = 0; p < NPHASE; p++)
            printf(", \"%s_ms\": %.4f, \"%s_gflops\": %.2f", phase_names[p], tt[1 + p] * 1e3, phase_names[p],
                   tf[1 + p] / tt[1 + p] * 1e-9);
        printf(", \"train_ms\": %.4f, \"train_gflops\": %.2f, \"peak_gflops\": %.1f}\n", tt[0] * 1e3, train,
               peak);
    } else {
        printf("%-34s %3s %8.3f", "all layers (weighted by n)", "", tf[1] * 1e-9);
        for (int p = 0; p < NPHASE; p++) {
            double gf = tf[1 + p] / tt[1 + p] * 1e-9;
            if (peak > 0) printf(" %7.1f (%3.0f%%)", gf, 100 * gf / peak);
            else printf(" %7.1f       ", gf);
        }
        printf("\ntraining step's share (fwd + bwd weight + bwd data where needed): %.1f GFLOP in %.1f ms = "
               "%.1f GFLOP/s", tf[0] * 1e-9, tt[0] * 1e3, train);
        if (peak > 0) printf(" (%.0f%% of peak)", 100 * train / peak);
        printf("\n");
    }
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr, "usage: layer_bench [--model simple_cnn|resnet18_cifar|vit_tiny|all] [--batch-size B] [--threads T]\n"
                    "                   [--peak GFLOPS] [--min-time SECONDS] [--json] [--amp bf16|off]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *model = "all";
    int64_t batch = 0;
    int threads = 2, json = 0;
    double peak = 0, min_time = 0.3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--batch-size") && i + 1 < argc) batch = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--peak") && i + 1 < argc) peak = atof(argv[++i]);
        else if (!strcmp(argv[i], "--min-time") && i + 1 < argc) min_time = atof(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--amp") && i + 1 < argc) {
            const char *a = argv[++i];
            if (!strcmp(a, "bf16")) amp_bf16 = 1;
            else if (strcmp(a, "off")) usage();
        }
        else usage();
    }
    int all = !strcmp(model, "all");
    if (!all && strcmp(model, "simple_cnn") && strcmp(model, "resnet18_cifar") &&
        strcmp(model, "vit_tiny"))
        usage();
    if (batch < 0 || threads < 0 || min_time < 0) usage();
    ct_set_num_threads(threads);
    ct_manual_seed(0);
    if (all || !strcmp(model, "simple_cnn"))
        bench_model("simple_cnn", simple_cnn_layers, (int)(sizeof simple_cnn_layers / sizeof *simple_cnn_layers),
                    batch ? batch : 64, peak, min_time, json);
    if (all || !strcmp(model, "resnet18_cifar"))
        bench_model("resnet18_cifar", resnet18_layers, (int)(sizeof resnet18_layers / sizeof *resnet18_layers),
                    batch ? batch : 128, peak, min_time, json);
    if (all || !strcmp(model, "vit_tiny"))
        bench_model("vit_tiny", vit_tiny_layers, (int)(sizeof vit_tiny_layers / sizeof *vit_tiny_layers),
                    (batch ? batch : 128) * 65, peak, min_time, json);
    return 0;
}
