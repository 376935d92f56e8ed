/* Run directories, checkpoints and resuming (issue 12), end to end on CIFAR-10 through the
 * ctorch binary: what a run directory holds, bitwise resumes after SIGKILL / SIGTERM with
 * --deterministic (also with another --threads), a damaged newest checkpoint, a full disk,
 * a NaN loss and the --resume targets that must be refused. */
#include "test.h"
#include "cli_util.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The recipe of these tests: simple_cnn with shuffling and augmentation on a CIFAR-10
 * subset, 16 steps per epoch (resnet18_cifar: 3). */
static void recipe(char *buf, size_t n, const char *model, const char *extra) {
    snprintf(buf, n,
             "%s train --model %s --dataset cifar10 --data-dir %s --train-limit %s --test-limit %s "
             "--batch-size 64 --augment standard --deterministic %s",
             bin(), model, data_dir(), !strcmp(model, "resnet18_cifar") ? "192" : "1024",
             !strcmp(model, "resnet18_cifar") ? "64" : "256", extra);
}

static char *path_in(const char *dir, const char *name) {
    static char buf[4][1024];
    static int k;
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s/%s", dir, name);
    char *p = buf[k++ % 4];
    memcpy(p, tmp, sizeof tmp);
    return p;
}

static int sha_of(const char *path, char hex[65]) { return ct_sha256_file(path, hex); }

/* Exit status of pid (waits); -sig when killed by a signal. */
static int reap(pid_t pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1000;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

/* Whether dir/checkpoints holds a checkpoint being written (its temporary file). */
static int writing_checkpoint(const char *dir) {
    DIR *d = opendir(path_in(dir, "checkpoints"));
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d))) found = strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return found;
}


static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static json_t *load_json(const char *path) {
    json_error_t je;
    return json_load_file(path, 0, &je);
}

/* The reference: an uninterrupted run's final weights (SHA-256). */
static int reference_run(const char *model, const char *dir, const char *threads, char hex[65]) {
    char cmd[4096], extra[1200], log[1200];
    snprintf(extra, sizeof extra, "--epochs 2 --threads %s --run-dir %s", threads, dir);
    recipe(cmd, sizeof cmd, model, extra);
    snprintf(log, sizeof log, "%s.log", dir);
    int rc = run(cmd, log);
    if (rc != 0) show_log(log);
    return rc == 0 ? sha_of(path_in(dir, "model.safetensors"), hex) : -1;
}

