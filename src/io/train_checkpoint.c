/* Training checkpoints: everything a run needs to continue bit for bit, in one safetensors
 * file (docs/runs.md, "Checkpoint format").
 *
 *   tensors      "model.<state_dict name>"   the model's parameters and buffers
 *                "optim.<state name>"        ct_optim_state_dict (momentum, moments, steps)
 *   __metadata__ "ctorch_checkpoint"  format version (CT_CHECKPOINT_FORMAT)
 *                "model"              the model's name
 *                "grad_scaler"        the GradScaler's state_dict as JSON, when there is one
 *                "state"              the caller's JSON (epoch, step, RNG streams, metrics...)
 *                "sha256"             SHA-256 of the state text, then the grad_scaler text,
 *                                     then every tensor's bytes in file order
 *
 * The checksum is verified before anything is loaded, so a flipped bit or a truncated
 * file is reported as such, never half-loaded. */
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"
#include "core/error.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_FORMAT "ctorch_checkpoint"

/* SHA-256 over the state text, the scaler text and the tensors' bytes in order. */
static int checksum(const char *state, const char *scaler, ct_tensor *const *t, int n,
                    char hex[65]) {
    ct_sha256 *h = ct_sha256_new();
    if (!h) return -1;
    ct_sha256_update(h, state, strlen(state));
    ct_sha256_update(h, "\n", 1);
    if (scaler) ct_sha256_update(h, scaler, strlen(scaler));
    for (int i = 0; i < n; i++) {
        ct_tensor *c = ct_to_device(t[i], ct_cpu()); /* contiguous CPU copy or reference */
        ct_tensor *cc = c ? ct_contiguous(c) : NULL;
        if (!cc) {
            ct_free(c);
            ct_sha256_free(h);
            return -1;
        }
        ct_sha256_update(h, ct_data(cc), (size_t)ct_numel(cc) * ct_dtype_size(ct_dtype_of(cc)));
        ct_free(cc);
        ct_free(c);
    }
    return ct_sha256_final(h, hex);
}

static char *scaler_json(const ct_grad_scaler *s) {
    ct_grad_scaler_state st;
    if (!s || !ct_grad_scaler_is_enabled(s) || ct_grad_scaler_state_dict(s, &st) != 0) return NULL;
    json_t *o = json_pack("{s:f, s:f, s:f, s:I, s:I}", "scale", st.scale, "growth_factor",
                          st.growth_factor, "backoff_factor", st.backoff_factor,
                          "growth_interval", (json_int_t)st.growth_interval, "_growth_tracker",
                          (json_int_t)st.growth_tracker);
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    return text;
}

int ct_checkpoint_save(const char *path, const ct_module *m, const ct_optimizer *o,
                       const ct_grad_scaler *s, const char *model_name, const char *state_json) {
    if (!path || !m || !o || !model_name || !state_json)
        return ct_error("checkpoint save: NULL argument");
    ct_state_dict *ms = ct_module_state_dict(m), *os = ct_optim_state_dict(o);
    int n = ms && os ? ms->n + os->n : 0, rc = -1;
    char **names = calloc((size_t)n + 1, sizeof *names);
    ct_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
    char *sc = scaler_json(s);
    if (ms && os && names && ts) {
        rc = 0;
        for (int i = 0; i < ms->n && rc == 0; i++) {
            rc = asprintf(&names[i], "model.%s", ms->names[i]) < 0 ? -1 : 0;
            ts[i] = ms->tensors[i];
        }
        for (int i = 0; i < os->n && rc == 0; i++) {
            rc = asprintf(&names[ms->n + i], "optim.%s", os->names[i]) < 0 ? -1 : 0;
            ts[ms->n + i] = os->tensors[i];
        }
        if (rc) ct_error("checkpoint save %s: out of memory", path);
    }
    char hex[65], version[16];
    if (rc == 0) rc = checksum(state_json, sc, ts, n, hex);
    if (rc == 0) {
        snprintf(version, sizeof version, "%d", CT_CHECKPOINT_FORMAT);
        const char *meta[] = {META_FORMAT, version, "model", model_name, "state", state_json,
                              "sha256", hex, sc ? "grad_scaler" : NULL, sc, NULL};
        rc = ct_safetensors_save(path, (const char *const *)names, ts, n, meta);
    }
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(ts);
    free(sc);
    ct_state_dict_free(ms);
    ct_state_dict_free(os);
    return rc;
}

