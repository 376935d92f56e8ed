/* Fine-tuning with `ctorch train` (docs/models.md): --init of torchvision's resnet18 with
 * 1000 classes into a 10-class model needs --init-ignore fc. (else exit 2 naming the
 * mismatches and the fix); --freeze leaves those weights bitwise unchanged; --lr-backbone
 * moves the backbone by its own lr (one SGD step against the formula) and the head by
 * --lr; list options; the options are recorded and held by --resume; a run from before
 * resnet18_cifar verifies and resumes as resnet18_cifar; torchvision's own weights (peer)
 * train. */
#include "test.h"
#include "cli_util.h"
#include "ctorch_nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *tv_peer_weights(void); /* tests/test_torchvision_models.c */

/* A resnet18 (torchvision's layout) with 1000 classes saved by ctorch: ImageNet-shaped
 * weights without a peer. */
static const char *imagenet_weights(void) {
    static char path[512];
    if (path[0]) return path;
    snprintf(path, sizeof path, "%s/resnet18_1000.safetensors", tmpdir());
    ct_manual_seed(5);
    ct_module *m = ct_model_create("resnet18", 1000);
    const char *meta[] = {"model", "resnet18", NULL};
    if (!m || ct_module_save(m, path, meta) != 0) {
        CHECK_MSG(0, "writing %s: %s", path, ct_last_error());
        path[0] = 0;
    }
    ct_module_free(m);
    return path[0] ? path : NULL;
}

/* ctorch train on 16 CIFAR-10 images, one batch, --max-steps steps, no shuffling. */
static int train(const char *run_dir, const char *extra, const char *log) {
    return cli_train("--model resnet18 --train-limit 16 --test-limit 16 --batch-size 16 "
                     "--epochs 1 --no-shuffle --momentum 0 --deterministic", run_dir, extra, log);
}

static ct_state_dict *run_weights(const char *run_dir) {
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", run_dir);
    ct_state_dict *sd = ct_state_dict_load(p);
    CHECK_MSG(sd != NULL, "%s: %s", p, ct_last_error());
    return sd;
}

static int same_bits(const ct_tensor *a, const ct_tensor *b) {
    return a && b && ct_numel(a) == ct_numel(b) && ct_dtype_of(a) == ct_dtype_of(b) &&
           !memcmp(ct_data(a), ct_data(b), (size_t)ct_numel(a) * ct_dtype_size(ct_dtype_of(a)));
}

TEST(finetune_num_classes_and_init_ignore) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    const char *w = imagenet_weights();
    if (!w) return;
    char dir[512], log[600], extra[1024];
    snprintf(log, sizeof log, "%s/ft1.log", tmpdir());
    /* the 1000-class head does not fit 10 classes: exit 2, the mismatches and the fix */
    snprintf(dir, sizeof dir, "%s/ft1", tmpdir());
    snprintf(extra, sizeof extra, "--max-steps 1 --init %s --num-classes 10", w);
    CHECK(train(dir, extra, log) == 2);
    CHECK(log_has(log, "does not fit --model resnet18 with 10 classes"));
    CHECK(log_has(log, "size mismatch: fc.weight: given [1000, 512], model has [10, 512]"));
    CHECK(log_has(log, "--init-ignore fc."));
    /* a prefix that names nothing is an error, not a no-op */
    snprintf(dir, sizeof dir, "%s/ft1b", tmpdir());
    snprintf(extra, sizeof extra, "--max-steps 1 --init %s --init-ignore fcc.", w);
    CHECK(train(dir, extra, log) == 2);
    CHECK(log_has(log, "--init-ignore fcc.: no tensor"));
    /* --init-ignore fc.: the backbone from the file, a fresh 10-way head */
    snprintf(dir, sizeof dir, "%s/ft2", tmpdir());
    snprintf(extra, sizeof extra, "--max-steps 1 --lr 0 --init %s --num-classes 10 "
             "--init-ignore fc.", w);
    CHECK(train(dir, extra, log) == 0);
    ct_state_dict *got = run_weights(dir), *file = ct_state_dict_load(w);
    if (got && file) {
        /* lr 0: the weights are the file's; the BatchNorm statistics moved (train mode) */
        CHECK(same_bits(ct_state_dict_get(got, "layer3.1.conv2.weight"),
                        ct_state_dict_get(file, "layer3.1.conv2.weight")));
        CHECK(ct_size(ct_state_dict_get(got, "fc.weight"), 0) == 10);
        CHECK(!same_bits(ct_state_dict_get(got, "bn1.running_mean"),
                         ct_state_dict_get(file, "bn1.running_mean")));
    }
    ct_state_dict_free(got);
    ct_state_dict_free(file);
    /* recorded in the manifest; --resume refuses another value */
    char mp[600];
    snprintf(mp, sizeof mp, "%s/manifest.json", dir);
    CHECK(log_has(mp, "\"init_ignore\": \"fc.\"") && log_has(mp, "\"num_classes\": 10"));
    snprintf(extra, sizeof extra, "%s train --resume %s --init-ignore layer4.", bin(), dir);
    CHECK(run(extra, log) == 2);
    CHECK(log_has(log, "--init-ignore layer4. (the run has fc.)"));
    /* fewer classes than the data has */
    snprintf(dir, sizeof dir, "%s/ft3", tmpdir());
    CHECK(train(dir, "--max-steps 1 --num-classes 5", log) == 2);
    CHECK(log_has(log, "--num-classes 5: cifar10 has 10 classes"));
}

