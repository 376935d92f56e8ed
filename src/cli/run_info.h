/* What a training run's manifest.json records about where its result came from (issue
 * #12, docs/runs.md "manifest.json: environment fields"): this build of ctorch, the
 * machine, the CUDA stack, the exact dataset files (SHA-256, cached), and the
 * loss/accuracy plot of the run directory.
 *
 * Every function returns a new JSON reference (or 0), or NULL / -1 with ct_last_error()
 * naming what failed and how to fix it. Only the library and jansson are used here, so the
 * test suite links this file directly (tests/test_run_info.c). */
#ifndef CT_CLI_RUN_INFO_H
#define CT_CLI_RUN_INFO_H

#include "ctorch.h"
#include "ctorch_data.h"

#include <jansson.h>
#include <stdint.h>

/* {"version": CT_VERSION, "git_commit": short hash, "<hash>-dirty" or "unknown",
 *  "build_flags": the compiler flags of this build, "compiler": the compiler's version,
 *  "cpu_kernels": the CPU kernel variant in use now ("avx512+amx", "avx512+avx512_bf16",
 *  "avx512", "avx2", "baseline"), "cpu_isa_override": $CTORCH_CPU_ISA or null}.
 * The commit and the flags are compiled in by the Makefile (RUN_INFO_H). */
json_t *cli_env_ctorch(void);
/* This build's commit ("1c53ea2", "<hash>-dirty" or "unknown"). */
const char *cli_build_commit(void);

/* {"os", "kernel", "hostname", "cpu_model", "cpu_flags": [the SIMD ones present],
 *  "cores": online CPUs, "cpus_allowed": CPUs this process may run on, "threads",
 *  "memory_bytes", "openblas": {"config", "corename"} or null,
 *  "container_image": null or {"digest", "source"}}. A piece the system does not tell
 * (no /etc/os-release, no "model name" in /proc/cpuinfo) is null, never an error. */
json_t *cli_env_system(int threads);

/* null (JSON) for a host device (the CPU); for an accelerator {"device": "cuda:0",
 * "driver", "runtime", "cudnn", "nccl": version strings or null, "kernels": the
 * architectures compiled in, "gpus": [one description per visible device]}.
 * NULL + error when the device's backend cannot be loaded. */
json_t *cli_env_cuda(ct_device dev);

/* [{"path": absolute path, "bytes": N, "sha256": hex}, ...]: every file the loader reads
 * for the dataset's train and test splits, resolved as src/data/cifar10.c and mnist.c do
 * (data_dir NULL: $CTORCH_DATA, else ./data). Digests are cached by (real path, size,
 * mtime in ns) in $CTORCH_CACHE_DIR/sha256-cache.json, else
 * $XDG_CACHE_HOME/ctorch/sha256-cache.json, else ~/.cache/ctorch/sha256-cache.json; a
 * cache that cannot be read or written only costs hashing again. NULL + error naming the
 * missing file and the data directory when a split's files are absent. */
json_t *cli_dataset_files(ct_dataset_kind kind, const char *data_dir);
/* Files actually hashed (not answered from the cache) by this process so far. */
int64_t cli_dataset_hash_count(void);

/* Writes the loss and accuracy curves of rows (a JSON array of per-epoch objects
 * {"epoch", "train_loss", "train_acc" (0-1), "test_loss", "test_acc"}; a missing, null or
 * non-finite value is left out of its curve) as an SVG file, atomically. title NULL:
 * "ctorch training curves". */
int cli_write_curves_svg(const char *path, const json_t *rows, const char *title);

#endif
