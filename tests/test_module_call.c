/* Modules with several inputs and outputs (ct_module_call, ct_module_set_call): values,
 * ownership (new references a scope releases, nothing leaked on any error path), the
 * one-tensor API on such modules and ct_module_call on one-tensor modules, argument errors
 * (counts, NULL tensors, keywords) and the module-path prefix of every error. Leaks are
 * counted with the number of live tensor headers. */
#include "test.h"

#include "core/error.h"
#include "core/tensor_impl.h"
#include "ctorch_nn.h"

#include <string.h>

static int has(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

/* PairNet: forward(a, b, scale=1, proj=False) -> (a + b, a * b * scale[, proj(a)]). */
static const char *const pair_kwargs[] = {"scale", "proj", NULL};

static int pair_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    double scale = ct_module_args_get(in, "scale", 1.0);
    ct_scope *s = ct_scope_push(); /* temporaries; the outputs are kept out of it */
    out->tensors[out->n++] = ct_keep(ct_add(in->tensors[0], in->tensors[1]));
    out->tensors[out->n++] =
        ct_keep(ct_mul_scalar(ct_mul(in->tensors[0], in->tensors[1]), scale));
    if (ct_module_args_get(in, "proj", 0)) {
        ct_tensor *p = ct_module_forward(m->children[0], in->tensors[0]);
        if (!p) {
            ct_scope_pop(s);
            return -1; /* the two outputs already made are released by ct_module_call */
        }
        out->tensors[out->n++] = ct_keep(p);
    }
    ct_scope_pop(s);
    return 0;
}

static ct_module *pair_net(int64_t features) {
    ct_module *m = ct_module_new("PairNet", NULL, NULL, NULL);
    if (ct_module_add_child(m, "proj", ct_nn_linear(features, 2, 1)) != 0 ||
        ct_module_set_call(m, pair_call, 2, pair_kwargs) != 0) {
        ct_module_free(m);
        return NULL;
    }
    return m;
}

static ct_tensor *filled(int64_t rows, int64_t cols, double v) {
    int64_t sh[2] = {rows, cols};
    return ct_full(sh, 2, v, CT_FLOAT32);
}

TEST(module_call_two_inputs_keywords_and_outputs) {
    ct_module *m = pair_net(3);
    CHECK_NN(m);
    if (!m) return;
    long long base = ct__live_tensors();
    ct_scope *s = ct_scope_push();
    ct_tensor *a = filled(4, 3, 2.0), *b = filled(4, 3, 3.0);
    ct_module_args in = {.n = 2, .tensors = {a, b}, .kwargs = {{"scale", 0.5}}};
    ct_module_outputs out;
    CHECK_OK(ct_module_call(m, &in, &out));
    CHECK(out.n == 2);
    CHECK(ct_item(ct_mean(out.tensors[0], NULL, 0, 0)) == 5.0);
    CHECK(ct_item(ct_mean(out.tensors[1], NULL, 0, 0)) == 3.0);
    /* all keywords, a flag adding a third output */
    ct_module_args in3 = {.n = 2, .tensors = {a, b}, .kwargs = {{"proj", 1}, {"scale", 2}}};
    CHECK_OK(ct_module_call(m, &in3, &out));
    CHECK(out.n == 3 && ct_size(out.tensors[2], 1) == 2);
    CHECK(ct_item(ct_mean(out.tensors[1], NULL, 0, 0)) == 12.0);
    /* outputs carry the graph: backward reaches the child's parameters */
    CHECK_OK(ct_backward(ct_sum(out.tensors[2], NULL, 0, 0), NULL, 0));
    CHECK_NN(ct_grad(ct_module_get_tensor(m, "proj.weight")));
    ct_module_zero_grad(m);
    ct_scope_pop(s); /* the outputs are the scope's like any op result */
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
    /* without a scope: the caller's references */
    a = filled(2, 3, 1.0);
    b = filled(2, 3, 1.0);
    ct_module_args in2 = {.n = 2, .tensors = {a, b}};
    CHECK_OK(ct_module_call(m, &in2, &out));
    CHECK(out.n == 2);
    ct_module_outputs_free(&out);
    CHECK(out.n == 0 && out.tensors[0] == NULL);
    ct_module_outputs_free(NULL);
    ct_free(a);
    ct_free(b);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
    ct_module_free(m);
}

/* Every argument error: -1, out emptied, a message naming the fault and the module. */
#define CHECK_CALL_ERR(m, in, needle)                                                       \
    do {                                                                                    \
        ct_module_outputs o_;                                                               \
        o_.n = 5;                                                                           \
        CHECK_ERR_INT(ct_module_call((m), (in), &o_), (needle));                            \
        CHECK(o_.n == 0);                                                                   \
    } while (0)