TEST(finetune_freeze_leaves_weights_bitwise_unchanged) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    const char *w = imagenet_weights();
    if (!w) return;
    char dir[512], log[600], extra[1024];
    snprintf(log, sizeof log, "%s/fz.log", tmpdir());
    snprintf(dir, sizeof dir, "%s/fz", tmpdir());
    /* repeated and comma-separated prefixes make one list */
    snprintf(extra, sizeof extra, "--max-steps 2 --lr 0.05 --init %s --init-ignore fc. "
             "--freeze conv1.,bn1. --freeze layer1.,layer2.0.", w);
    CHECK(train(dir, extra, log) == 0);
    CHECK(log_has(log, "parameter tensors frozen (--freeze conv1.,bn1.,layer1.,layer2.0.)"));
    ct_state_dict *got = run_weights(dir), *file = ct_state_dict_load(w);
    int frozen = 0, moved = 0;
    for (int i = 0; got && file && i < got->n; i++) {
        const char *n = got->names[i];
        ct_tensor *t = got->tensors[i], *f = ct_state_dict_get(file, n);
        if (strstr(n, "running_") || strstr(n, "num_batches") || !strncmp(n, "fc.", 3)) continue;
        int under = !strncmp(n, "conv1.", 6) || !strncmp(n, "bn1.", 4) || !strncmp(n, "layer1.", 7) ||
                    !strncmp(n, "layer2.0.", 9);
        if (under) {
            CHECK_MSG(same_bits(t, f), "frozen %s changed", n);
            frozen++;
        } else if (!same_bits(t, f)) {
            moved++;
        }
    }
    CHECK_MSG(frozen == 24, "%d frozen tensors compared, want 24", frozen);
    CHECK_MSG(moved > 20, "only %d trained tensors moved", moved);
    /* PyTorch's semantics: the frozen BatchNorm's running statistics still follow the data */
    if (got && file)
        CHECK(!same_bits(ct_state_dict_get(got, "layer1.0.bn1.running_var"),
                         ct_state_dict_get(file, "layer1.0.bn1.running_var")));
    ct_state_dict_free(got);
    ct_state_dict_free(file);
    snprintf(dir, sizeof dir, "%s/fz2", tmpdir());
    CHECK(train(dir, "--max-steps 1 --freeze nothing.", log) == 2);
    CHECK(log_has(log, "--freeze nothing.: no tensor of the model starts with nothing."));
}

/* One SGD step (momentum 0, no weight decay): w1 = w0 - lr * g. Run B trains everything at
 * --lr 0.1; run A the same step with --lr-backbone 0.01: its head is B's bit for bit, its
 * backbone moved by a tenth of B's step. */
