/* ctorch's ImageFolder loader alone, for bench/imagefolder_bench.py: one pass over ROOT's
 * split through the DataLoader (decode + transforms + to float, in `workers` threads),
 * printing {"images", "wall_s", "cpu_s"} as JSON.
 *   imagefolder_loader ROOT train|val IMAGE_SIZE WORKERS [BATCH] [EPOCHS] */
#include "ctorch.h"
#include "ctorch_data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec + (double)u.ru_stime.tv_sec +
           1e-6 * (double)u.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s ROOT train|val IMAGE_SIZE WORKERS [BATCH] [EPOCHS]\n", argv[0]);
        return 2;
    }
    ct_imagefolder_opts o = ct_imagefolder_default_opts();
    o.image_size = atoi(argv[3]);
    ct_split split = strcmp(argv[2], "train") ? CT_SPLIT_TEST : CT_SPLIT_TRAIN;
    ct_dataset *ds = ct_imagefolder_load(argv[1], split, &o, 0);
    if (!ds) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 2;
    }
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.num_workers = atoi(argv[4]);
    lo.batch_size = argc > 5 ? atoi(argv[5]) : 64;
    lo.shuffle = split == CT_SPLIT_TRAIN;
    lo.transform.hflip = split == CT_SPLIT_TRAIN;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(CT_DATASET_IMAGEFOLDER, lo.transform.mean, lo.transform.std);
    int epochs = argc > 6 ? atoi(argv[6]) : 1;
    ct_set_num_threads(1);
    double w0 = wall(), c0 = cpu();
    ct_dataloader *dl = ct_dataloader_new(ds, &lo);
    int64_t n = 0;
    ct_tensor *x, *y;
    int got = 0;
    for (int e = 0; dl && e < epochs; e++) {
        ct_dataloader_start_epoch(dl, e);
        while ((got = ct_dataloader_next(dl, &x, &y)) == 1) {
            n += ct_size(x, 0);
            ct_free(x);
            ct_free(y);
        }
        if (got < 0) break;
    }
    double w1 = wall(), c1 = cpu();
    if (!dl || got < 0) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 1;
    }
    ct_dataloader_free(dl);
    ct_dataset_free(ds);
    printf("{\"images\": %lld, \"wall_s\": %.4f, \"cpu_s\": %.4f}\n", (long long)n, w1 - w0, c1 - c0);
    return 0;
}
