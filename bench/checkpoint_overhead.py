#!/usr/bin/env python3
"""Cost of checkpointing (issue 12's bar: default checkpointing within 2% of none).

Runs `ctorch train` (simple_cnn, CIFAR-10, 10 epochs by default) with the default
checkpointing (one training-state checkpoint per epoch, plus manifest / metrics writes)
and with --no-checkpoints, alternating, and prints each pair's throughput ratio and the
median. Throughput is training images per wall-clock second of the whole process (data
loading, evaluation and every write included).

  python3 bench/checkpoint_overhead.py [--pairs 3] [--epochs 10] [--train-limit 10000]
        [--deterministic] [--extra "--checkpoint-every 50"]
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--ctorch", default="build/ctorch")
ap.add_argument("--data-dir", default=os.environ.get("CTORCH_DATA", "../shared/data"))
ap.add_argument("--model", default="simple_cnn")
ap.add_argument("--pairs", type=int, default=3)
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--train-limit", type=int, default=10000)
ap.add_argument("--deterministic", action="store_true")
ap.add_argument("--extra", default="", help="more options for the checkpointing run")
a = ap.parse_args()

tmp = tempfile.mkdtemp(prefix="ctorch-ckpt-bench-")
base = [a.ctorch, "train", "--model", a.model, "--dataset", "cifar10", "--data-dir", a.data_dir,
        "--epochs", str(a.epochs), "--train-limit", str(a.train_limit), "--test-limit", "2000"]
if a.deterministic:
    base.append("--deterministic")


def one(label, extra):
    d = os.path.join(tmp, label)
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    p = subprocess.run(base + ["--run-dir", d] + extra, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{label} failed:\n{p.stdout}\n{p.stderr}")
    import json
    ck = json.load(open(os.path.join(d, "manifest.json"))).get("checkpoint_seconds") or 0.0
    return a.epochs * a.train_limit / secs, secs, ck


print(f"cpu: {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}")
print(f"command: {' '.join(base)} --run-dir D [checkpointing: default {a.extra} | --no-checkpoints]")
ratios, fracs = [], []
for i in range(a.pairs):
    order = [("ckpt", a.extra.split()), ("none", ["--no-checkpoints"])]
    if i % 2:
        order.reverse()
    res = {label: one(label, extra) for label, extra in order}
    r = res["ckpt"][0] / res["none"][0]
    ratios.append(r)
    frac = res["ckpt"][2] / res["ckpt"][1]
    fracs.append(frac)
    print(f"pair {i + 1}: checkpointing {res['ckpt'][0]:.0f} img/s ({res['ckpt'][1]:.1f} s, "
          f"{res['ckpt'][2]:.3f} s writing checkpoints = {100 * frac:.2f}%), none "
          f"{res['none'][0]:.0f} img/s ({res['none'][1]:.1f} s): ratio {r:.4f}")
print(f"median ratio (checkpointing / none): {statistics.median(ratios):.4f}  (bar: >= 0.98); "
      f"time spent writing checkpoints (manifest's checkpoint_seconds): median {100 * statistics.median(fracs):.2f}% of the run")
shutil.rmtree(tmp, ignore_errors=True)
