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
    const char *pos[2];
    int npos, rc = cli_parse(CMD, argc, argv, NULL, 0, pos, 2, &npos);
    if (rc) return rc;
    if (npos != 2 || !*pos[0] || !*pos[1])
        return cli_fail(CMD, CLI_USAGE, "usage: ctorch convert IN[:KEY] OUT.safetensors; see "
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
        printf("%s: %d tensors, %lld elements -> %s\n", pos[0], sd->n, (long long)elements, pos[1]);
        rc = CLI_OK;
    }
    ct_state_dict_free(sd);
    return rc;
}