/* --------------------------------------------------------------------- layout */
TEST(run_dir_holds_manifest_metrics_checkpoints_weights_and_curves) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/layout", tmpdir());
    char cmd[4096], extra[1024], log[1200];
    snprintf(extra, sizeof extra, "--epochs 2 --checkpoint-every 5 --run-dir %s --log-json %s/log.json",
             dir, tmpdir());
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s/layout.log", tmpdir());
    CHECK(run(cmd, log) == 0);
    json_t *m = load_json(path_in(dir, "manifest.json"));
    CHECK_NN(m);
    if (!m) {
        show_log(log);
        return;
    }
    CHECK(!strcmp(json_string_value(json_object_get(m, "status")), "completed"));
    CHECK(json_integer_value(json_object_get(m, "format_version")) == 1);
    json_t *cfg = json_object_get(m, "config");
    CHECK(!strcmp(json_string_value(json_object_get(cfg, "model")), "simple_cnn"));
    CHECK(json_integer_value(json_object_get(cfg, "batch_size")) == 64);
    CHECK(json_real_value(json_object_get(cfg, "lr")) == 0.01); /* the default, filled in */
    CHECK(json_is_true(json_object_get(cfg, "deterministic")));
    json_t *ds = json_object_get(m, "datasets");
    CHECK(json_array_size(ds) == 6); /* five training batches and the test batch */
    CHECK(strlen(json_string_value(json_object_get(json_array_get(ds, 0), "sha256"))) == 64);
    CHECK(json_is_string(json_object_get(json_object_get(m, "ctorch"), "git_commit")));
    CHECK(json_is_string(json_object_get(json_object_get(m, "system"), "cpu_model")));
    CHECK(json_is_string(json_object_get(m, "started")) && json_is_string(json_object_get(m, "ended")));
    /* metrics.jsonl: one row per epoch, the same as --log-json; the manifest's final figures
     * are the last row's */
    FILE *f = fopen(path_in(dir, "metrics.jsonl"), "r");
    char line[2048], last[2048] = "";
    int rows = 0;
    while (f && fgets(line, sizeof line, f)) {
        rows++;
        strcpy(last, line);
    }
    if (f) fclose(f);
    CHECK(rows == 2);
    json_error_t je;
    json_t *lr = json_loads(last, 0, &je);
    json_t *fm = json_object_get(m, "final_metrics");
    CHECK(lr && json_number_value(json_object_get(lr, "test_acc")) ==
                    json_number_value(json_object_get(fm, "test_acc")));
    json_decref(lr);
    char h1[65], h2[65];
    CHECK(sha_of(path_in(dir, "metrics.jsonl"), h1) == 0 && sha_of(path_in(tmpdir(), "log.json"), h2) == 0 &&
          !strcmp(h1, h2));
    /* --keep-checkpoints 2 (the default): the two newest, the last at the final step */
    const char *ck = json_string_value(json_object_get(m, "checkpoint"));
    CHECK(ck && !strcmp(ck, "checkpoints/step-0000000032.safetensors"));
    CHECK(access(path_in(dir, "checkpoints/step-0000000032.safetensors"), R_OK) == 0);
    CHECK(access(path_in(dir, "checkpoints/step-0000000030.safetensors"), R_OK) == 0);
    CHECK(access(path_in(dir, "checkpoints/step-0000000025.safetensors"), F_OK) != 0);
    /* a checkpoint verifies and holds the model, the optimizer's momentum and the state */
    ct_checkpoint_status st;
    ct_checkpoint *c = ct_checkpoint_open(path_in(dir, "checkpoints/step-0000000032.safetensors"), &st);
    CHECK(c && st == CT_CHECKPOINT_OK);
    if (c) {
        CHECK(ct_safetensors_get(c->st, "model.features.0.weight") != NULL);
        CHECK(ct_safetensors_get(c->st, "optim.state.0.momentum_buffer") != NULL);
        json_t *s = json_loads(c->state_json, 0, &je);
        CHECK(s && json_integer_value(json_object_get(s, "step")) == 32);
        CHECK(json_is_object(json_object_get(s, "rng")) && json_is_array(json_object_get(s, "metrics")));
        json_decref(s);
        ct_checkpoint_close(c);
    }
    /* model.safetensors: a plain state_dict */
    ct_module *net = ct_model_create_ex("simple_cnn", 10, 3, 32, 32);
    CHECK_OK(ct_module_load(net, path_in(dir, "model.safetensors")));
    ct_module_free(net);
    CHECK(access(path_in(dir, "curves.svg"), R_OK) == 0);
    json_decref(m);
    /* a second run into the same directory would overwrite it: refused */
    CHECK(run(cmd, log) == 2 && log_has(log, "already holds a run"));
}

/* ---------------------------------------------------------- bitwise resumes */
/* Killed with SIGKILL at a random point of epoch 2 (after its first checkpoint there),
 * resumed with the other thread count: the same final weights as uninterrupted runs with
 * 1 and with 2 threads. */
