/* ctorch's OCI image (make image, scripts/build-image.sh, docs/container.md), read with the
 * tools a user has: `skopeo inspect` of the archives (annotations, labels, user, working
 * directory, volume, entrypoint, the layers), `umoci unpack` of its root filesystem (the
 * digest file, the non-root user, no build files), then that root filesystem run with
 * `bwrap` as uid 1000: `ctorch --version`, `ctorch doctor` and a 20-step training whose
 * manifest names the image's root filesystem digest; and the compressed size.
 *
 * The image is <build>/ctorch-image.oci.tar (the build directory of this binary, or
 * $CT_TEST_BUILD_DIR). While it is absent, these tests are skipped (make test never builds
 * it: minutes and the network); make test-image sets CT_TEST_REQUIRE_IMAGE=1, which turns
 * a missing image or tool into a failure. Training needs CIFAR-10 in $CTORCH_DATA. */
#include "test.h"
#include "cli_util.h"

#include <jansson.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_COMPRESSED_BYTES (150LL * 1000 * 1000)

static const char *image_file(const char *name) {
    static char path[1200];
    snprintf(path, sizeof path, "%s/%s", build_dir(), name);
    return path;
}

static int have_tool(const char *t) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", t);
    return system(cmd) == 0;
}

/* Skips (fails under make test-image) when the image or a tool is missing. */
#define NEED_IMAGE(...)                                                                    \
    do {                                                                                   \
        const char *tools_[] = {__VA_ARGS__};                                              \
        const int require_ = getenv("CT_TEST_REQUIRE_IMAGE") != NULL;                      \
        if (access(image_file("ctorch-image.oci.tar"), R_OK) != 0) {                       \
            if (require_) {                                                                \
                CHECK_MSG(0, "%s not found (make image)", image_file("ctorch-image.oci.tar")); \
                return;                                                                    \
            }                                                                              \
            SKIP("build/ctorch-image.oci.tar not built (make image; then make test-image)"); \
        }                                                                                  \
        for (size_t i_ = 0; i_ < sizeof tools_ / sizeof *tools_; i_++) {                  \
            if (have_tool(tools_[i_])) continue;                                           \
            if (require_) {                                                                \
                CHECK_MSG(0, "%s not found (scripts/install-deps.sh image)", tools_[i_]);  \
                return;                                                                    \
            }                                                                              \
            SKIP("skopeo, umoci or bwrap not installed (scripts/install-deps.sh image)");  \
        }                                                                                  \
    } while (0)

/* The JSON printed by cmd, or NULL (test failed, its output shown). */
static json_t *json_of(const char *cmd) {
    char log[512];
    snprintf(log, sizeof log, "%s/json.out", tmpdir());
    int rc = run(cmd, log);
    json_error_t err;
    json_t *j = rc == 0 ? json_load_file(log, 0, &err) : NULL;
    if (!j) {
        show_log(log);
        CHECK_MSG(0, "%s: exit %d, or not JSON", cmd, rc);
    }
    return j;
}

static const char *str_at(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static int is_hex(const char *s, size_t min) {
    size_t n = strspn(s, "0123456789abcdef");
    return n >= min && (s[n] == 0 || !strcmp(s + n, "-dirty"));
}

/* The first diff_id of the image config: the root filesystem layer's. */
static int rootfs_diff_id(char *out, size_t n) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "skopeo inspect --config oci-archive:%s",
             image_file("ctorch-image.oci.tar"));
    json_t *cfg = json_of(cmd);
    if (!cfg) return -1;
    const json_t *ids = json_object_get(json_object_get(cfg, "rootfs"), "diff_ids");
    snprintf(out, n, "%s", json_string_value(json_array_get(ids, 0)) ?: "");
    json_decref(cfg);
    return out[0] ? 0 : -1;
}

