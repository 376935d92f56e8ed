/*
 * ctorch nn: modules (torch.nn), default initialisations (torch.nn.init), models and
 * checkpoints.
 *
 * A module is a tree: it owns its named children, parameters (leaf tensors that require
 * grad) and buffers (running statistics…), has a train/eval flag and a forward function.
 * state_dict names are PyTorch's: dotted paths in registration order, each module's own
 * parameters, then its own buffers, then its children's entries ("features.0.weight",
 * "layer1.0.bn1.running_mean"…), so weights move between ctorch and PyTorch both ways.
 *
 * Ownership: ct_module_* constructors return a new module owned by the caller (release it
 * with ct_module_free). Adding a module as a child (ct_module_add_child, Sequential)
 * transfers ownership to the parent. Tensors passed in are borrowed (retained when kept);
 * tensors returned by forward (ct_module_forward, ct_module_call) are new references,
 * released with ct_free or by the innermost ct_scope (ctorch.h). Errors follow ctorch.h:
 * NULL / -1 and ct_last_error(); a failing forward's message starts with the failing
 * module's type and dotted path, e.g.
 * "Linear 'classifier' (in_features=4096, out_features=10): ...".
 */
#ifndef CTORCH_NN_H
#define CTORCH_NN_H

#include "ctorch.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ct_module ct_module;
/* Computes the module's output for one input; returns a new reference or NULL + error. */
typedef ct_tensor *(*ct_module_forward_fn)(ct_module *self, const ct_tensor *input);

/* ------------------------------------------ several inputs and outputs (forward(x, y, k=v))
 * PyTorch's `out, aux = model(x, use_aux=True)`:
 *
 *     ct_module_args in = {.n = 1, .tensors = {x}, .kwargs = {{"use_aux", 1}}};
 *     ct_module_outputs out;
 *     if (ct_module_call(model, &in, &out) != 0) ... ct_last_error() ...
 *     ct_tensor *logits = out.tensors[0], *aux = out.n > 1 ? out.tensors[1] : NULL;
 *
 * Input tensors are positional (tensors[0 .. n-1]); keyword arguments are named numbers
 * (flags are 0 / 1), read by the module with ct_module_args_get. */
#define CT_MODULE_MAX_INPUTS 8
#define CT_MODULE_MAX_OUTPUTS 8
#define CT_MODULE_MAX_KWARGS 8

typedef struct {
    const char *name; /* NULL (or "") ends the list */
    double value;
} ct_module_kwarg;

typedef struct ct_module_args {
    int n;                                          /* input tensors given: 0..MAX_INPUTS */
    const ct_tensor *tensors[CT_MODULE_MAX_INPUTS]; /* BORROWED, none NULL below n */
    ct_module_kwarg kwargs[CT_MODULE_MAX_KWARGS];   /* up to the first NULL name */
} ct_module_args;

typedef struct ct_module_outputs {
    int n;                                     /* outputs produced: 1..MAX_OUTPUTS */
    ct_tensor *tensors[CT_MODULE_MAX_OUTPUTS]; /* NEW references (ct_free or a scope) */
} ct_module_outputs;

/* A module's forward with several inputs and outputs. `in` has been checked by
 * ct_module_call (count, no NULL tensor, only the keyword names the module declared);
 * out arrives empty (n = 0): append each result (a new reference) with
 * out->tensors[out->n++] = t. Temporaries must not outlive the call: ct_free them, or push
 * a scope, ct_keep each output and pop it. Returns 0, or non-zero with an error message
 * (one is supplied when the function set none); tensors already placed in out are then
 * released by ct_module_call. */
typedef int (*ct_module_call_fn)(ct_module *self, const ct_module_args *in,
                                 ct_module_outputs *out);

/* The module struct is public so that programs can define their own modules (see
 * ct_module_new). Read fields freely; change them only through the functions below. */
