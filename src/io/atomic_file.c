/* Atomic file replacement: temporary file in the target's directory, fsync, rename,
 * fsync of the directory. A crash leaves either the old file or the new one. */
#include "ctorch_io.h"

#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Directory part of path ("." when none) into a malloc'd string. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    size_t len = (size_t)(slash - path);
    char *d = malloc(len + 1);
    if (!d) return NULL;
    memcpy(d, path, len);
    d[len] = '\0';
    return d;
}

static int check_target(const char *op, const char *path) {
    if (!path || !path[0]) return ct_error("%s: empty file path", op);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return ct_error("%s: %s is a directory; give a file path such as %s/model.safetensors",
                        op, path, path);
    char *dir = dir_of(path);
    if (!dir) return ct_error("%s: out of memory", op);
    int rc = 0;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        rc = ct_error("%s: cannot write %s: directory %s does not exist; create it first "
                      "(mkdir -p %s) or choose another path",
                      op, path, dir, dir);
    free(dir);
    return rc;
}

ct_atomic_file *ct_atomic_open(const char *path) {
    if (check_target("save", path) != 0) return NULL;
    ct_atomic_file *f = calloc(1, sizeof *f);
    if (!f) return ct_error_null("save %s: out of memory", path);
    size_t len = strlen(path);
    f->path = strdup(path);
    f->tmp_path = malloc(len + 16);
    if (!f->path || !f->tmp_path) {
        ct_atomic_abort(f);
        return ct_error_null("save %s: out of memory", path);
    }
    snprintf(f->tmp_path, len + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(f->tmp_path);
    if (fd < 0) {
        int e = errno;
        free(f->tmp_path);
        f->tmp_path = NULL;
        ct_atomic_abort(f);
        return ct_error_null("save: cannot create a file next to %s: %s; check that the "
                             "directory is writable or choose another path",
                             path, strerror(e));
    }
    /* mkstemp creates 0600; give the usual 0666 & ~umask. */
    mode_t um = umask(0);
    umask(um);
    struct stat st;
    if (stat(path, &st) == 0)
        (void)fchmod(fd, st.st_mode & 07777);
    else
        (void)fchmod(fd, 0666 & ~um);
    f->fp = fdopen(fd, "wb");
    if (!f->fp) {
        int e = errno;
        close(fd);
        ct_atomic_abort(f);
        return ct_error_null("save %s: %s", path, strerror(e));
    }
    return f;
}

void ct_atomic_abort(ct_atomic_file *f) {
    if (!f) return;
    if (f->fp) fclose(f->fp);
    if (f->tmp_path) unlink(f->tmp_path);
    free(f->tmp_path);
    free(f->path);
    free(f);
}

int ct_atomic_commit(ct_atomic_file *f) {
    if (!f) return ct_error("save: no file to commit");
    int err = 0;
    const char *what = "";
    if (fflush(f->fp) != 0) {
        err = errno;
        what = "writing";
    } else if (ferror(f->fp)) {
        err = EIO;
        what = "writing";
    } else if (fsync(fileno(f->fp)) != 0) {
        err = errno;
        what = "syncing";
    }
    int closed = fclose(f->fp);
    f->fp = NULL;
    if (!err && closed != 0) {
        err = errno;
        what = "closing";
    }
    if (!err && rename(f->tmp_path, f->path) != 0) {
        err = errno;
        what = "renaming the temporary file onto";
    }
    if (err) {
        ct_error("save: %s %s failed: %s; check free disk space and permissions (the "
                 "previous file, if any, is unchanged)",
                 what, f->path, strerror(err));
        ct_atomic_abort(f);
        return -1;
    }
    /* Make the rename durable. */
    char *dir = dir_of(f->path);
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    free(f->tmp_path);
    f->tmp_path = NULL;
    ct_atomic_abort(f); /* frees the rest; nothing left to unlink */
    return 0;
}

int ct_check_writable(const char *path) {
    if (check_target("save", path) != 0) return -1;
    ct_atomic_file *f = ct_atomic_open(path);
    if (!f) return -1;
    ct_atomic_abort(f);
    /* An existing read-only target would still be replaced by rename; that is what
     * PyTorch's torch.save does too. */
    return 0;
}