TEST(image_archives_have_annotations_user_workdir_volume_entrypoint) {
    NEED_IMAGE("skopeo");
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "skopeo inspect --raw oci-archive:%s",
             image_file("ctorch-image.oci.tar"));
    json_t *man = json_of(cmd);
    if (!man) return;
    const json_t *ann = json_object_get(man, "annotations");
    CHECK_MSG(!strcmp(str_at(ann, "org.opencontainers.image.version"), CT_VERSION),
              "manifest annotation version: '%s', want %s",
              str_at(ann, "org.opencontainers.image.version"), CT_VERSION);
    CHECK_MSG(is_hex(str_at(ann, "org.opencontainers.image.revision"), 40),
              "annotation revision '%s' is not a git commit",
              str_at(ann, "org.opencontainers.image.revision"));
    CHECK_MSG(strstr(str_at(ann, "org.opencontainers.image.source"), "://") != NULL,
              "annotation source '%s' is not a URL", str_at(ann, "org.opencontainers.image.source"));
    CHECK_MSG(strlen(str_at(ann, "org.opencontainers.image.created")) == 20,
              "annotation created '%s' is not an RFC 3339 UTC time",
              str_at(ann, "org.opencontainers.image.created"));
    CHECK(json_array_size(json_object_get(man, "layers")) == 2);
    json_decref(man);

    snprintf(cmd, sizeof cmd, "skopeo inspect --config oci-archive:%s",
             image_file("ctorch-image.oci.tar"));
    json_t *cfg = json_of(cmd);
    if (!cfg) return;
    const json_t *c = json_object_get(cfg, "config");
    CHECK_MSG(!strcmp(str_at(c, "User"), "1000:1000"), "User '%s'", str_at(c, "User"));
    CHECK_MSG(!strcmp(str_at(c, "WorkingDir"), "/workspace"), "WorkingDir '%s'",
              str_at(c, "WorkingDir"));
    CHECK(json_object_get(json_object_get(c, "Volumes"), "/workspace") != NULL);
    const json_t *ep = json_object_get(c, "Entrypoint");
    CHECK(json_array_size(ep) == 1 &&
          !strcmp(json_string_value(json_array_get(ep, 0)) ?: "", "/usr/local/bin/ctorch"));
    CHECK(!strcmp(str_at(json_object_get(c, "Labels"), "org.opencontainers.image.version"),
                  CT_VERSION));
    CHECK(!strcmp(str_at(cfg, "architecture"), "amd64") && !strcmp(str_at(cfg, "os"), "linux"));
    json_decref(cfg);

    /* The Docker archive: the same config, tagged ctorch:VERSION for docker load. */
    snprintf(cmd, sizeof cmd, "skopeo inspect docker-archive:%s",
             image_file("ctorch-image.docker.tar"));
    json_t *d = json_of(cmd);
    if (!d) return;
    const json_t *labels = json_object_get(d, "Labels");
    CHECK(!strcmp(str_at(labels, "org.opencontainers.image.version"), CT_VERSION));
    json_decref(d);
    /* What docker load reads: manifest.json's RepoTags and the layers by diff_id. */
    snprintf(cmd, sizeof cmd, "tar -xOf %s manifest.json", image_file("ctorch-image.docker.tar"));
    d = json_of(cmd);
    if (!d) return;
    const json_t *m0 = json_array_get(d, 0);
    char want_tag[64], diff_id[256], layer0[300];
    snprintf(want_tag, sizeof want_tag, "ctorch:%s", CT_VERSION);
    const char *tag = json_string_value(json_array_get(json_object_get(m0, "RepoTags"), 0));
    CHECK_MSG(tag && strstr(tag, want_tag), "docker archive tagged %s, want %s", tag ?: "(none)",
              want_tag);
    CHECK(rootfs_diff_id(diff_id, sizeof diff_id) == 0);
    snprintf(layer0, sizeof layer0, "%s.tar", diff_id + strlen("sha256:"));
    CHECK_MSG(!strcmp(json_string_value(json_array_get(json_object_get(m0, "Layers"), 0)) ?: "",
                      layer0),
              "the docker archive's first layer is not the root filesystem %s", diff_id);
    json_decref(d);
}