static void sigkill_in_epoch_2_then_resume(const char *model, int every, int during_write) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char ref2[65], ref1[65], got[65], d2[512], d1[512], dk[512];
    snprintf(d2, sizeof d2, "%s/%s-ref2", tmpdir(), model);
    snprintf(d1, sizeof d1, "%s/%s-ref1", tmpdir(), model);
    snprintf(dk, sizeof dk, "%s/%s-killed", tmpdir(), model);
    CHECK_OK(reference_run(model, d2, "2", ref2));
    CHECK_OK(reference_run(model, d1, "1", ref1));
    CHECK_MSG(!strcmp(ref1, ref2), "%s: --threads 1 and --threads 2 give different weights", model);
    int spe = !strcmp(model, "resnet18_cifar") ? 3 : 16;
    char cmd[4096], extra[1200], log[600];
    snprintf(extra, sizeof extra, "--epochs 2 --threads 1 --checkpoint-every %d --run-dir %s", every, dk);
    recipe(cmd, sizeof cmd, model, extra);
    snprintf(log, sizeof log, "%s.log", dk);
    pid_t pid = spawn(cmd, log);
    /* a random moment after the first checkpoint inside epoch 2, or the moment the next
     * checkpoint's temporary file appears (the kill lands during its write) */
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    /* no fixed time limit while the run lives (a loaded machine makes resnet18_cifar slow) */
    int st = 0, ended = 0;
    for (int i = 0; i < 120000 && newest_step(dk) <= spe; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) { ended = 1; break; }
        sleep_ms(5);
    }
    int caught_writing = 0;
    if (during_write) {
        for (long i = 0; !ended && i < 3000000 && !(caught_writing = writing_checkpoint(dk)); i++) {
            if (i % 64 == 0 && waitpid(pid, &st, WNOHANG) == pid) { ended = 1; break; }
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    } else {
        sleep_ms(rand() % 60);
    }
    kill(pid, SIGKILL);
    int rc = ended ? (WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st)) : reap(pid);
    long at = newest_step(dk);
    fprintf(stderr, "    %s: killed (status %d) with the newest checkpoint at step %ld of %d\n", model,
            rc, at, 2 * spe);
    CHECK_MSG(rc == -SIGKILL, "the run ended (%d) before it could be killed; make it longer", rc);
    CHECK(at > spe && at < 2 * spe);
    if (during_write) CHECK_MSG(caught_writing, "no checkpoint write was caught in progress");
    snprintf(cmd, sizeof cmd, "%s train --resume %s --threads 2", bin(), dk);
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "resuming"));
    CHECK(!writing_checkpoint(dk)); /* the torn temporary file is gone */
    CHECK_OK(sha_of(path_in(dk, "model.safetensors"), got));
    CHECK_MSG(!strcmp(got, ref2), "%s: resumed weights differ from the uninterrupted run's", model);
    /* the metrics of both epochs are those of the uninterrupted run (timings aside) */
    json_t *a = load_json(path_in(d2, "manifest.json")), *b = load_json(path_in(dk, "manifest.json"));
    CHECK(a && b && json_equal(json_object_get(json_object_get(a, "final_metrics"), "train_loss"),
                               json_object_get(json_object_get(b, "final_metrics"), "train_loss")));
    CHECK(b && json_array_size(json_object_get(b, "resumes")) == 1);
    json_decref(a);
    json_decref(b);
}

TEST(deterministic_simple_cnn_sigkill_in_epoch_2_resumes_bitwise) {
    sigkill_in_epoch_2_then_resume("simple_cnn", 3, 0);
}
/* resnet18_cifar's checkpoints are ~90 MB: the kill lands while one is being written */
TEST(deterministic_resnet18_cifar_sigkill_during_a_checkpoint_write_resumes_bitwise) {
    sigkill_in_epoch_2_then_resume("resnet18_cifar", 1, 1);
}

/* 30 SIGKILLs at random moments of a run that checkpoints every 5 steps (some land while
 * a checkpoint is being written): every resume succeeds, the end is bitwise the
 * uninterrupted run's. */
