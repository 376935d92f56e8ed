/* `ctorch doctor`'s smoke test (docs/doctor.md): on each device, a small convolution
 * (2x3x8x8 input, 4 3x3 filters, padding 1, bias) forward and backward through the public
 * API, against plain loops in double precision, timed. */
#include "doctor.h"
#include "ctorch.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum { SN = 2, SC = 3, SH = 8, SW = 8, SO = 4, SK = 3 };

typedef struct {
    float x[SN][SC][SH][SW], w[SO][SC][SK][SK], b[SO], g[SN][SO][SH][SW];
    double y[SN][SO][SH][SW], dx[SN][SC][SH][SW], dw[SO][SC][SK][SK], db[SO];
} smoke_ref;

/* y = conv(x, w) + b with padding 1, and the gradients of sum(y * g). */
static void reference(smoke_ref *s) {
    memset(s->y, 0, sizeof s->y);
    memset(s->dx, 0, sizeof s->dx);
    memset(s->dw, 0, sizeof s->dw);
    memset(s->db, 0, sizeof s->db);
    for (int n = 0; n < SN; n++)
        for (int o = 0; o < SO; o++)
            for (int i = 0; i < SH; i++)
                for (int j = 0; j < SW; j++) {
                    double acc = s->b[o], g = s->g[n][o][i][j];
                    s->db[o] += g;
                    for (int c = 0; c < SC; c++)
                        for (int u = 0; u < SK; u++)
                            for (int v = 0; v < SK; v++) {
                                int ii = i + u - 1, jj = j + v - 1;
                                if (ii < 0 || ii >= SH || jj < 0 || jj >= SW) continue;
                                acc += (double)s->w[o][c][u][v] * s->x[n][c][ii][jj];
                                s->dx[n][c][ii][jj] += (double)s->w[o][c][u][v] * g;
                                s->dw[o][c][u][v] += (double)s->x[n][c][ii][jj] * g;
                            }
                    s->y[n][o][i][j] = acc;
                }
}

/* Largest |got - want| over the largest |want|; -1 when got cannot be read. */
static double rel_err(const ct_tensor *got, const double *want, int64_t n) {
    ct_tensor *host = got ? ct_to_device(got, ct_cpu()) : NULL;
    ct_tensor *c = host ? ct_contiguous(host) : NULL;
    const float *p = c && ct_numel(c) == n ? ct_data(c) : NULL;
    double err = -1, scale = 1e-12;
    if (p) {
        err = 0;
        for (int64_t i = 0; i < n; i++) {
            err = fmax(err, fabs(p[i] - want[i]));
            scale = fmax(scale, fabs(want[i]));
        }
        err /= scale;
    }
    ct_free(c);
    ct_free(host);
    return err;
}

static ct_tensor *on(ct_device d, const float *data, const int64_t *shape, int ndim) {
    ct_tensor *h = ct_from_data(data, shape, ndim, CT_FLOAT32);
    ct_tensor *t = h ? ct_to_device(h, d) : NULL;
    ct_free(h);
    if (t && ct_set_requires_grad(t, 1) != 0) {
        ct_free(t);
        t = NULL;
    }
    return t;
}

/* Runs the convolution on d; the worst relative error of y, dx, dw, db, or -1 with
 * ct_last_error() on a failure. */
