/* Data pipeline: dataset readers (real CIFAR-10 / MNIST / Fashion-MNIST files and
 * synthetic bad files), transforms, DataLoader, download error path.
 *
 * Real-data tests read the directory in $CTORCH_DATA (`make test` sets it to
 * ../shared/data) and SKIP when it is unset or lacks the files. Their expected values were
 * computed independently with numpy (python3, numpy 1.24), e.g. for CIFAR-10:
 *   d = np.fromfile('cifar-10-batches-bin/data_batch_1.bin', np.uint8).reshape(-1, 3073)
 *   d[:10, 0]; img = d[:, 1:].reshape(-1, 3, 32, 32); img[0, 1, 5, 7]; int(img[0].sum())
 * and for MNIST:
 *   im = np.frombuffer(gzip.open('mnist/train-images-idx3-ubyte.gz').read(), np.uint8)
 *   im = im[16:].reshape(-1, 28, 28); labels likewise from byte 8 of the label file.
 * Normalised values came from torch: ((torch.tensor([v], dtype=torch.uint8).float() / 255)
 *   - mean) / std in float32. */
#include "test.h"

#include "backends/cuda/cuda_plugin.h"
#include "core/backend.h"
#include "ctorch_data.h"
#include "data/data_internal.h"
#include "data/pin_memory.h"

#ifdef CT_HAVE_LIBARCHIVE
#include <archive.h>
#include <archive_entry.h>
#endif
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------------ helpers */
static int make_tmpdir(char *out, size_t n) { return ct_test_mkdtemp(out, n, "/tmp/ctorch_data_test_XXXXXX"); }