TEST(thirty_sigkills_then_the_uninterrupted_result) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char ref[65], got[65], dr[512], dk[512], cmd[4096], extra[1200], log[600];
    snprintf(dr, sizeof dr, "%s/kills-ref", tmpdir());
    snprintf(dk, sizeof dk, "%s/kills", tmpdir());
    /* 384 steps: 30 kills at up to 250 ms each take ~190 of them (one CI run ran out of
     * steps at 29 kills with 192) */
    snprintf(extra, sizeof extra, "--epochs 3 --train-limit 8192 --checkpoint-every 5 --run-dir %s", dr);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s.log", dr);
    CHECK(run(cmd, log) == 0);
    CHECK_OK(sha_of(path_in(dr, "model.safetensors"), ref));
    snprintf(extra, sizeof extra, "--epochs 3 --train-limit 8192 --checkpoint-every 5 --run-dir %s", dk);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s.log", dk);
    srand((unsigned)time(NULL) * 7u ^ (unsigned)getpid());
    int kills = 0, attempts = 0, failures = 0;
    while (kills < 30 && attempts < 200) {
        attempts++;
        pid_t pid = spawn(cmd, log);
        long before = newest_step(dk);
        /* wait until it trains (its banner), then a random moment */
        for (int i = 0; i < 2000 && !log_has(log, "training simple_cnn"); i++) {
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) {
                pid = -1;
                if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
                    failures++;
                    show_log(log);
                }
                break;
            }
            sleep_ms(2);
        }
        if (pid < 0) break; /* it finished: the run is complete */
        sleep_ms(rand() % 250);
        kill(pid, SIGKILL);
        int rc = reap(pid);
        if (rc == 0) break; /* finished just before the kill */
        if (rc != -SIGKILL) {
            failures++;
            show_log(log);
            break;
        }
        kills++;
        (void)before;
        snprintf(cmd, sizeof cmd, "%s train --resume %s", bin(), dk);
    }
    fprintf(stderr, "    %d SIGKILLs, newest checkpoint at step %ld\n", kills, newest_step(dk));
    CHECK_MSG(kills == 30, "only %d kills before the run ended; make it longer", kills);
    CHECK(failures == 0);
    snprintf(cmd, sizeof cmd, "%s train --resume %s", bin(), dk);
    CHECK(run(cmd, log) == 0);
    CHECK_OK(sha_of(path_in(dk, "model.safetensors"), got));
    CHECK_MSG(!strcmp(got, ref), "weights after 30 kills differ from the uninterrupted run's");
}

/* SIGTERM (a scheduler's preemption): the step finishes, a checkpoint is written, the
 * resume command is printed, exit 0; resuming gives the uninterrupted weights. --epochs
 * raised on resume continues a finished run. */
TEST(sigterm_checkpoints_and_prints_the_resume_command) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char ref[65], got[65], dr[512], dt[512], cmd[4096], extra[1200], log[600];
    snprintf(dr, sizeof dr, "%s/term-ref", tmpdir());
    snprintf(dt, sizeof dt, "%s/term", tmpdir());
    CHECK_OK(reference_run("simple_cnn", dr, "2", ref));
    snprintf(extra, sizeof extra, "--epochs 2 --run-dir %s", dt);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s.log", dt);
    pid_t pid = spawn(cmd, log);
    for (int i = 0; i < 4000 && !log_has(log, "training simple_cnn"); i++) sleep_ms(2);
    sleep_ms(150);
    kill(pid, SIGTERM);
    CHECK(reap(pid) == 0);
    char want[700];
    snprintf(want, sizeof want, "resume with: ctorch train --resume %s", dt);
    CHECK(log_has(log, want) && log_has(log, "terminated at step"));
    json_t *m = load_json(path_in(dt, "manifest.json"));
    CHECK(m && !strcmp(json_string_value(json_object_get(m, "status")), "interrupted"));
    json_decref(m);
    CHECK(newest_step(dt) > 0);
    snprintf(cmd, sizeof cmd, "%s train --resume %s", bin(), dt);
    CHECK(run(cmd, log) == 0);
    CHECK_OK(sha_of(path_in(dt, "model.safetensors"), got));
    CHECK(!strcmp(got, ref));
    /* a finished run goes on with more epochs, as if it had been asked for 3 */
    snprintf(cmd, sizeof cmd, "%s train --resume %s --epochs 3", bin(), dt);
    CHECK(run(cmd, log) == 0 && log_has(log, "epoch 3/3"));
    m = load_json(path_in(dt, "manifest.json"));
    CHECK(m && json_integer_value(json_object_get(json_object_get(m, "final_metrics"), "epoch")) == 3);
    json_decref(m);
}

/* A flipped byte in the newest checkpoint: named, skipped, the previous one used, and the
 * result is still the uninterrupted run's. */
