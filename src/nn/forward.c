/* Running modules: ct_module_forward (one tensor in, one out) and ct_module_call (several
 * inputs, keyword arguments, several outputs), either one working on a module that defines
 * only the other form, with the same error-context prefix ("Type 'path' (config): ..."). */
#include "ctorch_nn.h"
#include "core/error.h"

#include <string.h>

/* Nesting depth of module runs on this thread, and whether the current error has been
 * prefixed already (by the innermost failing module). */
static _Thread_local int g_depth;
static _Thread_local int g_tagged;

static void enter(void) {
    if (g_depth == 0) g_tagged = 0;
    g_depth++;
}

/* Leaves a module run; on failure prefixes the error once with m's type, path and config. */
static void leave(const ct_module *m, int failed) {
    g_depth--;
    if (!failed || g_tagged) return;
    char path[256], extra[200] = "", where[300] = "";
    ct_module_path(m, path, sizeof path);
    if (m->extra_repr) m->extra_repr(m, extra, sizeof extra);
    if (path[0]) snprintf(where, sizeof where, " '%s'", path);
    if (extra[0])
        ct_error_context("%s%s (%s)", m->type, where, extra);
    else
        ct_error_context("%s%s", m->type, where);
    g_tagged = 1;
}

static int kwarg_count(const ct_module_args *in) {
    int n = 0;
    while (n < CT_MODULE_MAX_KWARGS && in->kwargs[n].name && in->kwargs[n].name[0]) n++;
    return n;
}

static int accepts(const ct_module *m, const char *name) {
    for (const char *const *k = m->call_kwargs; k && *k; k++)
        if (!strcmp(*k, name)) return 1;
    return 0;
}

/* What `call` expects, for messages: "forward(x0, x1, use_aux=...)". */
static void signature(const ct_module *m, char *buf, size_t n) {
    size_t pos = (size_t)snprintf(buf, n, "forward(");
    int k = m->call ? m->call_inputs : 1;
    if (k < 0 && pos < n) pos += (size_t)snprintf(buf + pos, n - pos, "*inputs");
    for (int i = 0; i < k && pos < n; i++)
        pos += (size_t)snprintf(buf + pos, n - pos, "%sx%d", i ? ", " : "", i);
    for (const char *const *kw = m->call ? m->call_kwargs : NULL; kw && *kw && pos < n; kw++)
        pos += (size_t)snprintf(buf + pos, n - pos, "%s%s=...", pos > 8 ? ", " : "", *kw);
    if (pos < n) snprintf(buf + pos, n - pos, ")");
}

/* The checks of ct_module_call on `in` against what m takes. */
static int check_args(const ct_module *m, const ct_module_args *in) {
    char sig[200];
    signature(m, sig, sizeof sig);
    if (in->n < 0)
        return ct_error("the number of input tensors (in->n = %d) is negative; its signature "
                        "is %s", in->n, sig);
    if (in->n > CT_MODULE_MAX_INPUTS)
        return ct_error("too many input tensors (in->n = %d): a call takes at most "
                        "CT_MODULE_MAX_INPUTS = %d; its signature is %s", in->n,
                        CT_MODULE_MAX_INPUTS, sig);
    int want = m->call ? m->call_inputs : 1;
    if (want >= 0 && in->n != want)
        return ct_error("takes %d input tensor%s, got %d; its signature is %s", want,
                        want == 1 ? "" : "s", in->n, sig);
    for (int i = 0; i < in->n; i++)
        if (!in->tensors[i])
            return ct_error("input tensor %d of %d is NULL (did the op that made it fail?)", i,
                            in->n);
    int nk = kwarg_count(in);
    for (int i = 0; i < nk; i++) {
        const char *name = in->kwargs[i].name;
        if (!m->call)
            return ct_error("got the keyword argument '%s', but it is a one-tensor module: "
                            "%s takes no keyword arguments", name, sig);
        if (!accepts(m, name))
            return ct_error("got an unexpected keyword argument '%s'; its signature is %s",
                            name, sig);
        for (int j = 0; j < i; j++)
            if (!strcmp(in->kwargs[j].name, name))
                return ct_error("keyword argument '%s' given twice", name);
    }
    return 0;
}

