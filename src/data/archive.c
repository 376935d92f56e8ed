/* Reads the members of a .tar.gz archive (the official cifar-10-binary.tar.gz) through
 * libarchive, without unpacking it to disk. */
#include "data/data_internal.h"

#include "core/error.h"

#ifndef CT_HAVE_LIBARCHIVE
/* Built without libarchive (the Makefile said so with a notice): the archive cannot be
 * read, the extracted files can. */
int ct_tar_gz_scan(const char *path, ct_tar_want_fn want, ct_tar_got_fn got, void *ctx) {
    (void)want, (void)got, (void)ctx;
    return ct_error("%s: this ctorch was built without libarchive, so it cannot read .tar.gz "
                    "archives. Fix: install libarchive-dev and rebuild (`make`), or extract "
                    "the archive by hand (`tar xzf %s` in its directory)",
                    path, path);
}
#else
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int corrupt(const char *path, const char *what) {
    return ct_error("%s: not a valid .tar.gz archive (%s); delete it and download it again",
                    path, what && what[0] ? what : "unreadable");
}

/* The current member's `size` bytes, into *out (malloc'd). */
static int read_member(struct archive *a, const char *path, const char *name, uint64_t size,
                       uint8_t **out) {
    uint8_t *data = malloc(size ? (size_t)size : 1);
    if (!data)
        return ct_error("%s: out of memory reading %s (%llu bytes)", path, name,
                        (unsigned long long)size);
    uint64_t have = 0;
    while (have < size) {
        la_ssize_t r = archive_read_data(a, data + have, (size_t)(size - have));
        if (r <= 0) {
            char what[CT_PATH_MAX + 128];
            snprintf(what, sizeof what, "member %.1000s is truncated after %llu of %llu bytes%s%s",
                     name, (unsigned long long)have, (unsigned long long)size, r < 0 ? ": " : "",
                     r < 0 ? archive_error_string(a) : "");
            free(data);
            return corrupt(path, what);
        }
        have += (uint64_t)r;
    }
    *out = data;
    return 0;
}

/* Hands the regular files that want() asks for to got(); stops when got() says so. */
static int scan_members(struct archive *a, const char *path, ct_tar_want_fn want,
                        ct_tar_got_fn got, void *ctx) {
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) return 0;
        if (r < ARCHIVE_WARN) return corrupt(path, archive_error_string(a));
        /* regular files only (hard links have no data of their own) */
        if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e)) continue;
        const char *nm = archive_entry_pathname(e);
        if (!nm) nm = archive_entry_pathname_utf8(e);
        if (!nm) continue;
        while (nm[0] == '.' && nm[1] == '/') nm += 2;
        uint64_t size = archive_entry_size(e) > 0 ? (uint64_t)archive_entry_size(e) : 0;
        if (!want(ctx, nm, size)) continue; /* libarchive skips the data */
        char name[CT_PATH_MAX];
        snprintf(name, sizeof name, "%s", nm); /* nm lives until the next header only */
        uint8_t *data = NULL;
        if (read_member(a, path, name, size, &data) != 0) return -1;
        int g = got(ctx, name, data, size);
        if (g != 0) return g < 0 ? -1 : 0;
    }
}

int ct_tar_gz_scan(const char *path, ct_tar_want_fn want, ct_tar_got_fn got, void *ctx) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ct_error("cannot open %s: %s", path, strerror(errno));
    struct archive *a = archive_read_new();
    int rc;
    if (!a) {
        rc = ct_error("%s: out of memory opening the archive", path);
    } else {
        /* gzip-compressed or plain tar (libarchive always reads uncompressed data) */
        archive_read_support_filter_gzip(a);
        archive_read_support_format_tar(a);
        if (archive_read_open_fd(a, fd, 1 << 18) != ARCHIVE_OK)
            rc = corrupt(path, archive_error_string(a));
        else
            rc = scan_members(a, path, want, got, ctx);
        archive_read_free(a);
    }
    close(fd);
    return rc;
}
#endif
