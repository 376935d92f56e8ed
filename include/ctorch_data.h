/*
 * ctorch data pipeline: image-classification datasets held in memory, transforms and a
 * DataLoader with background workers.
 *
 * Conventions are those of ctorch.h: int functions return 0 on success and -1 on failure,
 * pointer functions return NULL on failure; ct_last_error() then names the file or the
 * argument at fault and says how to fix it.
 *
 * Data location: every loader takes a root directory `dir`; NULL means "resolve":
 * the environment variable CTORCH_DATA when set, else ./data. Each dataset lives in a
 * subdirectory of the root (see ct_dataset_subdir): cifar-10-batches-bin/, mnist/,
 * fashion-mnist/. For convenience `dir` may also point at that subdirectory itself.
 */
#ifndef CTORCH_DATA_H
#define CTORCH_DATA_H

#include "ctorch.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CT_DATA_MAX_CHANNELS 4

typedef enum {
    CT_DATASET_CIFAR10 = 0,
    CT_DATASET_MNIST,
    CT_DATASET_FASHION_MNIST,
    CT_NUM_DATASETS, /* the bundled benchmark datasets above */
    /* A folder of JPEG / PNG images in class subdirectories (ct_imagefolder_load): not a
     * bundled dataset (not counted in CT_NUM_DATASETS), but accepted by
     * ct_dataset_parse_name ("imagefolder") and ct_dataset_load. */
    CT_DATASET_IMAGEFOLDER = 16
} ct_dataset_kind;

typedef enum { CT_SPLIT_TRAIN = 0, CT_SPLIT_TEST = 1 } ct_split;

/* The deterministic random stream used by the augmentations (splitmix64). */
typedef struct ct_data_rng {
    uint64_t state;
} ct_data_rng;

struct ct_dataset;
/* A lazy dataset's record reader (ImageFolder): writes record i as c*h*w bytes, planar
 * CHW, into out, drawing any randomness (its augmentation) from rng. It is called from the
 * DataLoader's worker threads, concurrently, and must be thread-safe. Returns 0; 1 when
 * the record is unreadable and is to be skipped (err says why, naming the file); -1 on an
 * error that stops the loader (err names the file and the problem). */
typedef int (*ct_dataset_fetch_fn)(const struct ct_dataset *ds, int64_t i, uint8_t *out,
                                   ct_data_rng *rng, char *err, size_t nerr);

/* An image-classification dataset: in memory (images) or lazy (fetch). Fields are
 * read-only for users. */
typedef struct ct_dataset {
    int64_t n;         /* number of records */
    int c, h, w;       /* image layout: each image is c*h*w bytes, planar CHW */
    int num_classes;   /* 10 for the built-in datasets */
    uint8_t *images;   /* n*c*h*w bytes, record after record; NULL for a lazy dataset */
    int64_t *labels;   /* n labels in [0, num_classes) */
    char name[64];     /* e.g. "cifar10/train" */
    ct_dataset_fetch_fn fetch; /* non-NULL: a lazy dataset; the DataLoader calls it */
    void *impl;                /* the lazy dataset's own state, freed by impl_free */
    void (*impl_free)(void *impl);
} ct_dataset;

/* ------------------------------------------------------------ names & paths */
/* "cifar10" (also "cifar-10"), "mnist", "fashion_mnist" (also "fashion-mnist",
 * "fashionmnist"). On failure the message lists the valid names. */
int ct_dataset_parse_name(const char *name, ct_dataset_kind *out);
const char *ct_dataset_name(ct_dataset_kind kind);   /* "cifar10", "mnist", "fashion_mnist" */
const char *ct_dataset_subdir(ct_dataset_kind kind); /* "cifar-10-batches-bin", "mnist", … */
/* Data root: dir when non-NULL and non-empty, else $CTORCH_DATA when set and non-empty,
 * else "data". Returns a pointer to dir, to the environment string or to a literal. */
const char *ct_data_root(const char *dir);
/* Default per-channel normalisation of the seed recipes: CIFAR-10 mean 0.5 std 0.5 on
 * each channel; MNIST and Fashion-MNIST 0.1307 / 0.3081; ImageFolder ImageNet's
 * (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225). Fills c entries of each array
 * and returns c (the dataset's channel count). */
int ct_dataset_default_normalization(ct_dataset_kind kind, float *mean, float *std);

