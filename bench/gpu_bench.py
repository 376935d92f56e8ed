#!/usr/bin/env python3
"""ctorch vs PyTorch eager on one GPU: training throughput, measured side by side.

For every case (model, batch size, TF32 off/on) one *pair* is one run of
`ctorch bench --device cuda --json` and one of `bench/torch_bench.py --device cuda`, in an
order that alternates from pair to pair; pairs go round all cases before the next pair
starts, so a budget that runs out leaves every case with the same number of pairs. The table
gives the median training images/s of each runner and the median of the per-pair ratios
ctorch / PyTorch, ready to paste into bench/RESULTS.md. Before the pairs, --warmup-runs runs of
each runner on the first case are made and discarded (GPU clocks, file caches, PyTorch's
first import).

Both runners: float32, synthetic data made on the host and moved to the GPU once, SGD (lr
0.01, momentum 0.9), 3 warm-up steps then --steps timed steps, each step ending with the
loss and the number of correct predictions read back to the host; cudnn.benchmark on
(ctorch: CTORCH_CUDNN_BENCHMARK=1, its default); TF32 for matmuls and convolutions as the
case says (ctorch: CTORCH_TF32=0/1; PyTorch: --tf32 0/1, see torch_bench.py).

usage: python3 bench/gpu_bench.py [--cases simple_cnn:64,simple_cnn:512,resnet18_cifar:256]
       [--tf32 0,1] [--pairs 3] [--steps simple_cnn=500,resnet18_cifar=100] [--budget SECONDS]
       [--warmup-runs 1]
       [--report FILE.md] [--json-out FILE.json] [--ctorch build/ctorch] [--python python3]
       [--ctorch-env K=V ...] [--torch-device cuda|cpu]

--torch-device cpu exists only to exercise this script on a machine without a GPU (ctorch on
the CUDA emulator, PyTorch on the CPU): its ratios mean nothing. Exit status: 0 when every
run succeeded, 1 when a run failed, 2 for a usage error or a missing prerequisite."""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_bench import last_json, median  # noqa: E402  (the CPU harness beside this file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = "simple_cnn:64,simple_cnn:512,resnet18_cifar:256"
DEFAULT_STEPS = {"simple_cnn": 500, "resnet18_cifar": 100, "mlp": 1000}
BAR = 1.0  # the bar: ctorch >= PyTorch eager on the same GPU


def log(msg=""):
    print(msg, flush=True)


def fail(msg, code=2):
    print(f"gpu_bench.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def fmt(v, nd=1):
    return "–" if v is None else f"{v:,.{nd}f}"


class Runner:
    def __init__(self, a):
        self.a = a
        self.t_start = time.monotonic()
        self.records = []  # every run, in order

    def left(self):
        return self.a.budget - (time.monotonic() - self.t_start) if self.a.budget else float("inf")

    def run(self, who, case, tf32, steps):
        a = self.a
        model, batch = case
        env = dict(os.environ)
        if who == "ctorch":
            cmd = [a.ctorch, "bench", "--model", model, "--batch-size", str(batch), "--steps", str(steps),
                   "--device", "cuda", "--json"]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            env.update(a.ctorch_env)
            env["CTORCH_TF32"] = str(tf32)
            env.setdefault("CTORCH_CUDNN_BENCHMARK", "1")
        else:
            cmd = [a.python, os.path.join(ROOT, "bench", "torch_bench.py"), "--model", model,
                   "--batch-size", str(batch), "--steps", str(steps), "--warmup", "3",
                   "--device", a.torch_device, "--tf32", str(tf32), "--cudnn-benchmark", "1"]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            env["PYTHONUNBUFFERED"] = "1"
        timeout = max(10.0, min(a.timeout, self.left() + 30)) if a.budget else a.timeout
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = 124, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), \
                f"timed out after {timeout:.0f} s"
        wall = time.monotonic() - t0
        j = last_json(out) if rc == 0 else None
        ips = j.get("train_images_per_sec") if j else None
        rec = {"runner": who, "model": model, "batch": batch, "tf32": tf32, "steps": steps, "rc": rc,
               "wall_s": round(wall, 2), "train_images_per_sec": ips,
               "infer_images_per_sec": j.get("infer_images_per_sec") if j else None,
               "json": j, "cmd": " ".join(cmd)}
        if rc != 0 or ips is None:
            rec["stderr_tail"] = (err or out or "")[-2000:]
        self.records.append(rec)
        status = f"{ips:,.1f} img/s" if ips is not None else f"FAILED rc={rc}"
        log(f"  {who:6s} {model} b{batch} tf32={tf32}: {status} ({wall:.1f} s)")
        if rc != 0 or ips is None:
            for line in (err or out or "").strip().splitlines()[-6:]:
                log(f"      | {line}")
        return rec


def parse_cases(s):
    cases = []
    for item in s.split(","):
        item = item.strip()
        if not item:
            continue
        m, _, b = item.partition(":")
        if not b.isdigit():
            fail(f"--cases: '{item}' is not MODEL:BATCH")
        cases.append((m, int(b)))
    return cases


