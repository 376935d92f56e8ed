/* ONNX export (src/nn/onnx_export.c, `ctorch export`, docs/onnx.md).
 *
 * Without peers: each built-in model is exported by the CLI and read back with the
 * protobuf-c unpacker generated from the same onnx.proto: opset, IR version, the graph's
 * nodes and attributes, the input/output shapes (dim_param "batch"), every initializer's
 * name, shape, dtype and bytes against the checkpoint; the errors (exit codes, messages
 * naming the module's path and type, no file left behind).
 * With a Python that has onnx and onnxruntime (peer_python; bench/peer-requirements.txt):
 * onnx.checker (full_check) on every export, ONNX Runtime's logits against ctorch's on 256
 * real test images per model (tests/onnx_check.py), batch 1 and 64 through a dynamic batch,
 * --amp bf16 against ctorch's autocast; resnet18 on 256 images, its bf16 export and the
 * 10,000-image accuracy comparison run with `make test-onnx-full` (CT_TEST_ONNX_FULL). */
#include "cli_util.h"
#include "ctorch_data.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "test.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CT_HAVE_ONNX
TEST(onnx_export_unavailable) {
    CHECK(!ct_onnx_available());
    ct_module *m = ct_nn_relu();
    ct_onnx_export_opts o = {.channels = 1, .height = 1, .width = 1};
    CHECK_ERR_INT(ct_onnx_export(m, "x.onnx", &o), "without protobuf-c");
    ct_module_free(m);
    char log[512];
    snprintf(log, sizeof log, "%s/export.log", tmpdir());
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s export --model mlp --checkpoint x --onnx y.onnx", bin());
    CHECK(run(cmd, log) == 2);
    CHECK(log_has(log, "built without ONNX export"));
    SKIP("built without protobuf-c (install libprotobuf-c-dev protobuf-c-compiler libonnx-dev)");
}
#else
#include "onnx.pb-c.h"

/* ------------------------------------------------------------------ reading back */
static Onnx__ModelProto *read_onnx(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    Onnx__ModelProto *m = NULL;
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n)
        m = onnx__model_proto__unpack(NULL, (size_t)n, buf);
    free(buf);
    fclose(f);
    return m;
}

static const Onnx__TensorProto *init_named(const Onnx__ModelProto *m, const char *name) {
    for (size_t i = 0; i < m->graph->n_initializer; i++)
        if (!strcmp(m->graph->initializer[i]->name, name)) return m->graph->initializer[i];
    return NULL;
}

static int count_op(const Onnx__ModelProto *m, const char *op) {
    int k = 0;
    for (size_t i = 0; i < m->graph->n_node; i++) k += !strcmp(m->graph->node[i]->op_type, op);
    return k;
}

/* The op types in order, without Cast nodes, joined by commas. */
static const char *ops(const Onnx__ModelProto *m, char *buf, size_t n) {
    size_t w = 0;
    buf[0] = 0;
    for (size_t i = 0; i < m->graph->n_node && w < n; i++)
        if (strcmp(m->graph->node[i]->op_type, "Cast") != 0)
            w += (size_t)snprintf(buf + w, n - w, "%s%s", w ? "," : "", m->graph->node[i]->op_type);
    return buf;
}

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *nd, const char *name) {
    for (size_t i = 0; i < nd->n_attribute; i++)
        if (!strcmp(nd->attribute[i]->name, name)) return nd->attribute[i];
    return NULL;
}

static const Onnx__NodeProto *first_node(const Onnx__ModelProto *m, const char *op) {
    for (size_t i = 0; i < m->graph->n_node; i++)
        if (!strcmp(m->graph->node[i]->op_type, op)) return m->graph->node[i];
    return NULL;
}

/* A value's shape as "batch,3,32,32". */
static const char *vi_shape(const Onnx__ValueInfoProto *v, char *buf, size_t n) {
    size_t w = 0;
    buf[0] = 0;
    const Onnx__TensorShapeProto *s = v->type->tensor_type->shape;
    for (size_t i = 0; i < s->n_dim && w < n; i++) {
        const Onnx__TensorShapeProto__Dimension *d = s->dim[i];
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM)
            w += (size_t)snprintf(buf + w, n - w, "%s%s", i ? "," : "", d->dim_param);
        else
            w += (size_t)snprintf(buf + w, n - w, "%s%lld", i ? "," : "", (long long)d->dim_value);
    }
    return buf;
}