/* ----------------------------------------------------------------- loading
 * limit > 0 keeps the first `limit` records (file order); limit <= 0 keeps all.
 *
 * CIFAR-10: <root>/cifar-10-batches-bin/data_batch_1.bin … data_batch_5.bin (train, in
 *   that order) and test_batch.bin (test); records of 1 label byte + 3072 pixel bytes.
 *   When those files are absent, <root>/cifar-10-binary.tar.gz (the official archive)
 *   is read directly.
 * MNIST / Fashion-MNIST: <root>/<subdir>/train-images-idx3-ubyte(.gz),
 *   train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz).
 * Errors name the file, the problem (missing, truncated, bad magic, counts that do not
 * match, label out of range) and the fix (where to put which files, `ctorch download`). */
ct_dataset *ct_dataset_load(ct_dataset_kind kind, ct_split split, const char *dir,
                            int64_t limit);
ct_dataset *ct_cifar10_load(const char *dir, ct_split split, int64_t limit);
ct_dataset *ct_mnist_load(const char *dir, ct_split split, int64_t limit);
ct_dataset *ct_fashion_mnist_load(const char *dir, ct_split split, int64_t limit);
/* A dataset from caller memory (copied): n images of c*h*w bytes and n labels.
 * Useful for synthetic data and tests. labels may be NULL (all zero). */
ct_dataset *ct_dataset_from_memory(const uint8_t *images, const int64_t *labels, int64_t n,
                                   int c, int h, int w, int num_classes, const char *name);
void ct_dataset_free(ct_dataset *ds);

/* --------------------------------------------------------------- transforms
 * Augmentations work on uint8 CHW images (as torchvision does on PIL images, before
 * ToTensor), so padding is zero pixels. Conversion to float divides by 255 and then
 * normalises per channel: (x/255 - mean[c]) / std[c]. */
typedef struct ct_transform {
    int crop_padding; /* > 0: random crop back to h x w after zero padding on each side */
    int hflip;        /* non-zero: random horizontal flip with probability 0.5 */
    int normalize;    /* non-zero: apply mean/std after /255 */
    float mean[CT_DATA_MAX_CHANNELS];
    float std[CT_DATA_MAX_CHANNELS];
} ct_transform;

void ct_data_rng_seed(ct_data_rng *r, uint64_t seed);
uint64_t ct_data_rng_next(ct_data_rng *r);
uint64_t ct_data_rng_below(ct_data_rng *r, uint64_t n); /* uniform in [0, n) */

/* dst (c*h*w bytes) = the h x w window at offset (dy, dx) of src zero-padded by `pad`
 * on every side; dy, dx in [0, 2*pad]. dy = dx = pad returns src unchanged. */
void ct_image_crop_padded(const uint8_t *src, uint8_t *dst, int c, int h, int w, int pad,
                          int dy, int dx);
/* Mirrors each row in place. */
void ct_image_hflip(uint8_t *img, int c, int h, int w);
/* Applies the random parts of t to one image in place (crop, then flip), drawing from
 * rng: crop draws dy then dx (each uniform in [0, 2*pad]), flip draws one number. */
void ct_transform_augment(const ct_transform *t, uint8_t *img, int c, int h, int w,
                          ct_data_rng *rng);
/* n images of c*h*w bytes -> float32: x/255, then (x - mean[c]) / std[c] when
 * mean/std are non-NULL. */
void ct_images_to_float(const uint8_t *src, float *dst, int64_t n, int c, int h, int w,
                        const float *mean, const float *std);

/* ------------------------------------------------------------------- images
 * Decoded images are 8-bit RGB, interleaved (HWC): data holds h*w*3 bytes. Decoding uses
 * libjpeg-turbo and libpng (ct_image_available() is 0 in a build without them) and
 * converts every PNG / JPEG kind as PIL's Image.convert("RGB") does: grey replicated,
 * alpha dropped (not composited), palette looked up, 16-bit samples to 8 bits as PIL does
 * (high byte; 16-bit grey clipped), CMYK as PIL's cmyk2rgb. See docs/data.md. */
typedef struct ct_image {
    int h, w;
    uint8_t *data;
} ct_image;

int ct_image_available(void);
/* Decodes a JPEG or PNG held in memory. 0, or -1 with err (nerr bytes) saying what is
 * wrong (corrupt, truncated, not an image, too many pixels). Never aborts, whatever the
 * bytes. out->data is malloc'd (ct_image_free). */
