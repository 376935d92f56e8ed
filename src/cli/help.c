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
     "  --model M              simple_cnn | mlp | resnet18_cifar | resnet18 | resnet34 |\n"
     "                         resnet50 | mobilenet_v2 (docs/models.md: resnet18 is torchvision's,\n"
     "                         ImageNet stem; resnet18_cifar the 3x3-stem CIFAR ResNet)\n"
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
     "  --save FILE            final weights (safetensors; also on Ctrl-C)\n"
     "  --log-json FILE        one JSON object per epoch\n"
     "  --amp A                bf16 | fp16 | off: autocast mixed precision (default off)\n"
     "  --no-scaler            fp16 without dynamic loss scaling (GradScaler)\n"
     "\n"
     "Fine-tuning (docs/models.md):\n"
     "  --init FILE            starting weights (safetensors or torch.save state_dict)\n"
     "  --num-classes N        classes of the model's head (default: the dataset's)\n"
     "  --init-ignore PREFIX   tensors of --init under PREFIX are not loaded (a new head: fc.,\n"
     "                         classifier.1.); repeatable or comma-separated\n"
     "  --freeze PREFIX        parameters under PREFIX are not trained; repeatable or\n"
     "                         comma-separated (e.g. conv1.,bn1.,layer1.)\n"
     "  --lr-backbone LR       the classifier head at --lr, every other parameter at LR\n"
     "                         (the schedule scales both)\n"
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
     "SIGTERM / Ctrl-C: the step finishes, a checkpoint is written, the resume command printed.\n"
     "\n"
     "Data-parallel (started by mpirun, srun --mpi=pmix or ctorch launch with N > 1 processes;\n"
     "--batch-size is per process; rank 0 prints and writes the run; docs/distributed.md):\n"
     "  --sync-bn              SyncBatchNorm: batch statistics over every rank's batch\n"
     "  --bucket-mb MB         DDP gradient bucket size (default 25)\n"
     "  --dist-timeout S       seconds a collective may wait for the other ranks (default 300)\n"
     "  --no-overlap           reduce gradients only after backward (to measure the overlap)\n"
     "\n"
     "Monitoring (docs/monitoring.md): Prometheus /metrics, /api/run, /api/history and a live page:\n"
     "  --metrics-port PORT    serve while training (0: any free port; rank r: PORT + local rank)\n"
     "  --metrics-addr ADDR    listen address (default 127.0.0.1; others need a token file)\n"
     "  --metrics-token-file F require Authorization: Bearer <F's first line> (not for GET /)\n"
     "  --metrics-linger S     keep serving S seconds after the run ends (default 0)\n"},
    {"eval",
     "usage: ctorch eval --model M --checkpoint FILE --dataset D [options]\n"
     "\n"
     "  --data-dir DIR   data root (default: $CTORCH_DATA, else ./data)\n"
     "  --test-limit N   keep the first N test records\n"
     "  --batch-size B   default 256\n"
     "  --threads T      default: all cores\n"
     "  --device D       cpu | cuda | cuda:N\n"
     "  --json           print one JSON object\n"
     "  --amp A          bf16 | fp16 | off: forward passes under autocast\n"
     "  --num-classes N  classes of a fine-tuned model's head (default: the dataset's)\n"},
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
    {"archive",
     "usage: ctorch archive RUN_DIR [--out FILE] [--title T] [--author \"Family, Given; Affiliation\"]...\n"
     "       [--license ID] [--keywords \"a, b\"] [--description TEXT] [--version V]\n"
     "       [--allow-incomplete] [--upload zenodo [--publish] [--zenodo-url URL] [--token-file F]]\n"
     "\n"
     "Packs a run directory (manifest.json, model.safetensors, metrics.jsonl, curves.svg) into\n"
     "a .tar.gz under a directory named after the run, with a generated README.md,\n"
     "CITATION.cff, .zenodo.json and SHA256SUMS (docs/runs.md).\n"
     "  --out FILE             default RUN_DIR.tar.gz (written atomically)\n"
     "  --title T              default \"ctorch run NAME: MODEL on DATASET\"\n"
     "  --author A             \"Family, Given; Affiliation\", once per author (default: your\n"
     "                         login name, with a warning; required with --upload)\n"
     "  --license ID           SPDX identifier (default CC-BY-4.0)\n"
     "  --keywords \"a, b\"      default: ctorch, the model, the dataset\n"
     "  --description TEXT     default: a sentence on the model, dataset and final metrics\n"
     "  --version V            the record's version (default 1)\n"
     "  --allow-incomplete     archive a run whose status is \"running\", publish one that is\n"
     "                         not \"completed\" (interrupted or failed runs are archived\n"
     "                         with a warning)\n"
     "  --upload zenodo        deposit the archive on Zenodo as a draft; the token comes from\n"
     "                         $ZENODO_TOKEN or --token-file F (mode 0600), never the command line\n"
     "  --publish              also publish the deposition (permanent: it gets a DOI)\n"
     "  --zenodo-url URL       default https://zenodo.org/api (sandbox:\n"
     "                         https://sandbox.zenodo.org/api)\n"
     "  --token-file F         a file holding the token, readable by its owner only\n"},
    {"verify",
     "usage: ctorch verify ARCHIVE.tar.gz|RUN_DIR [--data-dir DIR] [--no-eval] [--threads T]\n"
     "\n"
     "Checks every sum of SHA256SUMS (a run directory without one: that manifest.json parses\n"
     "and model.safetensors loads), then re-evaluates model.safetensors on the recorded test\n"
     "set and compares with final_metrics.test_acc: exactly for a CPU run on the run's ctorch\n"
     "version and CPU model, else within 0.5 point (or 2 test images). One line per check,\n"
     "then \"verified\" (exit 0) or \"FAILED: FILES\" (exit 1); bad input exits 2.\n"
     "  --data-dir DIR   data root (default: the recorded one when it exists, else\n"
     "                   $CTORCH_DATA, else ./data)\n"
     "  --no-eval        check the files only\n"
     "  --threads T      default: all cores\n"},
    {"launch",
     "usage: ctorch launch [--nproc-per-node N] [--hostfile FILE] [--max-restarts K]\n"
     "       [--dist-timeout S] [--bind-to P] -- train|eval|bench [OPTIONS]\n"
     "       ctorch launch [...] -- /path/to/program [ARGS]\n"
     "\n"
     "Runs the command on N processes per host through OpenMPI's mpirun ($CTORCH_MPIRUN, else\n"
     "mpirun on PATH): data-parallel training with `-- train ...` (docs/distributed.md).\n"
     "Each rank's output lines start with \"[rank R] \"; when a rank fails the job ends and\n"
     "the last line names the rank, its host and its error (exit 1).\n"
     "  --nproc-per-node N   processes on each host (default 1)\n"
     "  --hostfile FILE      mpirun's hostfile (\"host slots=N\" lines; default: this host)\n"
     "  --max-restarts K     after a failure, start the job again up to K times; train\n"
     "                       resumes from its run's newest checkpoint (default 0)\n"
     "  --dist-timeout S     train: seconds a collective may wait for a lost rank\n"
     "  --bind-to P          mpirun's process binding: none (default), core, socket...\n"
     "Each rank gets CTORCH_NUM_THREADS = OMP_NUM_THREADS = the cores it may use / N (unless\n"
     "either is set). Other mpirun settings: OMPI_MCA_* environment variables.\n"},
    {"doctor",
     "usage: ctorch doctor [--json] [--data-dir DIR] [--run-dir DIR] [--device D]\n"
     "\n"
     "Checks this machine, this build and the data, one row per check with a verdict (ok,\n"
     "warning, problem) and a fix (docs/doctor.md): CPU, ISA and kernels; cores, affinity and\n"
     "CPU quota; memory and its limit; /dev/shm; OpenBLAS and the thread variables; the CUDA\n"
     "plugin, NVIDIA driver, each GPU against the build's architectures, cuDNN, NCCL; MPI;\n"
     "the datasets and their checksums; the run directory; a conv forward+backward per device.\n"
     "Exit 0 when nothing is a problem, 1 otherwise.\n"
     "  --json           one object: {\"checks\": [{check, verdict, detail, fix}], \"summary\"}\n"
     "  --data-dir DIR   data root (default: $CTORCH_DATA, else ./data); missing data is a\n"
     "                   problem when the directory is named (this option or $CTORCH_DATA)\n"
     "  --run-dir DIR    where runs go (default: $CTORCH_RUNS, else ./runs)\n"
     "  --device D       cpu | cuda | cuda:N: CUDA that cannot be used is then a problem\n"},
    {"plot",
     "usage: ctorch plot RUN_DIR [--out FILE] [--title T]\n"
     "\n"
     "Draws the run's logged rows (RUN_DIR/metrics.jsonl, one per epoch) as an SVG of four\n"
     "panels over the training step: loss and accuracy (train and test), throughput\n"
     "(images/s) and learning rate: the curves of the live page (docs/live-page.md) and the\n"
     "curves.svg that `ctorch train` writes at the end of a run. Written atomically. Exit 2\n"
     "when RUN_DIR is missing, not a run directory, or has no rows yet.\n"
     "  --out FILE   default RUN_DIR/curves.svg\n"
     "  --title T    default RUN_DIR (as train writes it)\n"},
    {"help", "usage: ctorch help [COMMAND]\n"},
};

int cli_command_help(const char *cmd) {
    for (size_t i = 0; i < sizeof HELP / sizeof *HELP; i++)
        if (strcmp(cmd, HELP[i].cmd) == 0) {
            fputs(HELP[i].text, stdout);
            return CLI_OK;
        }
    fprintf(stderr, "ctorch help: unknown command '%s'; commands: train, eval, bench, download, archive, verify, launch, doctor, plot, help\n", cmd);
    return CLI_USAGE;
}
