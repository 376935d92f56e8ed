/* SHA-256 through OpenSSL's libcrypto (EVP): checkpoint checksums, dataset hashes, the
 * SHA256SUMS of an archive. */
#include "ctorch_io.h"

#include "core/error.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ct_sha256 {
    EVP_MD_CTX *md;
};

ct_sha256 *ct_sha256_new(void) {
    ct_sha256 *h = calloc(1, sizeof *h);
    if (!h) return ct_error_null("sha256: out of memory");
    h->md = EVP_MD_CTX_new();
    if (!h->md || EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
        ct_sha256_free(h);
        return ct_error_null("sha256: OpenSSL could not start a SHA-256 digest");
    }
    return h;
}

void ct_sha256_update(ct_sha256 *h, const void *data, size_t n) {
    if (h && n) EVP_DigestUpdate(h->md, data, n);
}

static void to_hex(const unsigned char *d, char hex[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[64] = '\0';
}

int ct_sha256_final(ct_sha256 *h, char hex[65]) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int rc = h && EVP_DigestFinal_ex(h->md, d, &n) == 1 && n == 32 ? 0 : -1;
    if (rc == 0) to_hex(d, hex);
    else ct_error("sha256: OpenSSL could not finish the digest");
    ct_sha256_free(h);
    return rc;
}

void ct_sha256_free(ct_sha256 *h) {
    if (!h) return;
    EVP_MD_CTX_free(h->md);
    free(h);
}

int ct_sha256_buffer(const void *data, size_t n, char hex[65]) {
    ct_sha256 *h = ct_sha256_new();
    if (!h) return -1;
    ct_sha256_update(h, data, n);
    return ct_sha256_final(h, hex);
}

int ct_sha256_file(const char *path, char hex[65]) {
    FILE *f = fopen(path, "rb");
    if (!f) return ct_error("sha256: cannot open %s: %s", path, strerror(errno));
    ct_sha256 *h = ct_sha256_new();
    if (!h) {
        fclose(f);
        return -1;
    }
    enum { BUF = 1 << 20 };
    unsigned char *buf = malloc(BUF);
    size_t got;
    int rc = buf ? 0 : ct_error("sha256 %s: out of memory", path);
    while (rc == 0 && (got = fread(buf, 1, BUF, f)) > 0) ct_sha256_update(h, buf, got);
    if (rc == 0 && ferror(f)) rc = ct_error("sha256: reading %s: %s", path, strerror(errno));
    free(buf);
    fclose(f);
    if (rc) {
        ct_sha256_free(h);
        return rc;
    }
    return ct_sha256_final(h, hex);
}
