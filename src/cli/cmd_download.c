/* ctorch download DATASET [--data-dir DIR] */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_data.h"

#include <stdio.h>

int cmd_download(int argc, char **argv) {
    const char *dir = NULL, *pos[1];
    int npos;
    cli_opt opts[] = {{"--data-dir", OPT_STRING, &dir, 0, 0, 0}};
    int rc = cli_parse("download", argc, argv, opts, 1, pos, 1, &npos);
    if (rc) return rc;
    if (npos != 1)
        return cli_fail("download", CLI_USAGE, "name the dataset: ctorch download cifar10|mnist|fashion_mnist");
    ct_dataset_kind kind;
    if (ct_dataset_parse_name(pos[0], &kind) != 0)
        return cli_fail("download", CLI_USAGE, "%s", ct_last_error());
    if ((unsigned)kind >= CT_NUM_DATASETS) /* imagefolder: the user's own images */
        return ct_download_dataset(pos[0], dir), cli_fail("download", CLI_USAGE, "%s", ct_last_error());
    if (ct_download_dataset(pos[0], dir) != 0)
        return cli_fail("download", CLI_RUNTIME, "%s", ct_last_error());
    printf("%s ready in %s/%s\n", ct_dataset_name(kind), ct_data_root(dir), ct_dataset_subdir(kind));
    return CLI_OK;
}
