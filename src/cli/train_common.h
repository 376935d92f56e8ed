/* Pieces shared by train, eval and bench. */
#ifndef CT_CLI_TRAIN_COMMON_H
#define CT_CLI_TRAIN_COMMON_H

#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_dist.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

typedef struct {
    double loss;
    int64_t correct, n;
} train_step_result;

typedef struct {
    double loss, accuracy;
    int64_t n;
    int bad_record; /* the evaluation stopped on an unreadable record (an input error) */
} eval_result;

/* --amp: mixed precision for a step or an evaluation. */
typedef struct {
    ct_dtype dtype;         /* CT_BFLOAT16 or CT_FLOAT16 under autocast; CT_FLOAT32: off */
    ct_grad_scaler *scaler; /* dynamic loss scaling (float16), or NULL */
} cli_amp;

double cli_now(void);
/* A dataset's split for train / eval: ct_dataset_load, or for imagefolder
 * ct_imagefolder_load with --image-size (0: 224) and --on-bad-image (NULL: error). Checks
 * that those two options go with imagefolder only; returns NULL with ct_last_error(). */
ct_dataset *cli_dataset_load(ct_dataset_kind kind, ct_split split, const char *data_dir,
                             int64_t limit, int64_t image_size, const char *on_bad_image);
/* Parses --amp bf16|fp16|off (also bfloat16, float16, fp32); prints the choices and
 * returns CLI_USAGE on anything else. */
int cli_amp_parse(const char *cmd, const char *s, cli_amp *out);
const char *cli_amp_name(const cli_amp *amp); /* "bf16", "fp16", "off" */
/* Parses --device and checks CUDA is usable; prints the reason and returns CLI_USAGE. */
int cli_device(const char *cmd, const char *s, ct_device *out);
/* A DataLoader over ds with options *lo and its device prefetcher (ctorch_data.h). On a
 * CUDA device the batches are built in pinned memory (lo->pin_memory is set) and copied
 * one batch ahead on the copy stream, overlapping with compute; on the CPU they pass
 * through. Returns 0, or -1 with ct_last_error() set and nothing allocated. */
int cli_loader_open(const ct_dataset *ds, ct_dataloader_opts *lo, ct_device dev,
                    ct_dataloader **dl, ct_device_prefetcher **pf);
/* forward, cross-entropy, backward, optimizer step, zero_grad. x and y may be on the CPU or
 * already on dev. check_loss_first: the loss is read before backward, and a NaN or infinite
 * loss returns 1 with no update (r->loss says which); otherwise 0 (the loss is read after
 * the step, one synchronisation with a GPU per step), -1 on error. */
/* Data-parallel: ddp wraps the model (forward through it; its hooks average the
 * gradients during backward). Before backward the ranks agree (one small all-reduce) on
 * whether any rank's loss is NaN/infinite and whether any rank asked to stop (*stop,
 * set by a signal): every rank then returns the same verdict, 1 or 2 (stopped: no update,
 * *stopped_all = 1), so that no rank waits in a collective another never enters. */
typedef struct {
    ct_ddp *ddp;
    volatile int *stop;
    int stopped_all;
} cli_dist_step;
int cli_train_step(ct_module *model, ct_optimizer *opt, const ct_tensor *x, const ct_tensor *y,
                   ct_device dev, const cli_amp *amp, int check_loss_first, cli_dist_step *dist,
                   train_step_result *r);
/* The recipe's per-step options (`ctorch train --label-smoothing / --clip-grad-norm`):
 * label_smoothing: CrossEntropyLoss(label_smoothing=...) for the training loss (0: plain);
 * clip_grad_norm > 0: torch.nn.utils.clip_grad_norm_(params[0..nparams), max, 2.0) after
 * backward (after the GradScaler's unscale) and before the step; 0 or NaN: no clipping. */
typedef struct {
    double label_smoothing, clip_grad_norm;
    ct_tensor *const *params;
    int nparams;
} cli_step_opts;
/* cli_train_step with those options (so == NULL: cli_train_step). */
int cli_train_step_ex(ct_module *model, ct_optimizer *opt, const ct_tensor *x, const ct_tensor *y,
                      ct_device dev, const cli_amp *amp, int check_loss_first, cli_dist_step *dist,
                      const cli_step_opts *so, train_step_result *r);
/* Test-set loss and accuracy in eval mode without gradients (leaves the model in eval). */
int cli_evaluate(ct_module *model, const ct_dataset *ds, ct_dataset_kind kind, ct_device dev,
                 int64_t batch, const cli_amp *amp, eval_result *out);
/* The same on rank `rank` of `world`: each rank evaluates its share (every test record
 * once over the ranks) and the sums are all-reduced, so every rank gets the whole test
 * set's figures. */
int cli_evaluate_sharded(ct_module *model, const ct_dataset *ds, ct_dataset_kind kind, ct_device dev,
                         int64_t batch, const cli_amp *amp, int rank, int world, eval_result *out);

#endif
