/* Weights from a file, whatever wrote it: the one place that tells the formats apart
 * (ct_state_dict_load). safetensors today (ctorch's own checkpoints and
 * safetensors.torch.save_file); torch.save files are recognised by their first bytes. */
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The first bytes of path: which format wrote it. */
typedef enum { W_UNKNOWN, W_SAFETENSORS, W_TORCH_ZIP, W_TORCH_LEGACY } weights_format;

static weights_format sniff(const unsigned char *b, size_t n) {
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) return W_TORCH_ZIP;
    if (n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) return W_TORCH_LEGACY; /* pickle */
    /* safetensors: u64 little-endian header length, then a JSON object */
    if (n >= 9 && b[8] == '{') return W_SAFETENSORS;
    return W_UNKNOWN;
}

ct_state_dict *ct_state_dict_load(const char *spec) {
    if (!spec || !*spec) return ct_error_null("weights: no file given");
    FILE *f = fopen(spec, "rb");
    if (!f)
        return ct_error_null("weights %s: %s; give the path of a .safetensors or torch.save file",
                             spec, strerror(errno));
    unsigned char head[16];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    switch (sniff(head, n)) {
    case W_SAFETENSORS: {
        ct_safetensors *st = ct_safetensors_load(spec);
        if (!st) return NULL;
        ct_state_dict *sd = ct_state_dict_new();
        int rc = sd ? 0 : -1;
        for (int i = 0; i < st->n && rc == 0; i++)
            rc = ct_state_dict_add(sd, st->names[i], st->tensors[i]);
        ct_safetensors_free(st);
        if (rc) {
            ct_state_dict_free(sd);
            return NULL;
        }
        return sd;
    }
    case W_TORCH_ZIP:
    case W_TORCH_LEGACY:
        return ct_error_null("weights %s: a torch.save file, which this build cannot read yet; "
                             "convert it in Python with safetensors.torch.save_file("
                             "torch.load(path, weights_only=True), 'out.safetensors')", spec);
    default:
        return ct_error_null("weights %s: not a safetensors or torch.save file (it starts with "
                             "neither an 8-byte header length and '{', 'PK', nor a pickle)", spec);
    }
}