static void check_io(const Onnx__ModelProto *m, const char *in_shape, const char *out_shape) {
    char s[128];
    CHECK(m->graph->n_input == 1 && m->graph->n_output == 1);
    CHECK(!strcmp(m->graph->input[0]->name, "input"));
    CHECK(!strcmp(m->graph->output[0]->name, "logits"));
    CHECK(m->graph->input[0]->type->tensor_type->elem_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
    CHECK_MSG(!strcmp(vi_shape(m->graph->input[0], s, sizeof s), in_shape), "input %s, want %s", s,
              in_shape);
    CHECK_MSG(!strcmp(vi_shape(m->graph->output[0], s, sizeof s), out_shape), "output %s, want %s",
              s, out_shape);
    int produced = 0;
    for (size_t i = 0; i < m->graph->n_node; i++)
        produced += !strcmp(m->graph->node[i]->output[0], "logits");
    CHECK(produced == 1);
}

static void check_header(const Onnx__ModelProto *m, int opset, int ir) {
    CHECK(m->has_ir_version && m->ir_version == ir);
    CHECK(m->n_opset_import == 1 && m->opset_import[0]->version == opset);
    CHECK(!m->opset_import[0]->domain || !*m->opset_import[0]->domain);
    CHECK(m->producer_name && !strcmp(m->producer_name, "ctorch"));
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Every checkpoint entry but num_batches_tracked is an initializer of the same name, shape
 * and bytes (float32, or bfloat16 where the file says so: bf16 != 0 demands it for every
 * tensor of 2 or more dimensions); returns the number of bfloat16 initializers. */
static int check_initializers(const Onnx__ModelProto *m, const char *ckpt, int bf16) {
    ct_state_dict *sd = ct_state_dict_load(ckpt);
    CHECK_NN(sd);
    if (!sd) return 0;
    int n = 0, n_bf16 = 0;
    for (int i = 0; i < sd->n; i++) {
        const char *name = sd->names[i];
        const Onnx__TensorProto *t = init_named(m, name);
        if (ends_with(name, "num_batches_tracked")) {
            CHECK_MSG(!t, "%s is an initializer", name);
            continue;
        }
        n++;
        CHECK_MSG(t, "no initializer %s", name);
        if (!t) continue;
        ct_tensor *ref = sd->tensors[i];
        int is_bf16 = t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16;
        n_bf16 += is_bf16;
        CHECK_MSG(is_bf16 || t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, "%s: type %d",
                  name, t->data_type);
        if (bf16 && ct_ndim(ref) >= 2) CHECK_MSG(is_bf16, "%s is not bfloat16", name);
        if (!bf16) CHECK(!is_bf16);
        CHECK_MSG((int)t->n_dims == ct_ndim(ref), "%s: %zu dims", name, t->n_dims);
        for (int d = 0; d < ct_ndim(ref) && d < (int)t->n_dims; d++)
            CHECK_MSG(t->dims[d] == ct_size(ref, d), "%s: dim %d", name, d);
        ct_tensor *c = ct_to_dtype(ref, is_bf16 ? CT_BFLOAT16 : CT_FLOAT32);
        size_t nb = (size_t)ct_numel(c) * ct_dtype_size(ct_dtype_of(c));
        CHECK_MSG(t->has_raw_data && t->raw_data.len == nb &&
                      !memcmp(t->raw_data.data, ct_data(c), nb),
                  "%s: values differ from the checkpoint", name);
        ct_free(c);
    }
    CHECK_MSG((int)m->graph->n_initializer == n, "%zu initializers, checkpoint %d",
              m->graph->n_initializer, n);
    ct_state_dict_free(sd);
    return n_bf16;
}

/* ----------------------------------------------------------------- checkpoints */
/* A checkpoint of `model`: seeded initialisation, and BatchNorm affine parameters and
 * running statistics that are not the identity, so that a wrong eps, scale or mean shows. */
static void perturb_bn(ct_module *m) {
    if (!strcmp(m->type, "BatchNorm2d")) {
        ct_init_uniform_(m->params[0], 0.5, 1.5);
        ct_init_uniform_(m->params[1], -0.2, 0.2);
        ct_init_uniform_(m->buffers[0], -0.2, 0.2);
        ct_init_uniform_(m->buffers[1], 0.5, 2.0);
    }
    for (int i = 0; i < m->n_children; i++) perturb_bn(m->children[i]);
}

static ct_module *make_checkpoint(const char *model, int c, int h, int w, const char *path) {
    ct_manual_seed(7);
    ct_module *m = ct_model_create_ex(model, 10, c, h, w);
    CHECK_NN(m);
    if (!m) return NULL;
    perturb_bn(m);
    CHECK_OK(ct_module_save(m, path, NULL));
    ct_module_eval(m);
    return m;
}

static char *tmp(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", tmpdir(), name);
    return b;
}

/* `ctorch export ARGS`; its exit status (output in log). */
static int export_cli(const char *args, const char *log) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s export %s", bin(), args);
    return run(cmd, log);
}

/* ---------------------------------------------------------- structure (no peers) */
TEST(onnx_export_simple_cnn) {
    const char *ck = tmp("sc.safetensors"), *out = tmp("sc.onnx"), *log = tmp("sc.log");
    ct_module *model = make_checkpoint("simple_cnn", 3, 32, 32, ck);
    ct_module_free(model);
    char args[1024], s[512];
    snprintf(args, sizeof args, "--model simple_cnn --checkpoint %s --onnx %s", ck, out);
    CHECK_MSG(export_cli(args, log) == 0, "export failed");
    CHECK(log_has(log, "opset 17, input [batch, 3, 32, 32]"));
    Onnx__ModelProto *m = read_onnx(out);
    CHECK_NN(m);
    if (!m) return;
    check_header(m, 17, 8);
    CHECK_MSG(!strcmp(ops(m, s, sizeof s), "Conv,Relu,MaxPool,Conv,Relu,MaxPool,Flatten,Gemm"),
              "ops %s", s);
    check_io(m, "batch,3,32,32", "batch,10");
    check_initializers(m, ck, 0);
    const Onnx__NodeProto *conv = first_node(m, "Conv"), *gemm = first_node(m, "Gemm");
    const Onnx__AttributeProto *pads = attr(conv, "pads"), *k = attr(conv, "kernel_shape");
    CHECK(pads && pads->n_ints == 4 && pads->ints[0] == 1 && pads->ints[3] == 1);
    CHECK(k && k->n_ints == 2 && k->ints[0] == 3);
    CHECK(conv->n_input == 3 && !strcmp(conv->input[0], "input") &&
          !strcmp(conv->input[1], "features.0.weight") && !strcmp(conv->input[2], "features.0.bias"));
    CHECK(attr(gemm, "transB") && attr(gemm, "transB")->i == 1);
    CHECK(!strcmp(gemm->input[1], "classifier.weight"));
    onnx__model_proto__free_unpacked(m, NULL);
}

TEST(onnx_export_mlp_fixed_batch) {
    const char *ck = tmp("mlp.safetensors"), *out = tmp("mlp.onnx"), *log = tmp("mlp.log");
    ct_module_free(make_checkpoint("mlp", 1, 28, 28, ck));
    char args[1024], s[512];
    snprintf(args, sizeof args, "--model mlp --checkpoint %s --onnx %s --dataset mnist --batch 8",
             ck, out);
    CHECK_MSG(export_cli(args, log) == 0, "export failed");
    Onnx__ModelProto *m = read_onnx(out);
    CHECK_NN(m);
    if (!m) return;
    CHECK_MSG(!strcmp(ops(m, s, sizeof s), "Flatten,Gemm,Relu,Gemm"), "ops %s", s);
    check_io(m, "8,1,28,28", "8,10");
    check_initializers(m, ck, 0);
    onnx__model_proto__free_unpacked(m, NULL);
}

TEST(onnx_export_resnet18) {
    const char *ck = tmp("r18.safetensors"), *out = tmp("r18.onnx"), *log = tmp("r18.log");
    ct_module *model = make_checkpoint("resnet18_cifar", 3, 32, 32, ck);
    char args[1024];
    snprintf(args, sizeof args, "--model resnet18_cifar --checkpoint %s --onnx %s", ck, out);
    CHECK_MSG(export_cli(args, log) == 0, "export failed");
    Onnx__ModelProto *m = read_onnx(out);
    CHECK_NN(m);
    if (m) {
        check_header(m, 17, 8);
        /* conv1 + 8 blocks x 2 + 3 downsample convs; a BN after each; 8 residual adds; relu
         * after the stem and twice per block */
        CHECK(count_op(m, "Conv") == 20 && count_op(m, "BatchNormalization") == 20);
        CHECK(count_op(m, "Add") == 8 && count_op(m, "Relu") == 17);
        CHECK(count_op(m, "GlobalAveragePool") == 1 && count_op(m, "Flatten") == 1);
        CHECK(count_op(m, "Gemm") == 1 && (int)m->graph->n_node == 20 + 20 + 8 + 17 + 3);
        const Onnx__NodeProto *bn = first_node(m, "BatchNormalization");
        CHECK(bn && attr(bn, "epsilon") && fabsf(attr(bn, "epsilon")->f - 1e-5f) < 1e-10f);
        CHECK(bn && !strcmp(bn->input[3], "bn1.running_mean"));
        CHECK(init_named(m, "layer2.0.downsample.0.weight") != NULL);
        check_io(m, "batch,3,32,32", "batch,10");
        check_initializers(m, ck, 0);
        onnx__model_proto__free_unpacked(m, NULL);
    }
    /* other opsets (IR version 8 up to opset 18, 10 for 21) and bf16, through the API */
    static const struct { int opset, ir, bf16; } cases[] = {{13, 8, 0}, {21, 10, 0}, {17, 8, 1}};
    for (size_t c = 0; model && c < sizeof cases / sizeof *cases; c++) {
        ct_onnx_export_opts o = {.opset = cases[c].opset, .channels = 3, .height = 32,
                                 .width = 32, .amp_bf16 = cases[c].bf16};
        CHECK_OK(ct_onnx_export(model, out, &o));
        if (!(m = read_onnx(out))) continue;
        check_header(m, cases[c].opset, cases[c].ir);
        if (cases[c].bf16) {
            int n_bf16 = check_initializers(m, ck, 1);
            CHECK_MSG(n_bf16 == 20 + 2, "%d bfloat16 initializers (want the 20 conv weights and "
                      "fc's 2)", n_bf16);
            const Onnx__TensorProto *bw = init_named(m, "bn1.weight");
            CHECK(bw && bw->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
            check_io(m, "batch,3,32,32", "batch,10");
        }
        onnx__model_proto__free_unpacked(m, NULL);
    }
    ct_module_free(model);
}

TEST(onnx_export_bf16_weights) {
    const char *ck = tmp("scb.safetensors"), *out = tmp("scb.onnx"), *log = tmp("scb.log");
    ct_module_free(make_checkpoint("simple_cnn", 3, 32, 32, ck));
    char args[1024], s[512];
    snprintf(args, sizeof args, "--model simple_cnn --checkpoint %s --onnx %s --amp bf16", ck, out);
    CHECK_MSG(export_cli(args, log) == 0, "export failed");
    CHECK(log_has(log, "bfloat16 weights"));
    Onnx__ModelProto *m = read_onnx(out);
    CHECK_NN(m);
    if (!m) return;
    CHECK(check_initializers(m, ck, 1) == 6);
    check_io(m, "batch,3,32,32", "batch,10");
    CHECK_MSG(!strcmp(ops(m, s, sizeof s), "Conv,Relu,MaxPool,Conv,Relu,MaxPool,Flatten,Gemm"),
              "ops %s", s);
    /* per Conv / Gemm: input rounded (2 Casts), 2 weights cast, output rounded (2) */
    CHECK_MSG(count_op(m, "Cast") == 3 * 6, "%d Casts", count_op(m, "Cast"));
    onnx__model_proto__free_unpacked(m, NULL);
}

TEST(onnx_export_cli_errors) {
    const char *ck = tmp("err.safetensors"), *out = tmp("err.onnx"), *log = tmp("err.log");
    ct_module_free(make_checkpoint("simple_cnn", 3, 32, 32, ck));
    static const struct {
        const char *args, *needle;
        int code;
    } cases[] = {
        {"--model simple_cnn --checkpoint %s/missing.safetensors --onnx %s", "missing.safetensors", 2},
        {"--model simple_cnn --checkpoint %s/err.safetensors --onnx %s --batch 0", "--batch '0'", 2},
        {"--model simple_cnn --checkpoint %s/err.safetensors --onnx %s --batch lots", "'dynamic'", 2},
        {"--model simple_cnn --checkpoint %s/err.safetensors --onnx %s --opset 12", "--opset", 2},
        {"--model simple_cnn --checkpoint %s/err.safetensors --onnx %s --amp fp16", "--amp", 2},
        {"--model vgg --checkpoint %s/err.safetensors --onnx %s", "--model", 2},
        {"--model resnet18_cifar --checkpoint %s/err.safetensors --onnx %s", "is it a resnet18_cifar checkpoint", 2},
        {"--model simple_cnn --checkpoint %s/err.safetensors --onnx %s --dataset mnist", "mismatch", 2},
        {"--model simple_cnn --checkpoint %s/err.safetensors --onnx %s --input-shape 3x32", "CxHxW", 2},
        {"--model simple_cnn --checkpoint %s/err.safetensors --onnx %s/no/dir/x.onnx", "no/dir", 2},
        {"--checkpoint %s/err.safetensors --onnx %s", "required", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[1024];
        snprintf(args, sizeof args, cases[i].args, tmpdir(), i == 9 ? tmpdir() : out);
        int rc = export_cli(args, log);
        CHECK_MSG(rc == cases[i].code, "'%s': exit %d, want %d", args, rc, cases[i].code);
        CHECK_MSG(log_has(log, cases[i].needle), "'%s': no '%s' in the message", args,
                  cases[i].needle);
        if (!log_has(log, cases[i].needle)) show_log(log);
        CHECK_MSG(access(out, F_OK) != 0, "'%s' left %s behind", args, out);
    }
}

/* A custom module type inside a Sequential. */
static ct_tensor *mine_forward(ct_module *m, const ct_tensor *x) {
    (void)m;
    return ct_retain((ct_tensor *)x);
}

TEST(onnx_export_library_errors) {
    const char *out = tmp("lib.onnx");
    ct_onnx_export_opts o = {.channels = 3, .height = 8, .width = 8};
    ct_module *parts[3] = {ct_nn_conv2d(3, 4, 3, 1, 1, 1), ct_nn_relu(),
                           ct_module_new("MyBlock", mine_forward, NULL, NULL)};
    ct_module *inner = ct_nn_sequential(parts, 3);
    ct_module *outer = ct_nn_sequential(&inner, 1);
    CHECK_ERR_INT(ct_onnx_export(outer, out, &o), "module '0.2' of type MyBlock has no ONNX exporter");
    ct_module_free(outer);
    CHECK(access(out, F_OK) != 0);

    ct_module *bn = ct_nn_batch_norm2d_opt(3, &(ct_batch_norm2d_opts){.no_track_running_stats = 1});
    CHECK_ERR_INT(ct_onnx_export(bn, out, &o), "track_running_stats=False");
    ct_module_free(bn);
    ct_module *ap = ct_nn_adaptive_avg_pool2d(3, 3);
    CHECK_ERR_INT(ct_onnx_export(ap, out, &o), "output_size=(3, 3)");
    ct_module_free(ap);
    ct_module *lin = ct_nn_linear(8, 2, 1);
    CHECK_ERR_INT(ct_onnx_export(lin, out, &o), "Linear '(root)' (in_features=8) gets [batch, 3, 8, 8]");
    ct_module_free(lin);
    ct_module *conv = ct_nn_conv2d(4, 4, 3, 1, 1, 1);
    CHECK_ERR_INT(ct_onnx_export(conv, out, &o), "expects 4 input channels");
    o.opset = 22;
    CHECK_ERR_INT(ct_onnx_export(conv, out, &o), "opset 22");
    o.opset = 0;
    o.channels = 4;
    CHECK_ERR_INT(ct_onnx_export(conv, tmp("no/dir/x.onnx"), &o), "no/dir");
    ct_module_free(conv);
    CHECK(access(out, F_OK) != 0);
}

/* A model made of ctorch's nn modules only (no exporter of its own). */
static ct_module *generic_model(void) {
    ct_manual_seed(11);
    ct_module *mods[] = {
        ct_nn_conv2d_opt(3, 8, &(ct_conv2d_opts){.kernel_size = 3, .padding = 1, .no_bias = 1}),
        ct_nn_batch_norm2d(8),
        ct_nn_relu(),
        ct_nn_avg_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 3, .stride = 2, .padding = 1,
                                               .no_count_include_pad = 1}),
        ct_nn_conv2d_opt(8, 16, &(ct_conv2d_opts){.kernel_size = 3, .dilation = 2, .padding = 2,
                                                  .groups = 2}),
        ct_nn_gelu(0),
        ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 3, .stride = 2, .padding = 1}),
        ct_nn_basic_block(16, 16, 1),
        ct_nn_adaptive_avg_pool2d(2, 2),
        ct_nn_flatten(1, -1),
        ct_nn_dropout(0.3),
        ct_nn_linear(64, 10, 1),
        ct_nn_identity(),
    };
    ct_module *m = ct_nn_sequential(mods, (int)(sizeof mods / sizeof *mods));
    if (m) perturb_bn(m);
    return m;
}

