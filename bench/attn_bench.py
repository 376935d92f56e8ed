#!/usr/bin/env python3
"""scaled_dot_product_attention forward + backward: ctorch against PyTorch 2.x.

Alternating pairs (ctorch, then torch, each in a fresh process, so neither warms the
other's caches), each side the median of --reps forward + backward passes after one
warm-up; the reported ratio is the median over the pairs of torch_time / ctorch_time
(> 1: ctorch faster). q, k, v are [batch, heads, L, E] float32 requiring grad.
torch: F.scaled_dot_product_attention eager (its CPU flash-attention kernel); with
--compile also torch.compile of the same function, and the better of the two counts.

Run (serialised with the other benchmarks):
  make lib && flock /tmp/bench.lock bench/.venv/bin/python bench/attn_bench.py
  (from a worktree: --python /work/main/bench/.venv/bin/python)
"""
import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_SIDE = r"""
import sys, time, statistics, torch, torch.nn.functional as F
B, H, L, E, threads, reps, causal, compiled = map(int, sys.argv[1:9])
torch.set_num_threads(threads)
torch.manual_seed(0)
q, k, v = (torch.randn(B, H, L, E, requires_grad=True) for _ in range(3))
g = torch.ones(B, H, L, E)
f = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
if compiled:
    f = torch.compile(f)
ts = []
for r in range(-2 if compiled else -1, reps):
    q.grad = k.grad = v.grad = None
    t0 = time.perf_counter()
    y = f(q, k, v)
    y.backward(g)
    dt = time.perf_counter() - t0
    if r >= 0:
        ts.append(dt)
print(f"{statistics.median(ts):.6f}")
"""

LIBS = ["-lopenblas", "-lz", "-ljansson", "-lcrypto", "-larchive", "-ljpeg", "-lpng",
        "-lprotobuf-c", "-lpthread", "-ldl", "-lm"]


def build(lib):
    exe = os.path.join(ROOT, "build", "bench", "attn_bench")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    cmd = ["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-I" + os.path.join(ROOT, "include"),
           os.path.join(ROOT, "bench", "attn_bench.c"), lib, "-o", exe] + LIBS
    subprocess.run(cmd, check=True)
    return exe


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:3])}...: {r.stderr.strip()[-500:]}")
    return float(r.stdout.strip().splitlines()[-1])


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, nargs="+", default=[3, 12])
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--python", default=sys.executable, help="the Python with torch 2.x")
    ap.add_argument("--lib", default=os.path.join(ROOT, "build", "libctorch.a"))
    a = ap.parse_args()
    exe = build(a.lib)
    ver = subprocess.run([a.python, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True).stdout.strip()
    print(f"CPU: {cpu_model()}, {a.threads} threads; torch {ver}; "
          f"{'causal ' if a.causal else ''}fwd+bwd float32")
    for h in a.heads:
        shape = [a.batch, h, a.seq, a.dim]
        args = [str(x) for x in shape + [a.threads, a.reps, int(a.causal)]]
        ratios, cts, tts = [], [], []
        for _ in range(a.pairs):
            ct = run([exe] + args)
            tt = run([a.python, "-c", TORCH_SIDE] + args + ["0"])
            if a.compile:
                tt = min(tt, run([a.python, "-c", TORCH_SIDE] + args + ["1"]))
            cts.append(ct)
            tts.append(tt)
            ratios.append(tt / ct)
        print(f"B={a.batch} H={h} L={a.seq} E={a.dim}: ctorch {statistics.median(cts)*1e3:.1f} ms, "
              f"torch {statistics.median(tts)*1e3:.1f} ms, median ratio torch/ctorch "
              f"{statistics.median(ratios):.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