TEST(damaged_newest_checkpoint_falls_back_to_the_previous) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char ref[65], got[65], dr[512], dd[512], cmd[4096], extra[1200], log[600];
    snprintf(dr, sizeof dr, "%s/flip-ref", tmpdir());
    snprintf(dd, sizeof dd, "%s/flip", tmpdir());
    CHECK_OK(reference_run("simple_cnn", dr, "2", ref));
    /* epoch 1 only (checkpoints at steps 15 and 16), then on to epoch 2 */
    snprintf(extra, sizeof extra, "--epochs 1 --checkpoint-every 5 --run-dir %s", dd);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s.log", dd);
    CHECK(run(cmd, log) == 0);
    const char *newest = path_in(dd, "checkpoints/step-0000000016.safetensors");
    FILE *f = fopen(newest, "r+b");
    CHECK_NN(f);
    if (!f) return;
    fseek(f, -1000, SEEK_END); /* inside the tensor data */
    int c = fgetc(f);
    fseek(f, -1000, SEEK_END);
    fputc(c ^ 0x10, f);
    fclose(f);
    ct_checkpoint_status st;
    CHECK(ct_checkpoint_open(newest, &st) == NULL && st == CT_CHECKPOINT_CORRUPT);
    CHECK(strstr(ct_last_error(), "corrupt") != NULL);
    snprintf(cmd, sizeof cmd, "%s train --resume %s --epochs 2", bin(), dd);
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "step-0000000016.safetensors is corrupt"));
    CHECK(log_has(log, "falling back to the previous checkpoint"));
    CHECK(log_has(log, "from ") && log_has(log, "step-0000000015.safetensors"));
    CHECK_OK(sha_of(path_in(dd, "model.safetensors"), got));
    CHECK(!strcmp(got, ref));
    /* truncated: also detected */
    CHECK(truncate(path_in(dd, "checkpoints/step-0000000032.safetensors"), 5000) == 0);
    CHECK(ct_checkpoint_open(path_in(dd, "checkpoints/step-0000000032.safetensors"), &st) == NULL &&
          st == CT_CHECKPOINT_CORRUPT);
}

/* ---------------------------------------------------------------- faults */
/* A full disk while checkpointing: a warning, training goes on, the previous checkpoint
 * is intact; the final save failing exits 1 naming the file and the last checkpoint. A
 * tmpfs sized for two checkpoints holds the run directory. */
TEST(full_disk_while_checkpointing_warns_and_keeps_the_previous) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char mnt[512], cmd[4096], extra[1200], log[600];
    snprintf(mnt, sizeof mnt, "%s/tmpfs", tmpdir());
    mkdir(mnt, 0755);
    /* a checkpoint of simple_cnn with SGD momentum is ~486 KB: room for the manifest,
     * metrics and two checkpoints, not a third beside them nor the final weights */
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=1100k") != 0) {
        ct_test_skip("cannot mount a tmpfs here (needs root): full-disk behaviour not tested");
        return;
    }
    snprintf(extra, sizeof extra, "--epochs 1 --checkpoint-every 5 --run-dir %s/run", mnt);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s/enospc.log", tmpdir());
    int rc = run(cmd, log);
    CHECK_MSG(rc == 1, "exit %d, want 1", rc);
    CHECK(log_has(log, "warning: could not write checkpoint"));
    CHECK(log_has(log, "No space left on device"));
    CHECK(log_has(log, "training goes on"));
    CHECK(log_has(log, "epoch 1/1")); /* it trained to the end */
    CHECK(log_has(log, "saving the final weights to"));
    CHECK(log_has(log, "the last good checkpoint is"));
    /* the checkpoints on disk still verify; no temporary file is left */
    char run_dir[600];
    snprintf(run_dir, sizeof run_dir, "%s/run", mnt);
    long s = newest_step(run_dir);
    CHECK(s == 10);
    char p[700];
    snprintf(p, sizeof p, "%s/checkpoints/step-%010ld.safetensors", run_dir, s);
    ct_checkpoint_status st;
    ct_checkpoint *c = ct_checkpoint_open(p, &st);
    CHECK(c != NULL);
    ct_checkpoint_close(c);
    snprintf(cmd, sizeof cmd, "ls %s/checkpoints | grep -c tmp", run_dir);
    CHECK(run(cmd, log) == 1); /* grep found nothing */
    if (umount(mnt) != 0) fprintf(stderr, "    umount %s: %s\n", mnt, strerror(errno));
}