def parse_steps(s):
    d = dict(DEFAULT_STEPS)
    for item in (s or "").split(","):
        if item.strip():
            k, _, v = item.partition("=")
            if not v.isdigit():
                fail(f"--steps: '{item}' is not MODEL=N or MODEL:BATCH=N")
            d[k.strip()] = int(v)
    return d


def steps_for(steps, model, batch):
    return steps.get(f"{model}:{batch}", steps.get(model, 100))


def table(results, a, cases, tf32s):
    """Markdown: one row per case, medians over the pairs that completed."""
    rows = ["| model | batch | TF32 | ctorch img/s | PyTorch img/s | ctorch / PyTorch | bar (>= 1.0) | pairs |",
            "|---|---:|---|---:|---:|---:|---|---:|"]
    verdicts = []
    for (model, batch) in cases:
        for tf32 in tf32s:
            prs = results.get((model, batch, tf32), [])
            ok = [(c, t) for c, t in prs if c is not None and t is not None]
            c_med = median([c for c, _ in ok])
            t_med = median([t for _, t in ok])
            r_med = median([c / t for c, t in ok if t])
            bar = "–" if r_med is None else ("met" if r_med >= BAR else "NOT met")
            verdicts.append(r_med is not None and r_med >= BAR)
            rows.append(f"| {model} | {batch} | {'on' if tf32 else 'off'} | {fmt(c_med)} | {fmt(t_med)} | "
                        f"{'–' if r_med is None else f'**{r_med:.2f}x**'} | {bar} | {len(ok)} |")
    return "\n".join(rows), verdicts


