/* `ctorch download DATASET`: fetch the official archives with libcurl, verify their
 * published MD5, unpack CIFAR-10.
 *
 * libcurl is loaded at run time (dlopen of libcurl.so.4: src/io/curl_api.h, shared with
 * `ctorch archive --upload`), so the library and its tests link without -lcurl and a
 * machine without libcurl still loads local data; only the download reports that libcurl
 * is missing. */
#include "data/data_internal.h"

#include "core/error.h"
#include "ctorch_io.h"
#include "io/curl_api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------- MD5 (RFC 1321) */
typedef struct {
    uint32_t a, b, c, d;
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
} md5_ctx;

static uint32_t rol(uint32_t x, int c) { return (x << c) | (x >> (32 - c)); }

static void md5_block(md5_ctx *m, const uint8_t *p) {
    static const uint32_t K[64] = {
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
        0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
        0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
        0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
        0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
        0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
        0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
        0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391};
    static const int R[64] = {7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                              5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
                              4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                              6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] | ((uint32_t)p[4 * i + 1] << 8) |
               ((uint32_t)p[4 * i + 2] << 16) | ((uint32_t)p[4 * i + 3] << 24);
    uint32_t a = m->a, b = m->b, c = m->c, d = m->d;
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
        } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) % 16;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) % 16;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) % 16;
        }
        uint32_t tmp = d;
        d = c;
        c = b;
        b = b + rol(a + f + K[i] + w[g], R[i]);
        a = tmp;
    }
    m->a += a;
    m->b += b;
    m->c += c;
    m->d += d;
}

static void md5_init(md5_ctx *m) {
    memset(m, 0, sizeof *m);
    m->a = 0x67452301;
    m->b = 0xefcdab89;
    m->c = 0x98badcfe;
    m->d = 0x10325476;
}

static void md5_update(md5_ctx *m, const uint8_t *p, size_t n) {
    m->len += n;
    while (n > 0) {
        size_t take = 64 - m->nbuf < n ? 64 - m->nbuf : n;
        memcpy(m->buf + m->nbuf, p, take);
        m->nbuf += take;
        p += take;
        n -= take;
        if (m->nbuf == 64) {
            md5_block(m, m->buf);
            m->nbuf = 0;
        }
    }
}

static void md5_hex(md5_ctx *m, char out[33]) {
    uint64_t bits = m->len * 8;
    uint8_t pad = 0x80;
    md5_update(m, &pad, 1);
    uint8_t zero = 0;
    while (m->nbuf != 56) md5_update(m, &zero, 1);
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (8 * i));
    md5_update(m, lenb, 8);
    uint32_t v[4] = {m->a, m->b, m->c, m->d};
    for (int i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", (v[i / 4] >> (8 * (i % 4))) & 0xff);
    out[32] = '\0';
}

/* MD5 of a file as hex; -1 when it cannot be read. */
int ct_md5_file(const char *path, char out[33]) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    md5_ctx m;
    md5_init(&m);
    uint8_t *buf = malloc(1 << 20);
    if (!buf) {
        fclose(f);
        return -1;
    }
    size_t got;
    while ((got = fread(buf, 1, 1 << 20, f)) > 0) md5_update(&m, buf, got);
    int bad = ferror(f);
    free(buf);
    fclose(f);
    if (bad) return -1;
    md5_hex(&m, out);
    return 0;
}

/* --------------------------------------------------------------- catalogue */
typedef struct {
    const char *file;
    const char *md5;
} dl_file;

typedef struct {
    ct_dataset_kind kind;
    const char *mirrors[3]; /* base URLs, tried in order */
    dl_file files[4];
    int nfiles;
} dl_spec;

