/* The CIFAR-10 recipe of `ctorch train` (docs/models.md "Recipe: vit_tiny on CIFAR-10"):
 * --warmup-epochs, --label-smoothing, --clip-grad-norm. Bad values exit 2 naming the
 * option; the options are recorded and held by --resume; the lr of every step with the
 * warm-up is PyTorch's SequentialLR(LinearLR, CosineAnnealingLR) (committed fixture from
 * bench/pytorch_train.py's scheduler, tests/fixtures/gen_recipe.py); label smoothing
 * changes the training loss only, to PyTorch's value (peer: bench/pytorch_train.py from
 * the same weights); clipping bounds the update to lr * MAX, also under fp16's GradScaler
 * (unscaled first); vit_tiny trains with the whole recipe. */
#include "test.h"
#include "cli_util.h"
#include "ctorch_nn.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ctorch train simple_cnn on the first `limit` CIFAR-10 images in batches of 16, in
 * record order, SGD without momentum. */
static int train(const char *run_dir, int limit, const char *extra, const char *log) {
    char args[256];
    snprintf(args, sizeof args, "--model simple_cnn --train-limit %d --test-limit 16 "
             "--batch-size 16 --no-shuffle --momentum 0", limit);
    return cli_train(args, run_dir, extra, log);
}

/* The run's metrics.jsonl rows (a JSON array), or NULL. */
static json_t *rows(const char *run_dir) {
    char p[600];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    json_t *a = json_array();
    json_error_t je;
    FILE *f = fopen(p, "r");
    char line[4096];
    while (f && a && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, &je);
        if (o) json_array_append_new(a, o);
    }
    if (f) fclose(f);
    CHECK_MSG(f && json_array_size(a) > 0, "%s: no rows", p);
    return a;
}

/* The first line of a file that parses as a JSON object (bench/pytorch_train.py's
 * output among any warnings), or NULL. */
static json_t *first_json_line(const char *path) {
    FILE *f = fopen(path, "r");
    char line[4096];
    json_t *o = NULL;
    json_error_t je;
    while (f && !o && fgets(line, sizeof line, f))
        if (line[0] == '{') o = json_loads(line, 0, &je);
    if (f) fclose(f);
    return o;
}

