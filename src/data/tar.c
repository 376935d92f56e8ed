/* A minimal reader for .tar.gz archives (ustar, GNU long names, pax headers skipped),
 * enough to read the official cifar-10-binary.tar.gz without unpacking it. */
#include "data/data_internal.h"

#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static int read_exact(gzFile gz, void *buf, size_t n) {
    uint8_t *p = buf;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int got = gzread(gz, p, chunk);
        if (got <= 0) return -1;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

static int skip_bytes(gzFile gz, uint64_t n) {
    uint8_t tmp[65536];
    while (n > 0) {
        size_t chunk = n > sizeof tmp ? sizeof tmp : (size_t)n;
        if (read_exact(gz, tmp, chunk) != 0) return -1;
        n -= chunk;
    }
    return 0;
}

/* Parses a numeric header field: octal text, or GNU base-256 when the top bit is set. */
static int parse_number(const uint8_t *f, size_t len, uint64_t *out) {
    uint64_t v = 0;
    if (f[0] & 0x80) {
        for (size_t i = 1; i < len; i++) v = (v << 8) | f[i];
        *out = v;
        return 0;
    }
    size_t i = 0;
    while (i < len && (f[i] == ' ' || f[i] == '\0')) i++;
    int digits = 0;
    for (; i < len && f[i] >= '0' && f[i] <= '7'; i++, digits++) v = v * 8 + (f[i] - '0');
    for (; i < len; i++)
        if (f[i] != ' ' && f[i] != '\0') return -1;
    *out = v;
    return 0;
}

static int header_checksum_ok(const uint8_t *h) {
    uint64_t want;
    if (parse_number(h + 148, 8, &want) != 0) return 0;
    uint64_t sum = 0;
    for (int i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return sum == want;
}

static int corrupt(const char *path, const char *what) {
    return ct_error("%s: not a valid .tar.gz archive (%s); delete it and download it again",
                    path, what);
}

int ct_tar_gz_scan(const char *path, ct_tar_want_fn want, ct_tar_got_fn got, void *ctx) {
    gzFile gz = gzopen(path, "rb");
    if (!gz) return ct_error("cannot open %s: %s", path, strerror(errno ? errno : ENOENT));
    gzbuffer(gz, 1 << 18);
    uint8_t h[512];
    char longname[CT_PATH_MAX];
    int have_longname = 0;
    int rc = 0;
    int zero_blocks = 0;
    for (;;) {
        if (read_exact(gz, h, 512) != 0) {
            if (zero_blocks > 0 || gzeof(gz)) break; /* archives may omit the 2nd zero block */
            rc = corrupt(path, "truncated header");
            break;
        }
        int all_zero = 1;
        for (int i = 0; i < 512; i++)
            if (h[i]) {
                all_zero = 0;
                break;
            }
        if (all_zero) {
            if (++zero_blocks == 2) break;
            continue;
        }
        zero_blocks = 0;
        if (!header_checksum_ok(h)) {
            rc = corrupt(path, "bad header checksum");
            break;
        }
        uint64_t size;
        if (parse_number(h + 124, 12, &size) != 0) {
            rc = corrupt(path, "bad size field");
            break;
        }
        uint64_t padded = (size + 511) & ~(uint64_t)511;
        char type = (char)h[156];
        char name[CT_PATH_MAX];
        if (have_longname) {
            snprintf(name, sizeof name, "%s", longname);
            have_longname = 0;
        } else {
            char base[101], prefix[156];
            memcpy(base, h, 100);
            base[100] = '\0';
            prefix[0] = '\0';
            if (memcmp(h + 257, "ustar", 5) == 0) {
                memcpy(prefix, h + 345, 155);
                prefix[155] = '\0';
            }
            if (prefix[0])
                snprintf(name, sizeof name, "%s/%s", prefix, base);
            else
                snprintf(name, sizeof name, "%s", base);
        }
        if (type == 'L') { /* GNU long name: the data is the next entry's name */
            if (size >= sizeof longname) {
                rc = corrupt(path, "over-long file name");
                break;
            }
            if (read_exact(gz, longname, (size_t)size) != 0 || skip_bytes(gz, padded - size)) {
                rc = corrupt(path, "truncated long name");
                break;
            }
            longname[size] = '\0';
            have_longname = 1;
            continue;
        }
        const char *nm = name;
        while (nm[0] == '.' && nm[1] == '/') nm += 2;
        if ((type == '0' || type == '\0' || type == '7') && want(ctx, nm, size)) {
            uint8_t *data = malloc(size ? (size_t)size : 1);
            if (!data) {
                rc = ct_error("%s: out of memory reading %s (%llu bytes)", path, nm,
                              (unsigned long long)size);
                break;
            }
            if (read_exact(gz, data, (size_t)size) != 0 || skip_bytes(gz, padded - size)) {
                free(data);
                rc = corrupt(path, "an entry is truncated");
                break;
            }
            int r = got(ctx, nm, data, size);
            if (r < 0) {
                rc = -1;
                break;
            }
            if (r > 0) break;
        } else if (skip_bytes(gz, padded) != 0) {
            rc = corrupt(path, "an entry is truncated");
            break;
        }
    }
    gzclose(gz);
    return rc;
}