TEST(onnx_export_generic_sequential) {
    const char *out = tmp("gen.onnx");
    ct_module *m = generic_model();
    CHECK_NN(m);
    if (!m) return;
    ct_onnx_export_opts o = {.channels = 3, .height = 32, .width = 32, .batch = 0};
    CHECK_OK(ct_onnx_export(m, out, &o));
    Onnx__ModelProto *p = read_onnx(out);
    CHECK_NN(p);
    if (!p) {
        ct_module_free(m);
        return;
    }
    char s[1024];
    CHECK_MSG(!strcmp(ops(p, s, sizeof s),
                      "Conv,BatchNormalization,Relu,AveragePool,Conv,Div,Erf,Add,Mul,Mul,MaxPool,"
                      "Conv,BatchNormalization,Relu,Conv,BatchNormalization,Add,Relu,AveragePool,"
                      "Flatten,Gemm"),
              "ops %s", s);
    check_io(p, "batch,3,32,32", "batch,10");
    const Onnx__NodeProto *c2 = NULL;
    for (size_t i = 0; i < p->graph->n_node; i++)
        if (!strcmp(p->graph->node[i]->name, "/4/Conv_4")) c2 = p->graph->node[i];
    CHECK(c2 && attr(c2, "group")->i == 2 && attr(c2, "dilations")->ints[0] == 2);
    const Onnx__NodeProto *ap = first_node(p, "AveragePool");
    CHECK(ap && attr(ap, "count_include_pad") && attr(ap, "count_include_pad")->i == 0);
    CHECK(init_named(p, "7.downsample.0.weight") == NULL && init_named(p, "7.conv1.weight"));
    CHECK(init_named(p, "0.bias") == NULL && init_named(p, "11.bias"));
    onnx__model_proto__free_unpacked(p, NULL);
    ct_module_free(m);
}