static double row_num(json_t *rows, size_t i, const char *key) {
    json_t *v = json_object_get(json_array_get(rows, i), key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* The 2-norm of (b - a) over every tensor of two state_dicts. */
static double update_norm(const char *run_a, const char *file_b) {
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", run_a);
    ct_state_dict *a = ct_state_dict_load(p), *b = ct_state_dict_load(file_b);
    CHECK_MSG(a && b, "%s / %s: %s", p, file_b, ct_last_error());
    double s = 0;
    for (int i = 0; a && b && i < a->n; i++) {
        ct_tensor *t = ct_state_dict_get(b, a->names[i]);
        if (!t || ct_numel(t) != ct_numel(a->tensors[i])) {
            CHECK_MSG(0, "%s differs in shape", a->names[i]);
            continue;
        }
        const float *x = ct_data(a->tensors[i]), *y = ct_data(t);
        for (int64_t k = 0; k < ct_numel(t); k++) s += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
    }
    ct_state_dict_free(a);
    ct_state_dict_free(b);
    return sqrt(s);
}

TEST(recipe_options_are_checked) {
    char log[600], dir[512], cmd[4096];
    snprintf(log, sizeof log, "%s/ro.log", tmpdir());
    snprintf(dir, sizeof dir, "%s/ro_none", tmpdir());
    static const struct {
        const char *args, *msg;
    } bad[] = {
        {"--label-smoothing 1.5", "--label-smoothing must be between 0 and 1, got 1.5"},
        {"--label-smoothing -0.1", "--label-smoothing must be between 0 and 1"},
        {"--label-smoothing x", "--label-smoothing expects a number, got 'x'"},
        {"--clip-grad-norm 0", "--clip-grad-norm 0 would zero every gradient"},
        {"--clip-grad-norm -1", "--clip-grad-norm must be between 0 and"},
        {"--warmup-epochs -1", "--warmup-epochs must be between 0 and"},
        {"--warmup-epochs 1 --schedule onecycle", "onecycle has its own warm-up; drop --warmup-epochs"},
        {"--warmup-epochs 1 --schedule step", "--warmup-epochs goes with --schedule cosine or none"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset cifar10 --run-dir %s %s",
                 bin(), dir, bad[i].args);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 2, "%s: exit %d, want 2", bad[i].args, rc);
        CHECK_MSG(log_has(log, bad[i].msg), "%s: no '%s' in the message", bad[i].args, bad[i].msg);
    }
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    /* a warm-up as long as the run leaves the cosine nothing */
    CHECK(train(dir, 32, "--epochs 2 --schedule cosine --warmup-epochs 2", log) == 2);
    CHECK(log_has(log, "--warmup-epochs 2 is 4 steps (2 per epoch), not fewer than the run's 4 steps"));
    /* recorded in the manifest; --resume refuses other values */
    snprintf(dir, sizeof dir, "%s/ro_run", tmpdir());
    CHECK(train(dir, 32, "--epochs 1 --schedule cosine --warmup-epochs 0.5 --label-smoothing 0.1 "
                "--clip-grad-norm 2.5", log) == 0);
    CHECK(log_has(log, "recipe: warm-up 1 step (lr from 0.01 x --lr, linear) then cosine, label "
                  "smoothing 0.1, gradients clipped to norm 2.5"));
    char mp[600];
    snprintf(mp, sizeof mp, "%s/manifest.json", dir);
    CHECK(log_has(mp, "\"label_smoothing\": 0.10000000000000001") || log_has(mp, "\"label_smoothing\": 0.1"));
    CHECK(log_has(mp, "\"clip_grad_norm\": 2.5") && log_has(mp, "\"warmup_epochs\": 0.5"));
    snprintf(cmd, sizeof cmd, "%s train --resume %s --epochs 2 --label-smoothing 0.2 "
             "--clip-grad-norm 1 --warmup-epochs 0", bin(), dir);
    CHECK(run(cmd, log) == 2);
    CHECK(log_has(log, "--label-smoothing 0.2 (the run has 0.1)"));
    CHECK(log_has(log, "--clip-grad-norm 1 (the run has 2.5)"));
    CHECK(log_has(log, "--warmup-epochs 0 (the run has 0.5)"));
    /* the default (no clipping) is recorded as null */
    snprintf(dir, sizeof dir, "%s/ro_plain", tmpdir());
    CHECK(train(dir, 16, "--epochs 1", log) == 0);
    snprintf(mp, sizeof mp, "%s/manifest.json", dir);
    CHECK(log_has(mp, "\"clip_grad_norm\": null") && log_has(mp, "\"warmup_epochs\": 0"));
    CHECK(!log_has(log, "recipe:"));
}

/* 32 images in batches of 16: 2 steps per epoch, 6 epochs = 12 steps, --warmup-epochs
 * 1.25 = round(2.5) = 3 steps. Each epoch's row has the lr of its last step (1, 3, ...,
 * 11), PyTorch's to 8 digits. */
static void check_lr_rows(const char *schedule, const char *key) {
    char log[600], dir[512], extra[256];
    snprintf(log, sizeof log, "%s/lr_%s.log", tmpdir(), schedule);
    snprintf(dir, sizeof dir, "%s/lr_%s", tmpdir(), schedule);
    snprintf(extra, sizeof extra, "--epochs 6 --lr 0.001 --schedule %s --warmup-epochs 1.25", schedule);
    CHECK(train(dir, 32, extra, log) == 0);
    CHECK(log_has(log, "recipe: warm-up 3 steps"));
    ct_fixture *fx = ct_fixture_load("recipe");
    ct_tensor *want = fx ? ct_fixture_get(fx, key) : NULL;
    json_t *r = rows(dir);
    if (want && r) {
        const double *w = ct_data(want);
        CHECK(ct_numel(want) == 12 && json_array_size(r) == 6);
        for (size_t e = 0; e < json_array_size(r) && e < 6; e++) {
            double got = row_num(r, e, "lr"), ref = w[2 * e + 1];
            CHECK_MSG(fabs(got - ref) <= 1e-7 * ref, "%s: epoch %zu (step %zu): lr %.10g, PyTorch's "
                      "%.10g", schedule, e + 1, 2 * e + 1, got, ref);
        }
    }
    json_decref(r);
    ct_free(want);
    ct_fixture_free(fx);
}

TEST(recipe_warmup_lr_is_pytorch_sequential_lr) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    check_lr_rows("cosine", "warmup_cosine");
    check_lr_rows("none", "warmup_none");
}

/* Starting weights for the comparisons: a --lr 0 step leaves simple_cnn's weights (no
 * BatchNorm) as initialised. */
static const char *init_weights(void) {
    static char path[600];
    if (path[0]) return path;
    char dir[512], log[600];
    snprintf(dir, sizeof dir, "%s/init", tmpdir());
    snprintf(log, sizeof log, "%s/init.log", tmpdir());
    if (train(dir, 16, "--epochs 1 --lr 0", log) != 0) return NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return path;
}

/* --lr 0, one step of 16 images from the same weights: with --label-smoothing 0.1 the
 * training loss is PyTorch's CrossEntropyLoss(label_smoothing=0.1) on that batch (peer:
 * bench/pytorch_train.py --init), the test loss the plain one in both runs. */
