/* Pieces shared by `ctorch archive` (cmd_archive.c), `ctorch verify` (cmd_verify.c) and
 * the Zenodo upload (zenodo.c): the files of a run directory and its manifest.json.
 * docs/runs.md, "Archiving and verifying a run", is the user's description. */
#ifndef CT_CLI_RUN_ARCHIVE_H
#define CT_CLI_RUN_ARCHIVE_H

#include <jansson.h>
#include <stddef.h>

#define RUN_MANIFEST "manifest.json"
#define RUN_MODEL "model.safetensors"
#define RUN_METRICS "metrics.jsonl"
#define RUN_CURVES "curves.svg"
#define RUN_SUMS "SHA256SUMS"
#define RUN_MANIFEST_FORMAT "ctorch-run"
#define RUN_MANIFEST_VERSION 1

/* Whether this build writes and reads .tar.gz (libarchive-dev was found by the Makefile). */
#ifdef CT_HAVE_LIBARCHIVE
#define RUN_HAVE_LIBARCHIVE 1
#else
#define RUN_HAVE_LIBARCHIVE 0
#endif

/* The one-line error of a build without libarchive (archive, and verify of a .tar.gz). */
#define RUN_NO_LIBARCHIVE                                                                   \
    "this ctorch was not built with libarchive, so it cannot %s .tar.gz archives. Fix: "  \
    "install libarchive-dev (scripts/install-deps.sh) and rebuild with `make`"

/* dir/name into out (n bytes); -1 (nothing printed) when it does not fit. */
int arc_path(char *out, size_t n, const char *dir, const char *name);

/* Reads and checks a run's manifest.json: a JSON object whose "format" is "ctorch-run" and
 * whose "format_version" is at most 1. NULL after printing "ctorch CMD: ..." naming the
 * file and the problem (the caller exits 2). */
json_t *run_manifest_load(const char *cmd, const char *path);
/* The member at a dotted path ("config.model"), or NULL; BORROWED. */
json_t *run_json_at(const json_t *root, const char *dotted);
/* The string at a dotted path, or NULL when missing or not a string. */
const char *run_json_str(const json_t *root, const char *dotted);
/* A number (integer or real) at a dotted path into *out: 0, or -1 when missing or not a
 * number. */
int run_json_num(const json_t *root, const char *dotted, double *out);

/* The Zenodo REST deposition API (zenodo.c). */
typedef struct {
    const char *api;     /* "https://zenodo.org/api" (no trailing slash needed) */
    const char *token;   /* personal access token */
    const char *archive; /* the .tar.gz to upload */
    json_t *metadata;    /* the .zenodo.json object, sent as {"metadata": ...} */
    int publish;         /* also POST .../actions/publish */
} zenodo_job;

/* The token from --token-file (NULL: $ZENODO_TOKEN) into out. CLI_OK, or CLI_USAGE after
 * printing why (no token; a file readable by others, naming its mode and the chmod fix). */
int zenodo_token(const char *cmd, const char *token_file, char *out, size_t n);
/* Creates a deposition, uploads the archive into its bucket, sets the metadata, publishes
 * when asked; prints the deposition id and its page. CLI_OK, or CLI_RUNTIME after printing
 * Zenodo's own message (HTTP errors) or the transfer's. */
int zenodo_upload(const char *cmd, const zenodo_job *job);

#endif