/* A NaN loss: --nan-policy stop names the step and the last good checkpoint, exit 1;
 * skip drops those updates, counts them and finishes. */
TEST(nan_loss_stops_or_is_skipped) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char dir[512], cmd[4096], extra[1200], log[600];
    snprintf(dir, sizeof dir, "%s/nan-stop", tmpdir());
    snprintf(extra, sizeof extra, "--epochs 1 --lr 10000 --checkpoint-every 1 --run-dir %s", dir);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s.log", dir);
    CHECK(run(cmd, log) == 1);
    CHECK(log_has(log, "the loss is NaN") || log_has(log, "the loss is inf"));
    CHECK(log_has(log, "Last good checkpoint: ") && log_has(log, "checkpoints/step-"));
    json_t *m = load_json(path_in(dir, "manifest.json"));
    CHECK(m && !strcmp(json_string_value(json_object_get(m, "status")), "failed"));
    json_decref(m);
    snprintf(dir, sizeof dir, "%s/nan-skip", tmpdir());
    snprintf(extra, sizeof extra, "--epochs 1 --lr 10000 --nan-policy skip --run-dir %s", dir);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "update skipped (--nan-policy skip"));
    CHECK(log_has(log, "nan_skipped"));
}

/* --resume targets that cannot be continued exit 2 with the reason. */
TEST(resume_refuses_bad_targets_and_result_changing_flags) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    char dir[512], cmd[4096], extra[1200], log[600];
    snprintf(dir, sizeof dir, "%s/refuse", tmpdir());
    snprintf(extra, sizeof extra, "--epochs 2 --max-steps 16 --run-dir %s", dir); /* 1 epoch */
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s.log", dir);
    CHECK(run(cmd, log) == 0);
    struct {
        const char *args, *needle;
    } cases[] = {
        {"--resume %s/nope", "no such run directory"},
        {"--resume %s/..", "not a ctorch run directory"},
        {"--resume %s --model resnet18", "--model resnet18 (the run has simple_cnn)"},
        {"--resume %s --lr 0.1", "--lr 0.1 (the run has 0.01)"},
        {"--resume %s --batch-size 32", "--batch-size"},
        {"--resume %s --epochs 1", "--epochs 1 (the run has 2; it may only be raised)"},
        {"--resume %s --run-dir /tmp/x", "drop --run-dir"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[700];
        snprintf(args, sizeof args, cases[i].args, dir);
        snprintf(cmd, sizeof cmd, "%s train %s", bin(), args);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 2 && log_has(log, cases[i].needle), "`%s`: exit %d, want 2 and \"%s\"", args,
                  rc, cases[i].needle);
    }
    /* the recorded values themselves are fine: the run had ended, nothing to do */
    snprintf(cmd, sizeof cmd, "%s train --resume %s --epochs 2 --lr 0.01 --model simple_cnn", bin(), dir);
    CHECK(run(cmd, log) == 0);
    /* a checkpoint written by a newer ctorch: its format version */
    char ck[700];
    snprintf(ck, sizeof ck, "%s/checkpoints/step-0000000016.safetensors", dir);
    ct_safetensors *st = ct_safetensors_load(ck);
    CHECK_NN(st);
    if (st) {
        const char **meta = calloc((size_t)(2 * st->n_meta + 1), sizeof *meta);
        for (int i = 0; i < st->n_meta; i++) {
            meta[2 * i] = st->meta_keys[i];
            meta[2 * i + 1] = !strcmp(st->meta_keys[i], "ctorch_checkpoint") ? "99" : st->meta_values[i];
        }
        CHECK_OK(ct_safetensors_save(ck, (const char *const *)st->names, st->tensors, st->n, meta));
        free(meta);
        ct_safetensors_free(st);
        snprintf(cmd, sizeof cmd, "%s train --resume %s", bin(), dir);
        CHECK(run(cmd, log) == 2 && log_has(log, "format 99, newer than this ctorch"));
    }
    /* a run written by a newer ctorch: the manifest's format version */
    char mp[700];
    snprintf(mp, sizeof mp, "%s/manifest.json", dir);
    json_t *m = load_json(mp);
    json_object_set_new(m, "format_version", json_integer(7));
    json_dump_file(m, mp, 0);
    json_decref(m);
    CHECK(run(cmd, log) == 2 && log_has(log, "written by a newer ctorch"));
}

