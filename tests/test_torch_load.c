/* torch.save files (src/io/torch_load.c, src/io/torch_pickle.c): the fixtures written by
 * PyTorch 1.13 and 2.x (tests/fixtures/gen_torch_pt.py) load with exactly the values
 * PyTorch saved (expected_<tag>.safetensors); PATH:KEY; malicious pickles are refused
 * naming the global; truncated and corrupted files are refused without crashing;
 * `ctorch convert`. */
#include "test.h"

#include "cli_util.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *fx(char *buf, size_t n, const char *file) {
    const char *d = getenv("CT_FIXTURE_DIR");
    snprintf(buf, n, "%s/torch/%s", d ? d : "tests/fixtures", file);
    return buf;
}

static int has(const char *hay, const char *needle) { return hay && strstr(hay, needle); }

#define CHECK_ERRMSG(needle)                                                                 \
    CHECK_MSG(has(ct_last_error(), needle), "error message lacks \"%s\": %s", needle,        \
              ct_last_error())

static uint8_t *read_all(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

/* sd equals the tensors "<prefix>/<name>" of the expected file: same names (any order),
 * dtypes, shapes and bytes. */
static void check_equal(const ct_state_dict *sd, const ct_safetensors *exp, const char *prefix,
                        const char *what) {
    size_t pl = strlen(prefix);
    int n_exp = 0;
    for (int i = 0; i < exp->n; i++) {
        if (strncmp(exp->names[i], prefix, pl) || exp->names[i][pl] != '/') continue;
        n_exp++;
        const char *name = exp->names[i] + pl + 1;
        ct_tensor *want = exp->tensors[i], *got = ct_state_dict_get(sd, name);
        CHECK_MSG(got != NULL, "%s: no tensor '%s'", what, name);
        if (!got) continue;
        CHECK_MSG(ct_dtype_of(got) == ct_dtype_of(want), "%s: '%s' is %s, PyTorch saved %s", what,
                  name, ct_dtype_name(ct_dtype_of(got)), ct_dtype_name(ct_dtype_of(want)));
        char a[64], b[64];
        CHECK_MSG(!strcmp(ct_shape_str(got, a, sizeof a), ct_shape_str(want, b, sizeof b)),
                  "%s: '%s' has shape %s, PyTorch saved %s", what, name, a, b);
        if (ct_dtype_of(got) != ct_dtype_of(want) || strcmp(a, b)) continue;
        size_t nb = (size_t)ct_numel(want) * ct_dtype_size(ct_dtype_of(want));
        uint8_t *g = malloc(nb + 1), *w = malloc(nb + 1);
        CHECK_OK(ct_copy_to_buffer(got, g, nb));
        CHECK_OK(ct_copy_to_buffer(want, w, nb));
        CHECK_MSG(nb == 0 || !memcmp(g, w, nb), "%s: '%s' differs from what PyTorch saved", what,
                  name);
        CHECK_MSG(ct_is_contiguous(got), "%s: '%s' is not contiguous", what, name);
        free(g);
        free(w);
    }
    CHECK_MSG(n_exp > 0, "%s: no expected tensors %s/*", what, prefix);
    CHECK_MSG(sd->n == n_exp, "%s: %d tensors, PyTorch saved %d", what, sd->n, n_exp);
}

static const char *const TAGS[] = {"v1", "v2"}; /* torch 1.13 (Debian), torch 2.x */

TEST(torch_load_fixtures_exact) {
    static const struct {
        const char *file, *key, *expected;
    } CASES[] = {
        {"sd", NULL, "sd"},           {"sd_legacy", NULL, "sd"},
        {"proto4", NULL, "sd"},       {"linear", NULL, "linear"},
        {"ckpt", "model_state_dict", "ckpt"},
        {"ckpt_legacy", "model_state_dict", "ckpt"},
        {"dtypes", NULL, "dtypes"},   {"views", NULL, "views"},
    };
    for (size_t t = 0; t < sizeof TAGS / sizeof *TAGS; t++) {
        char p[512], spec[600], file[64];
        snprintf(file, sizeof file, "expected_%s.safetensors", TAGS[t]);
        ct_safetensors *exp = ct_safetensors_load(fx(p, sizeof p, file));
        CHECK_NN(exp);
        if (!exp) continue;
        for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) {
            snprintf(file, sizeof file, "%s_%s.pt", CASES[c].file, TAGS[t]);
            fx(p, sizeof p, file);
            snprintf(spec, sizeof spec, "%s%s%s", p, CASES[c].key ? ":" : "",
                     CASES[c].key ? CASES[c].key : "");
            ct_state_dict *sd = ct_state_dict_load(spec);
            CHECK_MSG(sd != NULL, "%s: %s", spec, ct_last_error());
            if (sd) check_equal(sd, exp, CASES[c].expected, spec);
            ct_state_dict_free(sd);
        }
        ct_safetensors_free(exp);
    }
    /* zip entries whose CRC-32 is 0 (PyTorch 2.x, compute_crc32=False) */
    char p[512];
    ct_safetensors *exp = ct_safetensors_load(fx(p, sizeof p, "expected_v2.safetensors"));
    ct_state_dict *sd = ct_state_dict_load(fx(p, sizeof p, "nocrc_v2.pt"));
    CHECK_MSG(sd != NULL, "%s: %s", p, ct_last_error());
    if (sd && exp) check_equal(sd, exp, "linear", p);
    ct_state_dict_free(sd);
    ct_safetensors_free(exp);
}