/* Runs m's call on checked arguments; out is empty on failure. */
static int run_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    memset(out, 0, sizeof *out);
    if (!m->call) { /* a one-tensor module */
        out->tensors[0] = m->forward(m, in->tensors[0]);
        if (!out->tensors[0]) return -1;
        out->n = 1;
        return 0;
    }
    ct_clear_error();
    int rc = m->call(m, in, out);
    if (rc != 0 && !ct_last_error()[0]) /* a call function written outside the library */
        rc = ct_error("its call function failed without setting an error message");
    if (rc == 0 && (out->n < 1 || out->n > CT_MODULE_MAX_OUTPUTS))
        rc = ct_error("its call function returned %d outputs; it must return 1 to "
                      "CT_MODULE_MAX_OUTPUTS = %d", out->n, CT_MODULE_MAX_OUTPUTS);
    for (int i = 0; rc == 0 && i < out->n; i++)
        if (!out->tensors[i])
            rc = ct_error("its call function returned 0 but output %d is NULL", i);
    if (rc != 0) { /* every slot the call filled (the others are still NULL) */
        out->n = CT_MODULE_MAX_OUTPUTS;
        ct_module_outputs_free(out);
        return -1;
    }
    return 0;
}

int ct_module_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out) {
    if (out) memset(out, 0, sizeof *out);
    if (!m) return ct_error("module call: NULL module");
    if (!in || !out) return ct_error("%s call: %s is NULL", m->type, in ? "out" : "in");
    enter();
    int rc;
    if (!m->call && !m->forward)
        rc = ct_error("module has no forward function");
    else
        rc = check_args(m, in) != 0 ? -1 : run_call(m, in, out);
    leave(m, rc != 0);
    return rc;
}

ct_tensor *ct_module_forward(ct_module *m, const ct_tensor *x) {
    if (!m) return ct_error_null("module forward: NULL module");
    enter();
    ct_tensor *y = NULL;
    if (!x) {
        ct_error("input is NULL");
    } else if (m->forward) {
        y = m->forward(m, x);
    } else if (!m->call) {
        ct_error("module has no forward function");
    } else if (m->call_inputs >= 0 && m->call_inputs != 1) {
        char sig[200];
        signature(m, sig, sizeof sig);
        ct_error("takes %d input tensors (%s): run it with ct_module_call, not "
                 "ct_module_forward", m->call_inputs, sig);
    } else {
        ct_module_args in = {.n = 1, .tensors = {x}};
        ct_module_outputs out;
        if (run_call(m, &in, &out) == 0) {
            y = out.tensors[0]; /* the first output; the others are released */
            out.tensors[0] = NULL;
            ct_module_outputs_free(&out);
        }
    }
    leave(m, y == NULL);
    return y;
}

int ct_module_set_call(ct_module *m, ct_module_call_fn call, int n_inputs,
                       const char *const *kwarg_names) {
    if (!m) return ct_error("module set_call: NULL module");
    if (!call) return ct_error("%s set_call: the call function is NULL", m->type);
    if (n_inputs < -1 || n_inputs > CT_MODULE_MAX_INPUTS)
        return ct_error("%s set_call: n_inputs %d must be -1 (any) or 0 to "
                        "CT_MODULE_MAX_INPUTS = %d", m->type, n_inputs, CT_MODULE_MAX_INPUTS);
    int n = 0;
    for (; kwarg_names && kwarg_names[n]; n++) {
        if (n == CT_MODULE_MAX_KWARGS)
            return ct_error("%s set_call: more than CT_MODULE_MAX_KWARGS = %d keyword names "
                            "(is the list NULL-terminated?)", m->type, CT_MODULE_MAX_KWARGS);
        if (!kwarg_names[n][0])
            return ct_error("%s set_call: keyword name %d is empty", m->type, n);
        for (int j = 0; j < n; j++)
            if (!strcmp(kwarg_names[j], kwarg_names[n]))
                return ct_error("%s set_call: keyword name '%s' is listed twice", m->type,
                                kwarg_names[n]);
    }
    m->call = call;
    m->call_inputs = n_inputs;
    m->call_kwargs = kwarg_names;
    return 0;
}

double ct_module_args_get(const ct_module_args *in, const char *name, double default_value) {
    if (!in || !name) return default_value;
    int nk = kwarg_count(in);
    for (int i = 0; i < nk; i++)
        if (!strcmp(in->kwargs[i].name, name)) return in->kwargs[i].value;
    return default_value;
}

void ct_module_outputs_free(ct_module_outputs *out) {
    if (!out) return;
    for (int i = 0; i < out->n && i < CT_MODULE_MAX_OUTPUTS; i++) {
        ct_free(out->tensors[i]);
        out->tensors[i] = NULL;
    }
    out->n = 0;
}