TEST(image_compressed_size_is_at_most_150_mb) {
    NEED_IMAGE("skopeo");
    const char *names[] = {"ctorch-image.oci.tar", "ctorch-image.docker.tar"};
    for (int i = 0; i < 2; i++) {
        struct stat st;
        CHECK_MSG(stat(image_file(names[i]), &st) == 0, "%s missing", image_file(names[i]));
        if (i == 1) continue; /* docker-archive: the same layers, gzip'd the same way */
        printf("    %s: %.1f MB\n", names[i], st.st_size / 1e6);
        CHECK_MSG(st.st_size <= MAX_COMPRESSED_BYTES && st.st_size > 10 * 1000 * 1000,
                  "%s is %lld bytes (bar: 150 MB)", names[i], (long long)st.st_size);
    }
}

/* ------------------------------------------------- the unpacked root filesystem */
static int have_mpi_plugin(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/libctorch_mpi.so", build_dir());
    return access(path, F_OK) == 0;
}

static char g_rootfs[512];

/* umoci unpack of the image into the test's temporary directory, once. */
static const char *rootfs(void) {
    if (g_rootfs[0]) return g_rootfs;
    char cmd[2400], log[512];
    snprintf(log, sizeof log, "%s/unpack.log", tmpdir());
    snprintf(cmd, sizeof cmd,
             "skopeo copy --quiet oci-archive:%s oci:%s/layout:ctorch && "
             "umoci unpack %s --image %s/layout:ctorch %s/bundle",
             image_file("ctorch-image.oci.tar"), tmpdir(), getuid() ? "--rootless" : "",
             tmpdir(), tmpdir());
    int rc = run(cmd, log);
    if (rc != 0) {
        show_log(log);
        CHECK_MSG(0, "unpacking the image failed (exit %d): %s", rc, cmd);
        return NULL;
    }
    snprintf(g_rootfs, sizeof g_rootfs, "%s/bundle/rootfs", tmpdir());
    return g_rootfs;
}