/* ------------------------------------------- torchvision's blocks (test stand-ins)
 * Bottleneck, InvertedResidual, Conv2dNormActivation, ReLU6 and MobileNetV2 with
 * torchvision's child names and forward (torchvision/models/resnet.py, mobilenetv2.py),
 * made here from ctorch's modules, so that their exporters are checked before the models
 * themselves exist in ctorch. */
static ct_tensor *relu6_forward(ct_module *m, const ct_tensor *x) {
    (void)m;
    return ct_clamp(x, 0, 6);
}

/* Children in order (torchvision's Conv2dNormActivation is a Sequential). */
static ct_tensor *chain_forward(ct_module *m, const ct_tensor *x) {
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    for (int i = 0; i < m->n_children && cur; i++) {
        ct_tensor *next = ct_module_forward(m->children[i], cur);
        ct_free(cur);
        cur = next;
    }
    return cur;
}

static ct_tensor *run_child(ct_module *m, const char *name, ct_tensor *x, int free_x) {
    ct_tensor *y = x ? ct_module_forward(ct_module_get(m, name), x) : NULL;
    if (free_x) ct_free(x);
    return y;
}

/* out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x)) */
static ct_tensor *bottleneck_forward(ct_module *m, const ct_tensor *x) {
    static const char *const seq[] = {"conv1", "bn1", "relu", "conv2", "bn2", "relu",
                                      "conv3", "bn3"};
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    for (size_t i = 0; i < sizeof seq / sizeof *seq; i++) cur = run_child(m, seq[i], cur, 1);
    ct_tensor *id = ct_module_get(m, "downsample") ? run_child(m, "downsample", (ct_tensor *)x, 0)
                                                   : ct_retain((ct_tensor *)x);
    ct_tensor *sum = cur && id ? ct_add(cur, id) : NULL;
    ct_free(cur), ct_free(id);
    return run_child(m, "relu", sum, 1);
}