static void write_file(const char *dir, const char *name, const void *data, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot write %s", path);
    if (!f) return;
    if (n) CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

static void write_gz(const char *dir, const char *name, const void *data, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    gzFile g = gzopen(path, "wb");
    CHECK_MSG(g != NULL, "cannot write %s", path);
    if (!g) return;
    if (n) CHECK(gzwrite(g, data, (unsigned)n) == (int)n);
    gzclose(g);
}

static void make_subdir(char *out, size_t n, const char *root, const char *sub) {
    snprintf(out, n, "%s/%s", root, sub);
    mkdir(out, 0777);
}

static int contains(const char *hay, const char *needle) {
    return hay && strstr(hay, needle) != NULL;
}

#define CHECK_ERRMSG(needle)                                                                 \
    CHECK_MSG(contains(ct_last_error(), needle), "error message lacks \"%s\": %s", needle,   \
              ct_last_error())

static const char *real_root(void) {
    const char *d = getenv("CTORCH_DATA");
    return d && d[0] ? d : NULL;
}

static int64_t image_sum(const ct_dataset *ds, int64_t i) {
    int64_t s = 0, numel = (int64_t)ds->c * ds->h * ds->w;
    for (int64_t k = 0; k < numel; k++) s += ds->images[i * numel + k];
    return s;
}

static uint8_t pixel(const ct_dataset *ds, int64_t i, int c, int y, int x) {
    return ds->images[(((size_t)i * ds->c + c) * ds->h + y) * ds->w + x];
}

/* Loads a real dataset or SKIPs the test when the data is not available. */
#define LOAD_REAL_OR_SKIP(var, kind, split, limit)                                           \
    const char *root_ = real_root();                                                         \
    if (!root_) SKIP("CTORCH_DATA is not set (make test sets it to ../shared/data)");       \
    ct_dataset *var = ct_dataset_load(kind, split, root_, limit);                            \
    if (!var) {                                                                              \
        char why_[600];                                                                      \
        snprintf(why_, sizeof why_, "data not available: %.500s", ct_last_error());          \
        SKIP(why_);                                                                          \
    }

/* ---------------------------------------------------------- real CIFAR-10 */
TEST(data_cifar10_train_real) {
    LOAD_REAL_OR_SKIP(ds, CT_DATASET_CIFAR10, CT_SPLIT_TRAIN, 0);
    CHECK(ds->n == 50000);
    CHECK(ds->c == 3 && ds->h == 32 && ds->w == 32 && ds->num_classes == 10);
    static const int64_t first[10] = {6, 9, 9, 4, 1, 1, 2, 7, 8, 3};
    for (int i = 0; i < 10; i++) CHECK_MSG(ds->labels[i] == first[i], "label %d", i);
    CHECK(pixel(ds, 0, 0, 0, 0) == 59);
    CHECK(pixel(ds, 0, 1, 5, 7) == 77);
    CHECK(pixel(ds, 0, 2, 31, 31) == 72);
    CHECK(image_sum(ds, 0) == 317790);
    /* last record of data_batch_1, first of data_batch_2, last of data_batch_5 */
    CHECK(ds->labels[9999] == 5 && pixel(ds, 9999, 0, 16, 16) == 121);
    CHECK(image_sum(ds, 9999) == 380993);
    CHECK(ds->labels[10000] == 1 && pixel(ds, 10000, 1, 10, 20) == 103);
    CHECK(image_sum(ds, 10000) == 369204);
    CHECK(ds->labels[49999] == 1 && image_sum(ds, 49999) == 405136);
    int64_t counts[10] = {0};
    for (int64_t i = 0; i < ds->n; i++) counts[ds->labels[i]]++;
    for (int c = 0; c < 10; c++) CHECK_MSG(counts[c] == 5000, "class %d: %lld", c, (long long)counts[c]);
    ct_dataset_free(ds);
}

TEST(data_cifar10_test_real) {
    LOAD_REAL_OR_SKIP(ds, CT_DATASET_CIFAR10, CT_SPLIT_TEST, 0);
    CHECK(ds->n == 10000);
    static const int64_t first[10] = {3, 8, 8, 0, 6, 6, 1, 6, 3, 1};
    for (int i = 0; i < 10; i++) CHECK_MSG(ds->labels[i] == first[i], "label %d", i);
    CHECK(image_sum(ds, 0) == 332962);
    ct_dataset_free(ds);
}

TEST(data_cifar10_limit_real) {
    LOAD_REAL_OR_SKIP(ds, CT_DATASET_CIFAR10, CT_SPLIT_TRAIN, 10001);
    CHECK(ds->n == 10001);
    CHECK(ds->labels[0] == 6 && image_sum(ds, 0) == 317790);
    CHECK(ds->labels[10000] == 1 && image_sum(ds, 10000) == 369204);
    ct_dataset_free(ds);
}

/* --------------------------------------------------- real MNIST / Fashion */
TEST(data_mnist_real) {
    LOAD_REAL_OR_SKIP(tr, CT_DATASET_MNIST, CT_SPLIT_TRAIN, 0);
    CHECK(tr->n == 60000 && tr->c == 1 && tr->h == 28 && tr->w == 28);
    static const int64_t first[10] = {5, 0, 4, 1, 9, 2, 1, 3, 1, 4};
    for (int i = 0; i < 10; i++) CHECK_MSG(tr->labels[i] == first[i], "label %d", i);
    CHECK(pixel(tr, 0, 0, 14, 14) == 240);
    CHECK(pixel(tr, 0, 0, 5, 12) == 3);
    CHECK(image_sum(tr, 0) == 27525);
    CHECK(tr->labels[59999] == 8 && image_sum(tr, 59999) == 20920);
    ct_dataset_free(tr);
    ct_dataset *te = ct_mnist_load(root_, CT_SPLIT_TEST, 0);
    CHECK_NN(te);
    if (!te) return;
    CHECK(te->n == 10000);
    static const int64_t tfirst[10] = {7, 2, 1, 0, 4, 1, 4, 9, 5, 9};
    for (int i = 0; i < 10; i++) CHECK_MSG(te->labels[i] == tfirst[i], "test label %d", i);
    CHECK(image_sum(te, 0) == 18454);
    CHECK(te->labels[9999] == 6 && image_sum(te, 9999) == 41833);
    ct_dataset_free(te);
}

TEST(data_fashion_mnist_real) {
    LOAD_REAL_OR_SKIP(tr, CT_DATASET_FASHION_MNIST, CT_SPLIT_TRAIN, 0);
    CHECK(tr->n == 60000 && tr->c == 1 && tr->h == 28 && tr->w == 28);
    static const int64_t first[10] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
    for (int i = 0; i < 10; i++) CHECK_MSG(tr->labels[i] == first[i], "label %d", i);
    CHECK(pixel(tr, 0, 0, 14, 14) == 217);
    CHECK(image_sum(tr, 0) == 76247);
    CHECK(tr->labels[59999] == 5 && image_sum(tr, 59999) == 16684);
    ct_dataset_free(tr);
    ct_dataset *te = ct_fashion_mnist_load(root_, CT_SPLIT_TEST, 100);
    CHECK_NN(te);
    if (!te) return;
    CHECK(te->n == 100);
    static const int64_t tfirst[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
    for (int i = 0; i < 10; i++) CHECK_MSG(te->labels[i] == tfirst[i], "test label %d", i);
    CHECK(image_sum(te, 0) == 33456);
    ct_dataset_free(te);
}

/* --dir may name the dataset's own directory instead of the data root. */
TEST(data_dataset_subdir_as_root_real) {
    const char *root = real_root();
    if (!root) SKIP("CTORCH_DATA is not set");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/mnist", root);
    ct_dataset *ds = ct_mnist_load(dir, CT_SPLIT_TEST, 5);
    if (!ds) SKIP("MNIST not available");
    CHECK(ds->n == 5 && ds->labels[0] == 7);
    ct_dataset_free(ds);
}

/* Batches of the real CIFAR-10 with shuffle off follow data_batch_1's record order and
 * carry the seed's normalisation (mean 0.5, std 0.5). */
TEST(data_loader_cifar10_real_no_shuffle) {
    LOAD_REAL_OR_SKIP(ds, CT_DATASET_CIFAR10, CT_SPLIT_TRAIN, 200);
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.shuffle = 0;
    o.num_workers = 2;
    o.transform.normalize = 1;
    CHECK(ct_dataset_default_normalization(CT_DATASET_CIFAR10, o.transform.mean,
                                           o.transform.std) == 3);
    ct_dataloader *dl = ct_dataloader_new(ds, &o);
    CHECK_NN(dl);
    if (!dl) {
        ct_dataset_free(ds);
        return;
    }
    CHECK(ct_dataloader_num_batches(dl) == 4);
    ct_tensor *x, *y;
    int64_t sizes[4] = {0};
    int nb = 0;
    while (ct_dataloader_next(dl, &x, &y) == 1) {
        CHECK(ct_ndim(x) == 4 && ct_size(x, 1) == 3 && ct_size(x, 2) == 32 && ct_size(x, 3) == 32);
        CHECK(ct_dtype_of(x) == CT_FLOAT32 && ct_dtype_of(y) == CT_INT64);
        CHECK(ct_size(x, 0) == ct_size(y, 0));
        if (nb < 4) sizes[nb] = ct_size(x, 0);
        if (nb == 0) {
            const float *px = ct_data(x);
            const int64_t *lb = ct_data(y);
            static const int64_t first[10] = {6, 9, 9, 4, 1, 1, 2, 7, 8, 3};
            for (int i = 0; i < 10; i++) CHECK(lb[i] == first[i]);
            CHECK(px[0] == -0.53725493f); /* pixel 59 */
            /* image 0, channel 1, (5, 7) = 77 */
            CHECK(fabsf(px[1024 + 5 * 32 + 7] - ((77.0f / 255.0f - 0.5f) / 0.5f)) == 0.0f);
        }
        if (nb == 3) {
            const int64_t *lb = ct_data(y);
            CHECK(lb[ct_size(y, 0) - 1] == ds->labels[199]);
        }
        nb++;
        ct_free(x);
        ct_free(y);
    }
    CHECK(nb == 4);
    CHECK(sizes[0] == 64 && sizes[1] == 64 && sizes[2] == 64 && sizes[3] == 8);
    ct_dataloader_free(dl);
    ct_dataset_free(ds);
}

/* ------------------------------------------------------- missing / bad files */
TEST(data_missing_files_error) {
    char tmp[256];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    CHECK(ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("data_batch_1.bin");
    CHECK_ERRMSG("ctorch download cifar10");
    CHECK_ERRMSG("cifar-10-batches-bin");
    CHECK_ERRMSG("cifar-10-binary.tar.gz");
    CHECK(ct_cifar10_load(tmp, CT_SPLIT_TEST, 0) == NULL);
    CHECK_ERRMSG("test_batch.bin");
    CHECK(ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("train-images-idx3-ubyte");
    CHECK_ERRMSG("ctorch download mnist");
    CHECK(ct_fashion_mnist_load(tmp, CT_SPLIT_TEST, 0) == NULL);
    CHECK_ERRMSG("t10k-images-idx3-ubyte");
    CHECK_ERRMSG("ctorch download fashion_mnist");
    CHECK_ERRMSG("fashion-mnist");
    ct_test_rm_rf(tmp);
}

/* Synthetic CIFAR-10 batch: `n` records, record r gets label (seed + r) % 10 and pixel
 * k = (seed * 7 + r * 3 + k) & 255. */
static uint8_t *fake_cifar(int n, int seed) {
    uint8_t *b = malloc((size_t)n * 3073);
    for (int r = 0; r < n; r++) {
        b[(size_t)r * 3073] = (uint8_t)((seed + r) % 10);
        for (int k = 0; k < 3072; k++) b[(size_t)r * 3073 + 1 + k] = (uint8_t)((seed * 7 + r * 3 + k) & 255);
    }
    return b;
}

static const char *const k_cifar_files[6] = {"data_batch_1.bin", "data_batch_2.bin",
                                             "data_batch_3.bin", "data_batch_4.bin",
                                             "data_batch_5.bin", "test_batch.bin"};

TEST(data_cifar10_synthetic_and_bad_files) {
    char tmp[256], dir[512];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    make_subdir(dir, sizeof dir, tmp, "cifar-10-batches-bin");
    for (int f = 0; f < 6; f++) {
        uint8_t *b = fake_cifar(2, f);
        write_file(dir, k_cifar_files[f], b, 2 * 3073);
        free(b);
    }
    ct_dataset *ds = ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 0);
    CHECK_NN(ds);
    if (ds) {
        CHECK(ds->n == 10);
        for (int f = 0; f < 5; f++)
            for (int r = 0; r < 2; r++) {
                CHECK(ds->labels[2 * f + r] == (f + r) % 10);
                CHECK(ds->images[(size_t)(2 * f + r) * 3072 + 5] == (uint8_t)((f * 7 + r * 3 + 5) & 255));
            }
        ct_dataset_free(ds);
    }
    ds = ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 3); /* limit */
    CHECK(ds && ds->n == 3 && ds->labels[2] == 1);
    ct_dataset_free(ds);
    ds = ct_cifar10_load(dir, CT_SPLIT_TEST, 0); /* the batches directory itself */
    CHECK(ds && ds->n == 2 && ds->labels[0] == 5);
    ct_dataset_free(ds);

    /* truncated: one byte short */
    uint8_t *b = fake_cifar(2, 3);
    write_file(dir, "data_batch_3.bin", b, 2 * 3073 - 1);
    CHECK(ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("data_batch_3.bin");
    CHECK_ERRMSG("3073");
    CHECK_ERRMSG("truncated");
    /* label out of range */
    b[3073] = 10;
    write_file(dir, "data_batch_3.bin", b, 2 * 3073);
    CHECK(ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("data_batch_3.bin");
    CHECK_ERRMSG("label 10");
    /* empty file */
    write_file(dir, "test_batch.bin", b, 0);
    CHECK(ct_cifar10_load(tmp, CT_SPLIT_TEST, 0) == NULL);
    CHECK_ERRMSG("test_batch.bin");
    free(b);
    ct_test_rm_rf(tmp);
}

#ifdef CT_HAVE_LIBARCHIVE
/* ----------------------------------------------------------- tar.gz archive */
typedef struct {
    const char *name;
    const void *data;
    size_t size;
    int dir;
} tar_member;

/* Writes the members into path as a GNU tar archive (as the official one), gzip-compressed
 * when gz, with libarchive's writer. */
static int write_tar(const char *path, const tar_member *m, int n, int gz) {
    struct archive *a = archive_write_new();
    int bad = !a;
    if (a && gz) bad |= archive_write_add_filter_gzip(a) != ARCHIVE_OK;
    if (a) bad |= archive_write_set_format_gnutar(a) != ARCHIVE_OK;
    if (a) bad |= archive_write_open_filename(a, path) != ARCHIVE_OK;
    for (int i = 0; i < n && !bad; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, m[i].name);
        archive_entry_set_filetype(e, m[i].dir ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(e, m[i].dir ? 0755 : 0644);
        archive_entry_set_size(e, m[i].dir ? 0 : (la_int64_t)m[i].size);
        bad |= archive_write_header(a, e) != ARCHIVE_OK;
        if (!bad && m[i].size)
            bad |= archive_write_data(a, m[i].data, m[i].size) != (la_ssize_t)m[i].size;
        archive_entry_free(e);
    }
    if (a) bad |= archive_write_close(a) != ARCHIVE_OK;
    archive_write_free(a);
    CHECK_MSG(!bad, "writing the test archive %s failed", path);
    return bad ? -1 : 0;
}

/* Writes a cifar-10-binary.tar.gz like the official one (members in a scrambled order,
 * a directory entry, readme.html, batches.meta.txt and a file ctorch does not unpack)
 * holding 3-record batches. */
static void write_fake_cifar_archive(const char *path, int gz) {
    static const int order[6] = {5, 2, 0, 4, 1, 3};
    tar_member m[10];
    uint8_t *batches[6];
    char names[6][128];
    int n = 0;
    m[n++] = (tar_member){"cifar-10-batches-bin/", NULL, 0, 1};
    for (int i = 0; i < 6; i++) {
        int f = order[i];
        if (i == 3) m[n++] = (tar_member){"cifar-10-batches-bin/readme.html", "<html/>", 7, 0};
        snprintf(names[i], sizeof names[i], "cifar-10-batches-bin/%s", k_cifar_files[f]);
        batches[i] = fake_cifar(3, f);
        m[n++] = (tar_member){names[i], batches[i], 3 * 3073, 0};
    }
    m[n++] = (tar_member){"cifar-10-batches-bin/batches.meta.txt", "airplane\n", 9, 0};
    m[n++] = (tar_member){"cifar-10-batches-bin/notes.txt", "not unpacked", 12, 0};
    write_tar(path, m, n, gz);
    for (int i = 0; i < 6; i++) free(batches[i]);
}

static uint8_t *read_whole(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(sz > 0 ? (size_t)sz : 1);
    *n = fread(buf, 1, sz > 0 ? (size_t)sz : 0, f);
    fclose(f);
    return buf;
}

TEST(data_cifar10_from_targz) {
    char tmp[256], path[512];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    snprintf(path, sizeof path, "%s/cifar-10-binary.tar.gz", tmp);
    write_fake_cifar_archive(path, 1);
    ct_dataset *ds = ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 0);
    CHECK_NN(ds);
    if (ds) {
        CHECK(ds->n == 15);
        for (int f = 0; f < 5; f++)
            for (int r = 0; r < 3; r++) {
                CHECK_MSG(ds->labels[3 * f + r] == (f + r) % 10, "record %d", 3 * f + r);
                CHECK(ds->images[(size_t)(3 * f + r) * 3072 + 100] == (uint8_t)((f * 7 + r * 3 + 100) & 255));
            }
        ct_dataset_free(ds);
    }
    ds = ct_cifar10_load(tmp, CT_SPLIT_TEST, 2);
    CHECK(ds && ds->n == 2 && ds->labels[0] == 5 && ds->labels[1] == 6);
    ct_dataset_free(ds);

    /* a truncated archive is rejected with a message naming it */
    size_t sz;
    uint8_t *buf = read_whole(path, &sz);
    CHECK(buf && sz > 100);
    write_file(tmp, "cifar-10-binary.tar.gz", buf, sz / 2);
    CHECK(ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("cifar-10-binary.tar.gz");
    CHECK_ERRMSG("download it again");
    free(buf);
    ct_test_rm_rf(tmp);
}

/* `ctorch download` unpacks the official archive: the batches, readme.html and
 * batches.meta.txt, byte for byte, and nothing else. */
TEST(data_cifar10_extract_archive) {
    char tmp[256], path[512], dest[600], file[700];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    for (int gz = 1; gz >= 0; gz--) { /* gzip-compressed, and a plain tar */
        snprintf(path, sizeof path, "%s/cifar-10-binary.tar%s", tmp, gz ? ".gz" : "");
        write_fake_cifar_archive(path, gz);
        snprintf(dest, sizeof dest, "%s/unpacked%d/cifar-10-batches-bin", tmp, gz);
        CHECK_OK(ct_cifar10_extract_archive(path, dest));
        CHECK_MSG(ct_test_count_files(dest) == 8, "%d files unpacked, want 6 batches, readme.html, "
                  "batches.meta.txt", ct_test_count_files(dest));
        for (int f = 0; f < 6; f++) {
            snprintf(file, sizeof file, "%s/%s", dest, k_cifar_files[f]);
            size_t n;
            uint8_t *got = read_whole(file, &n), *want = fake_cifar(3, f);
            CHECK_MSG(got && n == 3 * 3073 && memcmp(got, want, n) == 0, "%s differs", file);
            free(got);
            free(want);
        }
        snprintf(file, sizeof file, "%s/readme.html", dest);
        CHECK(ct_file_size(file) == 7);
        snprintf(file, sizeof file, "%s/batches.meta.txt", dest);
        CHECK(ct_file_size(file) == 9);
        snprintf(file, sizeof file, "%s/notes.txt", dest);
        CHECK(!ct_path_is_file(file));
        snprintf(dest, sizeof dest, "%s/unpacked%d", tmp, gz);
        ct_dataset *ds = ct_cifar10_load(dest, CT_SPLIT_TRAIN, 0);
        CHECK(ds && ds->n == 15 && ds->labels[14] == (4 + 2) % 10);
        ct_dataset_free(ds);
    }
    /* an archive without the batches is not the official one */
    tar_member readme = {"cifar-10-batches-bin/readme.html", "<html/>", 7, 0};
    snprintf(path, sizeof path, "%s/other.tar.gz", tmp);
    write_tar(path, &readme, 1, 1);
    snprintf(dest, sizeof dest, "%s/other", tmp);
    CHECK(ct_cifar10_extract_archive(path, dest) != 0);
    CHECK_ERRMSG("other.tar.gz");
    CHECK_ERRMSG("data_batch_1.bin");
    ct_test_rm_rf(tmp);
}

/* Damaged archives: a clear error naming the archive and the fix, no partial files. */
TEST(data_cifar10_corrupt_archive) {
    char tmp[256], path[512], dest[600];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    snprintf(path, sizeof path, "%s/cifar-10-binary.tar.gz", tmp);
    snprintf(dest, sizeof dest, "%s/out", tmp);
    write_fake_cifar_archive(path, 1);
    size_t sz;
    uint8_t *good = read_whole(path, &sz);
    CHECK(good && sz > 1000);
    if (!good || sz <= 1000) return;

    /* cut in the middle of a member */
    write_file(tmp, "cifar-10-binary.tar.gz", good, sz / 2);
    CHECK(ct_cifar10_extract_archive(path, dest) != 0);
    CHECK_ERRMSG("cifar-10-binary.tar.gz");
    CHECK_ERRMSG("not a valid .tar.gz archive");
    CHECK_ERRMSG("delete it and download it again");
    /* what was unpacked is whole: complete members, no temporary files */
    DIR *d = opendir(dest);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char f[1024];
        snprintf(f, sizeof f, "%s/%s", dest, e->d_name);
        CHECK_MSG(strstr(e->d_name, ".bin") && ct_file_size(f) == 3 * 3073,
                  "%s left behind by a failed unpack", f);
    }
    if (d) closedir(d);

    /* not an archive at all */
    static const char junk[] = "this is not a gzip file, nor a tar archive, just some text "
                               "that is long enough to be looked at by the format readers";
    write_file(tmp, "cifar-10-binary.tar.gz", junk, sizeof junk);
    CHECK(ct_cifar10_extract_archive(path, dest) != 0);
    CHECK_ERRMSG("cifar-10-binary.tar.gz");
    CHECK_ERRMSG("download it again");
    /* a gzip stream of something that is not tar */
    uint8_t zeros[700] = {1, 2, 3};
    write_gz(tmp, "cifar-10-binary.tar.gz", zeros, sizeof zeros);
    CHECK(ct_cifar10_extract_archive(path, dest) != 0);
    CHECK_ERRMSG("not a valid .tar.gz archive");
    /* a tar header whose checksum no longer matches (a flipped byte in the first name) */
    char plain[600];
    snprintf(plain, sizeof plain, "%s/plain.tar", tmp);
    write_fake_cifar_archive(plain, 0);
    uint8_t *tar = read_whole(plain, &sz);
    CHECK(tar && sz > 512);
    if (tar && sz > 512) {
        tar[3] ^= 0x20;
        write_gz(tmp, "cifar-10-binary.tar.gz", tar, sz);
        CHECK(ct_cifar10_extract_archive(path, dest) != 0);
        CHECK_ERRMSG("cifar-10-binary.tar.gz");
        CHECK_ERRMSG("not a valid .tar.gz archive");
        CHECK(ct_cifar10_load(tmp, CT_SPLIT_TEST, 0) == NULL);
        CHECK_ERRMSG("download it again");
    }
    free(tar);
    /* missing */
    snprintf(path, sizeof path, "%s/missing.tar.gz", tmp);
    CHECK(ct_cifar10_extract_archive(path, dest) != 0);
    CHECK_ERRMSG("cannot open");
    CHECK_ERRMSG("missing.tar.gz");
    free(good);
    ct_test_rm_rf(tmp);
}

#else
TEST(data_cifar10_archive_without_libarchive) {
    char tmp[] = "/tmp/ctorch-noarchive-XXXXXX";
    if (!mkdtemp(tmp)) SKIP("no temporary directory");
    char path[256];
    snprintf(path, sizeof path, "%s/cifar-10-binary.tar.gz", tmp);
    FILE *f = fopen(path, "wb");
    if (f) fclose(f);
    CHECK(ct_cifar10_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("built without libarchive");
    remove(path);
    rmdir(tmp);
}
#endif

/* ------------------------------------------------------------------ IDX */
static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* IDX image file bytes: n images rows x cols, pixel k of image i = (i * 31 + k) & 255. */
static uint8_t *idx_images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols, size_t *size) {
    *size = 16 + (size_t)n * rows * cols;
    uint8_t *b = malloc(*size);
    put_be32(b, magic);
    put_be32(b + 4, n);
    put_be32(b + 8, rows);
    put_be32(b + 12, cols);
    for (size_t k = 0; k < (size_t)n * rows * cols; k++)
        b[16 + k] = (uint8_t)(((k / (rows * cols)) * 31 + k % (rows * cols)) & 255);
    return b;
}

static uint8_t *idx_labels(uint32_t magic, uint32_t n, size_t *size) {
    *size = 8 + n;
    uint8_t *b = malloc(*size);
    put_be32(b, magic);
    put_be32(b + 4, n);
    for (uint32_t i = 0; i < n; i++) b[8 + i] = (uint8_t)((i * 3) % 10);
    return b;
}

TEST(data_mnist_synthetic_and_bad_files) {
    char tmp[256], dir[512];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    make_subdir(dir, sizeof dir, tmp, "mnist");
    size_t is, ls;
    uint8_t *im = idx_images(2051, 4, 28, 28, &is);
    uint8_t *lb = idx_labels(2049, 4, &ls);
    write_gz(dir, "train-images-idx3-ubyte.gz", im, is);
    write_gz(dir, "train-labels-idx1-ubyte.gz", lb, ls);
    ct_dataset *ds = ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0);
    CHECK_NN(ds);
    if (ds) {
        CHECK(ds->n == 4 && ds->c == 1 && ds->h == 28 && ds->w == 28);
        CHECK(ds->labels[3] == 9);
        CHECK(ds->images[2 * 784 + 10] == (uint8_t)(2 * 31 + 10));
        ct_dataset_free(ds);
    }
    /* uncompressed files are read too (and win over the .gz) */
    write_file(dir, "t10k-images-idx3-ubyte", im, is);
    write_file(dir, "t10k-labels-idx1-ubyte", lb, ls);
    ds = ct_mnist_load(tmp, CT_SPLIT_TEST, 2);
    CHECK(ds && ds->n == 2 && ds->labels[1] == 3);
    ct_dataset_free(ds);

    /* wrong magic: a label file where the images belong */
    write_gz(dir, "train-images-idx3-ubyte.gz", lb, ls);
    CHECK(ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("train-images-idx3-ubyte.gz");
    CHECK_ERRMSG("2051");
    write_gz(dir, "train-images-idx3-ubyte.gz", im, is);
    uint8_t junk[64];
    memset(junk, 'x', sizeof junk);
    write_gz(dir, "train-labels-idx1-ubyte.gz", junk, sizeof junk);
    CHECK(ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("train-labels-idx1-ubyte.gz");
    CHECK_ERRMSG("2049");
    /* truncated image data */
    write_gz(dir, "train-labels-idx1-ubyte.gz", lb, ls);
    write_gz(dir, "train-images-idx3-ubyte.gz", im, is - 100);
    CHECK(ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("truncated");
    CHECK_ERRMSG("train-images-idx3-ubyte.gz");
    /* counts that do not match */
    size_t ls5;
    uint8_t *lb5 = idx_labels(2049, 5, &ls5);
    write_gz(dir, "train-images-idx3-ubyte.gz", im, is);
    write_gz(dir, "train-labels-idx1-ubyte.gz", lb5, ls5);
    CHECK(ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("4 images");
    CHECK_ERRMSG("5 labels");
    free(lb5);
    /* a gzip stream cut short */
    write_gz(dir, "train-labels-idx1-ubyte.gz", lb, ls);
    char path[600];
    snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", dir);
    FILE *f = fopen(path, "rb");
    uint8_t gzbuf[8192];
    size_t gzn = fread(gzbuf, 1, sizeof gzbuf, f);
    fclose(f);
    write_file(dir, "train-images-idx3-ubyte.gz", gzbuf, gzn - 12);
    CHECK(ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("train-images-idx3-ubyte.gz");
    /* label value out of range */
    lb[8 + 2] = 12;
    write_gz(dir, "train-images-idx3-ubyte.gz", im, is);
    write_gz(dir, "train-labels-idx1-ubyte.gz", lb, ls);
    CHECK(ct_mnist_load(tmp, CT_SPLIT_TRAIN, 0) == NULL);
    CHECK_ERRMSG("outside 0-9");
    free(im);
    free(lb);
    ct_test_rm_rf(tmp);
}

/* ------------------------------------------------------------ names & root */
TEST(data_names_and_root) {
    ct_dataset_kind k;
    CHECK(ct_dataset_parse_name("cifar10", &k) == 0 && k == CT_DATASET_CIFAR10);
    CHECK(ct_dataset_parse_name("CIFAR-10", &k) == 0 && k == CT_DATASET_CIFAR10);
    CHECK(ct_dataset_parse_name("fashion-mnist", &k) == 0 && k == CT_DATASET_FASHION_MNIST);
    CHECK(ct_dataset_parse_name("fashion_mnist", &k) == 0 && k == CT_DATASET_FASHION_MNIST);
    CHECK(ct_dataset_parse_name("mnist", &k) == 0 && k == CT_DATASET_MNIST);
    CHECK_ERR_INT(ct_dataset_parse_name("imagenet", &k), "cifar10, mnist or fashion_mnist");
    CHECK(strcmp(ct_dataset_subdir(CT_DATASET_CIFAR10), "cifar-10-batches-bin") == 0);
    CHECK(strcmp(ct_dataset_subdir(CT_DATASET_FASHION_MNIST), "fashion-mnist") == 0);
    CHECK(strcmp(ct_dataset_name(CT_DATASET_FASHION_MNIST), "fashion_mnist") == 0);

    char *saved = getenv("CTORCH_DATA") ? strdup(getenv("CTORCH_DATA")) : NULL;
    setenv("CTORCH_DATA", "/some/where", 1);
    CHECK(strcmp(ct_data_root("/explicit"), "/explicit") == 0);
    CHECK(strcmp(ct_data_root(NULL), "/some/where") == 0);
    CHECK(strcmp(ct_data_root(""), "/some/where") == 0);
    unsetenv("CTORCH_DATA");
    CHECK(strcmp(ct_data_root(NULL), "data") == 0);
    if (saved) {
        setenv("CTORCH_DATA", saved, 1);
        free(saved);
    }
    float m[4], s[4];
    CHECK(ct_dataset_default_normalization(CT_DATASET_MNIST, m, s) == 1);
    CHECK(m[0] == 0.1307f && s[0] == 0.3081f);
}

/* -------------------------------------------------------------- transforms */
TEST(data_transform_to_float_normalize) {
    const uint8_t px[5] = {59, 0, 255, 240, 3};
    float out[5];
    const float m5[1] = {0.5f}, s5[1] = {0.5f};
    ct_images_to_float(px, out, 1, 1, 1, 3, m5, s5);
    /* torch float32: ((tensor([v], uint8).float() / 255) - 0.5) / 0.5 */
    CHECK(out[0] == -0.53725493f);
    CHECK(out[1] == -1.0f && out[2] == 1.0f);
    const float mm[1] = {0.1307f}, sm[1] = {0.3081f};
    ct_images_to_float(px + 3, out, 1, 1, 1, 2, mm, sm);
    CHECK(out[0] == 2.63056326f);  /* torch: 2.630563259124756 */
    CHECK(out[1] == -0.386028260f); /* torch: -0.3860282599925995 */
    ct_images_to_float(px, out, 1, 1, 1, 3, NULL, NULL);
    CHECK(out[0] == 59.0f / 255.0f && out[2] == 1.0f);
    /* per-channel: 2 images, 2 channels of 1 pixel */
    const uint8_t two[4] = {255, 255, 0, 0};
    const float mc[2] = {0.0f, 1.0f}, sc[2] = {1.0f, 2.0f};
    float o4[4];
    ct_images_to_float(two, o4, 2, 2, 1, 1, mc, sc);
    CHECK(o4[0] == 1.0f && o4[1] == 0.0f && o4[2] == 0.0f && o4[3] == -0.5f);
}

TEST(data_transform_crop_flip) {
    enum { C = 2, H = 5, W = 6 };
    uint8_t src[C * H * W], dst[C * H * W];
    for (int i = 0; i < C * H * W; i++) src[i] = (uint8_t)(i + 1);
    /* centre window: unchanged */
    ct_image_crop_padded(src, dst, C, H, W, 2, 2, 2);
    CHECK(memcmp(src, dst, sizeof src) == 0);
    /* top-left window: shifted by (2, 2) towards bottom-right with zeros */
    ct_image_crop_padded(src, dst, C, H, W, 2, 0, 0);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                uint8_t want = (y < 2 || x < 2) ? 0 : src[(c * H + y - 2) * W + x - 2];
                CHECK_MSG(dst[(c * H + y) * W + x] == want, "tl c%d y%d x%d", c, y, x);
            }
    /* bottom-right window with asymmetric offsets */
    ct_image_crop_padded(src, dst, C, H, W, 2, 4, 3);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int sy = y + 2, sx = x + 1;
                uint8_t want = (sy >= H || sx >= W) ? 0 : src[(c * H + sy) * W + sx];
                CHECK_MSG(dst[(c * H + y) * W + x] == want, "br c%d y%d x%d", c, y, x);
            }
    /* flip */
    memcpy(dst, src, sizeof src);
    ct_image_hflip(dst, C, H, W);
    CHECK(dst[0] == src[W - 1] && dst[W - 1] == src[0] && dst[W * H] == src[W * H + W - 1]);
    ct_image_hflip(dst, C, H, W);
    CHECK(memcmp(src, dst, sizeof src) == 0);

    /* augment: seeded, deterministic, covers every offset, flips about half the time */
    ct_transform t;
    memset(&t, 0, sizeof t);
    t.crop_padding = 4;
    t.hflip = 1;
    ct_data_rng r1, r2;
    ct_data_rng_seed(&r1, 123);
    ct_data_rng_seed(&r2, 123);
    uint8_t a[3 * 32 * 32], b[3 * 32 * 32];
    for (int i = 0; i < 3 * 32 * 32; i++) a[i] = b[i] = (uint8_t)(i * 7);
    ct_transform_augment(&t, a, 3, 32, 32, &r1);
    ct_transform_augment(&t, b, 3, 32, 32, &r2);
    CHECK(memcmp(a, b, sizeof a) == 0);
    int seen[9][9] = {{0}}, flips = 0;
    ct_data_rng r;
    ct_data_rng_seed(&r, 7);
    for (int i = 0; i < 4000; i++) {
        seen[ct_data_rng_below(&r, 9)][ct_data_rng_below(&r, 9)]++;
        flips += (int)(ct_data_rng_next(&r) >> 63);
    }
    for (int y = 0; y < 9; y++)
        for (int x = 0; x < 9; x++) CHECK_MSG(seen[y][x] > 0, "offset %d,%d never drawn", y, x);
    CHECK(flips > 1800 && flips < 2200);
}

/* The loader's one pass (crop, flip and conversion through a per-byte table) gives the
 * bits of the byte-wise augmentation followed by the conversion, with the same draws:
 * every offset and flip, padding wider than the image, non-square images, 1-4 channels,
 * with and without Normalize. */
TEST(data_augment_to_float_equals_augment_then_convert) {
    enum { MAXC = 4, MAXH = 9, MAXW = 12 };
    const float mean[MAXC] = {0.4914f, 0.4822f, 0.4465f, 0.1307f};
    const float stdv[MAXC] = {0.2470f, 0.2435f, 0.2616f, 0.3081f};
    const int shapes[][3] = {{3, 8, 8}, {1, 5, 12}, {2, 9, 3}, {4, 1, 1}, {3, 7, 5}};
    const int pads[] = {0, 1, 4, 13};
    int cases = 0, flips = 0, empty_rows = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t pi = 0; pi < sizeof pads / sizeof pads[0]; pi++)
            for (int flip = 0; flip <= 1; flip++)
                for (int norm = 0; norm <= 1; norm++) {
                    int c = shapes[si][0], h = shapes[si][1], w = shapes[si][2];
                    ct_transform t;
                    memset(&t, 0, sizeof t);
                    t.crop_padding = pads[pi];
                    t.hflip = flip;
                    float lut[MAXC][256];
                    ct__pixel_lut(norm ? mean : NULL, norm ? stdv : NULL, c, lut);
                    for (int seed = 0; seed < 40; seed++) {
                        uint8_t img[MAXC * MAXH * MAXW];
                        float want[MAXC * MAXH * MAXW], got[MAXC * MAXH * MAXW];
                        for (int i = 0; i < c * h * w; i++) img[i] = (uint8_t)(37 * i + 11 * seed + 1);
                        uint8_t src[MAXC * MAXH * MAXW];
                        memcpy(src, img, sizeof src);
                        ct_data_rng r1, r2;
                        ct_data_rng_seed(&r1, (uint64_t)seed * 977 + si);
                        ct_data_rng_seed(&r2, (uint64_t)seed * 977 + si);
                        ct_transform_augment(&t, img, c, h, w, &r1);
                        ct_images_to_float(img, want, 1, c, h, w, norm ? mean : NULL, norm ? stdv : NULL);
                        ct__augment_to_float(&t, (const float(*)[256])lut, src, got, c, h, w, &r2);
                        CHECK_MSG(memcmp(want, got, (size_t)c * h * w * sizeof(float)) == 0,
                                  "c%d h%d w%d pad %d flip %d norm %d seed %d", c, h, w, pads[pi],
                                  flip, norm, seed);
                        CHECK(r1.state == r2.state); /* the same number of draws */
                        for (int y = 0; y < h; y++) {
                            int zero_row = 1;
                            for (int x = 0; x < w; x++) zero_row &= img[y * w + x] == 0;
                            empty_rows += zero_row;
                        }
                        flips += flip && memcmp(img, src, (size_t)c * h * w) != 0;
                        cases++;
                    }
                }
    CHECK(cases == 5 * 4 * 2 * 2 * 40);
    CHECK(flips > 0 && empty_rows > 0); /* flips and padded rows were among the cases */
    /* NULL transform: the plain conversion */
    const uint8_t px[3] = {0, 128, 255};
    float lut1[1][256], o[3];
    ct__pixel_lut(NULL, NULL, 1, lut1);
    ct__augment_to_float(NULL, (const float(*)[256])lut1, px, o, 1, 1, 3, NULL);
    CHECK(o[0] == 0.0f && o[1] == 128.0f / 255.0f && o[2] == 1.0f);
}

/* ------------------------------------------------------------- DataLoader */
/* A dataset whose record i encodes i in its pixels (1x2x2: low byte, high byte) and has
 * label i % 10, so batches reveal the record order. */
static ct_dataset *index_dataset(int64_t n) {
    uint8_t *img = malloc((size_t)n * 4);
    int64_t *lab = malloc((size_t)n * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        img[4 * i] = (uint8_t)(i & 255);
        img[4 * i + 1] = (uint8_t)(i >> 8);
        img[4 * i + 2] = 7;
        img[4 * i + 3] = 9;
        lab[i] = i % 10;
    }
    ct_dataset *ds = ct_dataset_from_memory(img, lab, n, 1, 2, 2, 10, "index");
    free(img);
    free(lab);
    return ds;
}

/* Runs one epoch and writes the record indices in delivery order into out (n entries).
 * Returns the number of records delivered, or -1. */
static int64_t epoch_order(ct_dataloader *dl, int64_t epoch, int64_t *out, int64_t cap,
                           int64_t *nbatches) {
    if (ct_dataloader_start_epoch(dl, epoch) != 0) return -1;
    int64_t k = 0, nb = 0;
    ct_tensor *x, *y;
    int rc;
    while ((rc = ct_dataloader_next(dl, &x, &y)) == 1) {
        const float *px = ct_data(x);
        const int64_t *lb = ct_data(y);
        for (int64_t i = 0; i < ct_size(x, 0); i++) {
            int64_t idx = (int64_t)lrintf(px[4 * i] * 255.0f) + 256 * (int64_t)lrintf(px[4 * i + 1] * 255.0f);
            if (lb[i] != idx % 10) return -1;
            if (k < cap) out[k] = idx;
            k++;
        }
        nb++;
        ct_free(x);
        ct_free(y);
    }
    if (rc < 0) return -1;
    if (nbatches) *nbatches = nb;
    return k;
}

static int is_permutation(const int64_t *v, int64_t n) {
    char *seen = calloc((size_t)n, 1);
    int ok = 1;
    for (int64_t i = 0; i < n && ok; i++) {
        if (v[i] < 0 || v[i] >= n || seen[v[i]]) ok = 0;
        else seen[v[i]] = 1;
    }
    free(seen);
    return ok;
}

TEST(data_loader_no_shuffle_record_order) {
    ct_dataset *ds = index_dataset(1000);
    CHECK_NN(ds);
    if (!ds) return;
    for (int workers = 0; workers <= 4; workers += 4) {
        ct_dataloader_opts o = ct_dataloader_default_opts();
        o.shuffle = 0;
        o.batch_size = 64;
        o.num_workers = workers;
        o.prefetch = 2;
        ct_dataloader *dl = ct_dataloader_new(ds, &o);
        CHECK_NN(dl);
        if (!dl) break;
        int64_t order[1000], nb = 0;
        CHECK(epoch_order(dl, 0, order, 1000, &nb) == 1000);
        CHECK(nb == 16);
        for (int64_t i = 0; i < 1000; i++) CHECK_MSG(order[i] == i, "position %lld", (long long)i);
        /* same order on the next epoch */
        CHECK(epoch_order(dl, 1, order, 1000, NULL) == 1000);
        CHECK(order[0] == 0 && order[999] == 999);
        ct_dataloader_free(dl);
    }
    ct_dataset_free(ds);
}

/* PyTorch's `for epoch in range(3): for batch in loader`: only ct_dataloader_next (and the
 * prefetcher's), no start_epoch: three full epochs, each in its own shuffled order, the
 * same orders as epochs 0, 1, 2 set explicitly; 0 once at each end. */
static int64_t read_epoch(ct_dataloader *dl, ct_device_prefetcher *pf, int64_t *out, int64_t cap) {
    int64_t k = 0;
    ct_tensor *x, *y;
    int rc;
    while ((rc = pf ? ct_device_prefetcher_next(pf, &x, &y) : ct_dataloader_next(dl, &x, &y)) == 1) {
        const float *px = ct_data(x);
        for (int64_t i = 0; i < ct_size(x, 0); i++, k++)
            if (k < cap)
                out[k] = (int64_t)lrintf(px[4 * i] * 255.0f) +
                         256 * (int64_t)lrintf(px[4 * i + 1] * 255.0f);
        ct_free(x);
        ct_free(y);
    }
    return rc < 0 ? -1 : k;
}

TEST(data_loader_epochs_follow_one_another_like_pytorch) {
    ct_dataset *ds = index_dataset(100);
    for (int mode = 0; mode < 3; mode++) { /* synchronous, 2 workers, prefetcher */
        ct_dataloader_opts o = ct_dataloader_default_opts();
        o.batch_size = 16;
        o.shuffle = 1;
        o.seed = 11;
        o.num_workers = mode == 0 ? 0 : 2;
        ct_dataloader *dl = ct_dataloader_new(ds, &o), *ref = ct_dataloader_new(ds, &o);
        ct_device_prefetcher *pf = mode == 2 && dl ? ct_device_prefetcher_new(dl, ct_cpu()) : NULL;
        CHECK(dl && ref && (mode != 2 || pf));
        int64_t got[3][100], want[100];
        for (int e = 0; e < 3 && dl && ref; e++) {
            CHECK_MSG(read_epoch(dl, pf, got[e], 100) == 100, "mode %d epoch %d not full", mode, e);
            CHECK(epoch_order(ref, e, want, 100, NULL) == 100);
            CHECK_MSG(memcmp(got[e], want, sizeof want) == 0, "mode %d epoch %d: not epoch %d's order",
                      mode, e, e);
        }
        CHECK_MSG(memcmp(got[0], got[1], sizeof got[0]) != 0 && memcmp(got[1], got[2], sizeof got[0]) != 0,
                  "mode %d: epochs in the same order", mode);
        ct_device_prefetcher_free(pf);
        ct_dataloader_free(dl);
        ct_dataloader_free(ref);
    }
    ct_dataset_free(ds);
}

TEST(data_loader_drop_last) {
    ct_dataset *ds = index_dataset(1000);
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.batch_size = 64;
    o.drop_last = 1;
    o.seed = 3;
    ct_dataloader *dl = ct_dataloader_new(ds, &o);
    CHECK_NN(dl);
    CHECK(ct_dataloader_num_batches(dl) == 15);
    int64_t order[1000], nb = 0;
    CHECK(epoch_order(dl, 0, order, 1000, &nb) == 960);
    CHECK(nb == 15);
    ct_tensor *x, *y;
    CHECK(ct_dataloader_next(dl, &x, &y) == 1); /* after the end: the next epoch begins */
    ct_free(x);
    ct_free(y);
    ct_dataloader_free(dl);
    o.drop_last = 0;
    dl = ct_dataloader_new(ds, &o);
    CHECK(ct_dataloader_num_batches(dl) == 16);
    CHECK(ct_dataloader_start_epoch(dl, 0) == 0);
    int64_t last = 0;
    for (int b = 0; b < 16; b++) {
        CHECK(ct_dataloader_next(dl, &x, &y) == 1);
        last = ct_size(x, 0);
        CHECK(ct_size(y, 0) == last);
        ct_free(x);
        ct_free(y);
    }
    CHECK(last == 1000 - 15 * 64);
    CHECK(ct_dataloader_next(dl, &x, &y) == 0);
    ct_dataloader_free(dl);
    /* batch larger than the dataset with drop_last: no batches */
    o.batch_size = 2000;
    o.drop_last = 1;
    dl = ct_dataloader_new(ds, &o);
    CHECK(ct_dataloader_num_batches(dl) == 0);
    CHECK(ct_dataloader_next(dl, &x, &y) == 0);
    ct_dataloader_free(dl);
    ct_dataset_free(ds);
}

TEST(data_loader_shuffle_deterministic) {
    ct_dataset *ds = index_dataset(1000);
    static int64_t a0[1000], a1[1000], b0[1000], b1[1000], c0[1000];
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.batch_size = 100;
    o.seed = 7;
    o.num_workers = 3;
    ct_dataloader *da = ct_dataloader_new(ds, &o);
    o.num_workers = 0;
    ct_dataloader *db = ct_dataloader_new(ds, &o);
    o.seed = 8;
    o.num_workers = 2;
    ct_dataloader *dc = ct_dataloader_new(ds, &o);
    CHECK(da && db && dc);
    if (!da || !db || !dc) goto done;
    CHECK(epoch_order(da, 0, a0, 1000, NULL) == 1000);
    CHECK(epoch_order(da, 1, a1, 1000, NULL) == 1000);
    CHECK(epoch_order(db, 0, b0, 1000, NULL) == 1000);
    CHECK(epoch_order(db, 1, b1, 1000, NULL) == 1000);
    CHECK(epoch_order(dc, 0, c0, 1000, NULL) == 1000);
    CHECK(is_permutation(a0, 1000) && is_permutation(a1, 1000) && is_permutation(c0, 1000));
    CHECK_MSG(memcmp(a0, b0, sizeof a0) == 0, "same seed and epoch, different worker counts: "
                                              "orders differ");
    CHECK(memcmp(a1, b1, sizeof a1) == 0);
    CHECK_MSG(memcmp(a0, a1, sizeof a0) != 0, "epochs 0 and 1 have the same order");
    CHECK_MSG(memcmp(a0, c0, sizeof a0) != 0, "seeds 7 and 8 give the same order");
    int fixed = 0;
    for (int i = 0; i < 1000; i++) fixed += a0[i] == i;
    CHECK_MSG(fixed < 20, "shuffle left %d of 1000 records in place", fixed);
    /* replaying an epoch reproduces it */
    CHECK(epoch_order(da, 0, a1, 1000, NULL) == 1000);
    CHECK(memcmp(a0, a1, sizeof a0) == 0);
done:
    ct_dataloader_free(da);
    ct_dataloader_free(db);
    ct_dataloader_free(dc);
    ct_dataset_free(ds);
}

/* Augmented batches are identical whatever the number of workers. */
TEST(data_loader_augment_independent_of_workers) {
    enum { N = 300 };
    uint8_t *img = malloc((size_t)N * 3 * 8 * 8);
    for (int i = 0; i < N * 3 * 64; i++) img[i] = (uint8_t)(i * 13 + 5);
    ct_dataset *ds = ct_dataset_from_memory(img, NULL, N, 3, 8, 8, 10, "aug");
    free(img);
    CHECK_NN(ds);
    if (!ds) return;
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.batch_size = 32;
    o.seed = 99;
    o.transform.crop_padding = 2;
    o.transform.hflip = 1;
    o.transform.normalize = 1;
    for (int c = 0; c < 3; c++) {
        o.transform.mean[c] = 0.5f;
        o.transform.std[c] = 0.25f;
    }
    o.num_workers = 0;
    ct_dataloader *d0 = ct_dataloader_new(ds, &o);
    o.num_workers = 5;
    o.prefetch = 3;
    ct_dataloader *d5 = ct_dataloader_new(ds, &o);
    CHECK(d0 && d5);
    int differs_from_plain = 0;
    for (int epoch = 0; epoch < 2 && d0 && d5; epoch++) {
        CHECK_OK(ct_dataloader_start_epoch(d0, epoch));
        CHECK_OK(ct_dataloader_start_epoch(d5, epoch));
        ct_tensor *x0, *y0, *x5, *y5;
        int r0, r5, nb = 0;
        while ((r0 = ct_dataloader_next(d0, &x0, &y0)) == 1) {
            r5 = ct_dataloader_next(d5, &x5, &y5);
            CHECK(r5 == 1);
            if (r5 != 1) {
                ct_free(x0);
                ct_free(y0);
                break;
            }
            CHECK(ct_numel(x0) == ct_numel(x5));
            CHECK(memcmp(ct_data(x0), ct_data(x5), (size_t)ct_numel(x0) * 4) == 0);
            CHECK(memcmp(ct_data(y0), ct_data(y5), (size_t)ct_numel(y0) * 8) == 0);
            /* padding zeros appear as (0 - 0.5) / 0.25 = -2 */
            const float *p = ct_data(x0);
            for (int64_t k = 0; k < ct_numel(x0); k++) differs_from_plain += p[k] == -2.0f;
            nb++;
            ct_free(x0);
            ct_free(y0);
            ct_free(x5);
            ct_free(y5);
        }
        CHECK(r0 == 0 && nb == 10);
        CHECK(ct_dataloader_next(d5, &x5, &y5) == 0);
    }
    CHECK_MSG(differs_from_plain > 0, "random crop never padded");
    ct_dataloader_free(d0);
    ct_dataloader_free(d5);
    ct_dataset_free(ds);
}

/* Freeing a loader mid-epoch (workers busy, queue full) neither hangs nor leaks; so does
 * restarting an epoch early. */
TEST(data_loader_destroy_mid_epoch) {
    ct_dataset *ds = index_dataset(5000);
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.batch_size = 16;
    o.num_workers = 4;
    o.prefetch = 8;
    for (int round = 0; round < 20; round++) {
        ct_dataloader *dl = ct_dataloader_new(ds, &o);
        CHECK_NN(dl);
        if (!dl) break;
        for (int k = 0; k < round % 4; k++) {
            ct_tensor *x, *y;
            CHECK(ct_dataloader_next(dl, &x, &y) == 1);
            ct_free(x);
            ct_free(y);
        }
        if (round % 2) usleep(200);
        ct_dataloader_free(dl);
    }
    /* restart mid-epoch: the epoch replays from its first batch */
    ct_dataloader *dl = ct_dataloader_new(ds, &o);
    ct_tensor *x, *y, *x2, *y2;
    CHECK(ct_dataloader_next(dl, &x, &y) == 1);
    for (int k = 0; k < 3; k++) {
        CHECK(ct_dataloader_next(dl, &x2, &y2) == 1);
        ct_free(x2);
        ct_free(y2);
    }
    CHECK_OK(ct_dataloader_start_epoch(dl, 0));
    CHECK(ct_dataloader_next(dl, &x2, &y2) == 1);
    CHECK(memcmp(ct_data(x), ct_data(x2), (size_t)ct_numel(x) * 4) == 0);
    ct_free(x);
    ct_free(y);
    ct_free(x2);
    ct_free(y2);
    /* tensors outlive their loader */
    CHECK(ct_dataloader_next(dl, &x, &y) == 1);
    ct_dataloader_free(dl);
    CHECK(ct_size(x, 0) == 16 && ((const int64_t *)ct_data(y))[0] >= 0);
    ct_free(x);
    ct_free(y);
    ct_dataloader_free(NULL);
    ct_dataset_free(ds);
}

TEST(data_loader_errors) {
    ct_dataset *ds = index_dataset(10);
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.batch_size = 0;
    CHECK(ct_dataloader_new(ds, &o) == NULL);
    CHECK_ERRMSG("batch_size");
    o = ct_dataloader_default_opts();
    o.transform.normalize = 1;
    o.transform.std[0] = 0.0f;
    CHECK(ct_dataloader_new(ds, &o) == NULL);
    CHECK_ERRMSG("std");
    o = ct_dataloader_default_opts();
    o.num_workers = -1;
    CHECK(ct_dataloader_new(ds, &o) == NULL);
    CHECK_ERRMSG("num_workers");
    CHECK(ct_dataloader_new(NULL, NULL) == NULL);
    const int64_t bad_label = 12;
    uint8_t px[4] = {0};
    CHECK(ct_dataset_from_memory(px, &bad_label, 1, 1, 2, 2, 10, "bad") == NULL);
    CHECK_ERRMSG("label 12");
    ct_dataset_free(ds);
}

/* ------------------------------------------------ pin_memory and the device prefetcher */
/* Records stderr into a temporary file between capture_begin and capture_end (which
 * returns what was written, malloc'd). Nothing may CHECK in between: the harness reports
 * failures on stderr. */
typedef struct {
    char path[64];
    int saved;
} capture_t;

static int capture_begin(capture_t *c) {
    fflush(stderr);
    snprintf(c->path, sizeof c->path, "/tmp/ctorch_stderr_XXXXXX");
    int fd = mkstemp(c->path);
    if (fd < 0) return -1;
    c->saved = dup(2);
    dup2(fd, 2);
    close(fd);
    return 0;
}

static char *capture_end(capture_t *c) {
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    char *buf = NULL;
    FILE *f = fopen(c->path, "rb");
    if (f) {
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = calloc((size_t)(n > 0 ? n : 0) + 1, 1);
        if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) buf[0] = 0;
        fclose(f);
    }
    unlink(c->path);
    return buf;
}

static int count_substr(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; p && (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

/* 300 RGB 8x8 images with varied pixels and labels; options with shuffle, random crop,
 * flip and normalisation, so that batches differ in every respect that could go wrong. */
static ct_dataset *pattern_dataset(void) {
    enum { N = 300 };
    uint8_t *img = malloc((size_t)N * 3 * 64);
    int64_t *lab = malloc(N * sizeof(int64_t));
    for (int i = 0; i < N * 3 * 64; i++) img[i] = (uint8_t)(i * 29 + 11);
    for (int i = 0; i < N; i++) lab[i] = (i * 7) % 10;
    ct_dataset *ds = ct_dataset_from_memory(img, lab, N, 3, 8, 8, 10, "pattern");
    free(img);
    free(lab);
    return ds;
}

static ct_dataloader_opts pattern_opts(int workers) {
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.batch_size = 32; /* 10 batches, the last one of 12 */
    o.seed = 5;
    o.num_workers = workers;
    o.prefetch = 2;
    o.transform.crop_padding = 2;
    o.transform.hflip = 1;
    o.transform.normalize = 1;
    for (int c = 0; c < 3; c++) {
        o.transform.mean[c] = 0.4f;
        o.transform.std[c] = 0.2f;
    }
    return o;
}

/* A batch source: a plain loader, or a loader behind a device prefetcher. */
typedef struct {
    ct_dataloader *dl;
    ct_device_prefetcher *pf;
} source_t;

static int source_start(source_t *s, int64_t epoch) {
    return s->pf ? ct_device_prefetcher_start_epoch(s->pf, epoch)
                 : ct_dataloader_start_epoch(s->dl, epoch);
}

/* Next batch, brought to the CPU. */
static int source_next(source_t *s, ct_tensor **x, ct_tensor **y, ct_device *where) {
    ct_tensor *xd, *yd;
    int r = s->pf ? ct_device_prefetcher_next(s->pf, &xd, &yd) : ct_dataloader_next(s->dl, &xd, &yd);
    *x = *y = NULL;
    if (r != 1) return r;
    *where = ct_device_of(xd);
    *x = ct_to_device(xd, ct_cpu());
    *y = ct_to_device(yd, ct_cpu());
    ct_free(xd);
    ct_free(yd);
    return *x && *y ? 1 : -1;
}

/* Compares one epoch of `got` with the reference loader batch by batch (values, labels,
 * shapes, order) and checks both end together. Returns the number of batches compared. */
static int compare_epoch(ct_dataloader *ref, source_t *got, int64_t epoch, ct_device want_dev,
                         const char *what) {
    CHECK_OK(ct_dataloader_start_epoch(ref, epoch));
    CHECK_OK(source_start(got, epoch));
    int nb = 0;
    for (;;) {
        ct_tensor *rx, *ry, *gx, *gy;
        ct_device where = ct_cpu();
        int r0 = ct_dataloader_next(ref, &rx, &ry);
        int r1 = source_next(got, &gx, &gy, &where);
        CHECK_MSG(r0 == r1, "%s epoch %lld batch %d: reference returned %d, got %d (%s)", what,
                  (long long)epoch, nb, r0, r1, r1 < 0 ? ct_last_error() : "");
        if (r0 == 1 && r1 == 1) {
            CHECK_MSG(where.type == want_dev.type && where.index == want_dev.index,
                      "%s: batch on device type %d:%d", what, (int)where.type, where.index);
            CHECK(ct_numel(rx) == ct_numel(gx) && ct_ndim(gx) == 4 && ct_size(gx, 1) == 3);
            CHECK(ct_numel(ry) == ct_numel(gy));
            if (ct_numel(rx) == ct_numel(gx) && ct_numel(ry) == ct_numel(gy)) {
                CHECK_MSG(memcmp(ct_data(rx), ct_data(gx), (size_t)ct_numel(rx) * 4) == 0,
                          "%s epoch %lld batch %d: images differ", what, (long long)epoch, nb);
                CHECK_MSG(memcmp(ct_data(ry), ct_data(gy), (size_t)ct_numel(ry) * 8) == 0,
                          "%s epoch %lld batch %d: labels differ", what, (long long)epoch, nb);
            }
            nb++;
        }
        if (r0 == 1) {
            ct_free(rx);
            ct_free(ry);
        }
        if (r1 == 1) {
            ct_free(gx);
            ct_free(gy);
        }
        if (r0 != 1 || r1 != 1) break;
    }
    return nb;
}

static int cuda_usable(char *why, size_t n) {
    int avail = 0;
    const char *r = ct_cuda_status(&avail);
    if (!avail) snprintf(why, n, "cuda unavailable: %s", r ? r : "(no reason)");
    return avail;
}

/* pin_memory: pinned batches when CUDA is usable; otherwise one warning per process and
 * ordinary batches. Values are the same either way. */
TEST(data_loader_pin_memory) {
    ct_dataset *ds = pattern_dataset();
    CHECK_NN(ds);
    if (!ds) return;
    char why[1024];
    int cuda = cuda_usable(why, sizeof why);
    int warned_before = ct__pin_memory_warnings();
    ct_dataloader_opts o = pattern_opts(2);
    ct_dataloader *ref = ct_dataloader_new(ds, &o);
    o.pin_memory = 1;
    capture_t cap;
    CHECK(capture_begin(&cap) == 0);
    ct_dataloader *p2 = ct_dataloader_new(ds, &o);
    o.num_workers = 0;
    ct_dataloader *p0 = ct_dataloader_new(ds, &o);
    char *err = capture_end(&cap);
    CHECK(ref && p2 && p0 && err);
    const char *msg = "pin_memory is set but no GPU is usable";
    if (cuda) {
        CHECK(ct_dataloader_pinned(p2) == 1 && ct_dataloader_pinned(p0) == 1);
        CHECK_MSG(count_substr(err, msg) == 0, "warned although CUDA is usable: %s", err);
    } else {
        CHECK(ct_dataloader_pinned(p2) == 0 && ct_dataloader_pinned(p0) == 0);
        CHECK_MSG(ct__pin_memory_warnings() == 1, "no pin_memory warning was printed");
        CHECK_MSG(count_substr(err, msg) == (warned_before ? 0 : 1),
                  "expected the warning %s, stderr was: \"%s\"", warned_before ? "not again" : "once",
                  err ? err : "");
        CHECK_MSG(contains(err, "ctorch: warning:") || warned_before, "stderr: %s", err);
    }
    CHECK(ct_dataloader_pinned(ref) == 0);
    CHECK(ct_dataloader_pinned(NULL) == 0);
    free(err);
    if (ref && p2 && p0) {
        source_t s2 = {p2, NULL}, s0 = {p0, NULL};
        for (int64_t epoch = 0; epoch < 2; epoch++) {
            CHECK(compare_epoch(ref, &s2, epoch, ct_cpu(), "pin_memory, 2 workers") == 10);
            CHECK(compare_epoch(ref, &s0, epoch, ct_cpu(), "pin_memory, no workers") == 10);
        }
        /* the batches are pinned exactly when the loader says so */
        ct_tensor *x, *y;
        CHECK_OK(ct_dataloader_start_epoch(p2, 0));
        CHECK(ct_dataloader_next(p2, &x, &y) == 1);
        CHECK(ct__is_pinned(x) == cuda && ct__is_pinned(y) == cuda);
        CHECK(ct_device_of(x).type == CT_CPU);
        ct_free(x);
        ct_free(y);
    }
    ct_dataloader_free(ref);
    ct_dataloader_free(p2);
    ct_dataloader_free(p0);
    ct_dataset_free(ds);
}

/* On the CPU device the prefetcher passes the loader's batches through: same values, same
 * order, same epoch semantics (end stays at 0, a mid-epoch restart replays). */
TEST(data_prefetcher_cpu_matches_loader) {
    ct_dataset *ds = pattern_dataset();
    CHECK_NN(ds);
    if (!ds) return;
    for (int workers = 0; workers <= 3; workers += 3) {
        ct_dataloader_opts o = pattern_opts(workers);
        ct_dataloader *ref = ct_dataloader_new(ds, &o);
        ct_dataloader *dl = ct_dataloader_new(ds, &o);
        ct_device_prefetcher *pf = dl ? ct_device_prefetcher_new(dl, ct_cpu()) : NULL;
        CHECK(ref && dl && pf);
        if (!ref || !dl || !pf) {
            ct_dataloader_free(ref);
            ct_dataloader_free(dl);
            break;
        }
        CHECK(ct_device_prefetcher_device(pf).type == CT_CPU);
        source_t s = {dl, pf};
        for (int64_t epoch = 0; epoch < 3; epoch++)
            CHECK(compare_epoch(ref, &s, epoch, ct_cpu(), "cpu prefetcher") == 10);
        ct_tensor *x, *y;
        CHECK(ct_device_prefetcher_next(pf, &x, &y) == 1); /* after the end: the next epoch */
        ct_free(x);
        ct_free(y);
        /* a restart mid-epoch replays the epoch from its first batch */
        CHECK_OK(ct_device_prefetcher_start_epoch(pf, 1));
        for (int k = 0; k < 3; k++) {
            CHECK(ct_device_prefetcher_next(pf, &x, &y) == 1);
            ct_free(x);
            ct_free(y);
        }
        CHECK(compare_epoch(ref, &s, 1, ct_cpu(), "cpu prefetcher after restart") == 10);
        ct_device_prefetcher_free(pf);
        ct_dataloader_free(dl);
        ct_dataloader_free(ref);
    }
    ct_dataset_free(ds);
}

TEST(data_prefetcher_errors) {
    ct_dataset *ds = index_dataset(10);
    ct_dataloader *dl = ct_dataloader_new(ds, NULL);
    CHECK_NN(dl);
    if (!dl) {
        ct_dataset_free(ds);
        return;
    }
    ct_clear_error();
    CHECK(ct_device_prefetcher_new(NULL, ct_cpu()) == NULL);
    CHECK_ERRMSG("loader is NULL");
    CHECK(ct_device_prefetcher_new(dl, (ct_device){(ct_device_type)7, 0}) == NULL);
    CHECK_ERRMSG("unknown device type 7");
    CHECK(ct_device_prefetcher_new(dl, (ct_device){CT_CUDA, -1}) == NULL);
    CHECK_ERRMSG("cuda:-1");
    char why[1024];
    if (!cuda_usable(why, sizeof why)) {
        CHECK(ct_device_prefetcher_new(dl, (ct_device){CT_CUDA, 0}) == NULL);
        CHECK_ERRMSG("cuda unavailable");
        CHECK(ct_backend_proc(CT_CUDA, "ct_cuda_host_alloc") == NULL);
        CHECK_ERRMSG("cuda unavailable");
    } else {
        CHECK(ct_device_prefetcher_new(dl, (ct_device){CT_CUDA, 99}) == NULL);
        CHECK_ERRMSG("cuda:99");
        CHECK(ct_backend_proc(CT_CUDA, "ct_cuda_no_such_function") == NULL);
        CHECK_ERRMSG("has no function ct_cuda_no_such_function");
        CHECK(ct_backend_proc(CT_CUDA, "ct_cuda_host_alloc") != NULL);
    }
    ct_device_prefetcher *pf = ct_device_prefetcher_new(dl, ct_cpu());
    CHECK_NN(pf);
    ct_tensor *x = (ct_tensor *)1, *y = (ct_tensor *)1;
    CHECK_ERR_INT(ct_device_prefetcher_next(NULL, &x, &y), "must be non-NULL");
    CHECK(x == NULL && y == NULL);
    CHECK_ERR_INT(ct_device_prefetcher_next(pf, NULL, &y), "must be non-NULL");
    CHECK_ERR_INT(ct_device_prefetcher_start_epoch(NULL, 0), "prefetcher is NULL");
    CHECK_ERR_INT(ct_device_prefetcher_start_epoch(pf, -2), "epoch must be >= 0");
    CHECK(ct_device_prefetcher_device(NULL).type == CT_CPU);
    ct_device_prefetcher_free(pf);
    ct_device_prefetcher_free(NULL);
    ct_dataloader_free(dl);
    ct_dataset_free(ds);
}

/* CUDA: the prefetched batches equal the loader's, with and without pinned memory, whatever
 * the workers; restarting or freeing with a batch in flight is safe. */
TEST(data_prefetcher_cuda_matches_loader) {
    char why[1024];
    if (!cuda_usable(why, sizeof why)) SKIP(why);
    ct_dataset *ds = pattern_dataset();
    CHECK_NN(ds);
    if (!ds) return;
    const ct_device cuda0 = {CT_CUDA, 0};
    for (int pin = 0; pin <= 1; pin++)
        for (int workers = 0; workers <= 2; workers += 2) {
            char what[64];
            snprintf(what, sizeof what, "cuda prefetcher, pin_memory %d, %d workers", pin, workers);
            ct_dataloader_opts o = pattern_opts(workers);
            ct_dataloader *ref = ct_dataloader_new(ds, &o);
            o.pin_memory = pin;
            ct_dataloader *dl = ct_dataloader_new(ds, &o);
            ct_device_prefetcher *pf = dl ? ct_device_prefetcher_new(dl, cuda0) : NULL;
            CHECK_MSG(ref && dl && pf, "%s: %s", what, ct_last_error());
            if (ref && dl && pf) {
                CHECK(ct_dataloader_pinned(dl) == pin);
                source_t s = {dl, pf};
                for (int64_t epoch = 0; epoch < 3; epoch++)
                    CHECK(compare_epoch(ref, &s, epoch, cuda0, what) == 10);
                /* restart with a batch in flight, then the epoch replays */
                ct_tensor *x, *y;
                CHECK_OK(ct_device_prefetcher_start_epoch(pf, 4));
                CHECK(ct_device_prefetcher_next(pf, &x, &y) == 1);
                ct_free(x);
                ct_free(y);
                CHECK(compare_epoch(ref, &s, 4, cuda0, what) == 10);
                /* free with a batch in flight */
                CHECK_OK(ct_device_prefetcher_start_epoch(pf, 5));
                CHECK(ct_device_prefetcher_next(pf, &x, &y) == 1);
                ct_device_prefetcher_free(pf);
                pf = NULL;
                ct_tensor *xc = ct_to_device(x, ct_cpu()); /* handed-out batches stay valid */
                CHECK_NN(xc);
                ct_free(xc);
                ct_free(x);
                ct_free(y);
            }
            ct_device_prefetcher_free(pf);
            ct_dataloader_free(dl);
            ct_dataloader_free(ref);
        }
    CHECK_OK(((ct_cuda_synchronize_fn)ct_backend_proc(CT_CUDA, "ct_cuda_synchronize"))(0));
    ct_dataset_free(ds);
}

/* The plugin's stream and event API, and that a pinned block is not handed out again while
 * a copy from it is queued: a block is filled with A, copied on the copy stream, freed,
 * allocated again and filled with B; the first copy must still deliver A. */
TEST(data_cuda_copy_stream_events) {
    char why[1024];
    if (!cuda_usable(why, sizeof why)) SKIP(why);
    ct_cuda_event_create_fn ev_create;
    ct_cuda_event_destroy_fn ev_destroy;
    ct_cuda_event_record_fn ev_record;
    ct_cuda_event_query_fn ev_query;
    ct_cuda_event_synchronize_fn ev_sync;
    ct_cuda_stream_wait_event_fn wait_event;
    ct_cuda_copy_h2d_async_on_fn copy_on;
    ct_cuda_host_alloc_fn host_alloc;
    ct_cuda_host_free_fn host_free;
    *(void **)&ev_create = ct_backend_proc(CT_CUDA, "ct_cuda_event_create");
    *(void **)&ev_destroy = ct_backend_proc(CT_CUDA, "ct_cuda_event_destroy");
    *(void **)&ev_record = ct_backend_proc(CT_CUDA, "ct_cuda_event_record");
    *(void **)&ev_query = ct_backend_proc(CT_CUDA, "ct_cuda_event_query");
    *(void **)&ev_sync = ct_backend_proc(CT_CUDA, "ct_cuda_event_synchronize");
    *(void **)&wait_event = ct_backend_proc(CT_CUDA, "ct_cuda_stream_wait_event");
    *(void **)&copy_on = ct_backend_proc(CT_CUDA, "ct_cuda_copy_h2d_async_on");
    *(void **)&host_alloc = ct_backend_proc(CT_CUDA, "ct_cuda_host_alloc");
    *(void **)&host_free = ct_backend_proc(CT_CUDA, "ct_cuda_host_free");
    CHECK(ev_create && ev_destroy && ev_record && ev_query && ev_sync && wait_event &&
          copy_on && host_alloc && host_free);
    if (!(ev_create && ev_destroy && ev_record && ev_query && ev_sync && wait_event && copy_on &&
          host_alloc && host_free))
        return;
    ct_cuda_event *ev = ev_create(0);
    CHECK_NN(ev);
    if (!ev) return;
    CHECK(ev_query(ev) == 1); /* never recorded: complete */
    CHECK_OK(ev_record(ev, CT_CUDA_STREAM_COPY));
    CHECK_OK(ev_sync(ev));
    CHECK(ev_query(ev) == 1);
    CHECK_OK(ev_record(ev, CT_CUDA_STREAM_COMPUTE));
    CHECK_OK(wait_event(CT_CUDA_STREAM_COPY, ev));
    CHECK_OK(wait_event(CT_CUDA_STREAM_COMPUTE, ev));
    CHECK_ERR_INT(ev_record(ev, 7), "CT_CUDA_STREAM_COPY");
    CHECK_ERR_INT(wait_event(-1, ev), "CT_CUDA_STREAM_COMPUTE");
    CHECK_ERR_INT(ev_record(NULL, CT_CUDA_STREAM_COPY), "event is NULL");
    CHECK_ERR_INT(ev_sync(NULL), "event is NULL");
    CHECK(ev_query(NULL) == -1);
    CHECK(ev_create(99) == NULL);
    CHECK_ERRMSG("cuda:99");

    enum { N = 8 << 20 }; /* 32 MiB of float32: a copy that takes a while */
    const int64_t shape[1] = {N};
    const ct_device cuda0 = {CT_CUDA, 0};
    ct_tensor *z = ct_zeros(shape, 1, CT_FLOAT32);
    ct_tensor *d1 = ct_to_device(z, cuda0), *d2d = ct_to_device(z, cuda0);
    ct_free(z);
    float *p1 = host_alloc((size_t)N * 4);
    CHECK(d1 && d2d && p1);
    if (!d1 || !d2d) host_free(p1);
    else if (p1) {
        for (int64_t i = 0; i < N; i++) p1[i] = (float)(i % 1000);
        ct_tensor *s1 = ct_from_blob(p1, shape, 1, CT_FLOAT32, NULL, NULL);
        CHECK_OK(copy_on(d1, s1, CT_CUDA_STREAM_COPY));
        ct_free(s1);
        host_free(p1);
        float *p2 = host_alloc((size_t)N * 4); /* p1's block only once its copy completed */
        CHECK_NN(p2);
        if (p2) {
            for (int64_t i = 0; i < N; i++) p2[i] = -1.0f;
            ct_tensor *s2 = ct_from_blob(p2, shape, 1, CT_FLOAT32, NULL, NULL);
            CHECK_OK(copy_on(d2d, s2, CT_CUDA_STREAM_COPY));
            CHECK_OK(ev_record(ev, CT_CUDA_STREAM_COPY));
            CHECK_OK(wait_event(CT_CUDA_STREAM_COMPUTE, ev));
            ct_free(s2);
            host_free(p2);
            ct_tensor *h1 = ct_to_device(d1, ct_cpu()), *h2 = ct_to_device(d2d, ct_cpu());
            CHECK(h1 && h2);
            if (h1 && h2) {
                const float *a = ct_data(h1), *b = ct_data(h2);
                int64_t bad1 = 0, bad2 = 0;
                for (int64_t i = 0; i < N; i++) {
                    bad1 += a[i] != (float)(i % 1000);
                    bad2 += b[i] != -1.0f;
                }
                CHECK_MSG(bad1 == 0, "%lld elements of the first copy were overwritten",
                          (long long)bad1);
                CHECK_MSG(bad2 == 0, "%lld elements of the second copy are wrong", (long long)bad2);
            }
            ct_free(h1);
            ct_free(h2);
        }
        /* argument errors */
        ct_tensor *c = ct_zeros(shape, 1, CT_FLOAT32);
        CHECK_ERR_INT(copy_on(d1, c, 3), "CT_CUDA_STREAM_COPY");
        CHECK_ERR_INT(copy_on(c, d1, CT_CUDA_STREAM_COPY), "expected a CPU source");
        ct_free(c);
    }
    ct_free(d1);
    ct_free(d2d);
    ev_destroy(ev);
    ev_destroy(NULL);
}

/* ------------------------------------------------------------------ download */
TEST(data_download_offline_message) {
    char tmp[256];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    char *saved = getenv("CTORCH_DATA_MIRROR") ? strdup(getenv("CTORCH_DATA_MIRROR")) : NULL;
    /* A mirror that refuses connections: the offline path, whatever the network. */
    setenv("CTORCH_DATA_MIRROR", "http://127.0.0.1:9/", 1);
    CHECK_ERR_INT(ct_download_dataset("cifar10", tmp), "download cifar10");
    CHECK_ERRMSG("cifar-10-binary.tar.gz");
    CHECK_ERRMSG("c32a1d4ab5d03f1284b67883e8d87530");
    CHECK_ERRMSG("by hand");
    CHECK_ERRMSG("data_batch_1.bin");
    CHECK_ERR_INT(ct_download_dataset("mnist", tmp), "download mnist");
    CHECK_ERRMSG("train-images-idx3-ubyte.gz");
    CHECK_ERRMSG("t10k-labels-idx1-ubyte.gz");
    CHECK_ERRMSG("/mnist/");
    CHECK_ERR_INT(ct_download_dataset("imagenet", tmp), "cifar10, mnist or fashion_mnist");
    /* nothing half-written is left behind */
    char part[512];
    snprintf(part, sizeof part, "%s/cifar-10-binary.tar.gz.part", tmp);
    CHECK(access(part, F_OK) != 0);
    if (saved) {
        setenv("CTORCH_DATA_MIRROR", saved, 1);
        free(saved);
    } else {
        unsetenv("CTORCH_DATA_MIRROR");
    }
    ct_test_rm_rf(tmp);
}
