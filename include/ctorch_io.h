/*
 * ctorch checkpoints: safetensors files (https://huggingface.co/docs/safetensors), the
 * format PyTorch users exchange weights in, and atomic file writes.
 *
 * safetensors layout: 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [64, 3, 3, 3], "data_offsets": [begin, end]}, …,
 *    "__metadata__": {"key": "value", …}}
 * then the raw little-endian tensor bytes, row-major; offsets are relative to the end of
 * the header. Supported dtypes: F32, F64, I64, I32, U8, BF16, F16.
 */
#ifndef CTORCH_IO_H
#define CTORCH_IO_H

#include "ctorch.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* --------------------------------------------------------------- safetensors */
/* Writes n tensors under the given names (unique, non-empty, not "__metadata__").
 * Tensors may have any strides and live on any device (copied to the CPU).
 * metadata: NULL, or a NULL-terminated list of key, value strings,
 *   e.g. {"format", "pt", "model", "simple_cnn", NULL}.
 * The file is written atomically: a temporary file in the same directory, fsync, then
 * rename over `path`; on failure `path` is left as it was. */
int ct_safetensors_save(const char *path, const char *const *names, ct_tensor *const *tensors,
                        int n, const char *const *metadata);

typedef struct ct_safetensors {
    int n;                 /* tensors, in file (offset) order */
    char **names;
    ct_tensor **tensors;   /* contiguous CPU tensors owned by this struct */
    int n_meta;
    char **meta_keys;
    char **meta_values;
} ct_safetensors;

/* Reads and validates a whole file. Errors (missing file, truncated file, header JSON
 * that does not parse, unknown dtype, offsets outside the data or not matching the
 * shape, overlapping tensors, duplicate names) name the file and the problem. */
ct_safetensors *ct_safetensors_load(const char *path);
/* BORROWED tensor of that name, or NULL (no error set). */
ct_tensor *ct_safetensors_get(const ct_safetensors *st, const char *name);
/* BORROWED metadata value, or NULL. */
const char *ct_safetensors_metadata(const ct_safetensors *st, const char *key);
void ct_safetensors_free(ct_safetensors *st);

/* "F32" ↔ CT_FLOAT32 etc. */
const char *ct_safetensors_dtype_name(ct_dtype dt);
int ct_safetensors_dtype_parse(const char *s, ct_dtype *out);

/* ------------------------------------------------------------ torch.save files
 * The zip format of PyTorch >= 1.6 and the legacy one, read by a restricted unpickler that
 * accepts only what a tensor state_dict needs (torch.load(weights_only=True)'s idea) and
 * never runs anything: any other global (os.system, builtins.eval...) is refused with an
 * error naming it (docs/weights.md). key: NULL for the top level, which must be a dict
 * holding tensors (other entries are skipped), or the key of such a dict in the file's
 * top-level dict ("model_state_dict"; "a.b" descends into a's dict). Tensors come back
 * contiguous, on the CPU, with their dtype (float32, float64, float16, bfloat16, int64,
 * int32, uint8, bool; others are an error naming the tensor). A new dictionary
 * (ct_state_dict_free), or NULL with an error naming the file. */
struct ct_state_dict;
struct ct_state_dict *ct_torch_load(const char *path, const char *key);
/* The same from memory (the bytes of a .pt file); name is used in messages. */
struct ct_state_dict *ct_torch_load_buffer(const void *data, size_t n, const char *key,
                                           const char *name);

/* ------------------------------------------------------------ atomic files
 * Write to a temporary file next to `path`, then commit: fflush + fsync + rename over
 * path + fsync of the directory. abort (or a failed commit) removes the temporary. */
typedef struct ct_atomic_file {
    FILE *fp;            /* write through this */
    char *path;          /* the final path */
    char *tmp_path;      /* the temporary file */
} ct_atomic_file;

ct_atomic_file *ct_atomic_open(const char *path);
int ct_atomic_commit(ct_atomic_file *f); /* frees f, success or not */
void ct_atomic_abort(ct_atomic_file *f); /* frees f; NULL is fine */
/* Checks, without changing anything, that `path` can be written: its directory exists
 * and accepts new files (a probe file is created and removed), and path is not a
 * directory. Use before long work whose result will be saved there. */
int ct_check_writable(const char *path);

/* ------------------------------------------------------------------ SHA-256
 * Hex digests (64 lowercase characters + NUL) through OpenSSL's libcrypto. */
typedef struct ct_sha256 ct_sha256;
ct_sha256 *ct_sha256_new(void);
void ct_sha256_update(ct_sha256 *h, const void *data, size_t n);
int ct_sha256_final(ct_sha256 *h, char hex[65]); /* frees h, success or not */
void ct_sha256_free(ct_sha256 *h);               /* abandons a digest; NULL is fine */
int ct_sha256_buffer(const void *data, size_t n, char hex[65]);
int ct_sha256_file(const char *path, char hex[65]); /* errors name the file */

/* ---------------------------------------------------------- training checkpoints
 * Everything a training run needs to continue bit for bit, in one safetensors file: the
 * model ("model.<name>"), the optimizer's state ("optim.<name>", ct_optim_state_dict), the
 * GradScaler's state and the caller's JSON state (epoch, step, RNG streams, metrics...) in
 * __metadata__, with a format version and a SHA-256 of all of it, checked on open.
 * docs/runs.md describes the format. */
#define CT_CHECKPOINT_FORMAT 1
struct ct_module;
struct ct_optimizer;
struct ct_grad_scaler;
/* Atomic (temporary file, fsync, rename, directory fsync): on failure (a full disk...)
 * `path` is as it was. s may be NULL. */
int ct_checkpoint_save(const char *path, const struct ct_module *m, const struct ct_optimizer *o,
                       const struct ct_grad_scaler *s, const char *model_name,
                       const char *state_json);

typedef enum {
    CT_CHECKPOINT_OK = 0,
    CT_CHECKPOINT_CORRUPT, /* unreadable, truncated, checksum mismatch, not a checkpoint */
    CT_CHECKPOINT_NEWER    /* written by a newer ctorch (format version above ours) */
} ct_checkpoint_status;

typedef struct ct_checkpoint {
    ct_safetensors *st;
    int format;
    const char *model;            /* metadata "model" (borrowed from st) */
    const char *state_json;       /* the caller's state */
    const char *grad_scaler_json; /* NULL without a scaler */
} ct_checkpoint;

/* Reads and verifies a checkpoint (format, checksum); NULL with *status saying why. */
ct_checkpoint *ct_checkpoint_open(const char *path, ct_checkpoint_status *status);
/* Loads the model, optimizer and (when s is enabled) scaler state from c. The model's
 * names and shapes are checked first; a mismatch changes nothing and lists the names. */
int ct_checkpoint_restore(const ct_checkpoint *c, struct ct_module *m, struct ct_optimizer *o,
                          struct ct_grad_scaler *s);
void ct_checkpoint_close(ct_checkpoint *c);

#ifdef __cplusplus
}
#endif
#endif /* CTORCH_IO_H */