struct ct_module {
    const char *type;              /* "Linear", "Conv2d", … (static string) */
    ct_module_forward_fn forward;
    void *impl;                    /* module-specific configuration/state */
    void (*impl_free)(void *impl); /* frees impl (may be NULL) */
    /* Writes the text inside the parentheses of the module's repr ("3, 32, kernel_size=(3,
     * 3)…"); may be NULL. */
    void (*extra_repr)(const ct_module *self, char *buf, size_t n);
    int training;                  /* 1 after creation (PyTorch's default), see ct_module_train */
    ct_module *parent;             /* NULL for a root */
    char *name;                    /* name inside the parent ("" for a root) */
    int n_children, cap_children;
    ct_module **children;
    int n_params, cap_params;
    char **param_names;
    ct_tensor **params;            /* owned references; float leaves requiring grad */
    int n_buffers, cap_buffers;
    char **buffer_names;
    ct_tensor **buffers;           /* owned references; no grad */
    /* Several inputs/outputs (ct_module_set_call); NULL for one-tensor modules. */
    ct_module_call_fn call;
    int call_inputs;               /* input tensors `call` takes; -1: any number */
    const char *const *call_kwargs; /* keyword names `call` accepts (NULL-terminated), or NULL */
};

/* --------------------------------------------------------------- the module tree */
/* A module with no children/parameters. `type` must be a static string; impl (may be
 * NULL) is freed with impl_free when the module is freed. */
ct_module *ct_module_new(const char *type, ct_module_forward_fn forward, void *impl,
                         void (*impl_free)(void *impl));
/* Frees the module, its children, parameters and buffers. NULL is fine. */
void ct_module_free(ct_module *m);
/* Adds `child` under `name` (a non-empty name without dots, unique among m's children,
 * parameters and buffers). Takes ownership of child, also on failure (it is freed),
 * except when child already belongs to another parent (then it is left alone). A NULL
 * child (a failed constructor) fails and keeps that constructor's error message. */
int ct_module_add_child(ct_module *m, const char *name, ct_module *child);
/* Registers a parameter: m keeps a reference to t, which must be a floating leaf tensor;
 * requires_grad is switched on. Returns the index in m->params, or -1. */
int ct_module_add_parameter(ct_module *m, const char *name, ct_tensor *t);
/* Registers a buffer (saved in the state_dict, never trained). Index or -1. */
int ct_module_add_buffer(ct_module *m, const char *name, ct_tensor *t);

/* Runs m on one input: m->forward, or, for a module that has only a `call`
 * (ct_module_set_call), the call with input as its one tensor and no keyword arguments,
 * returning its FIRST output (the others are released); a call that takes another number
 * of inputs is an error naming ct_module_call. Returns a NEW reference (input is borrowed)
 * or NULL. On failure the error message is prefixed (once, by the innermost module) with
 * the failing module's type, dotted path and configuration. */
ct_tensor *ct_module_forward(ct_module *m, const ct_tensor *input);

/* Runs m on several inputs and keyword arguments: m->call, or, for a one-tensor module,
 * m->forward when `in` holds exactly one tensor and no keyword arguments. Returns 0 with
 * out->n >= 1 outputs, each a NEW reference (ct_free them, ct_module_outputs_free, or let
 * a scope release them); the tensors of `in` are borrowed. Returns -1 with out->n == 0 and
 * nothing to release on failure: a NULL module/in/out, in->n outside 0..MAX_INPUTS or
 * different from what the module takes, a NULL input tensor, an unknown or repeated
 * keyword, or the module's own error; messages carry the same module prefix as
 * ct_module_forward's. */
int ct_module_call(ct_module *m, const ct_module_args *in, ct_module_outputs *out);
/* Gives m a forward with several inputs/outputs. n_inputs: the number of input tensors
 * call takes (0..CT_MODULE_MAX_INPUTS), or -1 for any (call checks them). kwarg_names:
 * the keyword names call accepts, NULL-terminated, non-empty and distinct, at most
 * CT_MODULE_MAX_KWARGS; NULL for none. The array and its strings must outlive m (static
 * storage). m->forward may stay set (ct_module_forward then uses it) or be NULL. */
int ct_module_set_call(ct_module *m, ct_module_call_fn call, int n_inputs,
                       const char *const *kwarg_names);
/* For call functions: the value of keyword argument `name` in `in`, or default_value when
 * it was not given. */
double ct_module_args_get(const ct_module_args *in, const char *name, double default_value);
/* Releases out's tensors (ct_free) and sets out->n to 0. NULL is fine. */
void ct_module_outputs_free(ct_module_outputs *out);