static ct_module *cna(int64_t in, int64_t out, int k, int stride, int groups) {
    ct_module *m = ct_module_new("Conv2dNormActivation", chain_forward, NULL, NULL);
    ct_module_add_child(m, "0", ct_nn_conv2d_opt(in, out, &(ct_conv2d_opts){
        .kernel_size = k, .stride = stride, .padding = (k - 1) / 2, .groups = groups,
        .no_bias = 1}));
    ct_module_add_child(m, "1", ct_nn_batch_norm2d(out));
    ct_module_add_child(m, "2", ct_module_new("ReLU6", relu6_forward, NULL, NULL));
    return m;
}

static ct_module *bottleneck(int64_t inplanes, int64_t planes, int stride) {
    ct_module *m = ct_module_new("Bottleneck", bottleneck_forward, NULL, NULL);
    ct_module_add_child(m, "conv1", ct_nn_conv2d(inplanes, planes, 1, 1, 0, 0));
    ct_module_add_child(m, "bn1", ct_nn_batch_norm2d(planes));
    ct_module_add_child(m, "conv2", ct_nn_conv2d(planes, planes, 3, stride, 1, 0));
    ct_module_add_child(m, "bn2", ct_nn_batch_norm2d(planes));
    ct_module_add_child(m, "conv3", ct_nn_conv2d(planes, planes * 4, 1, 1, 0, 0));
    ct_module_add_child(m, "bn3", ct_nn_batch_norm2d(planes * 4));
    ct_module_add_child(m, "relu", ct_nn_relu());
    if (stride != 1 || inplanes != planes * 4) {
        ct_module *d[2] = {ct_nn_conv2d(inplanes, planes * 4, 1, stride, 0, 0),
                           ct_nn_batch_norm2d(planes * 4)};
        ct_module_add_child(m, "downsample", ct_nn_sequential(d, 2));
    }
    return m;
}

typedef struct {
    int use_res;
} ir_cfg;

static ct_tensor *inverted_residual_forward(ct_module *m, const ct_tensor *x) {
    ct_tensor *y = run_child(m, "conv", (ct_tensor *)x, 0);
    if (!y || !((ir_cfg *)m->impl)->use_res) return y;
    ct_tensor *s = ct_add(x, y);
    ct_free(y);
    return s;
}

static ct_module *inverted_residual(int64_t inp, int64_t oup, int stride, int expand) {
    ir_cfg *c = malloc(sizeof *c);
    c->use_res = stride == 1 && inp == oup;
    ct_module *m = ct_module_new("InvertedResidual", inverted_residual_forward, c, free);
    int64_t hidden = inp * expand;
    ct_module *conv = ct_nn_sequential(NULL, 0);
    if (expand != 1) ct_nn_sequential_append(conv, cna(inp, hidden, 1, 1, 1));
    ct_nn_sequential_append(conv, cna(hidden, hidden, 3, stride, (int)hidden));
    ct_nn_sequential_append(conv, ct_nn_conv2d(hidden, oup, 1, 1, 0, 0));
    ct_nn_sequential_append(conv, ct_nn_batch_norm2d(oup));
    ct_module_add_child(m, "conv", conv);
    return m;
}

static ct_tensor *mobilenet_forward(ct_module *m, const ct_tensor *x) {
    ct_tensor *f = run_child(m, "features", (ct_tensor *)x, 0);
    int one[2] = {1, 1};
    ct_tensor *p = f ? ct_adaptive_avg_pool2d(f, one) : NULL;
    ct_tensor *flat = p ? ct_flatten(p, 1, -1) : NULL;
    ct_free(f), ct_free(p);
    return run_child(m, "classifier", flat, 1);
}

/* A small MobileNetV2 (torchvision's layout: features, classifier = Dropout, Linear). */
static ct_module *mini_mobilenet_v2(void) {
    ct_manual_seed(5);
    ct_module *f[] = {cna(3, 16, 3, 2, 1), inverted_residual(16, 8, 1, 1),
                      inverted_residual(8, 12, 2, 6), inverted_residual(12, 12, 1, 6),
                      cna(12, 32, 1, 1, 1)};
    ct_module *cls[2] = {ct_nn_dropout(0.2), ct_nn_linear(32, 10, 1)};
    ct_module *m = ct_module_new("MobileNetV2", mobilenet_forward, NULL, NULL);
    ct_module_add_child(m, "features", ct_nn_sequential(f, 5));
    ct_module_add_child(m, "classifier", ct_nn_sequential(cls, 2));
    perturb_bn(m);
    return m;
}

static ct_tensor *resnet_forward(ct_module *m, const ct_tensor *x) {
    ct_tensor *cur = ct_retain((ct_tensor *)x);
    for (int i = 0; i < m->n_children - 1 && cur; i++) cur = run_child(m, m->children[i]->name, cur, 1);
    ct_tensor *flat = cur ? ct_flatten(cur, 1, -1) : NULL;
    ct_free(cur);
    return run_child(m, "fc", flat, 1);
}

/* A small ResNet-50 (torchvision's ImageNet stem, Bottleneck layers). */
static ct_module *mini_resnet50(void) {
    ct_manual_seed(6);
    ct_module *m = ct_module_new("ResNet", resnet_forward, NULL, NULL);
    ct_module *l1[2] = {bottleneck(16, 8, 1), bottleneck(32, 8, 1)}, *l2[1] = {bottleneck(32, 16, 2)};
    ct_module_add_child(m, "conv1", ct_nn_conv2d(3, 16, 7, 2, 3, 0));
    ct_module_add_child(m, "bn1", ct_nn_batch_norm2d(16));
    ct_module_add_child(m, "relu", ct_nn_relu());
    ct_module_add_child(m, "maxpool", ct_nn_max_pool2d(3, 2, 1));
    ct_module_add_child(m, "layer1", ct_nn_sequential(l1, 2));
    ct_module_add_child(m, "layer2", ct_nn_sequential(l2, 1));
    ct_module_add_child(m, "avgpool", ct_nn_adaptive_avg_pool2d(1, 1));
    ct_module_add_child(m, "fc", ct_nn_linear(64, 10, 1));
    perturb_bn(m);
    return m;
}