TEST(module_call_argument_errors) {
    ct_module *m = pair_net(3);
    CHECK_NN(m);
    if (!m) return;
    long long base = ct__live_tensors();
    ct_tensor *a = filled(4, 3, 2.0), *b = filled(4, 3, 3.0);
    ct_module_args in = {.n = 9, .tensors = {a, b}};
    CHECK_CALL_ERR(m, &in, "too many input tensors (in->n = 9)");
    CHECK(has(ct_last_error(), "CT_MODULE_MAX_INPUTS = 8"));
    CHECK(has(ct_last_error(), "PairNet: ")); /* the module's prefix */
    CHECK(has(ct_last_error(), "forward(x0, x1, scale=..., proj=...)"));
    in.n = -1;
    CHECK_CALL_ERR(m, &in, "negative");
    in.n = 1;
    CHECK_CALL_ERR(m, &in, "takes 2 input tensors, got 1");
    in.n = 3;
    CHECK_CALL_ERR(m, &in, "takes 2 input tensors, got 3");
    ct_module_args null_in = {.n = 2, .tensors = {a, NULL}};
    CHECK_CALL_ERR(m, &null_in, "input tensor 1 of 2 is NULL");
    ct_module_args typo = {.n = 2, .tensors = {a, b}, .kwargs = {{"scael", 2}}};
    CHECK_CALL_ERR(m, &typo, "unexpected keyword argument 'scael'");
    ct_module_args twice = {.n = 2, .tensors = {a, b}, .kwargs = {{"scale", 2}, {"scale", 3}}};
    CHECK_CALL_ERR(m, &twice, "keyword argument 'scale' given twice");
    /* an empty name ends the list, like NULL: what follows is not read */
    ct_module_args ended = {.n = 2, .tensors = {a, b}, .kwargs = {{"", 0}, {"bogus", 1}}};
    ct_module_outputs out;
    CHECK_OK(ct_module_call(m, &ended, &out));
    ct_module_outputs_free(&out);
    /* NULL pieces */
    ct_module_args ok = {.n = 2, .tensors = {a, b}};
    CHECK_ERR_INT(ct_module_call(NULL, &ok, &out), "NULL module");
    CHECK_ERR_INT(ct_module_call(m, NULL, &out), "PairNet call: in is NULL");
    CHECK_ERR_INT(ct_module_call(m, &ok, NULL), "PairNet call: out is NULL");
    /* the module's own failure after it made two outputs: nothing leaks */
    ct_tensor *wide = filled(4, 5, 1.0);
    ct_module_args bad_proj = {.n = 2, .tensors = {wide, wide}, .kwargs = {{"proj", 1}}};
    CHECK_CALL_ERR(m, &bad_proj, "Linear 'proj' (in_features=3, out_features=2");
    CHECK(has(ct_last_error(), "in_features = 3"));
    CHECK(!has(ct_last_error(), "PairNet")); /* prefixed once, by the innermost module */
    ct_free(wide);
    ct_free(a);
    ct_free(b);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
    ct_module_free(m);
}

/* The one-tensor API and the several-tensor API on each other's modules. */
TEST(module_call_and_forward_on_each_others_modules) {
    long long base = ct__live_tensors();
    ct_module *lin = ct_nn_linear(3, 2, 1), *pair = pair_net(3);
    CHECK(lin && pair);
    if (!lin || !pair) return;
    ct_tensor *a = filled(4, 3, 1.0);
    /* ct_module_call on a one-tensor module: one input, no keywords, one output */
    ct_module_args one = {.n = 1, .tensors = {a}};
    ct_module_outputs out;
    CHECK_OK(ct_module_call(lin, &one, &out));
    ct_tensor *y = ct_module_forward(lin, a);
    CHECK(out.n == 1);
    CHECK_CLOSE(out.tensors[0], y, 0, "call == forward on Linear");
    ct_module_outputs_free(&out);
    ct_free(y);
    ct_module_args two = {.n = 2, .tensors = {a, a}};
    CHECK_CALL_ERR(lin, &two, "Linear (in_features=3, out_features=2, bias=True): takes 1 input");
    ct_module_args kw = {.n = 1, .tensors = {a}, .kwargs = {{"use_aux", 1}}};
    CHECK_CALL_ERR(lin, &kw, "keyword argument 'use_aux', but it is a one-tensor module");
    ct_module_args none = {.n = 0};
    CHECK_CALL_ERR(lin, &none, "takes 1 input tensor, got 0");
    /* ct_module_forward on a module that takes two tensors: told to use ct_module_call */
    CHECK_ERR_PTR(ct_module_forward(pair, a), "PairNet: takes 2 input tensors");
    CHECK(has(ct_last_error(), "ct_module_call"));
    CHECK_ERR_PTR(ct_module_forward(pair, NULL), "PairNet: input is NULL");
    /* a module with neither forward */
    ct_module *empty = ct_module_new("Empty", NULL, NULL, NULL);
    CHECK_ERR_PTR(ct_module_forward(empty, a), "Empty: module has no forward function");
    CHECK_CALL_ERR(empty, &one, "Empty: module has no forward function");
    ct_module_free(empty);
    ct_free(a);
    ct_module_free(lin);
    ct_module_free(pair);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
}

/* SplitNet: forward(x) -> (relu(x), -x): one input, two outputs. */
static int split_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    (void)m;
    out->tensors[out->n++] = ct_relu(in->tensors[0]);
    out->tensors[out->n++] = ct_neg(in->tensors[0]);
    return 0;
}