static int read_line(const char *path, char *out, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(out, (int)n, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    out[strcspn(out, "\n")] = 0;
    return 0;
}

TEST(image_rootfs_unpacks_with_umoci_holds_its_digest_and_no_build_files) {
    NEED_IMAGE("skopeo", "umoci");
    const char *root = rootfs();
    if (!root) return;
    char path[1024], digest[256], diff_id[256];
    snprintf(path, sizeof path, "%s/etc/ctorch/image-digest", root);
    CHECK_MSG(read_line(path, digest, sizeof digest) == 0, "%s missing", path);
    CHECK_MSG(rootfs_diff_id(diff_id, sizeof diff_id) == 0 && !strcmp(digest, diff_id),
              "/etc/ctorch/image-digest '%s' is not the root filesystem layer's diff_id '%s'",
              digest, diff_id);
    CHECK(strncmp(digest, "sha256:", 7) == 0 && is_hex(digest + 7, 64));
    const char *must[] = {"usr/local/bin/ctorch", "workspace", "etc/ssl/certs",
                          "usr/local/lib/libctorch_mpi.so", "usr/bin/mpirun"};
    /* The MPI plugin and mpirun when this build has the plugin (mpicc found). */
    size_t n_must = sizeof must / sizeof *must - (have_mpi_plugin() ? 0 : 2);
    for (size_t i = 0; i < n_must; i++) {
        snprintf(path, sizeof path, "%s/%s", root, must[i]);
        CHECK_MSG(access(path, F_OK) == 0, "/%s is not in the image", must[i]);
    }
    snprintf(path, sizeof path, "%s/usr/local/lib/libctorch_cuda.so", root);
    char built[1200];
    snprintf(built, sizeof built, "%s/libctorch_cuda.so", build_dir());
    CHECK_MSG(access(path, F_OK) == 0 || access(built, F_OK) != 0,
              "the CUDA plugin was built but is not in the image");
    /* Runtime only: no compiler, headers, static library, apt, man pages. */
    const char *mustnot[] = {"usr/bin/gcc", "usr/bin/cc", "usr/local/include/ctorch.h",
                             "usr/local/lib/libctorch.a", "usr/bin/apt-get",
                             "usr/share/man/man1", "usr/include/stdio.h"};
    for (size_t i = 0; i < sizeof mustnot / sizeof *mustnot; i++) {
        snprintf(path, sizeof path, "%s/%s", root, mustnot[i]);
        CHECK_MSG(access(path, F_OK) != 0, "/%s is in the image (runtime files only)",
                  mustnot[i]);
    }
    char cmd[1200], log[512];
    snprintf(log, sizeof log, "%s/passwd.log", tmpdir());
    snprintf(cmd, sizeof cmd, "grep '^ctorch:x:1000:1000:' %s/etc/passwd", root);
    CHECK_MSG(run(cmd, log) == 0, "no user ctorch 1000:1000 in /etc/passwd");
}

/* Runs `args` in the image's root filesystem under bwrap as uid/gid 1000, with the image's
 * environment, CIFAR-10 read-only at /data (when there) and ws at /workspace. */
static int in_image(const char *ws, const char *args, const char *log) {
    char cmd[3000];
    const char *data = data_dir();
    snprintf(cmd, sizeof cmd,
             "bwrap --bind %s / --proc /proc --dev /dev --tmpfs /tmp %s%s%s --bind %s /workspace "
             "--unshare-user --uid 1000 --gid 1000 --unshare-pid --unshare-ipc --die-with-parent "
             "--clearenv --setenv PATH /usr/local/bin:/usr/bin:/bin --setenv HOME /workspace "
             "--setenv CTORCH_RUNS /workspace/runs --setenv CTORCH_DATA /data "
             "--chdir /workspace %s",
             rootfs(), data ? "--ro-bind " : "", data ? data : "", data ? " /data" : "", ws,
             args);
    return run(cmd, log);
}

static const char *workspace(const char *name) {
    static char ws[600];
    snprintf(ws, sizeof ws, "%s/%s", tmpdir(), name);
    mkdir(ws, 0755);
    return ws;
}

TEST(image_rootfs_runs_ctorch_doctor_as_non_root_under_bwrap) {
    NEED_IMAGE("skopeo", "umoci", "bwrap");
    if (!rootfs()) return;
    const char *ws = workspace("ws-doctor");
    char log[512];
    snprintf(log, sizeof log, "%s/id.log", tmpdir());
    CHECK_MSG(in_image(ws, "/usr/bin/id -u", log) == 0 && log_has(log, "1000"),
              "bwrap could not run /usr/bin/id as uid 1000 in the image");
    snprintf(log, sizeof log, "%s/version.log", tmpdir());
    int rc = in_image(ws, "ctorch --version", log);
    CHECK_MSG(rc == 0 && log_has(log, CT_VERSION), "ctorch --version in the image: exit %d", rc);
    if (rc != 0) show_log(log);

    snprintf(log, sizeof log, "%s/doctor.log", tmpdir());
    rc = in_image(ws, data_dir() ? "ctorch doctor --data-dir /data" : "ctorch doctor", log);
    if (rc != 0) show_log(log);
    CHECK_MSG(rc == 0, "ctorch doctor in the image: exit %d (a problem)", rc);
    CHECK_MSG(log_has(log, " 0 problems"), "ctorch doctor in the image reports a problem");
    CHECK_MSG(log_has(log, "smoke cpu"), "ctorch doctor did not run its CPU smoke test");
    CHECK_MSG(log_has(log, "mpi"), "ctorch doctor has no mpi line");
    /* With the MPI plugin built, it and OpenMPI are in the image: mpi ok, not a warning. */
    snprintf(log, sizeof log, "%s/doctor.json", tmpdir());
    rc = in_image(ws, "ctorch doctor --json", log);
    json_error_t err;
    json_t *j = json_load_file(log, 0, &err);
    CHECK_MSG(j != NULL, "ctorch doctor --json in the image is not JSON (exit %d)", rc);
    const json_t *summary = json_object_get(j, "summary");
    CHECK_MSG(json_integer_value(json_object_get(summary, "problem")) == 0 &&
                  json_integer_value(json_object_get(summary, "ok")) >= 10,
              "doctor --json summary in the image: %s", json_dumps(summary, 0) ?: "(none)");
    const char *mpi = NULL;
    const json_t *checks = json_object_get(j, "checks");
    for (size_t i = 0; i < json_array_size(checks); i++) {
        const json_t *c = json_array_get(checks, i);
        if (!strcmp(str_at(c, "check"), "mpi")) mpi = str_at(c, "verdict");
    }
    CHECK_MSG(!have_mpi_plugin() || (mpi && !strcmp(mpi, "ok")),
              "doctor's mpi verdict in the image: %s", mpi ? mpi : "(none)");
    json_decref(j);
}

TEST(image_rootfs_trains_20_steps_and_its_manifest_names_the_image) {
    NEED_IMAGE("skopeo", "umoci", "bwrap");
    if (!data_dir()) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    if (!rootfs()) return;
    const char *ws = workspace("ws-train");
    char log[512];
    snprintf(log, sizeof log, "%s/train.log", tmpdir());
    int rc = in_image(ws,
                      "ctorch train --model simple_cnn --dataset cifar10 --data-dir /data "
                      "--epochs 1 --max-steps 20 --batch-size 32 --test-limit 256 "
                      "--run-dir /workspace/runs/image-check",
                      log);
    if (rc != 0) show_log(log);
    CHECK_MSG(rc == 0, "20-step training in the image: exit %d", rc);
    char path[1024];
    snprintf(path, sizeof path, "%s/runs/image-check/manifest.json", ws);
    json_error_t err;
    json_t *m = json_load_file(path, 0, &err);
    CHECK_MSG(m != NULL, "%s: %s", path, err.text);
    if (!m) return;
    const json_t *img = json_object_get(json_object_get(m, "system"), "container_image");
    char diff_id[256];
    CHECK(rootfs_diff_id(diff_id, sizeof diff_id) == 0);
    CHECK_MSG(json_is_object(img) && !strcmp(str_at(img, "digest"), diff_id),
              "the manifest's env.system.container_image is not {digest: %s}", diff_id);
    CHECK(!strcmp(str_at(img, "source"), "/etc/ctorch/image-digest"));
    /* It stopped at 20 steps: the last metrics line says so. */
    snprintf(path, sizeof path, "%s/runs/image-check/metrics.jsonl", ws);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "grep -q '\"step\": *20[,}]' %s", path);
    CHECK_MSG(run(cmd, log) == 0, "%s has no step 20", path);
    json_decref(m);
}

