/* Help texts of the ctorch commands (docs/cli.md is the long form). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *cmd, *text;
} HELP[] = {
    {"train",
     "usage: ctorch train --model M --dataset cifar10|mnist|fashion_mnist [options]\n"
     "\n"
     "  --model M              simple_cnn | mlp | resnet18\n"
     "  --dataset D            cifar10 | mnist | fashion_mnist\n"
     "  --data-dir DIR         data root (default: $CTORCH_DATA, else ./data)\n"
     "  --epochs N             default 10\n"
     "  --max-steps N          stop after N optimizer steps\n"
     "  --batch-size B         default 64\n"
     "  --optimizer O          sgd | adam | adamw (default sgd)\n"
     "  --lr LR                default 0.01 (sgd), 0.001 (adam, adamw)\n"
     "  --momentum M           default 0.9 (sgd)\n"
     "  --weight-decay W       default 0 (adamw: 0.01)\n"
     "  --nesterov             Nesterov momentum (sgd)\n"
     "  --schedule S           none | step | cosine | onecycle (default none)\n"
     "  --augment A            none | standard (random crop 4 + flip; default none)\n"
     "  --no-shuffle           batches in file record order\n"
     "  --train-limit N        keep the first N training records\n"
     "  --test-limit N         keep the first N test records\n"
     "  --seed S               default 0\n"
     "  --threads T            default: all cores\n"
     "  --device D             cpu | cuda | cuda:N (default cpu)\n"
     "  --init FILE            starting weights (safetensors)\n"
     "  --save FILE            final weights (safetensors; also on Ctrl-C)\n"
     "  --log-json FILE        one JSON object per epoch\n"
     "  --amp A                bf16 | fp16 | off: autocast mixed precision (default off)\n"
     "  --no-scaler            fp16 without dynamic loss scaling (GradScaler)\n"
     "\n"
     "Run directory (docs/runs.md): manifest.json, metrics.jsonl, checkpoints/, model.safetensors,\n"
     "curves.svg.\n"
     "  --run-dir DIR          default $CTORCH_RUNS (else runs)/<model>-<dataset>-<UTC time>\n"
     "  --checkpoint-every N   a checkpoint every N steps (default: at the end of each epoch)\n"
     "  --keep-checkpoints K   keep the K newest checkpoints (default 2)\n"
     "  --no-checkpoints       no training-state checkpoints\n"
     "  --resume RUN_DIR       continue a run from its newest valid checkpoint, with its recorded\n"
     "                         options (--epochs may be raised; options that would change the\n"
     "                         result are refused)\n"
     "  --deterministic        bitwise-identical results whatever --threads, and across resumes\n"
     "  --nan-policy P         stop | skip: on a NaN/inf loss, exit 1 or drop that step (default stop)\n"
     "SIGTERM / Ctrl-C: the step finishes, a checkpoint is written, the resume command printed.\n"},
    {"eval",
     "usage: ctorch eval --model M --checkpoint FILE --dataset D [options]\n"
     "\n"
     "  --data-dir DIR   data root (default: $CTORCH_DATA, else ./data)\n"
     "  --test-limit N   keep the first N test records\n"
     "  --batch-size B   default 256\n"
     "  --threads T      default: all cores\n"
     "  --device D       cpu | cuda | cuda:N\n"
     "  --json           print one JSON object\n"
     "  --amp A          bf16 | fp16 | off: forward passes under autocast\n"},
    {"bench",
     "usage: ctorch bench --model M --batch-size B [--steps N] [--threads T] [--device D] [--json]\n"
     "       [--amp bf16|fp16|off]\n"
     "\n"
     "Synthetic data; prints training-step and inference images per second.\n"
     "  --amp A  run the steps under autocast (bf16 | fp16 | off)\n"
     "  --json   one object: model, batch_size, threads, device, amp, train_images_per_sec,\n"
     "           infer_images_per_sec\n"},
    {"download",
     "usage: ctorch download cifar10|mnist|fashion_mnist [--data-dir DIR]\n"
     "\n"
     "Fetches the official archive and verifies its checksum.\n"},
    {"help", "usage: ctorch help [COMMAND]\n"},
};

int cli_command_help(const char *cmd) {
    for (size_t i = 0; i < sizeof HELP / sizeof *HELP; i++)
        if (strcmp(cmd, HELP[i].cmd) == 0) {
            fputs(HELP[i].text, stdout);
            return CLI_OK;
        }
    fprintf(stderr, "ctorch help: unknown command '%s'; commands: train, eval, bench, download, help\n", cmd);
    return CLI_USAGE;
}