/* ---------------------------------------------------------------- PyTorch */
/* model.safetensors is a plain state_dict: PyTorch's load_file + load_state_dict(strict)
 * take it, and give ctorch's logits. */
TEST(run_model_safetensors_loads_in_pytorch) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    const char *py = peer_python("torch, safetensors.torch");
    if (!py) {
        ct_test_skip("no Python with torch and safetensors (bench/setup-peer.sh, or set CTORCH_PEER_PYTHON)");
        return;
    }
    char dir[512], cmd[4096], extra[1200], log[600];
    snprintf(dir, sizeof dir, "%s/peer", tmpdir());
    snprintf(extra, sizeof extra, "--epochs 1 --run-dir %s", dir);
    recipe(cmd, sizeof cmd, "simple_cnn", extra);
    snprintf(log, sizeof log, "%s.log", dir);
    CHECK(run(cmd, log) == 0);
    ct_module *net = ct_model_create_ex("simple_cnn", 10, 3, 32, 32);
    CHECK_OK(ct_module_load(net, path_in(dir, "model.safetensors")));
    ct_module_eval(net);
    int64_t shape[4] = {4, 3, 32, 32};
    ct_manual_seed(1);
    ct_tensor *x = ct_randn(shape, 4, CT_FLOAT32), *y = ct_module_forward(net, x);
    CHECK_NN(y);
    char xin[600], yout[600];
    snprintf(xin, sizeof xin, "%s/x.f32", tmpdir());
    snprintf(yout, sizeof yout, "%s/y.f32", tmpdir());
    FILE *fx = fopen(xin, "wb"), *fy = fopen(yout, "wb");
    CHECK(fx && fy);
    if (fx && fy && y) {
        fwrite(ct_data(x), sizeof(float), (size_t)ct_numel(x), fx);
        fwrite(ct_data(y), sizeof(float), (size_t)ct_numel(y), fy);
    }
    if (fx) fclose(fx);
    if (fy) fclose(fy);
    snprintf(cmd, sizeof cmd, "%s tests/peer_load_run.py %s simple_cnn %s %s", py,
             path_in(dir, "model.safetensors"), xin, yout);
    int rc = run(cmd, log);
    if (rc != 0) show_log(log);
    CHECK(rc == 0 && log_has(log, "ok max_abs_diff="));
    ct_free(x);
    ct_free(y);
    ct_module_free(net);
}

/* Bad values of the run options exit 2 naming the option, before any training. */
TEST(run_options_bad_values_exit_2) {
    if (!data_dir()) {
        ct_test_skip("CTORCH_DATA with CIFAR-10 not set");
        return;
    }
    struct {
        const char *args, *needle;
    } cases[] = {
        {"--run-dir /proc/nope/run", "--run-dir"},
        {"--nan-policy sometimes", "--nan-policy"},
        {"--keep-checkpoints 0", "--keep-checkpoints"},
        {"--checkpoint-every -3", "--checkpoint-every"},
        {"--checkpoint-every", "--checkpoint-every needs a value"},
        {"--resume", "--resume needs a value"},
    };
    char cmd[4096], log[600];
    snprintf(log, sizeof log, "%s/badopts.log", tmpdir());
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        recipe(cmd, sizeof cmd, "simple_cnn", cases[i].args);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 2 && log_has(log, cases[i].needle), "`%s`: exit %d, want 2 and \"%s\"",
                  cases[i].args, rc, cases[i].needle);
    }
}