static double run_on(ct_device d, const smoke_ref *s) {
    static const int64_t xs[] = {SN, SC, SH, SW}, ws[] = {SO, SC, SK, SK}, bs[] = {SO},
                         ys[] = {SN, SO, SH, SW};
    static const int one[2] = {1, 1}, pad[2] = {1, 1};
    CT_SCOPE(scope);
    ct_tensor *x = on(d, &s->x[0][0][0][0], xs, 4), *w = on(d, &s->w[0][0][0][0], ws, 4);
    ct_tensor *b = on(d, s->b, bs, 1);
    ct_tensor *gh = ct_from_data(&s->g[0][0][0][0], ys, 4, CT_FLOAT32);
    ct_tensor *g = gh ? ct_to_device(gh, d) : NULL;
    ct_tensor *y = x && w && b && g ? ct_conv2d(x, w, b, one, pad, one, 1) : NULL;
    ct_tensor *loss = y ? ct_sum(ct_mul(y, g), NULL, 0, 0) : NULL;
    if (!loss || ct_backward(loss, NULL, 0) != 0) return -1;
    double e[4] = {rel_err(y, &s->y[0][0][0][0], SN * SO * SH * SW),
                   rel_err(ct_grad(x), &s->dx[0][0][0][0], SN * SC * SH * SW),
                   rel_err(ct_grad(w), &s->dw[0][0][0][0], SO * SC * SK * SK),
                   rel_err(ct_grad(b), s->db, SO)};
    double worst = 0;
    for (int i = 0; i < 4; i++) {
        if (e[i] < 0) return -1;
        worst = fmax(worst, e[i]);
    }
    return worst;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void smoke_device(dr_report *r, ct_device d, const smoke_ref *s) {
    char name[32], check[48];
    ct_device_str(d, name, sizeof name);
    snprintf(check, sizeof check, "smoke %s", name);
    double t0 = now(), err = run_on(d, s), ms = (now() - t0) * 1e3;
    /* float32 against double; an accelerator may use TF32 in its convolutions */
    double tol = ct_device_is_host(d) ? 1e-4 : 1e-2;
    if (err < 0) {
        dr_add(r, check, DR_PROBLEM, "report it with the output of `ctorch doctor --json`",
               "conv2d forward+backward failed: %s", ct_last_error());
    } else if (!(err <= tol)) {
        dr_add(r, check, DR_PROBLEM, "report it with the output of `ctorch doctor --json`",
               "conv2d forward+backward differs from the reference loops: relative error %.2e "
               "(tolerance %.0e)",
               err, tol);
    } else {
        dr_add(r, check, DR_OK, "", "conv2d forward+backward matches the reference loops "
                                    "(relative error %.1e) in %.1f ms",
               err, ms);
    }
}

void dr_check_smoke(dr_report *r) {
    static smoke_ref s;
    ct_manual_seed(1234);
    int64_t shape[] = {SN * SC * SH * SW + SO * SC * SK * SK + SO + SN * SO * SH * SW};
    ct_tensor *noise = ct_randn(shape, 1, CT_FLOAT32);
    if (!noise) {
        dr_add(r, "smoke", DR_PROBLEM, "", "cannot make the test data: %s", ct_last_error());
        return;
    }
    const float *p = ct_data(noise);
    memcpy(s.x, p, sizeof s.x);
    memcpy(s.w, p += sizeof s.x / sizeof(float), sizeof s.w);
    memcpy(s.b, p += sizeof s.w / sizeof(float), sizeof s.b);
    memcpy(s.g, p + sizeof s.b / sizeof(float), sizeof s.g);
    ct_free(noise);
    reference(&s);
    if (r->want_index < 0 || !r->want_cuda) smoke_device(r, ct_cpu(), &s);
    int n = ct_cuda_device_count();
    if (r->want_cuda && r->want_index >= n && n > 0) {
        char name[32];
        ct_device d;
        snprintf(name, sizeof name, "cuda:%d", r->want_index);
        if (ct_device_parse(name, &d) == 0 && ct_device_check(d) != 0)
            dr_add(r, "smoke", DR_PROBLEM, "pick an index below the device count (--device "
                                            "cuda:0)",
                   "%s", ct_last_error());
    }
    for (int i = 0; i < n; i++) {
        char name[32];
        ct_device d;
        snprintf(name, sizeof name, "cuda:%d", i);
        if ((r->want_index < 0 || r->want_index == i) && ct_device_parse(name, &d) == 0)
            smoke_device(r, d, &s);
    }
}