TEST(recipe_label_smoothing_is_pytorch_s_training_loss) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    const char *w = init_weights();
    if (!w) {
        CHECK_MSG(0, "no initial weights");
        return;
    }
    char log[600], da[512], db[512], extra[1024];
    snprintf(log, sizeof log, "%s/ls.log", tmpdir());
    snprintf(da, sizeof da, "%s/ls_a", tmpdir());
    snprintf(db, sizeof db, "%s/ls_b", tmpdir());
    snprintf(extra, sizeof extra, "--epochs 1 --lr 0 --init %s --label-smoothing 0.1", w);
    CHECK(train(da, 16, extra, log) == 0);
    snprintf(extra, sizeof extra, "--epochs 1 --lr 0 --init %s", w);
    CHECK(train(db, 16, extra, log) == 0);
    json_t *ra = rows(da), *rb = rows(db);
    double la = row_num(ra, 0, "train_loss"), lb = row_num(rb, 0, "train_loss");
    double ta = row_num(ra, 0, "test_loss"), tb = row_num(rb, 0, "test_loss");
    CHECK_MSG(fabs(la - lb) > 1e-5, "label smoothing left the training loss at %g", lb);
    CHECK_MSG(ta == tb, "the test loss moved with label smoothing: %g vs %g", ta, tb);
    const char *py = peer_python("torch, safetensors");
    if (!py) {
        json_decref(ra), json_decref(rb);
        SKIP("no Python with torch and safetensors for the PyTorch side (bench/setup-peer.sh)");
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "CTORCH_DATA=%s '%s' bench/pytorch_train.py --model simple_cnn --dataset cifar10 "
             "--train-limit 16 --test-limit 16 --batch-size 16 --no-shuffle --optimizer sgd "
             "--momentum 0 --lr 0 --epochs 1 --init %s --label-smoothing 0.1 --threads 2",
             data_dir(), py, w);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "bench/pytorch_train.py exited %d", rc);
    if (rc) show_log(log);
    json_t *p = rc == 0 ? first_json_line(log) : NULL;
    if (p) {
        double pl = json_number_value(json_object_get(p, "train_loss"));
        double pt = json_number_value(json_object_get(p, "test_loss"));
        CHECK_MSG(fabs(pl - la) <= 1e-5 * fabs(pl), "train_loss: ctorch %.7g, PyTorch %.7g", la, pl);
        CHECK_MSG(fabs(pt - ta) <= 1e-5 * fabs(pt), "test_loss: ctorch %.7g, PyTorch %.7g", ta, pt);
    } else if (rc == 0) {
        CHECK_MSG(0, "bench/pytorch_train.py printed no JSON line");
        show_log(log);
    }
    json_decref(p), json_decref(ra), json_decref(rb);
}

/* One SGD step (no momentum) at --lr 10 from the same weights: clipped to norm 0.001 the
 * update's norm is 10 * 0.001 (the gradient's norm is far above 0.001); unclipped far
 * more. Under --amp fp16 the GradScaler unscales before the clip, so the update is the
 * same size (clipping the scaled gradients would shrink it by the scale, 65536). */
TEST(recipe_clip_grad_norm_bounds_the_update) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    const char *w = init_weights();
    if (!w) {
        CHECK_MSG(0, "no initial weights");
        return;
    }
    char log[600], dir[512], extra[1024];
    snprintf(log, sizeof log, "%s/clip.log", tmpdir());
    static const char *const variants[] = {"", "--amp fp16"};
    for (int v = 0; v < 2; v++) {
        snprintf(dir, sizeof dir, "%s/clip_%d", tmpdir(), v);
        snprintf(extra, sizeof extra, "--epochs 1 --lr 10 --init %s --clip-grad-norm 0.001 %s", w,
                 variants[v]);
        CHECK(train(dir, 16, extra, log) == 0);
        double n = update_norm(dir, w);
        CHECK_MSG(fabs(n - 0.01) < 2e-4, "%s: |w1 - w0| = %.6g, want 10 * 0.001", variants[v], n);
    }
    snprintf(dir, sizeof dir, "%s/clip_off", tmpdir());
    snprintf(extra, sizeof extra, "--epochs 1 --lr 10 --init %s", w);
    CHECK(train(dir, 16, extra, log) == 0);
    double n = update_norm(dir, w);
    CHECK_MSG(n > 0.1, "unclipped: |w1 - w0| = %.6g, want > 0.1", n);
}

/* The documented recipe on vit_tiny, two steps of 16 images with bf16 autocast. */
TEST(recipe_vit_tiny_trains_with_the_recipe) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    char log[600], dir[512];
    snprintf(log, sizeof log, "%s/vit.log", tmpdir());
    snprintf(dir, sizeof dir, "%s/vit", tmpdir());
    int rc = cli_train("--model vit_tiny --train-limit 64 --test-limit 32 --epochs 1 "
                       "--batch-size 16 --max-steps 2 --optimizer adamw --lr 1e-3 "
                       "--weight-decay 0.05 --schedule cosine --warmup-epochs 0.25 "
                       "--label-smoothing 0.1 --clip-grad-norm 1.0 --augment standard "
                       "--amp bf16", dir, "", log);
    CHECK_MSG(rc == 0, "exit %d", rc);
    if (rc) show_log(log);
    CHECK(log_has(log, "recipe: warm-up 1 step (lr from 0.01 x --lr, linear) then cosine, label "
                  "smoothing 0.1, gradients clipped to norm 1"));
    CHECK(log_has(log, "final test accuracy"));
}
