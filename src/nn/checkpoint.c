/* Checkpoints: a module's state_dict as a safetensors file (PyTorch's names and layouts). */
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "core/error.h"
#include "nn_internal.h"

#include <stdlib.h>
#include <string.h>

int ct_module_save(const ct_module *m, const char *path, const char *const *metadata) {
    if (!m || !path) return ct_error("save: NULL %s", m ? "path" : "module");
    ct_state_dict *sd = ct_module_state_dict(m);
    if (!sd) return -1;
    /* metadata: "format" "pt" first, then the caller's pairs (a caller "format" wins) */
    int nmeta = 0;
    while (metadata && metadata[2 * nmeta]) nmeta++;
    const char **meta = malloc(sizeof(char *) * (size_t)(2 * nmeta + 3));
    if (!meta) {
        ct_state_dict_free(sd);
        return ct_error("save: out of memory");
    }
    int k = 0, has_format = 0;
    for (int i = 0; i < nmeta; i++)
        if (!strcmp(metadata[2 * i], "format")) has_format = 1;
    if (!has_format) {
        meta[k++] = "format";
        meta[k++] = "pt";
    }
    for (int i = 0; i < nmeta; i++) {
        if (!metadata[2 * i + 1]) break;
        meta[k++] = metadata[2 * i];
        meta[k++] = metadata[2 * i + 1];
    }
    meta[k] = NULL;
    int rc = ct_safetensors_save(path, (const char *const *)sd->names, sd->tensors, sd->n, meta);
    free(meta);
    ct_state_dict_free(sd);
    if (rc) ct_error_context("saving %s weights", m->type);
    return rc;
}

int ct_module_load(ct_module *m, const char *path) {
    if (!m || !path) return ct_error("load: NULL %s", m ? "path" : "module");
    char *model = NULL;
    ct_state_dict *sd = ct_state_dict_load_meta(path, &model);
    if (!sd) return -1;
    int rc;
    char *rep = ct_module_check_state_dict(m, sd, 1);
    if (rep) {
        char header[600];
        snprintf(header, sizeof header, "checkpoint %s%s%s%s does not match the %s model", path,
                 model ? " (saved from model " : "", model ? model : "", model ? ")" : "",
                 m->type);
        ct_nn_report_error(header, rep,
                           "fix: load it into a model built like the one it was saved from "
                           "(ct_model_create with that name and number of classes), or "
                           "load a checkpoint saved from this model");
        free(rep);
        rc = -1;
    } else {
        rc = ct_module_load_state_dict(m, sd, 1);
        if (rc) ct_error_context("loading %s", path);
    }
    free(model);
    ct_state_dict_free(sd);
    return rc;
}