TEST(torch_load_state_dict_order_and_buffers) {
    char p[512];
    ct_state_dict *sd = ct_state_dict_load(fx(p, sizeof p, "sd_v2.pt"));
    CHECK_NN(sd);
    if (!sd) return;
    static const char *const NAMES[] = {"0.weight", "0.bias", "1.weight", "1.bias",
                                        "1.running_mean", "1.running_var",
                                        "1.num_batches_tracked"};
    CHECK(sd->n == 7);
    for (int i = 0; i < sd->n && i < 7; i++)
        CHECK_MSG(!strcmp(sd->names[i], NAMES[i]), "entry %d is %s, want %s", i, sd->names[i],
                  NAMES[i]);
    ct_tensor *nbt = ct_state_dict_get(sd, "1.num_batches_tracked");
    CHECK(nbt && ct_dtype_of(nbt) == CT_INT64 && ct_numel(nbt) == 1);
    ct_state_dict_free(sd);
}

TEST(torch_load_checkpoint_needs_key) {
    char p[512], spec[600];
    for (size_t t = 0; t < 2; t++) {
        char file[64];
        snprintf(file, sizeof file, "ckpt_%s.pt", TAGS[t]);
        fx(p, sizeof p, file);
        ct_clear_error();
        CHECK(ct_state_dict_load(p) == NULL);
        CHECK_ERRMSG("model_state_dict' (dict of 7 tensors)");
        CHECK_ERRMSG("'epoch' (int)");
        CHECK_ERRMSG("optimizer_state_dict");
        snprintf(spec, sizeof spec, "select the state_dict with %s:model_state_dict", p);
        CHECK_ERRMSG(spec);
        snprintf(spec, sizeof spec, "%s:nope", p);
        ct_clear_error();
        CHECK(ct_state_dict_load(spec) == NULL);
        CHECK_ERRMSG("no key 'nope'");
        /* a key holding no tensors */
        snprintf(spec, sizeof spec, "%s:epoch", p);
        CHECK(ct_state_dict_load(spec) == NULL);
        CHECK_ERRMSG("holds a value of type int");
        /* dotted: optimizer_state_dict.state is a dict of dicts (int keys): no tensors */
        snprintf(spec, sizeof spec, "%s:optimizer_state_dict.param_groups", p);
        CHECK(ct_state_dict_load(spec) == NULL);
        CHECK_ERRMSG("holds a value of type list");
    }
}

