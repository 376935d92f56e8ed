/* ctorch: train, evaluate and benchmark models from one command. */
#include "cli.h"
#include "ctorch.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} COMMANDS[] = {
    {"train", cmd_train, "train a model on a dataset"},
    {"eval", cmd_eval, "evaluate a checkpoint on a test set"},
    {"export", cmd_export, "write a checkpoint as an ONNX model (docs/onnx.md)"},
    {"bench", cmd_bench, "measure training and inference throughput on synthetic data"},
    {"download", cmd_download, "fetch a dataset's official archive and verify its checksum"},
    {"archive", cmd_archive, "pack a run directory into a citable .tar.gz (optionally onto Zenodo)"},
    {"verify", cmd_verify, "check a run archive's sums and re-evaluate its weights"},
    {"launch", cmd_launch, "run a command on several processes or machines (mpirun)"},
    {"doctor", cmd_doctor, "check this machine, the build and the data; one fix per finding"},
    {"plot", cmd_plot, "draw a run directory's curves (loss, accuracy, images/s, lr) as SVG"},
    {"convert", cmd_convert, "weights from a torch.save (.pt) or safetensors file to safetensors"},
    {"help", cmd_help, "show help for a command"},
};

void cli_print_version(void) {
    int avail = 0;
    const char *why = ct_cuda_status(&avail);
    printf("ctorch %s\n", CT_VERSION);
    printf("cpu: %d threads\n", ct_get_num_threads());
    if (!avail) {
        printf("cuda: unavailable (%s)\n", why);
        return;
    }
    int n = ct_cuda_device_count();
    printf("cuda: available (%d device%s)\n", n, n == 1 ? "" : "s");
    for (int i = 0; i < n; i++) {
        char name[256];
        if (ct_cuda_device_name(i, name, sizeof name) == 0) printf("  cuda:%d %s\n", i, name);
        else printf("  cuda:%d unusable: %s\n", i, ct_last_error());
    }
}

static void usage(FILE *f) {
    fprintf(f, "usage: ctorch COMMAND [OPTIONS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++)
        fprintf(f, "  %-9s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "\n  ctorch --version      version and whether CUDA can be used\n"
               "  ctorch help COMMAND   options of a command\n");
}

int cmd_help(int argc, char **argv) {
    if (argc == 0) {
        usage(stdout);
        return CLI_OK;
    }
    return cli_command_help(argv[0]);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        cli_print_version();
        return CLI_OK;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++) {
        if (strcmp(cmd, COMMANDS[i].name) != 0) continue;
        for (int k = 2; k < argc && strcmp(argv[k], "--") != 0; k++) /* launch's command */
            if (!strcmp(argv[k], "--help") || !strcmp(argv[k], "-h")) return cli_command_help(cmd);
        return COMMANDS[i].fn(argc - 2, argv + 2);
    }
    fprintf(stderr, "ctorch: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return CLI_USAGE;
}