static const dl_spec k_specs[CT_NUM_DATASETS] = {
    {CT_DATASET_CIFAR10,
     {"https://www.cs.toronto.edu/~kriz/", NULL, NULL},
     {{CT_CIFAR_ARCHIVE, "c32a1d4ab5d03f1284b67883e8d87530"}},
     1},
    {CT_DATASET_MNIST,
     {"https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/",
      NULL},
     {{"train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
      {"train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"},
      {"t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"},
      {"t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"}},
     4},
    {CT_DATASET_FASHION_MNIST,
     {"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", NULL, NULL},
     {{"train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"},
      {"train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"},
      {"t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"},
      {"t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"}},
     4},
};

/* SHA-256 of the official files as they sit in a data directory (`ctorch doctor` compares
 * them): the CIFAR-10 batches as the official cifar-10-binary.tar.gz unpacks them (their
 * MD5s are the published ones), and the eight gzip files of MNIST and Fashion-MNIST (whose
 * MD5s are the catalogue's above). */
static const struct {
    ct_dataset_kind kind;
    const char *file, *sha256;
} k_sha256[] = {
    {CT_DATASET_CIFAR10, "data_batch_1.bin", "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5"},
    {CT_DATASET_CIFAR10, "data_batch_2.bin", "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed"},
    {CT_DATASET_CIFAR10, "data_batch_3.bin", "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67"},
    {CT_DATASET_CIFAR10, "data_batch_4.bin", "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48"},
    {CT_DATASET_CIFAR10, "data_batch_5.bin", "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add"},
    {CT_DATASET_CIFAR10, "test_batch.bin", "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b"},
    {CT_DATASET_MNIST, "train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"},
    {CT_DATASET_MNIST, "train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"},
    {CT_DATASET_MNIST, "t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"},
    {CT_DATASET_MNIST, "t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"},
    {CT_DATASET_FASHION_MNIST, "train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"},
    {CT_DATASET_FASHION_MNIST, "train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"},
    {CT_DATASET_FASHION_MNIST, "t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"},
    {CT_DATASET_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"},
};

const char *ct_dataset_official_sha256(ct_dataset_kind kind, const char *file) {
    for (size_t i = 0; file && i < sizeof k_sha256 / sizeof *k_sha256; i++)
        if (k_sha256[i].kind == kind && strcmp(k_sha256[i].file, file) == 0) return k_sha256[i].sha256;
    return NULL;
}

const char *ct_dataset_official_md5(ct_dataset_kind kind, const char *file) {
    if ((unsigned)kind >= CT_NUM_DATASETS || !file) return NULL;
    for (int i = 0; i < k_specs[kind].nfiles; i++)
        if (strcmp(k_specs[kind].files[i].file, file) == 0) return k_specs[kind].files[i].md5;
    return NULL;
}

/* ------------------------------------------------------------- libcurl (dlopen) */
typedef struct {
    FILE *fp;
    const char *label;
    int tty;
    double last;
} progress_ctx;

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud) {
    progress_ctx *p = ud;
    return fwrite(ptr, size, nmemb, p->fp) * size;
}

static int xfer_cb(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                   curl_off_t ulnow) {
    (void)ultotal;
    (void)ulnow;
    progress_ctx *p = ud;
    if (!p->tty || dlnow - p->last < (1 << 20)) return 0;
    p->last = (double)dlnow;
    if (dltotal > 0)
        fprintf(stderr, "\r  %s: %.1f / %.1f MB (%.0f%%)", p->label, dlnow / 1048576.0,
                dltotal / 1048576.0, 100.0 * (double)dlnow / (double)dltotal);
    else
        fprintf(stderr, "\r  %s: %.1f MB", p->label, dlnow / 1048576.0);
    return 0;
}

/* Downloads url into path through libcurl (src/io/curl_api.h). Returns 0, or -1 with a
 * short reason in why. */
static int fetch(const ct_curl_api *cu, const char *url, const char *path, const char *label,
                 char *why, size_t nwhy) {
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        snprintf(why, nwhy, "cannot write %.300s: %s", path, strerror(errno));
        return -1;
    }
    CURL *c = cu->easy_init();
    if (!c) {
        fclose(fp);
        snprintf(why, nwhy, "curl_easy_init failed");
        return -1;
    }
    progress_ctx pc = {fp, label, isatty(2), 0};
    char errbuf[CURL_ERROR_SIZE] = "";
    cu->easy_setopt(c, CURLOPT_URL, url);
    cu->easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
    cu->easy_setopt(c, CURLOPT_WRITEDATA, &pc);
    cu->easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    cu->easy_setopt(c, CURLOPT_FAILONERROR, 1L);
    cu->easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 20L);
    cu->easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L); /* abort below 1 KB/s ... */
    cu->easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);    /* ... for a minute */
    cu->easy_setopt(c, CURLOPT_USERAGENT, "ctorch/" CT_VERSION);
    cu->easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    cu->easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    cu->easy_setopt(c, CURLOPT_XFERINFOFUNCTION, xfer_cb);
    cu->easy_setopt(c, CURLOPT_XFERINFODATA, &pc);
    cu->easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = cu->easy_perform(c);
    if (pc.tty && pc.last > 0) fprintf(stderr, "\n");
    cu->easy_cleanup(c);
    int closed = fclose(fp);
    if (rc != CURLE_OK) {
        snprintf(why, nwhy, "%s", errbuf[0] ? errbuf : cu->easy_strerror(rc));
        return -1;
    }
    if (closed != 0) {
        snprintf(why, nwhy, "writing %.300s failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ CIFAR unpack */
typedef struct {
    const char *dest;
    int written;
} extract_ctx;

static int is_cifar_member(const char *name) {
    const char *b = strrchr(name, '/');
    b = b ? b + 1 : name;
    if (strcmp(b, ct_cifar_test_file) == 0) return 1;
    for (int i = 0; i < 5; i++)
        if (strcmp(b, ct_cifar_train_files[i]) == 0) return 1;
    return strcmp(b, "batches.meta.txt") == 0 || strcmp(b, "readme.html") == 0;
}

static int ex_want(void *ctx, const char *name, uint64_t size) {
    (void)ctx;
    (void)size;
    return is_cifar_member(name);
}

static int ex_got(void *ctx, const char *name, uint8_t *data, uint64_t size) {
    extract_ctx *e = ctx;
    const char *b = strrchr(name, '/');
    b = b ? b + 1 : name;
    char path[CT_PATH_MAX];
    ct_path_join(path, sizeof path, e->dest, b);
    ct_atomic_file *f = ct_atomic_open(path);
    if (!f) {
        free(data);
        return -1;
    }
    size_t w = fwrite(data, 1, (size_t)size, f->fp);
    free(data);
    if (w != size) {
        ct_atomic_abort(f);
        return ct_error("writing %s failed: %s; check free disk space", path, strerror(errno));
    }
    if (ct_atomic_commit(f) != 0) return -1;
    e->written++;
    return 0;
}

int ct_cifar10_extract_archive(const char *archive, const char *dest_dir) {
    if (ct_mkdir_p(dest_dir) != 0) return -1;
    extract_ctx e = {dest_dir, 0};
    if (ct_tar_gz_scan(archive, ex_want, ex_got, &e) != 0) return -1;
    char path[CT_PATH_MAX];
    for (int i = 0; i < 6; i++) {
        const char *f = i < 5 ? ct_cifar_train_files[i] : ct_cifar_test_file;
        ct_path_join(path, sizeof path, dest_dir, f);
        if (!ct_path_is_file(path))
            return ct_error("cifar10: %s has no member cifar-10-batches-bin/%s; it is not the "
                            "official CIFAR-10 binary archive",
                            archive, f);
    }
    return 0;
}

/* -------------------------------------------------------------------- entry */
static int cifar_present(const char *root) {
    char dir[CT_PATH_MAX], path[CT_PATH_MAX];
    ct_path_join(dir, sizeof dir, root, ct_dataset_subdir(CT_DATASET_CIFAR10));
    for (int i = 0; i < 6; i++) {
        ct_path_join(path, sizeof path, dir, i < 5 ? ct_cifar_train_files[i] : ct_cifar_test_file);
        if (ct_file_size(path) != 10000 * CT_CIFAR_RECORD) return 0;
    }
    return 1;
}

static void manual_help(const dl_spec *s, const char *root, const char *dest, char *out,
                        size_t n) {
    size_t o = 0;
    o += (size_t)snprintf(out + o, n - o, "Without network access (or to fetch them "
                                          "yourself), download these files and place them "
                                          "by hand:");
    for (int i = 0; i < s->nfiles && o < n; i++) {
        char p[CT_PATH_MAX];
        ct_path_join(p, sizeof p, s->kind == CT_DATASET_CIFAR10 ? root : dest, s->files[i].file);
        o += (size_t)snprintf(out + o, n - o, " %s (from %s%s, MD5 %s)%s", p, s->mirrors[0],
                              s->files[i].file, s->files[i].md5,
                              i + 1 < s->nfiles ? ";" : ".");
    }
    if (s->kind == CT_DATASET_CIFAR10 && o < n)
        snprintf(out + o, n - o, " ctorch reads the archive directly; or unpack it so that %s "
                 "holds data_batch_1.bin ... data_batch_5.bin and test_batch.bin.", dest);
}

int ct_download_dataset(const char *name, const char *dir) {
    ct_dataset_kind kind;
    if (ct_dataset_parse_name(name, &kind) != 0) {
        ct_error_context("download");
        return -1;
    }
    if ((unsigned)kind >= CT_NUM_DATASETS)
        return ct_error("download: %s is a folder of your own images (--data-dir ROOT with "
                        "train/<class>/ and val/<class>/); there is nothing to download; the "
                        "datasets ctorch downloads are cifar10, mnist or fashion_mnist",
                        ct_dataset_name(kind));
    const dl_spec *s = &k_specs[kind];
    const char *root = ct_data_root(dir);
    char dest[CT_PATH_MAX];
    ct_path_join(dest, sizeof dest, root, ct_dataset_subdir(kind));
    const char *dname = ct_dataset_name(kind);
    int tty = isatty(2);

    if (kind == CT_DATASET_CIFAR10 && cifar_present(root)) {
        if (tty) fprintf(stderr, "cifar10: already present in %s\n", dest);
        return 0;
    }
    /* Where the downloaded files go: CIFAR's archive in the root, the others in dest. */
    const char *fdir = kind == CT_DATASET_CIFAR10 ? root : dest;
    if (ct_mkdir_p(fdir) != 0) {
        ct_error_context("download %s", dname);
        return -1;
    }
    const char *mirror = getenv("CTORCH_DATA_MIRROR");
    char help[2048];
    for (int i = 0; i < s->nfiles; i++) {
        const dl_file *df = &s->files[i];
        char path[CT_PATH_MAX], part[CT_PATH_MAX + 8], md5[33];
        ct_path_join(path, sizeof path, fdir, df->file);
        if (ct_path_is_file(path) && ct_md5_file(path, md5) == 0 && strcmp(md5, df->md5) == 0) {
            if (tty) fprintf(stderr, "%s: %s already present, checksum OK\n", dname, path);
            continue;
        }
        const char *why_curl = NULL;
        const ct_curl_api *cu = ct_curl_api_get(&why_curl);
        if (!cu) {
            manual_help(s, root, dest, help, sizeof help);
            return ct_error("download %s: %s. %s", dname, why_curl, help);
        }
        snprintf(part, sizeof part, "%s.part", path);
        char why[512] = "", url[1024];
        int done = 0;
        int nm = 0;
        const char *bases[4];
        if (mirror && mirror[0])
            bases[nm++] = mirror; /* replaces the official URLs */
        else
            for (int m = 0; m < 3 && s->mirrors[m]; m++) bases[nm++] = s->mirrors[m];
        char tried[1024] = "";
        for (int m = 0; m < nm && !done; m++) {
            size_t bl = strlen(bases[m]);
            snprintf(url, sizeof url, "%s%s%s", bases[m],
                     bl && bases[m][bl - 1] == '/' ? "" : "/", df->file);
            if (tty) fprintf(stderr, "%s: downloading %s\n", dname, url);
            size_t tl = strlen(tried);
            snprintf(tried + tl, sizeof tried - tl, "%s%.300s", tl ? ", " : "", url);
            if (fetch(cu, url, part, df->file, why, sizeof why) != 0) {
                unlink(part);
                continue;
            }
            if (ct_md5_file(part, md5) != 0 || strcmp(md5, df->md5) != 0) {
                snprintf(why, sizeof why, "checksum mismatch for %.200s: MD5 %s, expected %s (an "
                         "interrupted or altered download)", url, md5, df->md5);
                unlink(part);
                continue;
            }
            if (rename(part, path) != 0) {
                int e = errno;
                unlink(part);
                return ct_error("download %s: cannot rename %s to %s: %s", dname, part, path,
                                strerror(e));
            }
            done = 1;
        }
        if (!done) {
            manual_help(s, root, dest, help, sizeof help);
            return ct_error("download %s: could not fetch %s (%s). %s", dname, tried, why, help);
        }
    }
    if (kind == CT_DATASET_CIFAR10) {
        char archive[CT_PATH_MAX];
        ct_path_join(archive, sizeof archive, root, CT_CIFAR_ARCHIVE);
        if (tty) fprintf(stderr, "cifar10: unpacking %s into %s\n", archive, dest);
        if (ct_cifar10_extract_archive(archive, dest) != 0) {
            ct_error_context("download cifar10");
            return -1;
        }
    }
    if (tty) fprintf(stderr, "%s: ready in %s\n", dname, dest);
    return 0;
}
