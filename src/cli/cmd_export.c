/* ctorch export: a checkpoint as an ONNX model (docs/onnx.md). */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The input image size of each dataset (ctorch_data.h's loaders). */
static const struct {
    const char *name;
    int c, h, w;
} DATASET_SHAPES[] = {{"cifar10", 3, 32, 32}, {"mnist", 1, 28, 28}, {"fashion_mnist", 1, 28, 28}};

static int input_shape(const char *model, const char *dataset, const char *shape, int chw[3]) {
    if (dataset && shape)
        return cli_fail("export", CLI_USAGE, "--dataset and --input-shape both give the input "
                        "size; pass one of them");
    if (shape) {
        char end;
        if (sscanf(shape, "%dx%dx%d%c", &chw[0], &chw[1], &chw[2], &end) != 3 || chw[0] < 1 ||
            chw[1] < 1 || chw[2] < 1)
            return cli_fail("export", CLI_USAGE, "--input-shape '%s' must be CxHxW with positive "
                            "sizes, e.g. 3x32x32", shape);
        return CLI_OK;
    }
    if (!dataset) { /* the model's default (ct_model_create) */
        int mnist = !strcmp(model, "mlp");
        chw[0] = mnist ? 1 : 3;
        chw[1] = chw[2] = mnist ? 28 : 32;
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof DATASET_SHAPES / sizeof *DATASET_SHAPES; i++)
        if (!strcmp(dataset, DATASET_SHAPES[i].name)) {
            chw[0] = DATASET_SHAPES[i].c;
            chw[1] = DATASET_SHAPES[i].h;
            chw[2] = DATASET_SHAPES[i].w;
            return CLI_OK;
        }
    return cli_fail("export", CLI_USAGE, "unknown --dataset '%s' (cifar10, mnist, fashion_mnist; "
                    "or give the size with --input-shape CxHxW)", dataset);
}

/* The last Linear of the tree in forward order: the classifier head. */
static const ct_module *last_linear(const ct_module *m) {
    for (int i = m->n_children; i-- > 0;) {
        const ct_module *l = last_linear(m->children[i]);
        if (l) return l;
    }
    return !strcmp(m->type, "Linear") ? m : NULL;
}

/* The model for the checkpoint: with --num-classes when given, else with the output size
 * of the checkpoint's classifier (the model's last Linear; built with 10 classes first,
 * rebuilt only when the checkpoint has another number). */
static int build_model(const char *model, const int chw[3], const ct_state_dict *sd,
                       int64_t classes, ct_module **out, int64_t *out_classes) {
    ct_module *m = ct_model_create_ex(model, classes ? (int)classes : 10, chw[0], chw[1], chw[2]);
    if (!m) return cli_fail("export", CLI_USAGE, "%s", ct_last_error());
    if (!classes) {
        const ct_module *head = last_linear(m);
        char path[256] = "", name[300];
        if (head) ct_module_path(head, path, sizeof path);
        snprintf(name, sizeof name, "%s%sweight", path, *path ? "." : "");
        ct_tensor *w = head ? ct_state_dict_get(sd, name) : NULL;
        if (!w || ct_ndim(w) != 2) {
            ct_module_free(m);
            return cli_fail("export", CLI_USAGE, "the checkpoint has no 2-D '%s' to read the "
                            "number of classes from; is it a %s checkpoint? (pass "
                            "--num-classes N)", name, model);
        }
        classes = ct_size(w, 0);
        if (classes != 10) {
            ct_module_free(m);
            m = ct_model_create_ex(model, (int)classes, chw[0], chw[1], chw[2]);
            if (!m) return cli_fail("export", CLI_USAGE, "%s", ct_last_error());
        }
    }
    *out = m;
    *out_classes = classes;
    return CLI_OK;
}

static int parse_batch(const char *s, int64_t *batch) {
    char *end;
    if (!strcmp(s, "dynamic")) {
        *batch = 0;
        return CLI_OK;
    }
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || v < 1 || v > (1LL << 31))
        return cli_fail("export", CLI_USAGE, "--batch '%s' must be a positive batch size or "
                        "'dynamic'", s);
    *batch = v;
    return CLI_OK;
}