/* Train/eval mode for m and every descendant (Dropout, BatchNorm behave differently). */
void ct_module_train(ct_module *m, int training);
void ct_module_eval(ct_module *m);
int ct_module_is_training(const ct_module *m);

/* Dotted path of m from its root ("features.0"), or "" for the root, into buf. */
const char *ct_module_path(const ct_module *m, char *buf, size_t n);
/* Descendant by dotted path ("layer1.0.conv1"); "" is m itself. BORROWED, NULL if absent
 * (no error set). */
ct_module *ct_module_get(const ct_module *m, const char *path);
/* Parameter or buffer by its state_dict name. BORROWED, NULL if absent (no error). */
ct_tensor *ct_module_get_tensor(const ct_module *m, const char *name);

/* All parameters, in state_dict order (PyTorch's model.parameters()). Returns a malloc'd
 * array of BORROWED tensors (release the array with free()); *n receives the count.
 * An empty module gives a non-NULL array with *n == 0. */
ct_tensor **ct_module_parameters(const ct_module *m, int *n);
int64_t ct_module_num_parameters(const ct_module *m); /* total elements */
/* Sets every parameter's .grad to NULL (PyTorch's zero_grad(set_to_none=True)). */
void ct_module_zero_grad(ct_module *m);

/* Moves (or converts) every parameter and buffer to device d / dtype dt (dt < 0 keeps the
 * dtype; integer buffers such as num_batches_tracked keep theirs). Tensors are replaced
 * in place inside the module: pointers obtained earlier (optimizers!) become stale, so
 * convert before creating the optimizer. Gradients are dropped. */
int ct_module_to(ct_module *m, ct_device d, int dt);

/* Prints a PyTorch-style repr of the tree. */
void ct_module_print(const ct_module *m, FILE *f);

/* -------------------------------------------------------------- state_dict */
typedef struct ct_state_dict {
    int n;
    char **names;
    ct_tensor **tensors; /* owned references */
} ct_state_dict;

/* Parameters and buffers under PyTorch's names and order. The tensors are references to
 * the module's own tensors (detach/clone them before modifying). */
ct_state_dict *ct_module_state_dict(const ct_module *m);
/* An empty dictionary to fill with ct_state_dict_add (for loading foreign weights). */
ct_state_dict *ct_state_dict_new(void);
int ct_state_dict_add(ct_state_dict *sd, const char *name, ct_tensor *t); /* retains t */
ct_tensor *ct_state_dict_get(const ct_state_dict *sd, const char *name); /* BORROWED */
void ct_state_dict_free(ct_state_dict *sd);

/* Compares sd against m's state_dict. Returns NULL when they match (strict: same names,
 * else only the names present in both are compared), otherwise a malloc'd report (free())
 * listing every shape mismatch, missing and unexpected name with shapes, one per line. */
char *ct_module_check_state_dict(const ct_module *m, const ct_state_dict *sd, int strict);
/* Copies sd's values into the module's tensors (with dtype conversion, as PyTorch's
 * load_state_dict). All-or-nothing: on any mismatch nothing is changed and the error
 * message lists the problems (as many as fit; ct_module_check_state_dict gives them all).
 * strict = 0 ignores missing and unexpected names (shape mismatches still fail). */
int ct_module_load_state_dict(ct_module *m, const ct_state_dict *sd, int strict);

/* ------------------------------------------------------------ checkpoints
 * safetensors files with the state_dict names and PyTorch's layouts (conv weight OIHW,
 * linear [out, in], num_batches_tracked int64 0-dim): what
 * safetensors.torch.save_file(model.state_dict(), path) writes and load_file reads.
 * metadata: NULL or NULL-terminated key, value list (e.g. {"model", "simple_cnn", NULL});
 * "format": "pt" is always written. Saving is atomic (temporary file + rename). */
int ct_module_save(const ct_module *m, const char *path, const char *const *metadata);
/* Loads a checkpoint written by ct_module_save or by PyTorch (strict): any file
 * ct_state_dict_load reads (safetensors, torch.save; PATH:KEY). On a checkpoint of another
 * model the message names the file and lists the mismatched names and shapes. */