TEST(onnx_export_torchvision_blocks) {
    const char *out = tmp("tv.onnx");
    ct_onnx_export_opts o = {.channels = 3, .height = 64, .width = 64};
    ct_module *r = mini_resnet50(), *mb = mini_mobilenet_v2();
    CHECK_OK(ct_onnx_export(r, out, &o));
    Onnx__ModelProto *p = read_onnx(out);
    CHECK_NN(p);
    if (p) {
        /* stem conv + 3 blocks x 3 convs + 2 downsamples; 3 adds; relu: 1 + 3 x 3 */
        CHECK(count_op(p, "Conv") == 12 && count_op(p, "BatchNormalization") == 12);
        CHECK(count_op(p, "Add") == 3 && count_op(p, "Relu") == 10);
        CHECK(count_op(p, "MaxPool") == 1 && count_op(p, "GlobalAveragePool") == 1);
        CHECK(init_named(p, "layer1.0.downsample.0.weight") && !init_named(p, "layer1.1.downsample.0.weight"));
        CHECK(init_named(p, "layer2.0.conv3.weight") != NULL);
        check_io(p, "batch,3,64,64", "batch,10");
        onnx__model_proto__free_unpacked(p, NULL);
    }
    CHECK_OK(ct_onnx_export(mb, out, &o));
    p = read_onnx(out);
    CHECK_NN(p);
    if (p) {
        /* residual only in features.3 (stride 1, 12 -> 12); features.1 maps 16 -> 8 */
        char s[1024];
        CHECK_MSG(count_op(p, "Add") == 1, "%d Adds: %s", count_op(p, "Add"), ops(p, s, sizeof s));
        CHECK(count_op(p, "Clip") == 7 && count_op(p, "Conv") == 10);
        CHECK(init_named(p, "features.3.conv.1.0.weight") && init_named(p, "classifier.1.weight"));
        CHECK(init_named(p, "onnx_const.six") != NULL);
        check_io(p, "batch,3,64,64", "batch,10");
        onnx__model_proto__free_unpacked(p, NULL);
    }
    ct_module_free(r);
    ct_module_free(mb);
}

/* The seed's AdaptiveNet (a module with a call of its own): eval mode, main head only. */
TEST(onnx_export_adaptive_net) {
    const char *out = tmp("anet.onnx");
    ct_module *m = ct_model_adaptive_net(784, 10, 5);
    ct_onnx_export_opts o = {.channels = 1, .height = 28, .width = 28, .batch = 4};
    CHECK_OK(ct_onnx_export(m, out, &o));
    Onnx__ModelProto *p = read_onnx(out);
    CHECK_NN(p);
    if (p) {
        char s[256];
        CHECK_MSG(!strcmp(ops(p, s, sizeof s), "Flatten,Gemm,Relu,Gemm"), "ops %s", s);
        CHECK(init_named(p, "backbone.1.weight") && init_named(p, "main_head.bias"));
        CHECK(!init_named(p, "aux_head.weight") && p->graph->n_initializer == 4);
        check_io(p, "4,1,28,28", "4,10");
        onnx__model_proto__free_unpacked(p, NULL);
    }
    ct_module_free(m);
}

/* ------------------------------------------------------------ with the peers */
static const char *onnx_python(void) { return peer_python("onnx, onnxruntime"); }
#define NEED_PEER()                                                                       \
    const char *py = onnx_python();                                                      \
    if (!py) SKIP("no Python with onnx and onnxruntime (bench/peer-requirements.txt, or " \
                  "set CTORCH_PEER_PYTHON)")

/* The first `limit` test images of `dataset`, normalised as `ctorch eval` feeds them, and
 * their labels. */
static int load_test_images(const char *dataset, int64_t limit, ct_tensor **x, ct_tensor **y) {
    ct_dataset_kind kind;
    const char *dir = getenv("CTORCH_DATA");
    if (!dir || ct_dataset_parse_name(dataset, &kind) != 0) return -1;
    ct_dataset *ds = ct_dataset_load(kind, CT_SPLIT_TEST, dir, limit);
    if (!ds) return -1;
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = 500;
    lo.shuffle = 0;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(kind, lo.transform.mean, lo.transform.std);
    ct_dataloader *dl = ct_dataloader_new(ds, &lo);
    int nb = dl ? (int)ct_dataloader_num_batches(dl) : 0, k = 0;
    ct_tensor **xs = calloc((size_t)nb + 1, sizeof *xs), **ys = calloc((size_t)nb + 1, sizeof *ys);
    if (dl && ct_dataloader_start_epoch(dl, 0) == 0)
        while (k < nb && ct_dataloader_next(dl, &xs[k], &ys[k]) == 1) k++;
    *x = k == nb && nb ? ct_cat(xs, k, 0) : NULL;
    *y = k == nb && nb ? ct_cat(ys, k, 0) : NULL;
    for (int i = 0; i < k; i++) ct_free(xs[i]), ct_free(ys[i]);
    free(xs);
    free(ys);
    ct_dataloader_free(dl);
    ct_dataset_free(ds);
    return *x && *y ? 0 : -1;
}

/* ctorch's eval-mode logits, under bf16 autocast when asked, in chunks of 256. */
static ct_tensor *ctorch_logits(ct_module *m, const ct_tensor *x, int bf16) {
    ct_module_eval(m);
    int prev = ct_set_grad_enabled(0);
    int64_t n = ct_size(x, 0), k = 0;
    ct_tensor *parts[64] = {0};
    for (int64_t i = 0; i < n && k < 64; i += 256, k++) {
        ct_tensor *xi = ct_narrow(x, 0, i, n - i < 256 ? n - i : 256);
        if (bf16) ct_autocast_push(CT_CPU, CT_BFLOAT16);
        ct_tensor *yi = xi ? ct_module_forward(m, xi) : NULL;
        if (bf16) ct_autocast_pop();
        parts[k] = yi ? ct_to_dtype(yi, CT_FLOAT32) : NULL;
        ct_free(yi);
        ct_free(xi);
    }
    ct_tensor *y = ct_cat(parts, (int)k, 0);
    for (int64_t i = 0; i < k; i++) ct_free(parts[i]);
    ct_set_grad_enabled(prev);
    return y;
}

/* The k-th line (from 0) of a command's output (file log) that is a JSON object, or NULL. */
static json_t *json_line(const char *log, int k) {
    FILE *f = fopen(log, "r");
    char *line = NULL;
    size_t cap = 0;
    json_t *j = NULL;
    while (f && !j && getline(&line, &cap, f) > 0)
        if (line[0] == '{' && k-- == 0) j = json_loads(line, 0, NULL);
    free(line);
    if (f) fclose(f);
    return j;
}

static double jnum(json_t *j, const char *path) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = j;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_object_get(cur, tok);
    return cur ? json_number_value(cur) : NAN;
}

/* One model for tests/onnx_check.py: its file, the data file (inputs and ctorch's logits;
 * "" for the checker only), what to call it, the tolerance. */
typedef struct {
    char onnx[512], data[512], what[64];
    double tol;
} ort_job;