TEST(torch_load_unsupported_dtype_names_tensor) {
    char p[512];
    for (size_t t = 0; t < 2; t++) {
        char file[64];
        snprintf(file, sizeof file, "int8_%s.pt", TAGS[t]);
        ct_clear_error();
        CHECK(ct_state_dict_load(fx(p, sizeof p, file)) == NULL);
        CHECK_ERRMSG("tensor 'q' is int8");
    }
    ct_clear_error();
    CHECK(ct_state_dict_load(fx(p, sizeof p, "uint16_v2.pt")) == NULL);
    CHECK_ERRMSG("tensor 'u' is uint16");
}

/* Files written on a big-endian machine are refused, zip (byteorder) and legacy
 * (sys_info's little_endian, flipped here in a copy of a legacy file). */
TEST(torch_load_refuses_big_endian) {
    char p[512];
    ct_clear_error();
    CHECK(ct_state_dict_load(fx(p, sizeof p, "bigendian_v2.pt")) == NULL);
    CHECK_ERRMSG("big-endian");
    size_t n;
    uint8_t *b = read_all(fx(p, sizeof p, "sd_legacy_v1.pt"), &n);
    CHECK(b != NULL);
    if (!b) return;
    uint8_t *le = memmem(b, n, "little_endian", 13);
    CHECK(le != NULL);
    /* the string, maybe a BINPUT, then NEWTRUE */
    uint8_t *t = le ? le + 13 : NULL;
    if (t && *t == 'q') t += 2;
    CHECK(t && *t == 0x88);
    if (t && *t == 0x88) {
        ct_state_dict *sd = ct_torch_load_buffer(b, n, NULL, "flipped");
        CHECK(sd != NULL);
        ct_state_dict_free(sd);
        *t = 0x89; /* NEWFALSE */
        ct_clear_error();
        CHECK(ct_torch_load_buffer(b, n, NULL, "flipped") == NULL);
        CHECK_ERRMSG("big-endian");
    }
    free(b);
}

TEST(torch_load_refuses_forbidden_globals) {
    static const struct {
        const char *file, *global;
    } EVIL[] = {
        {"evil_os_system.pkl", "forbidden global os.system"},
        {"evil_eval.pkl", "forbidden global builtins.eval"},
        {"evil_posix_system.pkl", "forbidden global posix.system"},
        {"evil_inst.pkl", "forbidden global os.system"},
        {"evil_object.pkl", "forbidden global __main__.Plain"},
        {"evil_zip_v1.pt", "forbidden global posix.system"},
        {"evil_zip_v2.pt", "forbidden global posix.system"},
    };
    for (size_t i = 0; i < sizeof EVIL / sizeof *EVIL; i++) {
        char p[512];
        fx(p, sizeof p, EVIL[i].file);
        ct_clear_error();
        ct_state_dict *sd = ct_torch_load(p, NULL);
        CHECK_MSG(sd == NULL, "%s loaded", p);
        ct_state_dict_free(sd);
        CHECK_ERRMSG(EVIL[i].global);
        CHECK_ERRMSG(EVIL[i].file);
        ct_clear_error();
        CHECK(ct_state_dict_load(p) == NULL); /* the one entry point too */
        CHECK_ERRMSG(EVIL[i].global);
    }
}

