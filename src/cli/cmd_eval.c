/* ctorch eval: test-set loss and accuracy of a checkpoint. */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_nn.h"
#include "train_common.h"

#include <stdio.h>
#include <string.h>

int cmd_eval(int argc, char **argv) {
    const char *model_name = NULL, *ckpt = NULL, *dataset = NULL, *data_dir = NULL, *device = "cpu";
    int64_t test_limit = 0, threads = 0, batch = 256, image_size = 0, num_classes = 0;
    const char *on_bad_image = NULL;
    int json = 0;
    const char *amp_s = NULL;
    cli_amp amp = {CT_FLOAT32};
    cli_opt opts[] = {
        {"--model", OPT_STRING, &model_name, 0, 0, 0},
        {"--checkpoint", OPT_STRING, &ckpt, 0, 0, 0},
        {"--dataset", OPT_STRING, &dataset, 0, 0, 0},
        {"--data-dir", OPT_STRING, &data_dir, 0, 0, 0},
        {"--test-limit", OPT_INT, &test_limit, 1, 1e12, 0},
        {"--image-size", OPT_INT, &image_size, 8, 8192, 0},
        {"--on-bad-image", OPT_STRING, &on_bad_image, 0, 0, 0},
        {"--batch-size", OPT_INT, &batch, 1, 1 << 20, 0},
        {"--threads", OPT_INT, &threads, 1, 1024, 0},
        {"--device", OPT_STRING, &device, 0, 0, 0},
        {"--json", OPT_FLAG, &json, 0, 0, 0},
        {"--amp", OPT_STRING, &amp_s, 0, 0, 0},
        {"--num-classes", OPT_INT, &num_classes, 1, 1e7, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse("eval", argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 0, &npos);
    if (rc) return rc;
    if (!model_name || !ckpt || !dataset)
        return cli_fail("eval", CLI_USAGE, "--model, --checkpoint and --dataset are required; see `ctorch help eval`");
    if ((rc = cli_choice("eval", "--model", model_name, ct_model_names()))) return rc;
    if (amp_s && (rc = cli_amp_parse("eval", amp_s, &amp))) return rc;
    ct_dataset_kind kind;
    if (ct_dataset_parse_name(dataset, &kind) != 0) return cli_fail("eval", CLI_USAGE, "%s", ct_last_error());
    ct_device dev;
    if ((rc = cli_device("eval", device, &dev))) return rc;
    if (threads) ct_set_num_threads((int)threads);
    ct_dataset *test = cli_dataset_load(kind, CT_SPLIT_TEST, data_dir, test_limit, image_size,
                                        on_bad_image);
    if (!test) return cli_fail("eval", CLI_USAGE, "%s", ct_last_error());
    int classes = num_classes ? (int)num_classes : test->num_classes;
    ct_module *model = ct_model_create_ex(model_name, classes, test->c, test->h, test->w);
    ct_state_dict *sd = model ? ct_state_dict_load(ckpt) : NULL;
    ct_tensor *c1 = sd ? ct_state_dict_get(sd, "conv1.weight") : NULL;
    int code = CLI_OK;
    eval_result ev;
    if (!model) code = cli_fail("eval", CLI_USAGE, "%s", ct_last_error());
    else if (!sd) code = cli_fail("eval", CLI_USAGE, "--checkpoint: %s", ct_last_error());
    else if (ct_module_load_state_dict(model, sd, 1) != 0)
        code = cli_fail("eval", CLI_USAGE, "--checkpoint %s: %s (on the command line: pass the "
                        "--model the checkpoint was saved from%s)%s", ckpt, ct_last_error(),
                        num_classes ? "" : ", and its --num-classes if it was fine-tuned to another "
                        "number of classes",
                        !strcmp(model_name, "resnet18") && c1 && ct_ndim(c1) == 4 && ct_size(c1, 3) == 3
                            ? "; these are resnet18_cifar weights (ctorch's CIFAR ResNet, called "
                              "resnet18 before ctorch had torchvision's): --model resnet18_cifar"
                            : "");
    else if (ct_module_to(model, dev, -1) != 0)
        code = cli_fail("eval", CLI_RUNTIME, "%s", ct_last_error());
    else if (cli_evaluate(model, test, kind, dev, batch, &amp, &ev) != 0)
        code = cli_fail("eval", ev.bad_record ? CLI_USAGE : CLI_RUNTIME, "%s%s", ct_last_error(),
                        ev.bad_record ? " (--on-bad-image skip leaves such files out)" : "");
    else if (json)
        code = cli_json_print("eval", json_pack("{s:s, s:s, s:I, s:I, s:o, s:o}", "model", model_name, "dataset",
                                                ct_dataset_name(kind), "images", (json_int_t)ev.n,
                                                "skipped_images", (json_int_t)(test->n - ev.n),
                                                "test_loss", cli_json_number(ev.loss, "%.6f"),
                                                "test_acc", cli_json_number(ev.accuracy, "%.6f")));
    else
    {
        printf("%s on %s test (%lld images): loss %.4f, accuracy %.2f%%\n", model_name,
               ct_dataset_name(kind), (long long)ev.n, ev.loss, 100.0 * ev.accuracy);
        if (ev.n < test->n)
            printf("skipped %lld unreadable images (--on-bad-image skip)\n",
                   (long long)(test->n - ev.n));
    }
    ct_state_dict_free(sd);
    ct_module_free(model);
    ct_dataset_free(test);
    return code;
}