ct_checkpoint *ct_checkpoint_open(const char *path, ct_checkpoint_status *status) {
    ct_checkpoint_status dummy;
    if (!status) status = &dummy;
    *status = CT_CHECKPOINT_CORRUPT;
    ct_safetensors *st = ct_safetensors_load(path);
    if (!st) {
        ct_error_context("checkpoint %s is unreadable or damaged", path);
        return NULL;
    }
    const char *fmt = ct_safetensors_metadata(st, META_FORMAT);
    const char *state = ct_safetensors_metadata(st, "state");
    const char *sum = ct_safetensors_metadata(st, "sha256");
    const char *sc = ct_safetensors_metadata(st, "grad_scaler");
    char *end = NULL;
    long version = fmt ? strtol(fmt, &end, 10) : 0;
    if (!fmt || !end || *end || version < 1) {
        ct_safetensors_free(st);
        return ct_error_null("%s is not a ctorch training checkpoint (no '%s' in its "
                             "metadata): a weights file, or damaged",
                             path, META_FORMAT);
    }
    if (version > CT_CHECKPOINT_FORMAT) {
        ct_safetensors_free(st);
        *status = CT_CHECKPOINT_NEWER;
        return ct_error_null("checkpoint %s has format %ld, newer than this ctorch (%s) reads "
                             "(%d); resume it with a newer ctorch",
                             path, version, CT_VERSION, CT_CHECKPOINT_FORMAT);
    }
    char hex[65];
    if (!state || !sum || checksum(state, sc, st->tensors, st->n, hex) != 0 || strcmp(hex, sum)) {
        ct_safetensors_free(st);
        return ct_error_null("checkpoint %s is corrupt: its data do not match the SHA-256 it "
                             "records (a damaged disk or an interrupted copy)",
                             path);
    }
    ct_checkpoint *c = calloc(1, sizeof *c);
    if (!c) {
        ct_safetensors_free(st);
        return ct_error_null("checkpoint %s: out of memory", path);
    }
    c->st = st;
    c->format = (int)version;
    c->model = ct_safetensors_metadata(st, "model");
    c->state_json = state;
    c->grad_scaler_json = sc;
    *status = CT_CHECKPOINT_OK;
    return c;
}

void ct_checkpoint_close(ct_checkpoint *c) {
    if (!c) return;
    ct_safetensors_free(c->st);
    free(c);
}

/* The entries of c whose names start with prefix, without it. */
static ct_state_dict *part(const ct_checkpoint *c, const char *prefix) {
    ct_state_dict *sd = ct_state_dict_new();
    size_t pl = strlen(prefix);
    for (int i = 0; sd && i < c->st->n; i++)
        if (!strncmp(c->st->names[i], prefix, pl) &&
            ct_state_dict_add(sd, c->st->names[i] + pl, c->st->tensors[i]) != 0) {
            ct_state_dict_free(sd);
            return NULL;
        }
    return sd;
}

int ct_checkpoint_restore(const ct_checkpoint *c, ct_module *m, ct_optimizer *o,
                          ct_grad_scaler *s) {
    if (!c || !m || !o) return ct_error("checkpoint restore: NULL argument");
    ct_state_dict *ms = part(c, "model."), *os = part(c, "optim.");
    int rc = ms && os ? 0 : -1;
    if (rc == 0) {
        char *rep = ct_module_check_state_dict(m, ms, 1);
        if (rep) {
            rc = ct_error("checkpoint of model '%s' does not match this model:\n%s",
                          c->model ? c->model : "?", rep);
            free(rep);
        }
    }
    ct_grad_scaler_state gs = {0};
    if (rc == 0 && c->grad_scaler_json && s && ct_grad_scaler_is_enabled(s)) {
        json_error_t je;
        json_t *j = json_loads(c->grad_scaler_json, 0, &je);
        json_int_t gi = 0, gt = 0;
        if (!j || json_unpack(j, "{s:F, s:F, s:F, s:I, s:I}", "scale", &gs.scale, "growth_factor",
                              &gs.growth_factor, "backoff_factor", &gs.backoff_factor,
                              "growth_interval", &gi, "_growth_tracker", &gt) != 0)
            rc = ct_error("checkpoint: its grad_scaler state does not parse");
        gs.growth_interval = gi;
        gs.growth_tracker = gt;
        json_decref(j);
    }
    if (rc == 0) rc = ct_module_load_state_dict(m, ms, 1);
    if (rc == 0) rc = ct_optim_load_state_dict(o, os);
    if (rc == 0 && gs.scale > 0) rc = ct_grad_scaler_load_state_dict(s, &gs);
    ct_state_dict_free(ms);
    ct_state_dict_free(os);
    return rc;
}