TEST(finetune_lr_backbone_is_the_backbone_step_size) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    const char *w = imagenet_weights();
    if (!w) return;
    char da[512], db[512], log[600], extra[1024];
    snprintf(log, sizeof log, "%s/lrb.log", tmpdir());
    snprintf(da, sizeof da, "%s/lrb_a", tmpdir());
    snprintf(db, sizeof db, "%s/lrb_b", tmpdir());
    snprintf(extra, sizeof extra, "--max-steps 1 --lr 0.1 --lr-backbone 0.01 --init %s "
             "--init-ignore fc.", w);
    CHECK(train(da, extra, log) == 0);
    CHECK(log_has(log, "head tensors (fc.) at --lr 0.1, the other 60 at --lr-backbone 0.01"));
    snprintf(extra, sizeof extra, "--max-steps 1 --lr 0.1 --init %s --init-ignore fc.", w);
    CHECK(train(db, extra, log) == 0);
    ct_state_dict *a = run_weights(da), *b = run_weights(db), *w0 = ct_state_dict_load(w);
    if (a && b && w0) {
        CHECK(same_bits(ct_state_dict_get(a, "fc.weight"), ct_state_dict_get(b, "fc.weight")));
        CHECK(same_bits(ct_state_dict_get(a, "fc.bias"), ct_state_dict_get(b, "fc.bias")));
        const char *names[3] = {"conv1.weight", "layer2.1.conv1.weight", "layer4.1.bn2.bias"};
        for (int k = 0; k < 3; k++) {
            const float *pa = ct_data(ct_state_dict_get(a, names[k]));
            const float *pb = ct_data(ct_state_dict_get(b, names[k]));
            const float *p0 = ct_data(ct_state_dict_get(w0, names[k]));
            int64_t n = ct_numel(ct_state_dict_get(a, names[k]));
            double err = 0, norm = 0;
            for (int64_t i = 0; i < n; i++) {
                double g = ((double)p0[i] - pb[i]) / 0.1, want = p0[i] - 0.01 * g;
                err += (pa[i] - want) * (pa[i] - want);
                norm += (0.01 * g) * (0.01 * g);
            }
            CHECK_MSG(norm > 0 && sqrt(err / norm) < 1e-3, "%s: |a - (w0 - 0.01 g)| / |0.01 g| = %g",
                      names[k], norm > 0 ? sqrt(err / norm) : -1.0);
        }
    }
    ct_state_dict_free(a), ct_state_dict_free(b), ct_state_dict_free(w0);
}

/* A run written before the rename (config.model "resnet18", no config.num_classes) goes on
 * as resnet18_cifar. */
TEST(finetune_old_resnet18_run_resumes_as_resnet18_cifar) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    char dir[512], log[600], cmd[4096];
    snprintf(log, sizeof log, "%s/old.log", tmpdir());
    snprintf(dir, sizeof dir, "%s/old", tmpdir());
    snprintf(cmd, sizeof cmd,
             "%s train --model resnet18_cifar --dataset cifar10 --data-dir %s --train-limit 32 "
             "--test-limit 16 --batch-size 16 --epochs 1 --max-steps 1 --threads 2 --run-dir %s",
             bin(), data_dir(), dir);
    CHECK(run(cmd, log) == 0);
    /* make it look old: the manifest says resnet18 and has no num_classes */
    const char *py = peer_python("json");
    if (!py) SKIP("no python3 to edit the manifest");
    snprintf(cmd, sizeof cmd,
             "'%s' -c \"import json,sys; p=sys.argv[1]; m=json.load(open(p)); c=m['config']; "
             "c['model']='resnet18'; c.pop('num_classes'); json.dump(m, open(p,'w'))\" "
             "%s/manifest.json", py, dir);
    CHECK(run(cmd, log) == 0);
    /* verify re-evaluates its weights as resnet18_cifar's */
    snprintf(cmd, sizeof cmd, "%s verify %s --data-dir %s", bin(), dir, data_dir());
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "evaluated as resnet18_cifar") && log_has(log, "verified"));
    snprintf(cmd, sizeof cmd, "%s train --resume %s --max-steps 2", bin(), dir);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "resume exited %d", rc);
    if (rc) show_log(log);
    CHECK(log_has(log, "now called resnet18_cifar; it goes on as resnet18_cifar"));
    char mp[600];
    snprintf(mp, sizeof mp, "%s/manifest.json", dir);
    CHECK(log_has(mp, "\"model\": \"resnet18_cifar\""));
}

/* The bar's recipe with torchvision's own resnet18() weights (peer Python): 10 classes,
 * a new fc, two steps. */
TEST(finetune_torchvision_resnet18_weights_train) {
    if (!data_dir()) SKIP("CTORCH_DATA does not hold CIFAR-10");
    const char *wdir = tv_peer_weights();
    if (!wdir) SKIP("no Python with torch, torchvision and safetensors (bench/setup-peer.sh)");
    char log[600], extra[1024], dir[512];
    snprintf(log, sizeof log, "%s/tvw.log", tmpdir());
    snprintf(dir, sizeof dir, "%s/tvrun", tmpdir());
    snprintf(extra, sizeof extra, "--max-steps 2 --init %s/resnet18.safetensors --num-classes 10 "
             "--init-ignore fc.", wdir);
    CHECK(train(dir, extra, log) == 0);
    CHECK(log_has(log, "final test accuracy"));
}