TEST(module_forward_on_a_multi_output_module_returns_the_first) {
    long long base = ct__live_tensors();
    ct_module *split = ct_module_new("SplitNet", NULL, NULL, NULL);
    CHECK_OK(ct_module_set_call(split, split_call, 1, NULL));
    int64_t n = 6;
    ct_tensor *x = ct_arange(-3, 3, 1, CT_FLOAT32);
    ct_tensor *y = ct_module_forward(split, x), *want = ct_relu(x);
    CHECK_CLOSE(y, want, 0, "first output");
    ct_free(y);
    ct_free(want);
    CHECK_MSG(ct__live_tensors() == base + 1, "the second output was not released");
    /* inside a Sequential (which runs children one tensor at a time) */
    ct_module *mods[2] = {split, ct_nn_relu()};
    ct_module *seq = ct_nn_sequential(mods, 2);
    CHECK_NN(seq);
    y = ct_module_forward(seq, x);
    CHECK(y && ct_numel(y) == n && ((float *)ct_data(y))[5] == 2.0f);
    ct_free(y);
    /* keywords: SplitNet declared none */
    ct_module_args kw = {.n = 1, .tensors = {x}, .kwargs = {{"flag", 1}}};
    CHECK_CALL_ERR(ct_module_get(seq, "0"), &kw, "SplitNet '0': got an unexpected keyword");
    ct_free(x);
    ct_module_free(seq);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
}

/* Call functions that break the contract: reported, and what they made is released. */
static int no_outputs(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    (void)m;
    (void)in;
    (void)out;
    return 0;
}
static int null_output(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    (void)m;
    out->tensors[out->n++] = ct_neg(in->tensors[0]);
    out->n++; /* tensors[1] left NULL */
    return 0;
}
static int fails_after_output(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    (void)m;
    out->tensors[0] = ct_neg(in->tensors[0]); /* placed, not even counted */
    return ct_error("custom failure");
}
static int fails_silently(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    (void)m;
    (void)in;
    (void)out;
    return 1;
}

TEST(module_call_reports_broken_call_functions) {
    long long base = ct__live_tensors();
    ct_tensor *x = filled(2, 2, 1.0);
    ct_module_args in = {.n = 1, .tensors = {x}};
    ct_module_call_fn fns[4] = {no_outputs, null_output, fails_after_output, fails_silently};
    const char *want[4] = {"returned 0 outputs", "output 1 is NULL", "Broken: custom failure",
                           "failed without setting an error message"};
    for (int i = 0; i < 4; i++) {
        ct_module *m = ct_module_new("Broken", NULL, NULL, NULL);
        CHECK_OK(ct_module_set_call(m, fns[i], 1, NULL));
        CHECK_CALL_ERR(m, &in, want[i]);
        CHECK_ERR_PTR(ct_module_forward(m, x), want[i]);
        ct_module_free(m);
    }
    ct_free(x);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
}

TEST(module_set_call_checks_its_arguments) {
    ct_module *m = ct_module_new("Custom", NULL, NULL, NULL);
    CHECK_ERR_INT(ct_module_set_call(NULL, split_call, 1, NULL), "NULL module");
    CHECK_ERR_INT(ct_module_set_call(m, NULL, 1, NULL), "call function is NULL");
    CHECK_ERR_INT(ct_module_set_call(m, split_call, 9, NULL), "n_inputs 9");
    CHECK_ERR_INT(ct_module_set_call(m, split_call, -2, NULL), "n_inputs -2");
    const char *const dup[] = {"a", "b", "a", NULL};
    CHECK_ERR_INT(ct_module_set_call(m, split_call, 1, dup), "'a' is listed twice");
    const char *const empty[] = {"a", "", NULL};
    CHECK_ERR_INT(ct_module_set_call(m, split_call, 1, empty), "keyword name 1 is empty");
    const char *const many[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", NULL};
    CHECK_ERR_INT(ct_module_set_call(m, split_call, 1, many), "CT_MODULE_MAX_KWARGS = 8");
    CHECK(m->call == NULL); /* nothing changed by a refused call */
    /* -1: any number of inputs (the call function checks them); 8 keyword names */
    CHECK_OK(ct_module_set_call(m, split_call, -1, many + 1)); /* 8 names */
    ct_tensor *x = filled(1, 2, 1.0);
    ct_module_args in = {.n = 1, .tensors = {x}, .kwargs = {{"h", 1}}};
    ct_module_outputs out;
    CHECK_OK(ct_module_call(m, &in, &out));
    CHECK(out.n == 2);
    ct_module_outputs_free(&out);
    ct_module_args zero = {.n = 0};
    CHECK(ct_module_args_get(&zero, "h", 7.5) == 7.5);
    CHECK(ct_module_args_get(&in, "h", 7.5) == 1.0);
    CHECK(ct_module_args_get(NULL, "h", 7.5) == 7.5);
    CHECK(ct_module_args_get(&in, NULL, 7.5) == 7.5);
    ct_free(x);
    ct_module_free(m);
}
