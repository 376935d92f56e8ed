"""Data-parallel throughput on this machine (issue 13): simple_cnn on CIFAR-10, batch 64
per process, one thread per process, alternating in one run:

  ctorch 1 rank            build/ctorch train --threads 1
  ctorch 2 ranks           mpirun -np 2 build/ctorch train (DDP, overlapped buckets)
  ctorch 2 ranks, no overlap   the same with --no-overlap (buckets reduced after backward)
  ctorch 2 independent     two 1-rank runs at once on half the images each, no communication:
                           the machine's ceiling for 2 ranks (shared caches, memory, clocks)
  PyTorch 2 ranks          bench/torch_ddp.py: DDP on gloo, eager and channels-last
  PyTorch 1 rank           the same model without DDP

and prints the medians, the ratios (2 ranks / 1 rank; ctorch / the best PyTorch DDP) and
ctorch's per-step communication wait with and without overlap.

usage: python3 bench/ddp_bench.py [--pairs 3] [--images 12800] [--epochs 1|2] [--data-dir DIR]
                                  [--isa avx2] [--compile]
(--epochs 2: ctorch's img/s is its second epoch's, the first being a warm-up, as PyTorch's
figure excludes its first 5 steps)
(the PyTorch peer: bench/setup-peer.sh installs it into bench/.venv)"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def ctorch_cmd(args, world, overlap, run_dir, images):
    cmd = [os.path.join(ROOT, "build", "ctorch"), "train", "--model", "simple_cnn", "--dataset",
           "cifar10", "--data-dir", args.data_dir, "--train-limit", str(images),
           "--test-limit", "100", "--epochs", str(args.epochs), "--batch-size", "64", "--threads", "1",
           "--no-checkpoints", "--run-dir", run_dir]
    if not overlap:
        cmd.append("--no-overlap")
    if world > 1:
        cmd = ["mpirun", "--stdin", "none", "-np", str(world), "--bind-to", "none"] + cmd
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if args.isa:
        env["CTORCH_CPU_ISA"] = args.isa
    return cmd, env


def parse_ctorch(args, cmd, returncode, stdout, stderr):
    # the last epoch's line: with --epochs 2 the first is the warm-up (as PyTorch's 5 steps)
    last = [l for l in stdout.splitlines() if l.startswith(f"epoch {args.epochs}/{args.epochs} ")]
    m = re.search(r" ([0-9.]+) img/s", last[0]) if last else None
    if returncode != 0 or not m:
        sys.exit(f"ctorch failed ({' '.join(cmd)}):\n{stdout[-2000:]}{stderr[-2000:]}")
    w = re.search(r"ddp_wait ([0-9.]+) ms/step", last[0])
    return float(m.group(1)), float(w.group(1)) if w else None


def ctorch(args, world, overlap=True):
    d = tempfile.mkdtemp(prefix="ddp-bench-")
    cmd, env = ctorch_cmd(args, world, overlap, os.path.join(d, "run"), args.images)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    shutil.rmtree(d, ignore_errors=True)
    return parse_ctorch(args, cmd, out.returncode, out.stdout, out.stderr)


def ctorch_independent(args):
    """Two single-process runs at once, each on half the images (a 2-rank run's share per
    rank), no communication between them: their summed img/s is what this machine gives
    two processes, the ceiling for 2 ranks."""
    d = tempfile.mkdtemp(prefix="ddp-bench-")
    procs = []
    for i in range(2):
        cmd, env = ctorch_cmd(args, 1, True, os.path.join(d, f"run{i}"), args.images // 2)
        procs.append((cmd, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)))
    total = 0.0
    for cmd, p in procs:
        out, err = p.communicate(timeout=900)
        total += parse_ctorch(args, cmd, p.returncode, out, err)[0]
    shutil.rmtree(d, ignore_errors=True)
    return total


def torch_ddp(args, world, channels_last, compile_=False):
    cmd = [args.peer, os.path.join(HERE, "torch_ddp.py"), "--world", str(world), "--images",
           str(args.images), "--data-dir", args.data_dir]
    if channels_last:
        cmd.append("--channels-last")
    if compile_:
        cmd.append("--compile")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.exit(f"PyTorch failed ({' '.join(cmd)}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--images", type=int, default=12800, help="images per epoch")
    ap.add_argument("--epochs", type=int, default=1,
                    help="ctorch epochs per run; the last one is timed (2: the first is a warm-up)")
    ap.add_argument("--data-dir", default=os.environ.get("CTORCH_DATA", os.path.join(ROOT, "..", "shared", "data")))
    ap.add_argument("--peer", default=os.path.join(HERE, ".venv", "bin", "python"))
    ap.add_argument("--isa", help="CTORCH_CPU_ISA for ctorch (avx2: the AVX2 kernels on an AVX-512 machine)")
    ap.add_argument("--compile", action="store_true",
                    help="also PyTorch DDP under torch.compile (channels-last), next to ctorch 2 ranks")
    args = ap.parse_args()
    if not os.path.exists(args.peer):
        sys.exit("no PyTorch peer: run bench/setup-peer.sh (or pass --peer PYTHON)")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, {' '.join(isa)}; ctorch CTORCH_CPU_ISA="
          f"{args.isa or '(unset: the best level)'}")
    runs = {k: [] for k in ("c1", "c2", "c2n", "ci", "t1", "t2", "t2cl")}
    waits = {"c2": [], "c2n": []}
    torch_version = None
    for p in range(args.pairs):
        c1, _ = ctorch(args, 1)
        c2, w2 = ctorch(args, 2)
        c2n, w2n = ctorch(args, 2, overlap=False)
        ci = ctorch_independent(args)
        t2 = torch_ddp(args, 2, False)
        t2cl = torch_ddp(args, 2, True)
        t1 = torch_ddp(args, 1, False)
        torch_version = t2["torch"]
        for k, v in (("c1", c1), ("c2", c2), ("c2n", c2n), ("ci", ci), ("t1", t1["images_per_sec"]),
                     ("t2", t2["images_per_sec"]), ("t2cl", t2cl["images_per_sec"])):
            runs[k].append(v)
        waits["c2"].append(w2)
        waits["c2n"].append(w2n)
        print(f"round {p + 1}: ctorch 1 rank {c1:.0f}, 2 ranks {c2:.0f} (wait {w2} ms/step), "
              f"no overlap {c2n:.0f} (wait {w2n} ms/step), 2 independent processes {ci:.0f}; PyTorch {torch_version} 1 rank "
              f"{t1['images_per_sec']:.0f}, DDP gloo {t2['images_per_sec']:.0f}, channels-last "
              f"{t2cl['images_per_sec']:.0f} img/s", flush=True)
    if args.compile:  # one more alternation: ctorch 2 ranks, PyTorch compiled DDP
        for p in range(args.pairs):
            c2, _ = ctorch(args, 2)
            tc = torch_ddp(args, 2, True, True)["images_per_sec"]
            runs.setdefault("c2c", []).append(c2)
            runs.setdefault("t2c", []).append(tc)
            print(f"compile round {p + 1}: ctorch 2 ranks {c2:.0f}, PyTorch DDP gloo + torch.compile "
                  f"channels-last {tc:.0f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    scale = statistics.median([b / a for a, b in zip(runs["c1"], runs["c2"])])
    best_t2 = [max(a, b) for a, b in zip(runs["t2"], runs["t2cl"])]
    vs_torch = statistics.median([c / t for c, t in zip(runs["c2"], best_t2)])
    tscale = statistics.median([b / a for a, b in zip(runs["t1"], best_t2)])
    step = lambda ips: 1000.0 * 64 * 2 / ips  # ms per step of one rank (2 ranks x 64)
    print()
    print("| | images/s (median) | step ms |")
    print("|---|---|---|")
    print(f"| ctorch 1 rank x 1 thread | {med['c1']:.0f} | {1000.0 * 64 / med['c1']:.2f} |")
    print(f"| ctorch 2 ranks x 1 thread, overlap | {med['c2']:.0f} | {step(med['c2']):.2f} |")
    print(f"| ctorch 2 ranks x 1 thread, no overlap | {med['c2n']:.0f} | {step(med['c2n']):.2f} |")
    print(f"| ctorch 2 independent processes x 1 thread (no communication) | {med['ci']:.0f} | "
          f"{step(med['ci']):.2f} |")
    print(f"| PyTorch {torch_version} 1 rank x 1 thread | {med['t1']:.0f} | {1000.0 * 64 / med['t1']:.2f} |")
    print(f"| PyTorch DDP gloo 2 x 1 thread | {med['t2']:.0f} | {step(med['t2']):.2f} |")
    print(f"| PyTorch DDP gloo 2 x 1 thread, channels-last | {med['t2cl']:.0f} | {step(med['t2cl']):.2f} |")
    if "t2c" in runs:
        print(f"| PyTorch DDP gloo 2 x 1 thread, channels-last + torch.compile | {med['t2c']:.0f} | "
              f"{step(med['t2c']):.2f} |")
    wv = [w for w in waits["c2"] if w is not None]
    wn = [w for w in waits["c2n"] if w is not None]
    print()
    print(f"ctorch 2 ranks / 1 rank: {scale:.3f} (median of per-round ratios; bar >= 1.85)")
    print("2 independent processes / 1 rank: %.3f (this machine's ceiling for 2 ranks); 2 ranks / "
          "2 independent processes: %.3f" % (
              statistics.median([b / a for a, b in zip(runs["c1"], runs["ci"])]),
              statistics.median([b / a for a, b in zip(runs["ci"], runs["c2"])])))
    print(f"ctorch 2 ranks / best PyTorch DDP 2 ranks: {vs_torch:.3f} (bar >= 1.5)")
    print(f"PyTorch DDP 2 ranks / 1 rank: {tscale:.3f}")
    if "t2c" in runs:
        print("ctorch 2 ranks / PyTorch compiled DDP 2 ranks: %.3f" % statistics.median(
            [c / t for c, t in zip(runs["c2c"], runs["t2c"])]))
    if wv and wn:
        print(f"communication wait after backward: {statistics.median(wv):.3f} ms/step with "
              f"overlap, {statistics.median(wn):.3f} ms/step without")


if __name__ == "__main__":
    main()