/* Every strict prefix of a valid file is refused; random byte changes never crash. */
TEST(torch_load_truncated_and_corrupt) {
    static const char *const FILES[] = {"sd_v1.pt", "sd_legacy_v1.pt", "ckpt_legacy_v2.pt",
                                        "views_v2.pt", "proto4_v2.pt"};
    static const char *const KEYS[] = {NULL, NULL, "model_state_dict", NULL, NULL};
    uint64_t rng = 0x9e3779b97f4a7c15u;
    for (size_t f = 0; f < sizeof FILES / sizeof *FILES; f++) {
        char p[512];
        size_t n;
        uint8_t *b = read_all(fx(p, sizeof p, FILES[f]), &n);
        CHECK_MSG(b != NULL, "cannot read %s", p);
        if (!b) continue;
        ct_state_dict *ok = ct_torch_load_buffer(b, n, KEYS[f], FILES[f]);
        CHECK_MSG(ok != NULL, "%s: %s", FILES[f], ct_last_error());
        ct_state_dict_free(ok);
        size_t step = n / 97 + 1;
        for (size_t len = 0; len < n; len += (len < 64 || len + 64 > n) ? 1 : step) {
            uint8_t *c = malloc(len + 1);
            memcpy(c, b, len);
            ct_state_dict *sd = ct_torch_load_buffer(c, len, KEYS[f], FILES[f]);
            CHECK_MSG(sd == NULL, "%s cut to %zu of %zu bytes loaded", FILES[f], len, n);
            ct_state_dict_free(sd);
            free(c);
        }
        uint8_t *c = malloc(n);
        for (int k = 0; k < 300; k++) {
            memcpy(c, b, n);
            int flips = 1 + k % 4;
            for (int j = 0; j < flips; j++) {
                rng = rng * 6364136223846793005u + 1442695040888963407u;
                c[(rng >> 33) % n] ^= (uint8_t)(1u << ((rng >> 20) & 7));
            }
            ct_state_dict_free(ct_torch_load_buffer(c, n, KEYS[f], FILES[f])); /* either way */
        }
        free(c);
        free(b);
    }
}

TEST(torch_load_module_load_and_mismatch) {
    char p[512];
    ct_module *lin = ct_nn_linear(3, 2, 1);
    CHECK_NN(lin);
    if (!lin) return;
    for (size_t t = 0; t < 2; t++) {
        char file[64];
        snprintf(file, sizeof file, "linear_%s.pt", TAGS[t]);
        CHECK_OK(ct_module_load(lin, fx(p, sizeof p, file)));
        /* fill(): weight = arange(6) * 0.25 - 0, bias = arange(2) * 0.25 - 1 */
        float w[6], bias[2];
        CHECK_OK(ct_copy_to_buffer(ct_module_get_tensor(lin, "weight"), w, sizeof w));
        CHECK_OK(ct_copy_to_buffer(ct_module_get_tensor(lin, "bias"), bias, sizeof bias));
        for (int i = 0; i < 6; i++) CHECK(w[i] == 0.25f * (float)i);
        CHECK(bias[0] == -1.0f && bias[1] == -0.75f);
    }
    ct_clear_error();
    CHECK(ct_module_load(lin, fx(p, sizeof p, "sd_v2.pt")) != 0);
    CHECK_ERRMSG("does not match the Linear model");
    CHECK_ERRMSG("0.weight");
    ct_module_free(lin);
}

TEST(torch_load_path_with_colon) {
    char dir[256], src[512], dst[600], spec[700];
    CHECK(ct_test_mkdtemp(dir, sizeof dir, "/tmp/ctorch_pt_XXXXXX") == 0);
    size_t n;
    uint8_t *b = read_all(fx(src, sizeof src, "ckpt_v2.pt"), &n);
    CHECK(b != NULL);
    snprintf(dst, sizeof dst, "%s/run:3.pt", dir);
    FILE *f = fopen(dst, "wb");
    CHECK(f && fwrite(b, 1, n, f) == n);
    if (f) fclose(f);
    free(b);
    snprintf(spec, sizeof spec, "%s:model_state_dict", dst);
    ct_state_dict *sd = ct_state_dict_load(spec);
    CHECK_MSG(sd && sd->n == 7, "%s: %s", spec, ct_last_error());
    ct_state_dict_free(sd);
    ct_clear_error();
    CHECK(ct_state_dict_load(dst) == NULL); /* the whole spec is the file: needs a key */
    CHECK_ERRMSG("select the state_dict with");
    snprintf(spec, sizeof spec, "%s/missing.pt:model_state_dict", dir);
    ct_clear_error();
    CHECK(ct_state_dict_load(spec) == NULL);
    CHECK_ERRMSG("no such file");
    /* safetensors: KEY keeps KEY.<name> */
    ct_tensor *t = ct_ones((int64_t[]){2}, 1, CT_FLOAT32);
    ct_tensor *ts[2] = {t, t};
    const char *names[2] = {"model.w", "other.w"};
    snprintf(dst, sizeof dst, "%s/ck.safetensors", dir);
    CHECK_OK(ct_safetensors_save(dst, names, ts, 2, NULL));
    snprintf(spec, sizeof spec, "%s:model", dst);
    sd = ct_state_dict_load(spec);
    CHECK_MSG(sd && sd->n == 1 && !strcmp(sd->names[0], "w"), "%s: %s", spec, ct_last_error());
    ct_state_dict_free(sd);
    ct_free(t);
    ct_test_rm_rf(dir);
}

