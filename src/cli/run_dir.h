/* The run directory of `ctorch train` (docs/runs.md): manifest.json, metrics.jsonl,
 * checkpoints/, model.safetensors, curves.svg. */
#ifndef CT_CLI_RUN_DIR_H
#define CT_CLI_RUN_DIR_H

#include "ctorch.h"
#include "ctorch_data.h"

#include <jansson.h>
#include <stdint.h>

#include "run_info.h" /* the manifest's environment fields, curves.svg */

#define RUN_FORMAT "ctorch-run"
#define RUN_FORMAT_VERSION 1

/* $CTORCH_RUNS (default runs)/<model>-<dataset>-<UTC yyyymmdd-hhmmss> (with -2, -3...
 * when taken); malloc'd. */
char *run_dir_default(const char *model, const char *dataset);
/* Creates dir and dir/checkpoints (parents too). A directory that already holds a run
 * (manifest.json) is refused: its results would be overwritten. -1 with the message. */
int run_dir_create(const char *dir);
/* dir/name into a malloc'd string. */
char *run_path(const char *dir, const char *name);
/* The current UTC time as 2026-12-05T12:34:56Z. */
void run_utc_now(char *buf, size_t n);

/* JSON written atomically: one indented document, or one compact line per array item. */
int run_write_json(const char *path, json_t *doc);
int run_write_jsonl(const char *path, json_t *rows);
/* JSON text with doubles written to round-trip exactly (17 digits); malloc'd. */
char *run_json_text(json_t *doc);

/* Checkpoints in dir/checkpoints, newest (highest step) first: paths malloc'd in *paths
 * (free each and the array), count returned (-1 on error). Leftover temporary files of
 * an interrupted write are removed. */
int run_list_checkpoints(const char *dir, char ***paths);
/* checkpoints/step-<step, 10 digits>.safetensors, malloc'd. */
char *run_checkpoint_path(const char *dir, int64_t step);
/* Removes all but the `keep` newest checkpoints. */
void run_prune_checkpoints(const char *dir, int keep);

#endif