/* Runs tests/onnx_check.py once on the n jobs (--batches 1,64) and judges each: checker,
 * ORT's logits within the job's tolerance (also for batch 1 and the first 64 images as one
 * batch); prints the measurements. res (may be NULL) receives each job's JSON (json_decref
 * it), NULL for a job that failed. */
static void onnx_check(const char *py, const ort_job *jobs, int n, json_t **res) {
    char cmd[8192], *log = tmp("check.log");
    size_t w = (size_t)snprintf(cmd, sizeof cmd, "%s tests/onnx_check.py --batches 1,64", py);
    for (int i = 0; i < n && w < sizeof cmd; i++)
        w += (size_t)snprintf(cmd + w, sizeof cmd - w, " %s%s%s", jobs[i].onnx,
                              *jobs[i].data ? ":" : "", jobs[i].data);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "tests/onnx_check.py exited with %d", rc);
    for (int i = 0; i < n; i++) {
        json_t *j = json_line(log, i);
        if (res) res[i] = NULL;
        if (!j || json_object_get(j, "error")) {
            show_log(log);
            CHECK_MSG(0, "%s: onnx.checker or ONNX Runtime failed", jobs[i].what);
            json_decref(j);
            continue;
        }
        CHECK(!strcmp(json_string_value(json_object_get(j, "checker")), "ok"));
        if (*jobs[i].data) {
            double rel = jnum(j, "max_rel"), b1 = jnum(j, "batches.1.max_rel");
            double b64 = jnum(j, "batches.64.max_rel");
            printf("    %s: %d images, max |ort - ctorch| / max |ctorch| = %.3g (max_abs %.3g), "
                   "%d argmax differences; batch 1: %.3g, batch %d: %.3g\n", jobs[i].what,
                   (int)jnum(j, "n"), rel, jnum(j, "max_abs"), (int)jnum(j, "n_disagree"), b1,
                   (int)jnum(j, "n") < 64 ? (int)jnum(j, "n") : 64, b64);
            CHECK_MSG(rel <= jobs[i].tol && b1 <= jobs[i].tol && b64 <= jobs[i].tol,
                      "%s: ONNX Runtime differs from ctorch by %.3g relative (batch 1: %.3g, "
                      "64: %.3g; tolerance %g)", jobs[i].what, rel, b1, b64, jobs[i].tol);
        }
        if (res) res[i] = j;
        else json_decref(j);
    }
}

/* Writes the job's data file: inputs x, ctorch's logits of m on them, labels y (or none). */
static int save_data(ort_job *job, ct_module *m, ct_tensor *x, ct_tensor *y, int bf16) {
    ct_tensor *logits = ctorch_logits(m, x, bf16);
    const char *names[3] = {"input", "logits", "labels"};
    ct_tensor *ts[3] = {x, logits, y};
    int rc = logits ? ct_safetensors_save(job->data, names, ts, y ? 3 : 2, NULL) : -1;
    CHECK_MSG(rc == 0, "%s: %s", job->what, ct_last_error());
    ct_free(logits);
    return rc;
}

/* A built-in model's job: a checkpoint, `ctorch export` with extra args, the first n test
 * images of dataset and ctorch's logits on them. 0, or -1 (test failed). */
static int model_job(ort_job *job, const char *model, const char *dataset, int c, int hw,
                     const char *extra, int bf16, double tol, int64_t n) {
    static int k;
    char name[64], ck[512], args[2200];
    snprintf(job->what, sizeof job->what, "%s%s", model, bf16 ? " --amp bf16" : "");
    job->tol = tol;
    snprintf(name, sizeof name, "ort%d.onnx", k);
    snprintf(job->onnx, sizeof job->onnx, "%s", tmp(name));
    snprintf(name, sizeof name, "ort%d.safetensors", k);
    snprintf(job->data, sizeof job->data, "%s", tmp(name));
    snprintf(name, sizeof name, "ort%d_ckpt.safetensors", k++);
    snprintf(ck, sizeof ck, "%s", tmp(name));
    ct_module *m = make_checkpoint(model, c, hw, hw, ck);
    ct_tensor *x = NULL, *y = NULL;
    snprintf(args, sizeof args, "--model %s --checkpoint %s --onnx %s --dataset %s %s", model, ck,
             job->onnx, dataset, extra);
    int rc = -1;
    if (!m || export_cli(args, tmp("ort.log")) != 0) {
        show_log(tmp("ort.log"));
        CHECK_MSG(0, "export %s failed", args);
    } else if (load_test_images(dataset, n, &x, &y) != 0) {
        CHECK_MSG(0, "%s test images: %s", dataset, ct_last_error());
    } else {
        rc = save_data(job, m, x, y, bf16);
    }
    ct_free(x), ct_free(y);
    ct_module_free(m);
    return rc;
}

/* make test: 256 images of simple_cnn and mlp (batch 1 and 64 through the dynamic batch),
 * 32 of resnet18_cifar, 16 of torchvision's resnet18/34/50 and mobilenet_v2; make
 * test-onnx-full (CT_TEST_ONNX_FULL): 256 of each. */
static int full(void) { return getenv("CT_TEST_ONNX_FULL") != NULL; }

TEST(onnx_ort_matches_ctorch) {
    NEED_PEER();
    if (!data_dir()) SKIP("no CIFAR-10 under $CTORCH_DATA (ctorch download cifar10)");
    ort_job jobs[7];
    int few = full() ? 256 : 16; /* the ResNets and MobileNetV2 on CIFAR-10's 32x32 images */
    if (model_job(&jobs[0], "simple_cnn", "cifar10", 3, 32, "", 0, 1e-4, 256) ||
        model_job(&jobs[1], "mlp", "mnist", 1, 28, "", 0, 1e-4, 256) ||
        model_job(&jobs[2], "resnet18_cifar", "cifar10", 3, 32, "", 0, 1e-4, full() ? 256 : 32) ||
        model_job(&jobs[3], "resnet18", "cifar10", 3, 32, "", 0, 1e-4, few) ||
        model_job(&jobs[4], "resnet34", "cifar10", 3, 32, "", 0, 1e-4, few) ||
        model_job(&jobs[5], "resnet50", "cifar10", 3, 32, "", 0, 1e-4, few) ||
        model_job(&jobs[6], "mobilenet_v2", "cifar10", 3, 32, "", 0, 1e-4, few))
        return;
    onnx_check(py, jobs, 7, NULL);
}

/* --amp bf16 against ctorch's autocast: the same roundings, but the float32 sums in
 * between are ordered differently, and a sum that lands next to a bfloat16 rounding
 * boundary rounds the other way: 2e-2 relative (measured: docs/onnx.md). */