int ct_image_decode(const uint8_t *buf, size_t n, ct_image *out, char *err, size_t nerr);
/* The same from a file; err starts with the path. */
int ct_image_load(const char *path, ct_image *out, char *err, size_t nerr);
/* Allocates h x w (uninitialised); 0 or -1 (out of memory). */
int ct_image_alloc(ct_image *img, int h, int w);
void ct_image_free(ct_image *img);

/* torchvision's transforms on PIL images, pixel for pixel as PIL computes them.
 * Each writes a new image into *dst (allocated here) and returns 0, or -1 (out of memory
 * or bad sizes, with ct_last_error()). */
/* PIL's Image.resize(..., BILINEAR): a triangle filter whose support grows with the
 * downscale factor (antialiasing), in PIL's fixed point; horizontal pass first. */
int ct_image_resize(const ct_image *src, int out_h, int out_w, ct_image *dst);
/* transforms.Resize(size) with an int: the shorter side becomes size, the longer
 * int(size * long / short) (torchvision's rule), bilinear with antialias. */
int ct_image_resize_shorter(const ct_image *src, int size, ct_image *dst);
/* The h x w window at (top, left); pixels outside the source are zero (PIL's crop). */
int ct_image_crop(const ct_image *src, int top, int left, int h, int w, ct_image *dst);
/* transforms.CenterCrop(size): offsets round((H - size) / 2) (half to even, as Python's
 * round), zero padding where the image is smaller than the crop (as torchvision pads). */
int ct_image_center_crop(const ct_image *src, int size, ct_image *dst);
/* RandomResizedCrop.get_params: up to 10 tries of an area fraction uniform in
 * [scale_lo, scale_hi] and a log-uniform aspect ratio in [ratio_lo, ratio_hi]; else the
 * central crop clamped to the ratio range. Sets the window (top, left, h, w). Each try
 * draws 2 numbers, and one more each for top and left when it fits. */
void ct_random_resized_crop_params(int img_h, int img_w, double scale_lo, double scale_hi,
                                   double ratio_lo, double ratio_hi, ct_data_rng *rng,
                                   int *top, int *left, int *h, int *w);
/* F.resized_crop: crop (top, left, h, w), then resize to size x size (bilinear, antialias). */
int ct_image_resized_crop(const ct_image *src, int top, int left, int h, int w, int size,
                          ct_image *dst);
/* ImageNet's per-channel mean and std (torchvision's presets), RGB order. */
extern const float ct_imagenet_mean[3];
extern const float ct_imagenet_std[3];

/* --------------------------------------------------------------- ImageFolder
 * torchvision's ImageFolder layout: ROOT/train/<class>/<image> and ROOT/val/<class>/...
 * (the test split is val/). Classes are the subdirectory names of ROOT/train sorted by
 * byte order, indexed 0..K-1 (torchvision's ordering; val/ uses the same indices and may
 * not have a class train/ lacks). Files in each class are sorted by name (files in
 * nested directories too, as torchvision walks them), and kept when their extension is
 * one of torchvision's IMG_EXTENSIONS this build decodes: .jpg .jpeg .png (any case).
 * The dataset holds paths and labels; images are decoded, transformed and converted to
 * 3 x image_size x image_size uint8 CHW by the DataLoader's workers (ds->fetch):
 *   train split: RandomResizedCrop(image_size, scale (0.08, 1), ratio (3/4, 4/3))
 *   val split:   Resize(resize_size) then CenterCrop(image_size)
 * and the loader adds RandomHorizontalFlip (its transform.hflip) and Normalize with
 * ct_dataset_default_normalization(CT_DATASET_IMAGEFOLDER) = ImageNet's mean and std. */
enum { CT_BAD_IMAGE_ERROR = 0, CT_BAD_IMAGE_SKIP = 1 };
typedef struct ct_imagefolder_opts {
    int image_size;   /* default 224 */
    int resize_size;  /* val's Resize; 0 (default): image_size * 256 / 224 rounded down
                         (256 for 224, timm's crop_pct 0.875) */
    int random_crop;  /* -1 (default): RandomResizedCrop on train, Resize + CenterCrop on
                         val; 0 / 1: either on any split */
    int on_bad_image; /* CT_BAD_IMAGE_ERROR (default): the loader stops naming the file;
                         CT_BAD_IMAGE_SKIP: the record is left out of its batch and counted
                         (ct_dataloader_skipped) */
} ct_imagefolder_opts;
ct_imagefolder_opts ct_imagefolder_default_opts(void);
/* root: the folder holding train/ and val/ (NULL: ct_data_root). limit > 0 keeps the
 * first `limit` records in the sorted order. Errors name the directory and the fix (no
 * train/, no class directories, no images, a val class train/ lacks, no decoder). */
