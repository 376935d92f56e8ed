/* Helpers shared by the dataset readers and the downloader. Not part of the public API. */
#ifndef CT_DATA_INTERNAL_H
#define CT_DATA_INTERNAL_H

#include "ctorch_data.h"

#include <stddef.h>
#include <stdint.h>

#define CT_PATH_MAX 4096

/* "a" + "/" + "b" into out (n bytes); returns out. */
char *ct_path_join(char *out, size_t n, const char *a, const char *b);
int ct_path_is_dir(const char *path);
int ct_path_is_file(const char *path);
/* Size of a regular file, or -1. */
int64_t ct_file_size(const char *path);
/* Creates dir and its parents (like mkdir -p). Returns 0 or -1 with an error set. */
int ct_mkdir_p(const char *dir);

/* Directory holding the dataset's files: <root>/<subdir> when that is a directory,
 * else root itself when it already holds `marker` (the user pointed at the dataset
 * directory), else <root>/<subdir> (which does not exist; the loader reports it). */
void ct_dataset_dir(char *out, size_t n, const char *root, ct_dataset_kind kind,
                    const char *marker);

/* Allocates an empty dataset with room for n records (n may be 0). */
ct_dataset *ct_dataset_alloc(int64_t n, int c, int h, int w, int num_classes,
                             const char *name);

/* Reads a whole file through zlib (gzip or plain), into a malloc'd buffer. */
int ct_read_gz_file(const char *path, uint8_t **data, size_t *size);

/* Streams a .tar.gz (or plain .tar) archive through libarchive: for every regular file,
 * want() says whether to load it; loaded entries are handed to got() (which takes
 * ownership of data, free()). got() returns 0 to continue, 1 to stop early, -1 to abort
 * (error already set). A damaged archive is an error naming it and the fix. */
typedef int (*ct_tar_want_fn)(void *ctx, const char *name, uint64_t size);
typedef int (*ct_tar_got_fn)(void *ctx, const char *name, uint8_t *data, uint64_t size);
int ct_tar_gz_scan(const char *path, ct_tar_want_fn want, ct_tar_got_fn got, void *ctx);

/* MD5 of a file as hex; -1 when it cannot be read (src/data/download.c). */
int ct_md5_file(const char *path, char out[33]);
/* The official SHA-256 (hex) of a dataset's file as it sits in a data directory (the
 * CIFAR-10 .bin batches, the MNIST / Fashion-MNIST .gz files), by base name; the
 * official MD5 of a file the downloader fetches (the archives); NULL when none is known. */
const char *ct_dataset_official_sha256(ct_dataset_kind kind, const char *file);
const char *ct_dataset_official_md5(ct_dataset_kind kind, const char *file);

/* The most pixels a decoded or resized image may have (PIL's decompression-bomb limit,
 * 178,956,970); the fuzz target lowers it. src/data/image.c */
int64_t ct__image_max_pixels(void);
void ct__image_set_max_pixels(int64_t n);

/* The CIFAR-10 record and the names of its files. */
#define CT_CIFAR_RECORD 3073
#define CT_CIFAR_IMAGE 3072
#define CT_CIFAR_ARCHIVE "cifar-10-binary.tar.gz"
extern const char *const ct_cifar_train_files[5];
extern const char *const ct_cifar_test_file;

/* Unpacks the cifar-10-batches-bin/ members of the official archive into dest_dir
 * (written atomically, one file at a time). */
int ct_cifar10_extract_archive(const char *archive, const char *dest_dir);

/* lut[ch][v]: the float that ToTensor (+ Normalize with mean/std, when non-NULL) gives
 * byte v of channel ch, for ch < c (src/data/transforms.c). */
void ct__pixel_lut(const float *mean, const float *std, int c, float (*lut)[256]);
/* One c x h x w image of bytes to floats in one pass: t's random crop and flip (the same
 * draws from rng as ct_transform_augment; t may be NULL), then lut. Equal, bit for bit,
 * to ct_transform_augment followed by ct_images_to_float. */
void ct__augment_to_float(const ct_transform *t, const float (*lut)[256], const uint8_t *src,
                          float *dst, int c, int h, int w, ct_data_rng *rng);

#endif