TEST(onnx_ort_bf16) {
    NEED_PEER();
    if (!data_dir()) SKIP("no CIFAR-10 under $CTORCH_DATA (ctorch download cifar10)");
    ort_job jobs[2];
    int n = full() ? 2 : 1;
    if (model_job(&jobs[0], "simple_cnn", "cifar10", 3, 32, "--amp bf16", 1, 2e-2, 256) ||
        (full() && model_job(&jobs[1], "resnet18_cifar", "cifar10", 3, 32, "--amp bf16", 1, 2e-2, 256)))
        return;
    onnx_check(py, jobs, n, NULL);
}

/* The generic Sequential (every module type of ctorch's nn with an exporter) on random
 * inputs, at opset 17 (GELU through Erf) and 20 (the Gelu node). */
TEST(onnx_ort_generic_sequential) {
    NEED_PEER();
    ct_module *m = generic_model();
    CHECK_NN(m);
    if (!m) return;
    ort_job jobs[2] = {{.tol = 1e-4}, {.tol = 1e-4}};
    int64_t shape[4] = {64, 3, 32, 32};
    ct_manual_seed(3);
    ct_tensor *x = ct_randn(shape, 4, CT_FLOAT32);
    for (int i = 0; i < 2; i++) {
        ct_onnx_export_opts o = {.opset = i ? 20 : 17, .channels = 3, .height = 32, .width = 32};
        snprintf(jobs[i].what, sizeof jobs[i].what, "generic Sequential, opset %d", o.opset);
        snprintf(jobs[i].onnx, sizeof jobs[i].onnx, "%s", tmp(i ? "gen20.onnx" : "gen17.onnx"));
        snprintf(jobs[i].data, sizeof jobs[i].data, "%s", tmp("gen_data.safetensors"));
        CHECK_OK(ct_onnx_export(m, jobs[i].onnx, &o));
    }
    if (save_data(&jobs[0], m, x, NULL, 0) == 0) onnx_check(py, jobs, 2, NULL);
    ct_free(x);
    ct_module_free(m);
}

/* The stand-ins of torchvision's blocks against ONNX Runtime. */
TEST(onnx_ort_torchvision_blocks) {
    NEED_PEER();
    ct_module *ms[2] = {mini_resnet50(), mini_mobilenet_v2()};
    ort_job jobs[2] = {{.tol = 1e-4, .what = "ResNet of Bottlenecks"},
                       {.tol = 1e-4, .what = "MobileNetV2 (InvertedResidual, ReLU6)"}};
    int64_t shape[4] = {64, 3, 64, 64};
    ct_manual_seed(4);
    ct_tensor *x = ct_randn(shape, 4, CT_FLOAT32);
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        ct_onnx_export_opts o = {.channels = 3, .height = 64, .width = 64};
        snprintf(jobs[i].onnx, sizeof jobs[i].onnx, "%s", tmp(i ? "tv_mb.onnx" : "tv_r50.onnx"));
        snprintf(jobs[i].data, sizeof jobs[i].data, "%s",
                 tmp(i ? "tv_mb.safetensors" : "tv_r50.safetensors"));
        ok = ok && ct_onnx_export(ms[i], jobs[i].onnx, &o) == 0 &&
             save_data(&jobs[i], ms[i], x, NULL, 0) == 0;
    }
    CHECK_MSG(ok, "%s", ct_last_error());
    if (ok) onnx_check(py, jobs, 2, NULL);
    ct_free(x);
    ct_module_free(ms[0]);
    ct_module_free(ms[1]);
}

/* The bar: `ctorch eval` and ONNX Runtime on all 10,000 CIFAR-10 test images of a briefly
 * trained simple_cnn: the same number of correct predictions. Not in make test (it trains
 * and evaluates twice): make test-onnx-full runs it. */
TEST(onnx_ort_accuracy_10k) {
    if (!full()) SKIP("make test-onnx-full runs it");
    NEED_PEER();
    if (!data_dir()) SKIP("no CIFAR-10 under $CTORCH_DATA (ctorch download cifar10)");
    char cmd[2048], *ck = tmp("acc.safetensors"), *ev = tmp("acc_eval.log");
    ort_job job = {.tol = 1e-4, .what = "simple_cnn, 10000 CIFAR-10 test images"};
    snprintf(job.onnx, sizeof job.onnx, "%s", tmp("acc.onnx"));
    snprintf(job.data, sizeof job.data, "%s", tmp("acc_data.safetensors"));
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset cifar10 --data-dir %s "
             "--epochs 1 --max-steps 300 --test-limit 100 --save %s --run-dir %s/acc_run",
             bin(), data_dir(), ck, tmpdir());
    CHECK_MSG(run(cmd, tmp("acc_train.log")) == 0, "training failed");
    snprintf(cmd, sizeof cmd, "%s eval --model simple_cnn --dataset cifar10 --data-dir %s "
             "--checkpoint %s --json", bin(), data_dir(), ck);
    CHECK_MSG(run(cmd, ev) == 0, "eval failed");
    json_t *e = json_line(ev, 0);
    int64_t ct_correct = e ? (int64_t)llround(jnum(e, "test_acc") * 10000) : -1;
    CHECK(e && jnum(e, "images") == 10000);
    json_decref(e);
    char args[1200];
    snprintf(args, sizeof args, "--model simple_cnn --checkpoint %s --onnx %s", ck, job.onnx);
    CHECK(export_cli(args, tmp("acc_export.log")) == 0);
    ct_module *m = ct_model_create("simple_cnn", 10);
    ct_tensor *x = NULL, *y = NULL;
    CHECK_OK(ct_module_load(m, ck));
    CHECK_OK(load_test_images("cifar10", 10000, &x, &y));
    json_t *j = NULL;
    if (x && save_data(&job, m, x, y, 0) == 0) onnx_check(py, &job, 1, &j);
    if (j) {
        printf("    ctorch eval: %lld of 10000 correct; ONNX Runtime: %d (ctorch's logits here: "
               "%d)\n", (long long)ct_correct, (int)jnum(j, "ort_correct"),
               (int)jnum(j, "ct_correct"));
        CHECK(jnum(j, "ort_correct") == (double)ct_correct);
        CHECK(jnum(j, "ct_correct") == (double)ct_correct);
        json_decref(j);
    }
    ct_free(x), ct_free(y);
    ct_module_free(m);
}
#endif /* CT_HAVE_ONNX */
