/* Weights from a file, whatever wrote it: the one place that tells the formats apart
 * (ct_state_dict_load): safetensors (ctorch's own checkpoints and
 * safetensors.torch.save_file) and torch.save files (src/io/torch_load.c), recognised by
 * their first bytes; PATH:KEY selects a state_dict inside the file. */
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "core/error.h"
#include "nn/nn_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The first bytes of path: which format wrote it. */
typedef enum { W_UNKNOWN, W_SAFETENSORS, W_TORCH_ZIP, W_TORCH_LEGACY } weights_format;

static weights_format sniff(const unsigned char *b, size_t n) {
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) return W_TORCH_ZIP;
    if (n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) return W_TORCH_LEGACY; /* pickle */
    /* safetensors: u64 little-endian header length, then a JSON object */
    if (n >= 9 && b[8] == '{') return W_SAFETENSORS;
    return W_UNKNOWN;
}

static int is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && !S_ISDIR(sb.st_mode);
}

/* spec = PATH or PATH:KEY. A spec that names a file is a path, whatever ':' it holds;
 * otherwise the longest prefix before a ':' that names a file. *key: malloc'd or NULL. */
static char *split_spec(const char *spec, char **key) {
    *key = NULL;
    char *path = strdup(spec);
    if (!path) return ct_error_null("weights %s: out of memory", spec);
    if (is_file(path)) return path;
    for (char *c = strrchr(path, ':'); c; c = strrchr(path, ':')) {
        *c = 0;
        if (*path && c[1] && is_file(path)) {
            *key = strdup(spec + (c - path) + 1);
            if (!*key) {
                free(path);
                return ct_error_null("weights %s: out of memory", spec);
            }
            return path;
        }
    }
    free(path);
    int err = errno;
    if (strchr(spec, ':'))
        return ct_error_null("weights %s: no such file, and no file before a ':' in it "
                             "(PATH:KEY selects a state_dict in PATH)", spec);
    return ct_error_null("weights %s: %s; give the path of a .safetensors or torch.save file",
                         spec, strerror(err ? err : ENOENT));
}

/* safetensors: KEY keeps the tensors named KEY.<name>, as <name> (a ctorch training
 * checkpoint's "model.conv1.weight"...). */
static ct_state_dict *load_safetensors(const char *path, const char *key, char **model) {
    ct_safetensors *st = ct_safetensors_load(path);
    if (!st) return NULL;
    ct_state_dict *sd = ct_state_dict_new();
    int rc = sd ? 0 : -1;
    size_t kl = key ? strlen(key) : 0;
    for (int i = 0; i < st->n && rc == 0; i++) {
        const char *name = st->names[i];
        if (key) {
            if (strncmp(name, key, kl) || name[kl] != '.') continue;
            name += kl + 1;
        }
        rc = ct_state_dict_add(sd, name, st->tensors[i]);
    }
    if (rc == 0 && key && sd->n == 0)
        rc = ct_error("weights %s:%s: no tensor is named %s.<name> in this safetensors file",
                      path, key, key);
    if (rc == 0 && model) {
        const char *m = ct_safetensors_metadata(st, "model");
        *model = m ? strdup(m) : NULL;
    }
    ct_safetensors_free(st);
    if (rc) {
        ct_state_dict_free(sd);
        return NULL;
    }
    return sd;
}

ct_state_dict *ct_state_dict_load_meta(const char *spec, char **model) {
    if (model) *model = NULL;
    if (!spec || !*spec) return ct_error_null("weights: no file given");
    char *key = NULL, *path = split_spec(spec, &key);
    if (!path) return NULL;
    ct_state_dict *sd = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        ct_error("weights %s: %s; give the path of a .safetensors or torch.save file", path,
                 strerror(errno));
        goto out;
    }
    unsigned char head[16];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    switch (sniff(head, n)) {
    case W_SAFETENSORS:
        sd = load_safetensors(path, key, model);
        break;
    case W_TORCH_ZIP:
    case W_TORCH_LEGACY:
        sd = ct_torch_load(path, key);
        break;
    default:
        ct_error("weights %s: not a safetensors or torch.save file (it starts with neither an "
                 "8-byte header length and '{', 'PK', nor a pickle)", path);
    }
out:
    free(path);
    free(key);
    return sd;
}

ct_state_dict *ct_state_dict_load(const char *spec) { return ct_state_dict_load_meta(spec, NULL); }
