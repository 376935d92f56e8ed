/* Checks shared by the tests of models ported from torchvision (model_check.h). */
#include "model_check.h"
#include "ctorch_nn.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int check_state_dict_listing(const char *listing, const char *generator) {
    char path[512];
    const char *dir = getenv("CT_FIXTURE_DIR");
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/fixtures", listing);
    FILE *f = fopen(path, "r");
    CHECK_MSG(f != NULL, "%s is missing (run tests/fixtures/%s)", path, generator);
    if (!f) return 0;
    char line[512], model[64] = "";
    ct_module *m = NULL;
    ct_state_dict *sd = NULL;
    int idx = 0, models = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char a[256], dt[32], shape[128];
        long long np, entries;
        if (sscanf(line, "model %63s %lld %lld", model, &np, &entries) == 3) {
            ct_state_dict_free(sd);
            ct_module_free(m);
            m = ct_model_create(model, 1000);
            CHECK_NN(m);
            sd = m ? ct_module_state_dict(m) : NULL;
            idx = 0;
            models++;
            if (!m) continue;
            CHECK_MSG(ct_module_num_parameters(m) == np, "%s: %lld parameters, torchvision has %lld",
                      model, (long long)ct_module_num_parameters(m), np);
            CHECK_MSG(sd->n == entries, "%s: %d state_dict entries, torchvision has %lld", model,
                      sd->n, entries);
            continue;
        }
        if (!sd || sscanf(line, "%255s %31s %127s", a, dt, shape) != 3) continue;
        if (idx >= sd->n) {
            CHECK_MSG(0, "%s: torchvision has %s, ctorch has no entry %d", model, a, idx);
            idx++;
            continue;
        }
        ct_tensor *t = sd->tensors[idx];
        char got[128] = "";
        for (int d = 0; d < ct_ndim(t); d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "",
                     (long long)ct_size(t, d));
        if (!ct_ndim(t)) strcpy(got, "-");
        CHECK_MSG(!strcmp(sd->names[idx], a) && !strcmp(got, shape) &&
                      !strcmp(ct_dtype_name(ct_dtype_of(t)), dt),
                  "%s entry %d: ctorch %s %s [%s], torchvision %s %s [%s]", model, idx,
                  sd->names[idx], ct_dtype_name(ct_dtype_of(t)), got, a, dt, shape);
        idx++;
    }
    fclose(f);
    ct_state_dict_free(sd);
    ct_module_free(m);
    return models;
}