int ct_module_load(ct_module *m, const char *path);
/* Weights from a file, whatever wrote it: safetensors (ct_module_save,
 * safetensors.torch.save_file) or torch.save (zip and legacy formats, through a restricted
 * unpickler: ct_torch_load in ctorch_io.h, docs/weights.md). spec is PATH or PATH:KEY: KEY
 * selects the state_dict stored under that key of a torch.save dict
 * ("ckpt.pt:model_state_dict"; "a.b" descends), or, in a safetensors file, the tensors
 * named KEY.<name> (as <name>). A spec naming an existing file is a path even when it holds
 * ':'. A new dictionary (ct_state_dict_free), or NULL with an error naming the file and
 * what is wrong with it. */
ct_state_dict *ct_state_dict_load(const char *spec);

/* ------------------------------------------------------------------ layers
 * Constructors validate their arguments (positive sizes, groups dividing channels…) and
 * initialise like PyTorch (see init below) from ctorch's seeded RNG (ct_manual_seed).
 *
 * Options structs: PyTorch's keyword arguments as designated initialisers, e.g.
 *     ct_nn_conv2d_opt(1, 16, &(ct_conv2d_opts){.kernel_size = 3, .padding = 1})
 *     ct_nn_batch_norm2d_opt(16, NULL)
 * A field left at 0 means PyTorch's default, so a zero-initialised struct gives torch.nn's
 * defaults; flags are spelled so that 0 is the default (.no_bias = 1 is bias=False). Any
 * other out-of-range value is an error naming the field (a negative stride is not "the
 * default"). Options structs are read during the call only. The positional constructors
 * (ct_nn_conv2d, ct_nn_batch_norm2d_ex, …) stay as they are; for the same settings both
 * forms build identical modules (same repr, state_dict and, from the same seed, values). */

/* Linear(in_features, out_features, bias): weight [out, in], bias [out]. */
ct_module *ct_nn_linear(int64_t in_features, int64_t out_features, int bias);
typedef struct {
    int no_bias; /* bias=False */
} ct_linear_opts;
/* o may be NULL (all defaults). */
ct_module *ct_nn_linear_opt(int64_t in_features, int64_t out_features, const ct_linear_opts *o);

/* The complete Conv2d configuration (every field given; bias 1 = with bias), used by
 * ct_nn_conv2d_ex. New code: ct_conv2d_opts below. */
typedef struct {
    int kernel[2], stride[2], padding[2], dilation[2];
    int groups;
    int bias;
} ct_conv2d_options;
/* Conv2d(in, out, kernel_size=k, stride, padding, bias): square kernel, dilation 1,
 * groups 1. weight [out, in/groups, kh, kw], bias [out]. */
ct_module *ct_nn_conv2d(int64_t in_channels, int64_t out_channels, int kernel_size, int stride,
                        int padding, int bias);
ct_module *ct_nn_conv2d_ex(int64_t in_channels, int64_t out_channels, const ct_conv2d_options *o);
typedef struct {
    int kernel_size; /* required (PyTorch has no default either) */
    int stride;      /* 0: 1 */
    int padding;     /* 0: 0 */
    int dilation;    /* 0: 1 */
    int groups;      /* 0: 1 */
    int no_bias;     /* bias=False */
    /* Non-square (height, width) values: a pair with a non-zero element replaces the
     * scalar above, e.g. .kernel_size_hw = {1, 3}, .padding_hw = {0, 1}. */
    int kernel_size_hw[2], stride_hw[2], padding_hw[2], dilation_hw[2];
} ct_conv2d_opts;
/* Conv2d with options; o must be non-NULL and give kernel_size (or kernel_size_hw). */
ct_module *ct_nn_conv2d_opt(int64_t in_channels, int64_t out_channels, const ct_conv2d_opts *o);

/* BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True,
 * track_running_stats=True): parameters weight, bias; buffers running_mean,
 * running_var, num_batches_tracked (int64, 0-dim). momentum < 0 means PyTorch's
 * momentum=None (cumulative average). */
ct_module *ct_nn_batch_norm2d(int64_t num_features);
ct_module *ct_nn_batch_norm2d_ex(int64_t num_features, double eps, double momentum, int affine,
                                 int track_running_stats);
