/* ctorch convert IN[:KEY] OUT.safetensors: weights from any file ct_state_dict_load reads
 * (safetensors; torch.save zip and legacy files, through the restricted unpickler) to a
 * safetensors file with the same names, shapes and dtypes, written atomically. */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"

#include <stdio.h>
#include <string.h>

#define CMD "convert"

int cmd_convert(int argc, char **argv) {
    int list = 0;
    cli_opt opts[] = {{"--list", OPT_FLAG, &list, 0, 0, 0}};
    const char *pos[2];
    int npos, rc = cli_parse(CMD, argc, argv, opts, 1, pos, 2, &npos);
    if (rc) return rc;
    if (npos != 2 || !*pos[0] || !*pos[1])
        return cli_fail(CMD, CLI_USAGE, "usage: ctorch convert IN[:KEY] OUT.safetensors [--list]; see "
                        "`ctorch help convert`");
    ct_state_dict *sd = ct_state_dict_load(pos[0]);
    if (!sd) return cli_fail(CMD, CLI_USAGE, "%s", ct_last_error());
    if (sd->n == 0) {
        ct_state_dict_free(sd);
        return cli_fail(CMD, CLI_USAGE, "%s holds no tensors: nothing to convert", pos[0]);
    }
    int64_t elements = 0;
    for (int i = 0; i < sd->n; i++) elements += ct_numel(sd->tensors[i]);
    const char *meta[] = {"format", "pt", "source", pos[0], NULL};
    if (ct_safetensors_save(pos[1], (const char *const *)sd->names, sd->tensors, sd->n, meta)) {
        rc = cli_fail(CMD, CLI_RUNTIME, "%s", ct_last_error());
    } else {
        for (int i = 0; list && i < sd->n; i++) {
            char shape[128];
            printf("  %s %s %s\n", sd->names[i], ct_dtype_name(ct_dtype_of(sd->tensors[i])),
                   ct_shape_str(sd->tensors[i], shape, sizeof shape));
        }
        printf("%s: %d tensors, %lld elements -> %s\n", pos[0], sd->n, (long long)elements, pos[1]);
        rc = CLI_OK;
    }
    ct_state_dict_free(sd);
    return rc;
}