TEST(cli_convert) {
    char p[512], cmd[2048], out[600], log[600];
    snprintf(out, sizeof out, "%s/conv.safetensors", tmpdir());
    snprintf(log, sizeof log, "%s/convert.log", tmpdir());
    fx(p, sizeof p, "ckpt_v1.pt");
    snprintf(cmd, sizeof cmd, "%s convert %s:model_state_dict %s --list", bin(), p, out);
    CHECK_MSG(run(cmd, log) == 0, "%s", cmd);
    CHECK(log_has(log, "7 tensors"));
    CHECK(log_has(log, "  0.weight float32 [2, 3]\n"));
    CHECK(log_has(log, "  1.num_batches_tracked int64 []\n"));
    ct_state_dict *a = ct_state_dict_load(out);
    char spec[600];
    snprintf(spec, sizeof spec, "%s:model_state_dict", p);
    ct_state_dict *b = ct_state_dict_load(spec);
    CHECK(a && b && a->n == b->n);
    for (int i = 0; a && b && i < a->n && i < b->n; i++) {
        CHECK(!strcmp(a->names[i], b->names[i]));
        CHECK_CLOSE(a->tensors[i], b->tensors[i], 0, a->names[i]);
    }
    ct_state_dict_free(a);
    ct_state_dict_free(b);
    /* no key: exit 2, the keys listed */
    snprintf(cmd, sizeof cmd, "%s convert %s %s/x.safetensors", bin(), p, tmpdir());
    CHECK(run(cmd, log) == 2 && log_has(log, "model_state_dict"));
    /* a forbidden global: exit 2, named */
    fx(p, sizeof p, "evil_zip_v2.pt");
    snprintf(cmd, sizeof cmd, "%s convert %s %s/x.safetensors", bin(), p, tmpdir());
    CHECK(run(cmd, log) == 2 && log_has(log, "forbidden global posix.system"));
    fx(p, sizeof p, "evil_os_system.pkl");
    snprintf(cmd, sizeof cmd, "%s convert %s %s/x.safetensors", bin(), p, tmpdir());
    CHECK(run(cmd, log) == 2 && log_has(log, "forbidden global os.system"));
    snprintf(cmd, sizeof cmd, "%s/x.safetensors", tmpdir());
    CHECK_MSG(access(cmd, F_OK) != 0, "convert wrote %s from a refused file", cmd);
    /* usage */
    snprintf(cmd, sizeof cmd, "%s convert %s", bin(), p);
    CHECK(run(cmd, log) == 2 && log_has(log, "usage"));
    snprintf(cmd, sizeof cmd, "%s convert /nonexistent.pt %s/y.safetensors", bin(), tmpdir());
    CHECK(run(cmd, log) == 2 && log_has(log, "/nonexistent.pt"));
}

/* Whatever PyTorch the peer Python has (bench/.venv's 2.x, Debian's 1.13): random tensors of
 * every ctorch dtype, views and a checkpoint dict, saved by torch.save in both formats now,
 * read back by ctorch and compared with the raw bytes PyTorch wrote alongside. */