/* Builds the model for the checkpoint's weights and exports it. */
static int export_model(const char *model_name, const char *ckpt, const char *out,
                        ct_onnx_export_opts *o, int64_t classes) {
    ct_state_dict *sd = ct_state_dict_load(ckpt);
    if (!sd) return cli_fail("export", CLI_USAGE, "%s", ct_last_error());
    int chw[3] = {o->channels, o->height, o->width};
    ct_module *m = NULL;
    int rc = build_model(model_name, chw, sd, classes, &m, &classes);
    if (!rc && ct_module_load_state_dict(m, sd, 1) != 0)
        rc = cli_fail("export", CLI_USAGE, "%s: %s (pass the --model the checkpoint was saved "
                      "from, with its --dataset or --input-shape and --num-classes)", ckpt,
                      ct_last_error());
    char doc[512];
    snprintf(doc, sizeof doc, "ctorch %s, weights from %s", model_name, ckpt);
    o->doc = doc;
    if (!rc && ct_onnx_export(m, out, o) != 0)
        rc = cli_fail("export", CLI_RUNTIME, "%s", ct_last_error());
    if (!rc) {
        char b[32] = "batch";
        if (o->batch) snprintf(b, sizeof b, "%lld", (long long)o->batch);
        printf("exported %s to %s: opset %d, input [%s, %d, %d, %d] float32 -> logits [%s, "
               "%lld]%s\n", model_name, out, o->opset, b, chw[0], chw[1], chw[2], b,
               (long long)classes, o->amp_bf16 ? ", bfloat16 weights" : "");
    }
    ct_module_free(m);
    ct_state_dict_free(sd);
    return rc;
}

int cmd_export(int argc, char **argv) {
    const char *model = NULL, *ckpt = NULL, *out = NULL, *batch_s = "dynamic", *amp = "off";
    const char *dataset = NULL, *shape = NULL;
    int64_t opset = 17, classes = 0;
    cli_opt opts[] = {
        {"--model", OPT_STRING, &model, 0, 0, 0},
        {"--checkpoint", OPT_STRING, &ckpt, 0, 0, 0},
        {"--onnx", OPT_STRING, &out, 0, 0, 0},
        {"--opset", OPT_INT, &opset, 13, 21, 0},
        {"--batch", OPT_STRING, &batch_s, 0, 0, 0},
        {"--amp", OPT_STRING, &amp, 0, 0, 0},
        {"--num-classes", OPT_INT, &classes, 1, 1 << 24, 0},
        {"--dataset", OPT_STRING, &dataset, 0, 0, 0},
        {"--input-shape", OPT_STRING, &shape, 0, 0, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse("export", argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 0,
                             &npos);
    if (rc) return rc;
    if (!ct_onnx_available())
        return cli_fail("export", CLI_USAGE, "this ctorch was built without ONNX export (install "
                        "libprotobuf-c-dev protobuf-c-compiler libonnx-dev and rebuild)");
    if (!model || !ckpt || !out)
        return cli_fail("export", CLI_USAGE, "--model, --checkpoint and --onnx are required; see "
                        "`ctorch help export`");
    if ((rc = cli_choice("export", "--model", model, ct_model_names()))) return rc;
    ct_onnx_export_opts o = {.opset = (int)opset};
    static const char *const amps[] = {"bf16", "off", NULL};
    if ((rc = parse_batch(batch_s, &o.batch)) || (rc = cli_choice("export", "--amp", amp, amps)))
        return rc;
    o.amp_bf16 = !strcmp(amp, "bf16");
    int chw[3];
    if ((rc = input_shape(model, dataset, shape, chw))) return rc;
    o.channels = chw[0];
    o.height = chw[1];
    o.width = chw[2];
    if (ct_check_writable(out) != 0) return cli_fail("export", CLI_USAGE, "%s", ct_last_error());
    return export_model(model, ckpt, out, &o, classes);
}