typedef struct {
    double eps;                 /* 0: 1e-5; else > 0 */
    double momentum;            /* 0: 0.1; else in (0, 1] (a momentum of exactly 0 — running
                                   statistics never move — is ct_nn_batch_norm2d_ex's) */
    int momentum_none;          /* momentum=None: cumulative moving average (leave momentum 0) */
    int no_affine;              /* affine=False: no weight and bias */
    int no_track_running_stats; /* track_running_stats=False: no buffers, batch statistics */
} ct_batch_norm2d_opts;
/* o may be NULL (all defaults). */
ct_module *ct_nn_batch_norm2d_opt(int64_t num_features, const ct_batch_norm2d_opts *o);

ct_module *ct_nn_relu(void);
ct_module *ct_nn_relu6(void); /* ReLU6: min(max(x, 0), 6) (hardtanh(0, 6)) */
ct_module *ct_nn_gelu(int approximate_tanh); /* GELU(approximate='none'|'tanh') */
ct_module *ct_nn_identity(void);
/* MaxPool2d(kernel_size, stride (<= 0: = kernel_size), padding). */
ct_module *ct_nn_max_pool2d(int kernel_size, int stride, int padding);
/* AvgPool2d(kernel_size, stride (<= 0: = kernel_size), padding), count_include_pad=True. */
ct_module *ct_nn_avg_pool2d(int kernel_size, int stride, int padding);
/* MaxPool2d / AvgPool2d options (square windows). */
typedef struct {
    int kernel_size;          /* required */
    int stride;               /* 0: kernel_size (PyTorch's stride=None) */
    int padding;              /* 0: 0; at most half the (dilated) window */
    int dilation;             /* MaxPool2d only. 0: 1 */
    int ceil_mode;            /* ceil_mode=True */
    int no_count_include_pad; /* AvgPool2d only: count_include_pad=False */
} ct_pool2d_opts;
/* o must be non-NULL and give kernel_size; a field of the other pooling is an error. */
ct_module *ct_nn_max_pool2d_opt(const ct_pool2d_opts *o);
ct_module *ct_nn_avg_pool2d_opt(const ct_pool2d_opts *o);
ct_module *ct_nn_adaptive_avg_pool2d(int out_h, int out_w);
ct_module *ct_nn_dropout(double p);
typedef struct {
    double p; /* 0: 0.5; else in (0, 1]. (Dropout(p=0), which keeps everything, is
                 ct_nn_dropout(0).) */
} ct_dropout_opts;
/* o may be NULL (all defaults). */
ct_module *ct_nn_dropout_opt(const ct_dropout_opts *o);
/* Flatten(start_dim=1, end_dim=-1). */
ct_module *ct_nn_flatten(int start_dim, int end_dim);
/* Sequential of n modules named "0", "1", …; takes ownership of the modules (all of them,
 * also on failure). mods may be NULL when n == 0. */
ct_module *ct_nn_sequential(ct_module *const *mods, int n);
int ct_nn_sequential_append(ct_module *seq, ct_module *mod); /* takes ownership */
/* torchvision's BasicBlock(inplanes, planes, stride): conv1 (3x3, stride), bn1, relu,
 * conv2 (3x3), bn2, and when stride != 1 or inplanes != planes a downsample Sequential
 * (conv 1x1 stride, bn); out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). */
ct_module *ct_nn_basic_block(int64_t inplanes, int64_t planes, int stride);
/* torchvision's Bottleneck(inplanes, planes, stride) (ResNet v1.5: the stride is on the
 * 3x3 conv): conv1 (1x1, planes), bn1, conv2 (3x3, stride), bn2, conv3 (1x1, planes * 4),
 * bn3, relu, and when stride != 1 or inplanes != planes * 4 a downsample Sequential (conv
 * 1x1 stride, bn); out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)). */
ct_module *ct_nn_bottleneck(int64_t inplanes, int64_t planes, int stride);

/* ------------------------------------------------------- Transformer modules
 * torch.nn's LayerNorm, Embedding, MultiheadAttention, TransformerEncoderLayer and
 * TransformerEncoder with PyTorch's state_dict names, defaults and initialisation. */

/* LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True) over the last
 * nnorm (1..8) dimensions: weight ones, bias zeros (shape normalized_shape). */