ct_dataset *ct_imagefolder_load(const char *root, ct_split split, const ct_imagefolder_opts *o,
                                int64_t limit);
/* A lazy dataset's file of record i, and the name of class k; NULL for in-memory datasets
 * or out of range. */
const char *ct_dataset_record_path(const ct_dataset *ds, int64_t i);
const char *ct_dataset_class_name(const ct_dataset *ds, int k);

/* --------------------------------------------------------------- DataLoader
 * Batches of images float32 [B, C, H, W] and labels int64 [B]. Background workers
 * assemble batches (gather, augment, convert) into a bounded queue ahead of the
 * consumer; batches come out in order, and their content depends only on the dataset,
 * the options, the seed and the epoch, never on the number of workers.
 * With shuffle off batches follow the dataset's record order. With shuffle on each
 * epoch uses its own permutation derived from (seed, epoch). */
typedef struct ct_dataloader_opts {
    int64_t batch_size; /* default 64 */
    int shuffle;        /* default 1 */
    int drop_last;      /* default 0: the last batch may be smaller */
    uint64_t seed;      /* default 0: shuffle and augmentation randomness */
    int num_workers;    /* background threads; 0 builds batches in ct_dataloader_next.
                           Default 2 */
    int prefetch;       /* batches prepared ahead (queue bound); <= 0: 2 * num_workers */
    ct_transform transform; /* default: no augmentation, no normalisation (/255 only) */
    int pin_memory;     /* default 0. Non-zero: the workers build batches in pinned
                           (page-locked) host memory from the CUDA plugin, which the GPU
                           reads by DMA while the host goes on (see ct_device_prefetcher).
                           Batches stay CPU tensors with the same values; only where they
                           live changes. Without usable CUDA this does nothing but print one
                           warning per process to stderr, like PyTorch's; never an error. */
    /* DistributedSampler (PyTorch's semantics): with num_replicas > 1 this loader yields
     * rank `rank`'s share of each epoch: positions rank, rank + R, rank + 2R, ... of the
     * epoch's permutation (the same permutation of (seed, epoch) on every rank), so the
     * ranks' shares are disjoint and together are the epoch. shard says how the shares
     * are made equal: CT_SHARD_PAD (default) repeats the permutation's first records up
     * to a multiple of R (every rank the same length), CT_SHARD_DROP drops the tail
     * (PyTorch's DistributedSampler drop_last), CT_SHARD_EXACT gives uneven shares with
     * every record once (evaluation). Augmentation streams are per (seed, epoch, batch,
     * rank). Default num_replicas 0 or 1: the whole dataset. */
    int num_replicas, rank, shard;
} ct_dataloader_opts;
enum { CT_SHARD_PAD = 0, CT_SHARD_DROP = 1, CT_SHARD_EXACT = 2 };

typedef struct ct_dataloader ct_dataloader;

ct_dataloader_opts ct_dataloader_default_opts(void);
/* The dataset is borrowed and must outlive the loader. */
ct_dataloader *ct_dataloader_new(const ct_dataset *ds, const ct_dataloader_opts *opts);
int64_t ct_dataloader_num_batches(const ct_dataloader *dl); /* per epoch */
/* Starts (or restarts) an epoch: batches of a previous unfinished epoch are dropped
 * and the workers begin preparing the new one at once. */
int ct_dataloader_start_epoch(ct_dataloader *dl, int64_t epoch);
/* Starts epoch `epoch` at batch first_batch (0 .. num_batches): the batches before it are
 * skipped without being built, and those after are exactly the ones an uninterrupted
 * epoch would give (same permutation, same augmentation draws). Resuming a run inside an
 * epoch. */
int ct_dataloader_start_epoch_at(ct_dataloader *dl, int64_t epoch, int64_t first_batch);
/* Next batch of the current epoch (starting epoch 0 if none was started). Returns 1 and
 * sets *images / *labels (new references) when a batch is delivered, 0 at the end of the
 * epoch, -1 on error. As PyTorch's `for batch in loader`, the call after the end starts
 * the next epoch (epoch + 1, reshuffled with its seed): a loop of
 * `while (ct_dataloader_next(dl, &x, &y) == 1)` per epoch needs nothing else.
 * ct_dataloader_start_epoch sets the epoch explicitly (DistributedSampler's set_epoch). */