TEST(torch_load_peer_pytorch_writes_now) {
    const char *py = peer_python("torch");
    if (!py) SKIP("no Python with torch (set CTORCH_PEER_PYTHON or run bench/setup-peer.sh)");
    char script[600], log[600], cmd[2048];
    snprintf(script, sizeof script, "%s/peer_pt.py", tmpdir());
    snprintf(log, sizeof log, "%s/peer_pt.log", tmpdir());
    FILE *f = fopen(script, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs("import os, sys, torch\n"
          "d = sys.argv[1]\n"
          "torch.manual_seed(1)\n"
          "x = torch.randn(6, 5)\n"
          "sd = {'f32': x, 'f64': torch.randn(3, 2, dtype=torch.float64), 'f16': x.half(),\n"
          "      'bf16': x.bfloat16()[1:], 'i64': torch.randint(-2**40, 2**40, (4,)),\n"
          "      'i32': torch.randint(-9, 9, (2, 3), dtype=torch.int32),\n"
          "      'u8': torch.randint(0, 255, (5,), dtype=torch.uint8), 'b': x > 0,\n"
          "      't': x.t(), 'slice': x[2:, 1::2]}\n"
          "torch.save({'model': sd, 'step': 7}, os.path.join(d, 'peer_zip.pt'))\n"
          "torch.save(sd, os.path.join(d, 'peer_legacy.pt'), _use_new_zipfile_serialization=False)\n"
          "with open(os.path.join(d, 'peer_raw.txt'), 'w') as out:\n"
          "    for k, v in sd.items():\n"
          "        v = v.contiguous()\n"
          "        b = (v.view(torch.int16) if v.dtype in (torch.float16, torch.bfloat16) else v).numpy().tobytes()\n"
          "        out.write(k + ' ' + b.hex() + '\\n')\n"
          "print(torch.__version__)\n",
          f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s %s %s", py, script, tmpdir());
    CHECK_MSG(run(cmd, log) == 0, "%s failed", cmd);
    char path[600], spec[700];
    snprintf(path, sizeof path, "%s/peer_raw.txt", tmpdir());
    f = fopen(path, "r");
    CHECK(f != NULL);
    if (!f) return;
    snprintf(spec, sizeof spec, "%s/peer_zip.pt:model", tmpdir());
    ct_state_dict *zip = ct_state_dict_load(spec);
    snprintf(spec, sizeof spec, "%s/peer_legacy.pt", tmpdir());
    ct_state_dict *leg = ct_state_dict_load(spec);
    CHECK_MSG(zip && leg, "%s", ct_last_error());
    char name[64], *hex = malloc(1 << 16);
    int n = 0;
    while (zip && leg && fscanf(f, "%63s %65535s", name, hex) == 2) {
        n++;
        size_t nb = strlen(hex) / 2;
        uint8_t *want = malloc(nb + 1), *got = malloc(nb + 1);
        for (size_t i = 0; i < nb; i++) sscanf(hex + 2 * i, "%2hhx", &want[i]);
        ct_state_dict *sds[2] = {zip, leg};
        for (int k = 0; k < 2; k++) {
            ct_tensor *t = ct_state_dict_get(sds[k], name);
            CHECK_MSG(t != NULL, "peer file %d lacks %s", k, name);
            if (!t) continue;
            size_t tb = (size_t)ct_numel(t) * ct_dtype_size(ct_dtype_of(t));
            CHECK_MSG(tb == nb, "%s: %zu bytes, PyTorch wrote %zu", name, tb, nb);
            if (tb == nb) {
                CHECK_OK(ct_copy_to_buffer(t, got, nb));
                CHECK_MSG(!memcmp(got, want, nb), "%s differs from PyTorch's (format %d)", name, k);
            }
        }
        free(want);
        free(got);
    }
    CHECK(n == 10 && zip && zip->n == 10 && leg && leg->n == 10);
    free(hex);
    fclose(f);
    ct_state_dict_free(zip);
    ct_state_dict_free(leg);
}