typedef struct {
    double eps;                /* 0: 1e-5; else > 0 */
    int no_elementwise_affine; /* elementwise_affine=False: no weight and bias */
    int no_bias;               /* bias=False */
} ct_layer_norm_opts;
ct_module *ct_nn_layer_norm(const int64_t *normalized_shape, int nnorm,
                            const ct_layer_norm_opts *o); /* o may be NULL */

/* Embedding(num_embeddings, embedding_dim, padding_idx=None): weight [num, dim] drawn from
 * N(0, 1), the padding row zero (its gradient stays zero). Input: int64 indices of any
 * shape -> indices' shape + [dim]. */
typedef struct {
    int has_padding_idx;  /* padding_idx given (else None) */
    int64_t padding_idx;  /* negative counts from the end, as in PyTorch */
} ct_embedding_opts;
ct_module *ct_nn_embedding(int64_t num_embeddings, int64_t embedding_dim,
                           const ct_embedding_opts *o); /* o may be NULL */

/* MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, batch_first=False):
 * in_proj_weight [3E, E] (xavier_uniform_), in_proj_bias [3E] (zeros), out_proj Linear(E, E)
 * (PyTorch's Linear init, bias zeros). kdim = vdim = embed_dim, no bias_kv / zero_attn.
 * forward(query, key, value, key_padding_mask=None, attn_mask=None) with need_weights=False
 * semantics: ct_module_call returns one output, the attention output (PyTorch's (out, None)).
 *   query [N, L, E] (batch_first) or [L, N, E], or unbatched [L, E]; key/value [.., S, E].
 *   key_padding_mask [N, S] ([S] unbatched): bool True = ignore that key, or float (added);
 *   attn_mask [L, S] or [N * num_heads, L, S]: bool True = not allowed, or float (added).
 * Inputs: tensors {query, key, value[, key_padding_mask[, attn_mask]]} positionally; or
 * keyword arguments giving the index of the input tensor that holds a mask, e.g. only an
 * attention mask: {.n = 4, .tensors = {q, k, v, mask}, .kwargs = {{"attn_mask", 3}}}.
 * One tensor (or ct_module_forward): self-attention, query = key = value.
 * Dropout applies to the attention weights in training. */
typedef struct {
    double dropout;  /* 0: 0.0 (PyTorch's default); in [0, 1] */
    int no_bias;     /* bias=False */
    int batch_first; /* batch_first=True */
} ct_mha_opts;
ct_module *ct_nn_multihead_attention(int64_t embed_dim, int64_t num_heads, const ct_mha_opts *o);
/* The same forward as a C call (masks may be NULL); a new reference or NULL. */
ct_tensor *ct_nn_multihead_attention_forward(ct_module *mha, const ct_tensor *query,
                                             const ct_tensor *key, const ct_tensor *value,
                                             const ct_tensor *key_padding_mask,
                                             const ct_tensor *attn_mask);

/* TransformerEncoderLayer(d_model, nhead, dim_feedforward=2048, dropout=0.1,
 * activation="relu", layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True):
 * children self_attn (MultiheadAttention), linear1, dropout, linear2, norm1, norm2,
 * dropout1, dropout2 (PyTorch's names and order).
 *   norm_first: x = x + dropout1(self_attn(norm1(x))); x = x + ff(norm2(x))
 *   else:       x = norm1(x + dropout1(self_attn(x)));  x = norm2(x + ff(x))
 *   ff(x) = dropout2(linear2(dropout(activation(linear1(x)))))
 * forward(src, src_mask=None, src_key_padding_mask=None) through ct_module_call: masks
 * positionally, or keyword arguments "src_mask" / "src_key_padding_mask" giving the input
 * tensor's index (as MultiheadAttention). */
typedef struct {
    int64_t dim_feedforward; /* 0: 2048 */
    double dropout;          /* 0: 0.1 (see no_dropout) */
    int no_dropout;          /* dropout=0.0 */
    const char *activation;  /* NULL: "relu"; or "gelu" */
    double layer_norm_eps;   /* 0: 1e-5 */
    int batch_first, norm_first;
    int no_bias;             /* bias=False (Linear and LayerNorm biases) */
} ct_transformer_encoder_layer_opts;
ct_module *ct_nn_transformer_encoder_layer(int64_t d_model, int64_t nhead,
                                           const ct_transformer_encoder_layer_opts *o);