/* Runs without the image (make test): the script parses, passes shellcheck when installed,
 * and names a missing tool with the command that installs it. */
TEST(image_build_script_parses_and_names_a_missing_tool) {
    if (access("scripts/build-image.sh", R_OK) != 0 || access("Makefile", R_OK) != 0)
        SKIP("not run from the repository root");
    char log[512];
    snprintf(log, sizeof log, "%s/sh-n.log", tmpdir());
    CHECK_MSG(run("sh -n scripts/build-image.sh", log) == 0, "sh -n scripts/build-image.sh failed");
    if (have_tool("shellcheck")) {
        int rc = run("shellcheck -S warning scripts/build-image.sh", log);
        if (rc != 0) show_log(log);
        CHECK_MSG(rc == 0, "shellcheck scripts/build-image.sh: exit %d", rc);
    }
    snprintf(log, sizeof log, "%s/no-tools.log", tmpdir());
    int rc = run("PATH=/nonexistent /bin/sh scripts/build-image.sh build", log);
    CHECK_MSG(rc == 1, "build-image.sh without its tools: exit %d, want 1", rc);
    CHECK_MSG(log_has(log, "error: build-image: mmdebstrap not found") &&
                  log_has(log, "scripts/install-deps.sh image"),
              "build-image.sh without mmdebstrap does not say so and how to install it");
}
