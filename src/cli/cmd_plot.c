/* ctorch plot RUN_DIR [--out FILE] [--title T]: draws a run directory's logged rows
 * (metrics.jsonl, one JSON object per epoch) as the curves.svg that `ctorch train` writes
 * at the end of a run: loss, accuracy (train and test), throughput and learning rate over
 * the training step, the panels of the live page (docs/live-page.md). */
#include "cli.h"
#include "run_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CMD "plot"

/* The rows of path (one JSON object per non-blank line) as a new array; NULL after
 * printing why (the line number of a line that is not a JSON object). */
static json_t *read_rows(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_fail(CMD, CLI_USAGE, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    json_t *rows = json_array();
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    while (rows && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        ssize_t k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n')) k++;
        if (k == len) continue; /* a blank line */
        json_error_t err;
        json_t *row = json_loadb(line, (size_t)len, JSON_DISABLE_EOF_CHECK, &err);
        if (!json_is_object(row)) {
            cli_fail(CMD, CLI_USAGE,
                     "%s line %ld is not a JSON object (%s); metrics.jsonl holds one object per "
                     "epoch, as `ctorch train` writes it",
                     path, lineno, row ? "another JSON value" : err.text);
            json_decref(row);
            json_decref(rows);
            rows = NULL;
            break;
        }
        json_array_append_new(rows, row);
    }
    int read_err = ferror(f);
    free(line);
    fclose(f);
    if (rows && read_err) {
        cli_fail(CMD, CLI_RUNTIME, "reading %s failed", path);
        json_decref(rows);
        return NULL;
    }
    return rows;
}

int cmd_plot(int argc, char **argv) {
    const char *out = NULL, *title = NULL;
    cli_opt opts[] = {
        {"--out", OPT_STRING, &out, 0, 0, 0},
        {"--title", OPT_STRING, &title, 0, 0, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse(CMD, argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 1, &npos);
    if (rc) return rc;
    if (npos != 1 || !*pos[0])
        return cli_fail(CMD, CLI_USAGE, "name the run directory: ctorch plot RUN_DIR [--out FILE] "
                        "[--title T]; see `ctorch help plot`");
    if (out && !*out) return cli_fail(CMD, CLI_USAGE, "--out: empty file name");
    /* the run directory as given, without trailing slashes: the title `ctorch train` uses */
    size_t n = strlen(pos[0]);
    char *dir = strdup(pos[0]);
    if (!dir) return cli_fail(CMD, CLI_RUNTIME, "out of memory");
    while (n > 1 && dir[n - 1] == '/') dir[--n] = 0;
    struct stat st;
    char *metrics = NULL, *svg = NULL;
    json_t *rows = NULL;
    if (stat(dir, &st) != 0) {
        rc = cli_fail(CMD, CLI_USAGE, "%s: %s (name a run directory written by `ctorch train`)",
                      dir, strerror(errno));
        goto done;
    }
    if (!S_ISDIR(st.st_mode)) {
        rc = cli_fail(CMD, CLI_USAGE, "%s is not a directory (name a run directory written by "
                      "`ctorch train`)", dir);
        goto done;
    }
    metrics = run_path(dir, "metrics.jsonl");
    svg = out ? strdup(out) : run_path(dir, "curves.svg");
    if (!metrics || !svg) {
        rc = cli_fail(CMD, CLI_RUNTIME, "out of memory");
        goto done;
    }
    if (stat(metrics, &st) != 0) {
        rc = cli_fail(CMD, CLI_USAGE, "%s is not a run directory: it has no metrics.jsonl (%s)",
                      dir, strerror(errno));
        goto done;
    }
    rows = read_rows(metrics);
    if (!rows) {
        rc = CLI_USAGE;
        goto done;
    }
    if (json_array_size(rows) == 0) {
        rc = cli_fail(CMD, CLI_USAGE, "%s has no rows yet: a run logs one per epoch, after the "
                      "first epoch's evaluation", metrics);
        goto done;
    }
    if (cli_write_curves_svg(svg, rows, title ? title : dir) != 0) {
        /* a bad title is the user's input; anything else is writing the file */
        int usage = strstr(ct_last_error(), "not valid UTF-8") != NULL;
        rc = cli_fail(CMD, usage ? CLI_USAGE : CLI_RUNTIME, "%s", ct_last_error());
        goto done;
    }
    printf("wrote %s (%zu row%s)\n", svg, json_array_size(rows),
           json_array_size(rows) == 1 ? "" : "s");
done:
    json_decref(rows);
    free(metrics);
    free(svg);
    free(dir);
    return rc;
}