/* TransformerEncoder(encoder_layer, num_layers, norm=None): children layers (layers.0 ..
 * layers.N-1, every one starting with encoder_layer's values, as PyTorch's deep copies)
 * and norm (when given). Takes ownership of encoder_layer (it becomes layers.0) and norm,
 * also on failure. forward(src, mask=None, src_key_padding_mask=None) as the layer's
 * (keyword "mask"). (PyTorch's eval-mode nested-tensor fast path, which zeroes padded
 * positions of the output, is not reproduced: padded positions hold computed values.) */
ct_module *ct_nn_transformer_encoder(ct_module *encoder_layer, int num_layers, ct_module *norm);

/* -------------------------------------------------------------------- init
 * In-place, under no-grad, on tensors of any device; random draws come from the global
 * seeded stream (ct_manual_seed). Formulas are torch.nn.init's. */
typedef enum { CT_FAN_IN = 0, CT_FAN_OUT = 1 } ct_fan_mode;
/* fan_in = size(1) * receptive field, fan_out = size(0) * receptive field (>= 2-D). */
int ct_init_calculate_fan(const ct_tensor *t, int64_t *fan_in, int64_t *fan_out);
/* torch.nn.init.calculate_gain: "linear", "conv2d", "sigmoid", "tanh", "relu",
 * "leaky_relu" (param = negative slope, < 0 means the default 0.01), "selu". NAN on an
 * unknown name. */
double ct_init_calculate_gain(const char *nonlinearity, double param);
int ct_init_uniform_(ct_tensor *t, double low, double high);
int ct_init_normal_(ct_tensor *t, double mean, double std);
int ct_init_constant_(ct_tensor *t, double value);
int ct_init_zeros_(ct_tensor *t);
int ct_init_ones_(ct_tensor *t);
int ct_init_kaiming_uniform_(ct_tensor *t, double a, ct_fan_mode mode, const char *nonlinearity);
int ct_init_kaiming_normal_(ct_tensor *t, double a, ct_fan_mode mode, const char *nonlinearity);
int ct_init_xavier_uniform_(ct_tensor *t, double gain);
int ct_init_xavier_normal_(ct_tensor *t, double gain);
/* PyTorch's reset_parameters for Linear and Conv: weight kaiming_uniform_(a=sqrt(5)),
 * i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias (may be NULL) U(-b, b) with
 * b = 1/sqrt(fan_in) of the weight. */
int ct_init_linear_conv_default(ct_tensor *weight, ct_tensor *bias);

/* ------------------------------------------------------------------ models
 * "simple_cnn": the seed's SimpleCNN: features = Sequential(Conv2d(C,32,3,padding=1),
 *     ReLU, MaxPool2d(2), Conv2d(32,64,3,padding=1), ReLU, MaxPool2d(2)), Flatten,
 *     classifier = Linear(64*(H/4)*(W/4), num_classes).
 * "mlp": flattens its input; fc1 = Linear(C*H*W, 128), ReLU, fc2 = Linear(128, classes).
 * "resnet18_cifar": torchvision's resnet18 with the CIFAR stem: conv1 3x3 stride 1
 *     padding 1 without bias, bn1, relu, no max-pool, layer1..layer4 of BasicBlocks
 *     (64, 128, 256, 512 planes; strides 1, 2, 2, 2), avgpool (adaptive 1x1), fc. (It was
 *     called "resnet18" before ctorch had torchvision's; docs/models.md.)
 * "resnet18", "resnet34", "resnet50": torchvision's, with the ImageNet stem: conv1 7x7
 *     stride 2 padding 3 without bias, bn1, relu, maxpool 3x3 stride 2 padding 1, then
 *     layer1..layer4 of BasicBlocks (18: 2, 2, 2, 2; 34: 3, 4, 6, 3) or Bottlenecks (50:
 *     3, 4, 6, 3; v1.5, downsample.0 / .1), avgpool, fc (512 or 2048 inputs).
 * "mobilenet_v2": torchvision's (width 1.0): features.0 Conv2dNormActivation(C, 32,
 *     stride 2), features.1..17 InvertedResidual (features.N.conv.*), features.18
 *     Conv2dNormActivation(320, 1280, 1x1), ReLU6 activations; adaptive average pool;
 *     classifier = Sequential(Dropout(0.2), Linear(1280, num_classes)).
 * The ResNets and MobileNetV2 are initialised as torchvision does: convs
 *     kaiming_normal_(mode=fan_out, relu), BatchNorm weight 1 bias 0; the ResNets' fc
 *     PyTorch's Linear default, MobileNetV2's Linear normal_(0, 0.01) with bias 0.
 * Other layers use PyTorch's default initialisations. Input [N, C, H, W]; the ResNets and
 * MobileNetV2 take any image size (torchvision's 224x224, or smaller: 32x32 and up). */