int ct_dataloader_next(ct_dataloader *dl, ct_tensor **images, ct_tensor **labels);
/* Total seconds ct_dataloader_next spent waiting for workers (compute stalled on data). */
double ct_dataloader_wait_seconds(const ct_dataloader *dl);
/* Records left out of the batches delivered so far in this epoch (lazy datasets whose
 * fetch skipped them: ImageFolder with CT_BAD_IMAGE_SKIP); *report, when report is
 * non-NULL, is a text with one line "PATH: reason" per record (valid until the next call
 * on the loader). Reset when a new epoch's first batch is delivered. Batches stay
 * deterministic: the same records are skipped whatever the number of workers. */
int64_t ct_dataloader_skipped(const ct_dataloader *dl, const char **report);
/* 1 when the last -1 of ct_dataloader_next came from a record that could not be read (a
 * corrupt image: an input error, exit 2 in the CLI) rather than from memory. */
int ct_dataloader_failed_on_bad_record(const ct_dataloader *dl);
/* 1 when the loader's batches live in pinned host memory (pin_memory set and CUDA
 * usable), else 0. */
int ct_dataloader_pinned(const ct_dataloader *dl);
/* Stops the workers (even mid-epoch) and frees everything. NULL is fine. Batches already
 * handed out stay valid. */
void ct_dataloader_free(ct_dataloader *dl);

/* ---------------------------------------------------------- device prefetcher
 * Delivers a DataLoader's batches on a device, one batch ahead: the CUDA form of the
 * prefetchers used with PyTorch's DataLoader(pin_memory=True) and
 * .to(device, non_blocking=True).
 *
 * On a CUDA device, when batch k is handed out the host-to-device copy of batch k+1 is
 * already queued on the device's copy stream (a second stream beside the compute stream),
 * so it runs while the model computes on batch k; from pinned batches (pin_memory) it is
 * a plain DMA and the host does not wait for it. Before a batch is handed out, the compute
 * stream is made to wait (on the GPU) for an event recorded after its copy, so kernels
 * queued on it see complete data; the pinned host buffer is not reused by the loader until
 * the copy from it has completed. One extra batch is held on the device.
 *
 * On the CPU device batches pass through unchanged. Either way the batches, their order
 * and the epoch semantics are the loader's own: same values, same seed and epoch rules. */
typedef struct ct_device_prefetcher ct_device_prefetcher;

/* dl is borrowed (it must outlive the prefetcher) and should be used only through the
 * prefetcher from now on. device: ct_cpu() or a CUDA device; NULL + error when CUDA is not
 * usable ("cuda unavailable: <reason>") or the device does not exist. */
ct_device_prefetcher *ct_device_prefetcher_new(ct_dataloader *dl, ct_device device);
/* ct_dataloader_start_epoch through the prefetcher: a batch still in flight is dropped. */
int ct_device_prefetcher_start_epoch(ct_device_prefetcher *p, int64_t epoch);
int ct_device_prefetcher_start_epoch_at(ct_device_prefetcher *p, int64_t epoch,
                                        int64_t first_batch);
/* Like ct_dataloader_next (also in starting the next epoch after the end), with *images /
 * *labels (new references) on the device. Returns
 * 1, 0 at the end of the epoch, -1 on error (an error while preparing the batch after
 * this one is reported by the call that would have returned it). */
int ct_device_prefetcher_next(ct_device_prefetcher *p, ct_tensor **images, ct_tensor **labels);
ct_device ct_device_prefetcher_device(const ct_device_prefetcher *p);
/* Drops a batch still in flight (waiting for its copy) and frees the prefetcher, not the
 * loader. NULL is fine. */
void ct_device_prefetcher_free(ct_device_prefetcher *p);

/* ---------------------------------------------------------------- download
 * `ctorch download DATASET`: fetches the official archive(s) into <root>/<subdir> with
 * libcurl (loaded at run time), verifies the published MD5 and, for CIFAR-10, unpacks
 * cifar-10-batches-bin/. Files already present and complete are kept. Offline, the error
 * lists the URLs and where to place which files by hand. The environment variable
 * CTORCH_DATA_MIRROR, when set, replaces the base URL (a mirror holding the same file
 * names). Progress goes to stderr when it is a terminal. dir NULL: ct_data_root(NULL). */
int ct_download_dataset(const char *name, const char *dir);

#ifdef __cplusplus
}
#endif
#endif /* CTORCH_DATA_H */