def machine_info(a, records):
    info = {}
    tj = next((r["json"] for r in records if r["runner"] == "torch" and r["json"]), None)
    if tj:
        for k in ("gpu", "torch", "cuda", "cudnn"):
            if k in tj:
                info[k] = tj[k]
    try:
        v = subprocess.run([a.ctorch, "--version"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, **a.ctorch_env})
        info["ctorch_version"] = " / ".join(l.strip() for l in v.stdout.strip().splitlines())
    except Exception as e:  # noqa: BLE001 - informational only
        info["ctorch_version"] = f"? ({e})"
    try:
        info["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            info["commit"] += " + uncommitted changes"
    except Exception:  # noqa: BLE001
        info["commit"] = "?"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help="MODEL:BATCH,... (default %(default)s)")
    ap.add_argument("--tf32", default="0,1", help="TF32 settings to measure, 0 and/or 1 (default %(default)s)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", default="", help="timed steps per run: MODEL=N or MODEL:BATCH=N,... "
                    f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_STEPS.items())})")
    ap.add_argument("--threads", type=int, default=0, help="host threads for both (default: each one's default)")
    ap.add_argument("--budget", type=float, default=0, help="seconds; no new pair starts after this (0: none)")
    ap.add_argument("--warmup-runs", type=int, default=1, help="discarded runs of each runner first (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run (default %(default)s)")
    ap.add_argument("--ctorch", default=os.path.join(ROOT, "build", "ctorch"))
    ap.add_argument("--python", default="python3", help="the Python whose PyTorch is measured (default %(default)s)")
    ap.add_argument("--ctorch-env", action="append", default=[], metavar="K=V",
                    help="environment for the ctorch runs only (e.g. CTORCH_CUDA_PLUGIN=...)")
    ap.add_argument("--torch-device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: only to exercise this script without a GPU; the ratios mean nothing")
    ap.add_argument("--report", help="write the Markdown report here")
    ap.add_argument("--json-out", help="write every run's figures here (rewritten after each run)")
    a = ap.parse_args()
    a.ctorch_env = dict(kv.split("=", 1) for kv in a.ctorch_env if "=" in kv)
    cases = parse_cases(a.cases)
    tf32s = [int(t) for t in a.tf32.split(",") if t.strip() != ""]
    if not cases or any(t not in (0, 1) for t in tf32s) or not tf32s or a.pairs < 1:
        fail("nothing to measure: check --cases, --tf32 (0,1) and --pairs")
    steps = parse_steps(a.steps)
    if not os.access(a.ctorch, os.X_OK):
        fail(f"{a.ctorch} is not an executable: build it first (make), or pass --ctorch")

    # prerequisites, checked once so that a missing piece fails in seconds, not per run
    chk = subprocess.run([a.python, "-c", "import torch, json; print(json.dumps({'v': torch.__version__, "
                          "'cuda': torch.cuda.is_available()}))"], capture_output=True, text=True, timeout=300)
    tj = last_json(chk.stdout)
    if chk.returncode != 0 or not tj:
        fail(f"{a.python} cannot import torch: {chk.stderr.strip()[-500:]}")
    if a.torch_device == "cuda" and not tj["cuda"]:
        fail(f"PyTorch {tj['v']} under {a.python} sees no CUDA device (torch.cuda.is_available() is False); "
             "run on the GPU machine (docs/gpu-check.md), or pass --torch-device cpu to exercise the script only")
    ver = subprocess.run([a.ctorch, "--version"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **a.ctorch_env})
    cuda_line = next((l for l in ver.stdout.splitlines() if l.startswith("cuda:")), "cuda: ?")
    if "unavailable" in cuda_line or ver.returncode != 0:
        fail(f"ctorch cannot use CUDA: {cuda_line.strip()} {ver.stderr.strip()}")
    log(f"gpu_bench: {a.ctorch} ({cuda_line.strip()}) vs PyTorch {tj['v']} on {a.torch_device}; "
        f"cases {a.cases}, TF32 {a.tf32}, {a.pairs} pair(s)" + (f", budget {a.budget:.0f} s" if a.budget else ""))
    if a.torch_device != "cuda":
        log("gpu_bench: WARNING: PyTorch runs on the CPU (--torch-device cpu): the ratios below mean nothing")

    R = Runner(a)
    results = {}  # (model, batch, tf32) -> [(ctorch ips, torch ips)]
    out_of_budget = False

    def save_json():
        if a.json_out:
            tmp = a.json_out + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"records": R.records, "args": {k: v for k, v in vars(a).items()}}, f, indent=1)
            os.replace(tmp, a.json_out)

    for w in range(a.warmup_runs):
        model, batch = cases[0]
        n = steps_for(steps, model, batch)
        log(f"warm-up run {w + 1}/{a.warmup_runs} (discarded): {model} b{batch}, {n} steps")
        for who in ("torch", "ctorch"):
            R.run(who, (model, batch), tf32s[0], n)["warmup"] = True

    for p in range(a.pairs):
        for ci, (model, batch) in enumerate(cases):
            for tf32 in tf32s:
                if R.left() <= 0:
                    out_of_budget = True
                    break
                n = steps_for(steps, model, batch)
                order = ("ctorch", "torch") if (p + ci + tf32) % 2 == 0 else ("torch", "ctorch")
                log(f"pair {p + 1}/{a.pairs}: {model} b{batch} TF32 {'on' if tf32 else 'off'}, {n} steps "
                    f"({order[0]} first)")
                got = {}
                for who in order:
                    got[who] = R.run(who, (model, batch), tf32, n)["train_images_per_sec"]
                results.setdefault((model, batch, tf32), []).append((got["ctorch"], got["torch"]))
                c, t = got["ctorch"], got["torch"]
                if c is not None and t:
                    log(f"    ratio {c / t:.2f}x")
                save_json()
            if out_of_budget:
                break
        if out_of_budget:
            log(f"gpu_bench: budget of {a.budget:.0f} s spent after {p} full pair(s); reporting what was measured")
            break

    info = machine_info(a, R.records)
    tab, verdicts = table(results, a, cases, tf32s)
    failed = [r for r in R.records if (r["rc"] != 0 or r["train_images_per_sec"] is None) and not r.get("warmup")]
    lines = ["#### Training throughput on the GPU, float32 (images/s, median over pairs; ratio = median of "
             "per-pair ctorch / PyTorch)", ""]
    lines.append(f"GPU: {info.get('gpu') or info.get('nvidia_smi', '?')}" +
                 (f" ({info['nvidia_smi']})" if info.get("nvidia_smi") else "") +
                 f"; PyTorch {info.get('torch', tj['v'])} eager (CUDA {info.get('cuda', '?')}, cuDNN "
                 f"{info.get('cudnn', '?')}), cudnn.benchmark on; ctorch {info.get('commit', '?')}"
                 f" ({info.get('ctorch_version', '?')}); {a.pairs} pair(s) requested, steps "
                 + ", ".join(f"{m} b{b}: {steps_for(steps, m, b)}" for m, b in cases)
                 + f", 3 warm-up steps, {a.warmup_runs} discarded warm-up run(s) per runner. Command: `python3 bench/gpu_bench.py"
                 + (f" --cases {a.cases}" if a.cases != DEFAULT_CASES else "")
                 + (f" --tf32 {a.tf32}" if a.tf32 != "0,1" else "")
                 + f" --pairs {a.pairs}`.")
    if a.torch_device != "cuda":
        lines.append("")
        lines.append("**PyTorch ran on the CPU (--torch-device cpu): script check only, the ratios mean nothing.**")
    lines += ["", tab, ""]
    if failed:
        lines.append(f"{len(failed)} run(s) failed:")
        for r in failed:
            tail = (r.get("stderr_tail") or "").strip().splitlines()
            lines.append(f"- {r['runner']} {r['model']} b{r['batch']} tf32={r['tf32']}: rc {r['rc']}: "
                         f"`{tail[-1] if tail else '?'}`")
        lines.append("")
    if out_of_budget:
        lines.append(f"(budget of {a.budget:.0f} s reached: fewer pairs than requested)")
        lines.append("")
    report = "\n".join(lines)
    log("")
    log(report)
    if a.report:
        with open(a.report, "w") as f:
            f.write(report + "\n")
    save_json()
    all_met = verdicts and all(verdicts)
    log(f"gpu_bench: bar ctorch >= PyTorch: {'met in every case' if all_met else 'NOT met in every case'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