/* Defaults: mlp takes 1x28x28 (MNIST), every other model 3x32x32 (CIFAR-10). */
ct_module *ct_model_create(const char *name, int num_classes);
/* With the input image size (C x H x W); simple_cnn's classifier takes 64*(H/4)*(W/4). */
ct_module *ct_model_create_ex(const char *name, int num_classes, int in_channels, int height,
                              int width);
/* NULL-terminated list of the model names. */
const char *const *ct_model_names(void);
/* The state_dict prefix of a built-in model's classifier head, the layer num_classes
 * sizes (what fine-tuning replaces): "fc." (the ResNets), "classifier.1." (mobilenet_v2),
 * "classifier." (simple_cnn), "fc2." (mlp); NULL for an unknown name. */
const char *ct_model_head(const char *name);

/* The seed's AdaptiveNet, a module with two outputs (not in ct_model_names: the CLI trains
 * one-output models):
 *     backbone  = Sequential(Flatten, Linear(in_features, 256), ReLU)   h: [N, 256]
 *     main_head = Linear(256, num_classes)
 *     aux_head  = Linear(128, aux_classes)   reads h[:, :128]
 * forward(x, use_aux=False): ct_module_call with one input and the keyword "use_aux"
 * returns (main_head(h), aux_head(h[:, :128])) when the module is training and use_aux is
 * non-zero, else (main_head(h),); ct_module_forward(m, x) returns main_head(h). x: [N, ...]
 * with in_features elements per sample (MNIST: in_features 784, [N, 1, 28, 28]).
 * state_dict: backbone.1.weight, backbone.1.bias, main_head.weight, main_head.bias,
 * aux_head.weight, aux_head.bias. */
ct_module *ct_model_adaptive_net(int64_t in_features, int num_classes, int aux_classes);

/* ------------------------------------------------------------------ ONNX export
 * The module tree as an ONNX model (docs/onnx.md): one node (or a few) per module, chosen
 * by the module's type ("Conv2d" -> Conv, "Linear" -> Gemm, "BatchNorm2d" ->
 * BatchNormalization, ...), containers (Sequential, BasicBlock, the built-in models)
 * described by their own forward's graph; the result is the module's eval-mode forward
 * (BatchNorm with its running statistics, Dropout the identity), whatever m's train flag.
 * The weights are initializers named by their state_dict names; the graph's input is
 * "input" [N, C, H, W] float32, its output "logits". The file is written atomically.
 * Errors name the module's dotted path and type (a type without an exporter, a module
 * whose configuration ONNX cannot express); nothing is written then.
 * Needs a build with protobuf-c (ct_onnx_available). */
typedef struct {
    int opset;         /* default-domain opset: 0 means 17; accepted 13..21 */
    int64_t batch;     /* > 0: a fixed batch size; 0: dynamic (dim_param "batch") */
    int channels, height, width; /* the input image size (required, >= 1) */
    int amp_bf16;      /* bfloat16 weights, activations rounded to bfloat16 as ctorch's
                          autocast does (Cast nodes; float32 arithmetic in between) */
    const char *doc;   /* the model's doc_string (e.g. the checkpoint's name); may be NULL */
} ct_onnx_export_opts;

int ct_onnx_export(const ct_module *m, const char *path, const ct_onnx_export_opts *o);
/* 1 when this build has the exporter; 0 when it was built without protobuf-c. */
int ct_onnx_available(void);

#ifdef __cplusplus
}
#endif
#endif /* CTORCH_NN_H */
