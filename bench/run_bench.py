#!/usr/bin/env python3
"""ctorch vs PyTorch on this machine, measured side by side.

Runs `ctorch bench` and the same model in PyTorch (bench/torch_bench.py under the peer's
Python: bench/.venv/bin/python, PyTorch 2.x from PyPI installed by bench/setup-peer.sh, else
Debian's /usr/bin/python3 with PyTorch 1.13), PyTorch in each of its variants (eager,
channels_last, torch.compile; autocast bf16 with and without channels_last, and compiled, for
the bf16 rows) in its best environment, ALTERNATELY in one run, for several pairs, and prints
images/s per run and the median ratios against the best variant. A pair during which another
process took the CPU is discarded and run again (up to a limit): the machine's busy time from
/proc/stat over a run is compared with the run's own CPU time (wait4's rusage).

Parts (--parts, default all):
  cases     simple_cnn train b64, simple_cnn inference b256, mlp train b64, resnet18_cifar train b128,
            vit_tiny train b128, float32 and bf16 (`ctorch bench --amp bf16` vs PyTorch's autocast bf16)
  scaling   1 -> T threads, ctorch and PyTorch at its best
  gemm      SGEMM peak GFLOP/s with OpenBLAS (bench/gemm_peak.c), T threads and 1 thread
  layers    per-layer GFLOP/s of ctorch's convolutions and linears (bench/layer_bench.c)
            against the T-thread GEMM peak
  pipeline  `ctorch train` (CIFAR-10, --log-json) images/s vs `ctorch bench` for simple_cnn b64
  rss       peak resident memory: `ctorch train` vs bench/pytorch_train.py, simple_cnn, 1 epoch

usage: python3 bench/run_bench.py [--pairs 3] [--cases a,b] [--amp-rows a,b|none] [--variants a,b]
       [--isa native|avx2] [--peer-python PY] [--threads 2] [--parts a,b]
       [--report FILE] [--json-out FILE]   (see --help; docs/bench.md)
"""
import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
BEST_ENV = {"OPENBLAS_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "4294967296",
            "MALLOC_TRIM_THRESHOLD_": "4294967296"}
TORCH_HINT = ("bench/setup-peer.sh (PyTorch 2.x in bench/.venv), or Debian's 1.13: "
              "apt-get install -y python3-torch python3-torchvision")
VENV_PYTHON = os.path.join(ROOT, "bench", ".venv", "bin", "python")
# --isa: one environment for every program of the run; each reads its own variables.
# ctorch: CTORCH_CPU_ISA (its kernels) and OPENBLAS_CORETYPE (its OpenBLAS GEMMs); PyTorch:
# ATEN_CPU_CAPABILITY (ATen's kernels, inductor's generated code), ONEDNN_MAX_CPU_ISA
# (convolutions), MKL_ENABLE_INSTRUCTIONS (the PyPI build's BLAS), OPENBLAS_CORETYPE (Debian's)
ISA_ENV = {"native": {},
           "avx2": {"CTORCH_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}}
# the PyTorch variants (bench/torch_bench.py --variant) of the float32 and of the bf16 rows
FP32_VARIANTS = ("eager", "channels_last", "compile")
BF16_VARIANTS = ("autocast_bf16", "autocast_bf16_cl", "compile_bf16")

# name: model, batch, which figure of the JSON is the case's, default steps, bar vs torch-best
# (float32 rows); bf16 rows: bf16_peer, the bar vs PyTorch's best autocast variant, and
# bf16_own, the bar vs ctorch's own float32 figure of the same run (none where absent)
CASES = {
    "simple_cnn_train": dict(model="simple_cnn", batch=64, metric="train", steps=60, target=1.5,
                             bf16_own=1.3),
    "simple_cnn_infer": dict(model="simple_cnn", batch=256, metric="infer", steps=30, target=1.5),
    "mlp_train": dict(model="mlp", batch=64, metric="train", steps=2000, target=1.5),
    "resnet18_train": dict(model="resnet18_cifar", batch=128, metric="train", steps=2, target=1.2,
                           bf16_peer=1.2, bf16_own=1.6),
    # issue 16: torchvision's VisionTransformer(32, patch 4, 12 layers, 3 heads, 192, mlp 768)
    "vit_tiny_train": dict(model="vit_tiny", batch=128, metric="train", steps=2, target=1.3,
                           bf16_peer=1.3),
}
RUNNER_TITLE = {"ctorch": "ctorch", "torch_installed": "PyTorch eager as installed",
                "ctorch_baseline": "ctorch (baseline build)"}


def title(runner):
    """A runner is ctorch, ctorch_baseline, torch_installed or torch:VARIANT (at its best)."""
    return RUNNER_TITLE.get(runner) or f"PyTorch {runner.split(':', 1)[1]}"


def log(msg=""):
    print(msg, flush=True)


def fail(msg, code=2):
    print(f"run_bench.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


# ------------------------------------------------------------------ measuring one command
def machine_busy_seconds():
    """CPU-seconds the whole machine spent busy since boot (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    # steal counts too: time the hypervisor gave our CPUs to someone else slows a run the same
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class RunResult:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def as_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("stdout", "stderr")}


_current_child = None


def run_cmd(cmd, env, timeout, threshold, label=""):
    """Runs cmd (list) with env; returns a RunResult with wall, own CPU, other processes' CPU,
    contended flag, peak RSS (MiB), return code, stdout, stderr, timed_out."""
    global _current_child
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        b0, s0, t0 = machine_busy_seconds(), self_cpu(), time.monotonic()
        try:
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT, start_new_session=True)
        except OSError as e:
            return RunResult(label=label, cmd=cmd, rc=127, wall=0.0, own_cpu=0.0, other_cpu=0.0, contended=False,
                             rss_mib=0.0, timed_out=False, stdout="", stderr=str(e))
        _current_child = p
        timed_out = False
        try:
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - t0 > timeout:
                    timed_out = True
                    os.killpg(p.pid, signal.SIGKILL)
                    pid, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGKILL)
                os.wait4(p.pid, 0)
            except (OSError, ChildProcessError):
                pass
            p.returncode = -9
            raise
        finally:
            _current_child = None
        wall = time.monotonic() - t0
        b1, s1 = machine_busy_seconds(), self_cpu()
        p.returncode = os.waitstatus_to_exitcode(status)
        own = ru.ru_utime + ru.ru_stime
        other = max(0.0, (b1 - b0) - own - (s1 - s0))
        contended = other > threshold * wall * NCPU
        out.seek(0)
        err.seek(0)
        return RunResult(label=label, cmd=cmd, rc=p.returncode, wall=wall, own_cpu=own, other_cpu=other,
                         contended=contended, rss_mib=ru.ru_maxrss / 1024.0, timed_out=timed_out,
                         stdout=out.read().decode(errors="replace"), stderr=err.read().decode(errors="replace"))


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def describe_failure(r):
    why = "timed out" if r.timed_out else f"exit code {r.rc}"
    tail = "\n    ".join((r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()[-6:])
    return f"{' '.join(r.cmd)}: {why}\n    {tail}"


def wait_quiet(args):
    """Waits (up to --quiet-wait seconds) until other processes use less than the contention
    threshold of the machine, sampled over one second. Returns the last busy fraction."""
    deadline = time.monotonic() + args.quiet_wait
    said = False
    while True:
        b0, s0, t0 = machine_busy_seconds(), self_cpu(), time.monotonic()
        time.sleep(1.0)
        frac = max(0.0, machine_busy_seconds() - b0 - (self_cpu() - s0)) / ((time.monotonic() - t0) * NCPU)
        if frac <= args.threshold or time.monotonic() > deadline:
            if said:
                log(f"    ... {'quiet' if frac <= args.threshold else 'still busy, going on'} "
                    f"(others {100 * frac:.0f}% of the machine)")
            return frac
        if not said:
            log(f"    waiting for the machine to go quiet: others use {100 * frac:.0f}% of it "
                f"(up to {args.quiet_wait:.0f} s)")
            said = True
        time.sleep(2.0)


# ------------------------------------------------------------------------- the runners
class Bench:
    def __init__(self, args, snap_dir):
        self.args = args
        self.snap = snap_dir
        self.ctorch = os.path.join(snap_dir, "ctorch")
        self.baseline = os.path.join(snap_dir, "ctorch_baseline")
        isa = ISA_ENV[args.isa]
        self.base_env = dict(os.environ, **isa)
        self.best_env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        self.best_env.update(BEST_ENV)
        self.best_env.update(isa)
        self.errors = []

    def steps_for(self, case):
        return self.args.steps.get(case, CASES[case]["steps"])

    def timeout_for(self, case):
        if self.args.timeout:
            return self.args.timeout
        return 1800 if CASES[case]["model"] in ("resnet18_cifar", "vit_tiny") else 600

    def baseline_model(self, model):
        """A baseline build from before issue 15 calls the CIFAR ResNet resnet18."""
        if model != "resnet18_cifar":
            return model
        if not hasattr(self, "_baseline_knows_cifar"):
            try:
                out = subprocess.run([self.baseline, "help", "train"], capture_output=True, text=True,
                                     timeout=60).stdout
            except (OSError, subprocess.SubprocessError):
                out = ""
            self._baseline_knows_cifar = "resnet18_cifar" in out
        return model if self._baseline_knows_cifar else "resnet18"

    def command(self, runner, case, threads, amp=False):
        c = CASES[case]
        steps = self.steps_for(case)
        if runner in ("ctorch", "ctorch_baseline"):
            model = c["model"] if runner == "ctorch" else self.baseline_model(c["model"])
            return [self.ctorch if runner == "ctorch" else self.baseline, "bench", "--model", model, "--batch-size", str(c["batch"]),
                    "--steps", str(steps), "--threads", str(threads), "--json"] + (["--amp", "bf16"] if amp else []), \
                self.base_env
        warm = 1 if steps < 3 else 3  # ctorch bench's own warm-up rule (torch_bench.py: >= 2 for compile)
        variant = "eager" if runner == "torch_installed" else runner.split(":", 1)[1]
        cmd = [self.args.peer_python, os.path.join(ROOT, "bench", "torch_bench.py"), "--model", c["model"],
               "--batch-size", str(c["batch"]), "--steps", str(steps), "--warmup", str(warm),
               "--threads", str(threads), "--mode", c["metric"], "--variant", variant]
        return cmd, (self.base_env if runner == "torch_installed" else self.best_env)

    def run_one(self, runner, case, threads, amp=False):
        cmd, env = self.command(runner, case, threads, amp)
        timeout = self.timeout_for(case) + (600 if runner in ("torch:compile", "torch:compile_bf16") else 0)  # + compilation
        r = run_cmd(cmd, env, timeout, self.args.threshold, f"{case}/{runner}/t{threads}")
        r.runner, r.case, r.threads = runner, case, threads
        j = last_json(r.stdout) if r.rc == 0 else None
        key = "train_images_per_sec" if CASES[case]["metric"] == "train" else "infer_images_per_sec"
        r.ips = j.get(key) if j else None
        r.ok = r.ips is not None
        return r

    def alternate(self, case, slots, title, amp=False, failed=None):
        """Runs the (runner, threads) slots of `case` in rotating order, one pair at a time,
        until --pairs clean pairs or --max-attempts. Returns the list of pairs (dicts slot->RunResult)
        with a 'contended' flag. A ctorch run that fails ends the case (the pairs so far are
        returned); a PyTorch variant that fails is dropped from the case's later pairs, its
        reason put in `failed` (slot -> text), and the case goes on with the others."""
        a = self.args
        slots = list(slots)
        failed = {} if failed is None else failed
        pairs, attempts, clean = [], 0, 0
        while clean < a.pairs and attempts < a.max_attempts and slots:
            attempts += 1
            wait_quiet(a)
            order = slots[attempts % len(slots):] + slots[:attempts % len(slots)]
            pair, bad = {}, False
            for slot in order:
                r = self.run_one(slot[0], case, slot[1], amp)
                if not r.ok:
                    self.errors.append(f"{case}{' bf16' if amp else ''}: {describe_failure(r)}")
                    log(f"  {title} attempt {attempts}: {title_of(slot)} failed: {describe_failure(r)}")
                    if not slot[0].startswith("torch"):
                        return pairs
                    failed[slot] = failure_reason(r)
                    slots.remove(slot)
                    continue
                pair[slot] = r
                bad |= r.contended
            if not pair:
                continue
            pairs.append({"runs": pair, "contended": bad})
            clean += not bad
            desc = ", ".join(f"{title_of(slot)}{'' if len(set(s[1] for s in slots)) == 1 else f'@{slot[1]}t'} "
                             f"{pair[slot].ips:,.1f} img/s ({pair[slot].rss_mib:.0f} MiB, "
                             f"others {pair[slot].other_cpu:.2f} cpu-s{' CONTENDED' if pair[slot].contended else ''})"
                             for slot in slots if slot in pair)
            log(f"  {title} attempt {attempts}{' [discarded: contended]' if bad else ''}: {desc}")
        return pairs


def title_of(slot):
    return title(slot[0])


def failure_reason(r):
    """One line: why a run failed (the last line of its stderr)."""
    why = "timed out" if r.timed_out else f"exit code {r.rc}"
    lines = [ln.strip() for ln in (r.stderr or r.stdout or "").strip().splitlines() if ln.strip()]
    # the exception's own line when there is one (PyTorch ends with hints after it)
    exc = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\w*: ", ln)]
    line = exc[-1] if exc else (lines[-1] if lines else "")
    return f"{why}: {line[:300]}" if line else why


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def usable(pairs, want):
    """The clean pairs; if none is clean, all of them (flagged)."""
    clean = [p for p in pairs if not p["contended"]]
    return (clean, False) if clean else (pairs, bool(pairs))


# ------------------------------------------------------------------------------ parts
def ratio_of(use, num, den):
    """Median over the pairs that hold both of the per-pair ratio num / den."""
    return median([p["runs"][num].ips / p["runs"][den].ips for p in use if num in p["runs"] and den in p["runs"]])


def case_row(b, case, amp, results):
    """One row of the cases part: ctorch (with --amp bf16 for a bf16 row) against each PyTorch
    variant of the row's precision, alternated. Returns a dict for the tables."""
    a = b.args
    t = a.threads
    variants = [v for v in (BF16_VARIANTS if amp else FP32_VARIANTS) if v in a.variants]
    torch_slots = [(f"torch:{v}", t) for v in variants if v not in b.peer_unavailable]
    if a.as_installed and not amp:
        torch_slots.append(("torch_installed", t))
    ctorch_slots = [("ctorch", t)] + ([("ctorch_baseline", t)] if a.baseline_ctorch and not amp else [])
    if amp and b.amp_missing:
        ctorch_slots = []  # the PyTorch variants still run: their images/s are reported
    slots = ctorch_slots + torch_slots
    name = f"{case}{' bf16' if amp else ''}"
    log(f"{name} (steps {b.steps_for(case)}){': ctorch has no --amp yet, PyTorch only' if not ctorch_slots else ''}:")
    failed = {}
    pairs = b.alternate(case, slots, name, amp, failed) if slots else []
    use, flagged = usable(pairs, a.pairs)
    res = {"case": case, "precision": "bf16" if amp else "fp32",
           "pairs": [{"contended": p["contended"], "runs": {s[0]: r.as_dict() for s, r in p["runs"].items()}}
                     for p in pairs],
           "failed": {s[0]: why for s, why in failed.items()},
           "unavailable": {v: b.peer_unavailable[v] for v in variants if v in b.peer_unavailable}}
    if amp and b.amp_missing:
        res["ctorch_no_amp"] = b.amp_missing
    results.setdefault("cases", []).append(res)
    row = {"case": case, "amp": amp, "variants": variants, "res": res, "use": use, "flagged": flagged,
           "slots": slots, "ok": bool(use) and (not ctorch_slots or any(("ctorch", t) in p["runs"] for p in use))}
    if not use:
        return row
    ips = {s: median([p["runs"][s].ips for p in use if s in p["runs"]]) for s in slots
           if any(s in p["runs"] for p in use)}
    rss = {s: median([p["runs"][s].rss_mib for p in use if s in p["runs"]]) for s in ips}
    cands = [s for s in torch_slots if s[0] != "torch_installed" and s in ips and s not in failed]
    best = max(cands, key=lambda s: ips[s]) if cands else None
    res.update(median_ips={s[0]: v for s, v in ips.items()}, median_rss_mib={s[0]: v for s, v in rss.items()},
               best_variant=best[0].split(":", 1)[1] if best else None,
               clean_pairs=sum(not p["contended"] for p in pairs), flagged=flagged)
    row.update(ips=ips, rss=rss, best=best)
    if ("ctorch", t) in ips and best:
        res["ratio_best"] = row["ratio_best"] = ratio_of(use, ("ctorch", t), best)
        if ("torch:eager", t) in ips:
            res["ratio_eager"] = row["ratio_eager"] = ratio_of(use, ("ctorch", t), ("torch:eager", t))
        if ("ctorch_baseline", t) in ips:
            res["baseline_ratio_best"] = row["baseline_ratio_best"] = ratio_of(use, ("ctorch_baseline", t), best)
            res["ratio_vs_baseline"] = row["ratio_vs_baseline"] = ratio_of(use, ("ctorch", t), ("ctorch_baseline", t))
    log("  -> median " + ", ".join(f"{title(s[0])} {v:,.1f}" for s, v in ips.items()) + " img/s"
        + (f"; best PyTorch variant {best[0].split(':', 1)[1]}" if best else "")
        + (f"; ctorch / best {row['ratio_best']:.2f}x (target {CASES[case]['target']}x)" if "ratio_best" in row else ""))
    return row


def part_cases(b, report, results):
    a = b.args
    t = a.threads
    log(f"\n== cases: ctorch vs PyTorch's variants, {t} threads, {a.pairs} clean pairs wanted ==")
    rows = [case_row(b, case, False, results) for case in a.cases]
    rows += [case_row(b, case, True, results) for case in a.amp_rows]
    notes = []

    def cell(row, slot, variant=None):
        if variant and variant in b.peer_unavailable:
            return "n/a"
        if slot[0] in row["res"]["failed"]:
            return "failed"
        v = row.get("ips", {}).get(slot)
        return f"{v:,.1f}" if v is not None else "–"

    for amp in (False, True):
        sel = [r for r in rows if r["amp"] == amp]
        if not sel:
            continue
        variants = [v for v in (BF16_VARIANTS if amp else FP32_VARIANTS) if v in a.variants]
        inst = a.as_installed and not amp
        head = (["case", "ctorch --amp bf16" if amp else "ctorch"] + [f"PyTorch {v}" for v in variants]
                + (["PyTorch eager as installed"] if inst else [])
                + ["best variant"] + ([] if amp or "eager" not in variants else ["ctorch / eager"])
                + ["ctorch / best", "bar (vs best)"]
                + (["ctorch bf16 / ctorch fp32", "bar (vs own fp32)"] if amp else []) + ["pairs used"])
        md = [f"### {'bf16' if amp else 'float32'} throughput, {t} threads (images/s, median over clean pairs; "
              "ratios are medians of per-pair ratios)", "", "| " + " | ".join(head) + " |",
              "|---|" + "---:|" * (len(head) - (6 if amp else 4)) + "---:|---|"
              + ("---:|---|" if amp else "") + "---:|"]
        for r in sel:
            case = r["case"]
            if not r["use"]:
                md.append(f"| {case} | failed |" + " |" * (len(head) - 2))
                continue
            no_amp = amp and b.amp_missing
            c = ["no --amp yet" if no_amp else cell(r, ("ctorch", t))]
            c += [cell(r, (f"torch:{v}", t), v) for v in variants]
            if inst:
                c.append(cell(r, ("torch_installed", t)))
            c.append(r["best"][0].split(":", 1)[1] if r.get("best") else "–")
            if not amp and "eager" in variants:
                c.append(f"{r['ratio_eager']:.2f}x" if "ratio_eager" in r else "–")
            tgt = CASES[case].get("bf16_peer") if amp else CASES[case]["target"]
            if "ratio_best" in r:
                c += [f"**{r['ratio_best']:.2f}x**",
                      f">= {tgt:.1f}x {'met' if r['ratio_best'] >= tgt else 'NOT met'}" if tgt else "none"]
            else:
                c += ["ctorch has no --amp yet" if no_amp else "–", ""]
            if amp:  # against ctorch's float32 median of the same run
                fp = next((q for q in rows if q["case"] == case and not q["amp"] and q["use"]), None)
                own_tgt = CASES[case].get("bf16_own")
                if fp and not no_amp and ("ctorch", t) in r["ips"] and ("ctorch", t) in fp["ips"]:
                    own = r["ips"][("ctorch", t)] / fp["ips"][("ctorch", t)]
                    r["ratio_own_fp32"] = own
                    c += [f"**{own:.2f}x**", f">= {own_tgt:.1f}x {'met' if own >= own_tgt else 'NOT met'}"
                          if own_tgt else "none"]
                else:
                    c += ["–", "no float32 row in this run" if own_tgt else "none"]
            c.append(f"{len(r['use'])}" + (" (all contended)" if r["flagged"] else ""))
            md.append(f"| {case} | " + " | ".join(c) + " |")
            for runner, why in r["res"]["failed"].items():
                notes.append(f"- {case}{' bf16' if amp else ''}: {title(runner)} failed: {why}")
        report.append("\n".join(md))
    for v, why in b.peer_unavailable.items():
        if v in a.variants:
            notes.append(f"- PyTorch {v}: n/a: {why}")
    if a.amp_rows and b.amp_missing:
        notes.append(f"- bf16 rows: ctorch has no --amp yet (`ctorch bench --amp bf16`: {b.amp_missing}); "
                     "the PyTorch variants were run alone")
    if notes:
        report.append("Notes:\n\n" + "\n".join(notes))
    base_rows = [r for r in rows if "ratio_vs_baseline" in r]
    if base_rows:
        md = [f"### This build against the baseline build {a.baseline_ctorch} (same pairs)", "",
              "| case | this build (img/s) | baseline (img/s) | this / PyTorch best | baseline / PyTorch best "
              "| this / baseline | pairs used |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in base_rows:
            md.append(f"| {r['case']} | {r['ips'][('ctorch', t)]:,.1f} | {r['ips'][('ctorch_baseline', t)]:,.1f} | "
                      f"{r['ratio_best']:.3f}x | {r['baseline_ratio_best']:.3f}x | **{r['ratio_vs_baseline']:.3f}x** "
                      f"| {len(r['use'])} |")
        report.append("\n".join(md))
    md = ["### Peak resident memory of the bench processes (MiB, median)", "",
          "| case | ctorch | PyTorch |", "|---|---:|---|"]
    for r in rows:
        if not r.get("rss"):
            continue
        ct = r["rss"].get(("ctorch", t))
        md.append(f"| {r['case']}{' bf16' if r['amp'] else ''} | {'–' if ct is None else f'{ct:.0f}'} | "
                  + ", ".join(f"{s[0].split(':', 1)[-1]} {v:.0f}" for s, v in r["rss"].items() if s[0].startswith("torch"))
                  + " |")
    report.append("\n".join(md))


def part_scaling(b, report, results):
    a = b.args
    rows = []
    log(f"\n== scaling: 1 -> {a.threads} threads ==")
    for case in a.scaling_cases:
        slots = [("ctorch", 1), ("ctorch", a.threads), ("torch:eager", 1), ("torch:eager", a.threads)]
        saved = a.pairs
        a.pairs = a.scaling_pairs
        log(f"{case}:")
        pairs = b.alternate(case, slots, f"{case} scaling")
        a.pairs = saved
        use, flagged = usable(pairs, a.scaling_pairs)
        res = {"case": case, "pairs": [{"contended": p["contended"],
                                        "runs": {f"{s[0]}@{s[1]}": p["runs"][s].as_dict() for s in slots}}
                                       for p in pairs]}
        results.setdefault("scaling", []).append(res)
        if not use:
            rows.append(f"| {case} | failed | | | | | |")
            continue
        m = {s: median([p["runs"][s].ips for p in use]) for s in slots}
        sc = {r: median([p["runs"][(r, a.threads)].ips / p["runs"][(r, 1)].ips for p in use])
              for r in ("ctorch", "torch:eager")}
        res.update(scaling=sc, median_ips={f"{s[0]}@{s[1]}": v for s, v in m.items()})
        rows.append(f"| {case} | {m[('ctorch', 1)]:,.1f} | {m[('ctorch', a.threads)]:,.1f} | **{sc['ctorch']:.2f}x** "
                    f"| {m[('torch:eager', 1)]:,.1f} | {m[('torch:eager', a.threads)]:,.1f} | {sc['torch:eager']:.2f}x"
                    + (" (contended)" if flagged else "") + " |")
        log(f"  -> ctorch x{sc['ctorch']:.2f}, PyTorch eager at its best x{sc['torch:eager']:.2f} from 1 to {a.threads} threads")
    md = [f"### Scaling from 1 to {a.threads} threads (images/s, median)", "",
          f"| case | ctorch 1t | ctorch {a.threads}t | ctorch speed-up | PyTorch eager 1t | PyTorch eager {a.threads}t "
          "| PyTorch speed-up |", "|---|---:|---:|---:|---:|---:|---:|"] + rows
    report.append("\n".join(md))


def compile_c(b, src, out, extra_before, extra_after, what):
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra"] + extra_before + \
          [os.path.join(ROOT, src), "-o", out] + extra_after
    for attempt in range(3):
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode == 0:
            return cmd
        time.sleep(5)  # the library may be in the middle of a rebuild by someone else
    fail(f"cannot build {what}: {' '.join(cmd)}\n{p.stderr.strip()}", 1)


def build_gemm(b):
    out = os.path.join(b.snap, "gemm_peak")
    cmd = compile_c(b, "bench/gemm_peak.c", out, ["-I/usr/include/x86_64-linux-gnu/openblas-pthread",
                                                  "-I/usr/include/x86_64-linux-gnu/openblas64-pthread"],
                    ["-lopenblas"], "the GEMM peak benchmark (needs libopenblas-dev)")
    return out, cmd


def part_gemm(b, report, results):
    a = b.args
    exe, build_cmd = build_gemm(b)
    log(f"\n== gemm: OpenBLAS SGEMM peak ==\n  built: {' '.join(build_cmd)}")
    table = []
    out = {}
    configs = [(a.threads, "Haswell"), (1, "Haswell")] if a.isa == "avx2" else \
        [(a.threads, None), (1, None), (a.threads, "Haswell")]
    for threads, core in configs:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        env["OPENBLAS_NUM_THREADS"] = str(threads)
        if core:
            env["OPENBLAS_CORETYPE"] = core
        runs = []
        for tries in range(1, min(a.max_attempts, 4) + 1):
            wait_quiet(a)
            r = run_cmd([exe, "--threads", str(threads), "--sizes", a.gemm_sizes], env, 600, a.threshold,
                        "gemm")
            j = last_json(r.stdout) if r.rc == 0 else None
            if not j:
                b.errors.append(f"gemm: {describe_failure(r)}")
                log(f"  gemm failed: {describe_failure(r)}")
                break
            log(f"  {threads} thread(s), core {j['corename']}{' (OPENBLAS_CORETYPE=' + core + ')' if core else ''}: "
                + ", ".join(f"n={x['n']} {x['gflops']:.1f}" for x in j["results"])
                + f" GFLOP/s{' CONTENDED' if r.contended else ''}")
            runs.append({"json": j, "contended": r.contended})
            if sum(not x["contended"] for x in runs) >= 2:
                break
        if not runs:
            continue
        pool = [x for x in runs if not x["contended"]] or runs
        info = max(pool, key=lambda x: x["json"]["peak_gflops"])
        best = info["json"]["peak_gflops"]
        name = f"{threads}t" + (f"_{core}" if core else "")
        out[name] = {"peak_gflops": best, **info}
        table.append(f"| {threads} | {info['json']['corename']}{' (forced by OPENBLAS_CORETYPE)' if core else ''} | "
                     + " | ".join(f"{x['gflops']:.1f}" for x in info["json"]["results"])
                     + f" | **{best:.1f}**{' (contended)' if info['contended'] else ''} |")
    results["gemm"] = out
    b.peak = out.get(f"{a.threads}t" + ("_Haswell" if a.isa == "avx2" else ""), {}).get("peak_gflops", 0.0)
    sizes = a.gemm_sizes.split(",")
    if out:
        cfg = next(iter(out.values()))["json"]["config"]
        report.append("\n".join([f"### SGEMM peak (OpenBLAS: {cfg}), GFLOP/s, best of reps", "",
                                 "| threads | kernels | " + " | ".join(f"n={s}" for s in sizes) + " | peak |",
                                 "|---:|---|" + "---:|" * (len(sizes) + 1)] + table))


def part_layers(b, report, results):
    a = b.args
    lib = os.path.join(b.snap, "libctorch.a")
    exe = os.path.join(b.snap, "layer_bench")
    cmd = compile_c(b, "bench/layer_bench.c", exe, ["-I" + os.path.join(ROOT, "include")],
                    [lib, "-lopenblas", "-lz", "-ljansson", "-larchive", "-lpthread", "-ldl", "-lm"], "the per-layer benchmark")
    peak = getattr(b, "peak", 0.0) or a.peak
    log(f"\n== layers: per-layer GFLOP/s (peak {peak:.1f} GFLOP/s) ==\n  built: {' '.join(cmd)}")
    lines = None
    for tries in range(1, min(a.max_attempts, 3) + 1):
        wait_quiet(a)
        r = run_cmd([exe, "--threads", str(a.threads), "--peak", f"{peak:.1f}", "--json",
                     "--model", a.layer_models], b.base_env, 3600, a.threshold, "layers")
        if r.rc != 0:
            b.errors.append(f"layers: {describe_failure(r)}")
            log(f"  layer_bench failed: {describe_failure(r)}")
            return
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        log(f"  run {tries}: {len(lines)} rows, {r.wall:.1f} s, others {r.other_cpu:.2f} cpu-s"
            f"{' CONTENDED' if r.contended else ''}")
        if not r.contended:
            break
    results["layers"] = {"peak_gflops": peak, "rows": lines, "contended": r.contended}
    pct = (lambda g: f"{g:.1f} ({100 * g / peak:.0f}%)") if peak else (lambda g: f"{g:.1f}")
    for model in dict.fromkeys(x["model"] for x in lines):
        rows = [x for x in lines if x["model"] == model]
        md = [f"### Per-layer GFLOP/s, {model} batch {rows[0]['batch_size']}, {a.threads} threads "
              f"(% of the {peak:.1f} GFLOP/s SGEMM peak){' (contended)' if r.contended else ''}", "",
              "| layer | n | GFLOP | fwd (train) | fwd (no_grad) | bwd data | bwd weight | train step share |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for x in rows:
            if x["layer"] == "all":
                md.append(f"| **all (weighted)** | | | {pct(x['fwd_train_gflops'])} | {pct(x['fwd_infer_gflops'])} | "
                          f"{pct(x['bwd_data_gflops'])} | {pct(x['bwd_weight_gflops'])} | **{pct(x['train_gflops'])}** |")
            else:
                bd = pct(x["bwd_data_gflops"]) + ("" if x["data_grad_in_training"] else " (unused)")
                md.append(f"| {x['layer']} | {x['count']} | {x['gflop']:.3f} | {pct(x['fwd_train_gflops'])} | "
                          f"{pct(x['fwd_infer_gflops'])} | {bd} | {pct(x['bwd_weight_gflops'])} | "
                          f"{pct(x['train_gflops'])} |")
        log("\n".join(md))
        report.append("\n".join(md))


def part_pipeline(b, report, results):
    a = b.args
    if not a.data_dir:
        log("\n== pipeline: skipped (no CIFAR-10 data: give --data-dir or set CTORCH_DATA) ==")
        return
    log(f"\n== pipeline: ctorch train (CIFAR-10, --train-limit {a.train_limit}) vs ctorch bench, simple_cnn b64 ==")
    pairs = []
    attempts = clean = 0
    tmp = tempfile.mkdtemp(prefix="ctorch-pipeline-")
    try:
        while clean < a.pipeline_pairs and attempts < a.max_attempts:
            attempts += 1
            wait_quiet(a)
            logf = os.path.join(tmp, f"log{attempts}.json")
            train = run_cmd([b.ctorch, "train", "--model", "simple_cnn", "--dataset", "cifar10", "--data-dir",
                             a.data_dir, "--epochs", "1", "--train-limit", str(a.train_limit), "--test-limit", "1000",
                             "--batch-size", "64", "--threads", str(a.threads), "--log-json", logf],
                            b.base_env, 1800, a.threshold, "train")
            bench = b.run_one("ctorch", "simple_cnn_train", a.threads)
            if train.rc != 0 or not bench.ok:
                b.errors.append(f"pipeline: {describe_failure(train if train.rc else bench)}")
                log(f"  failed: {describe_failure(train if train.rc else bench)}")
                break
            with open(logf) as f:
                ep = json.loads(f.read().strip().splitlines()[-1])
            bad = train.contended or bench.contended
            pairs.append({"train_ips": ep["images_per_sec"], "bench_ips": bench.ips, "train_rss_mib": train.rss_mib,
                          "epoch_seconds": ep["seconds"], "contended": bad})
            clean += not bad
            log(f"  attempt {attempts}{' [discarded: contended]' if bad else ''}: train {ep['images_per_sec']:,.1f} "
                f"img/s (epoch {ep['seconds']:.1f} s incl. eval of 1000, {train.rss_mib:.0f} MiB), bench "
                f"{bench.ips:,.1f} img/s -> train slower per image by "
                f"{100 * (bench.ips / ep['images_per_sec'] - 1):.1f}%")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    use, flagged = usable(pairs, a.pipeline_pairs)
    results["pipeline"] = pairs
    if not use:
        return
    slow = median([p["bench_ips"] / p["train_ips"] - 1 for p in use])
    report.append("\n".join([
        "### Whole pipeline: `ctorch train` vs `ctorch bench`, simple_cnn b64", "",
        "| ctorch train img/s (log's images_per_sec) | ctorch bench img/s | train slower per image by | bar |",
        "|---:|---:|---:|---|",
        f"| {median([p['train_ips'] for p in use]):,.1f} | {median([p['bench_ips'] for p in use]):,.1f} | "
        f"**{100 * slow:.1f}%** | <= 10% {'met' if slow <= 0.10 else 'NOT met'}"
        + (" (contended)" if flagged else "") + " |",
        "", f"(`ctorch train` over {a.train_limit} CIFAR-10 images, one epoch, {len(use)} pair(s), alternated with "
            f"`ctorch bench`)"]))
    log(f"  -> train slower per image than bench by {100 * slow:.1f}% (bar: <= 10%)")


def part_rss(b, report, results):
    a = b.args
    if not a.data_dir:
        log("\n== rss: skipped (no CIFAR-10 data: give --data-dir or set CTORCH_DATA) ==")
        return
    log("\n== rss: peak resident memory, simple_cnn on CIFAR-10, one epoch ==")
    tmp = tempfile.mkdtemp(prefix="ctorch-rss-")
    rows, out = [], {}
    try:
        runs = [("ctorch train", [b.ctorch, "train", "--model", "simple_cnn", "--dataset", "cifar10", "--data-dir",
                                  a.data_dir, "--epochs", "1", "--batch-size", "64", "--threads", str(a.threads),
                                  "--log-json", os.path.join(tmp, "log.json")], b.base_env),
                ("bench/pytorch_train.py, PyTorch as installed",
                 [a.peer_python, os.path.join(ROOT, "bench", "pytorch_train.py"), "--model", "simple_cnn", "--dataset",
                  "cifar10", "--epochs", "1", "--threads", str(a.threads), "--data-dir", a.data_dir], b.base_env),
                ("bench/pytorch_train.py, PyTorch at its best",
                 [a.peer_python, os.path.join(ROOT, "bench", "pytorch_train.py"), "--model", "simple_cnn", "--dataset",
                  "cifar10", "--epochs", "1", "--threads", str(a.threads), "--data-dir", a.data_dir], b.best_env)]
        for name, cmd, env in runs:
            wait_quiet(a)
            r = run_cmd(cmd, env, 3600, a.threshold, name)
            if r.rc != 0:
                b.errors.append(f"rss: {describe_failure(r)}")
                log(f"  {name} failed: {describe_failure(r)}")
                continue
            j = last_json(r.stdout) or {}
            if name == "ctorch train":
                with open(os.path.join(tmp, "log.json")) as f:
                    j = json.loads(f.read().strip().splitlines()[-1])
            out[name] = {"rss_mib": r.rss_mib, "wall": r.wall, "test_acc": j.get("test_acc"), "contended": r.contended}
            log(f"  {name}: peak RSS {r.rss_mib:.0f} MiB, {r.wall:.1f} s wall, test_acc {j.get('test_acc')}")
            rows.append(f"| {name} | **{r.rss_mib:.0f}** | {r.wall:.1f} | {j.get('test_acc', float('nan')):.4f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["rss"] = out
    c = out.get("ctorch train", {}).get("rss_mib")
    p = out.get("bench/pytorch_train.py, PyTorch as installed", {}).get("rss_mib")
    verdict = f"ctorch / PyTorch = {c / p:.2f} (bar: <= 1, {'met' if c <= p else 'NOT met'})" if c and p else ""
    report.append("\n".join(["### Peak resident memory: the training loop, simple_cnn, CIFAR-10, 1 epoch, batch 64", "",
                             "| program | peak RSS (MiB) | wall (s) | test acc |", "|---|---:|---:|---:|"] + rows
                            + ["", verdict]))


# ------------------------------------------------------------------------- the machine
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def binary_info(path):
    """The binary's build time, and a warning when a source file is newer (a stale build)."""
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        return "(missing)"
    newer = []
    for d in ("src", "include"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            newer += [os.path.join(dirpath, f) for f in files
                      if f.endswith((".c", ".h")) and os.path.getmtime(os.path.join(dirpath, f)) > mtime]
    text = f"{path} built {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(mtime))}"
    if newer:
        text += f" (STALE: {len(newer)} source file(s) are newer, e.g. {os.path.relpath(newer[0], ROOT)}; run make)"
    return text


def peer_info(python, env):
    """bench/peer_check.py --quick under the PyTorch runs' environment (so --isa shows in its
    cpu_capability): versions, BLAS, oneDNN, which variants work. {} when it cannot run."""
    try:
        p = subprocess.run([python, os.path.join(ROOT, "bench", "peer_check.py"), "--quick"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)}
    return last_json(p.stdout) or {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}


def ctorch_reads(path, var):
    """Whether the ctorch binary holds the name of the environment variable `var` (it reads it)."""
    try:
        with open(path, "rb") as f:
            return var.encode() in f.read()
    except OSError:
        return False


def ctorch_amp_missing(path):
    """None when `ctorch bench --amp bf16` runs (a one-step mlp), else why not (its message)."""
    try:
        p = subprocess.run([path, "bench", "--amp", "bf16", "--model", "mlp", "--batch-size", "2", "--steps", "1",
                            "--threads", "1", "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    if p.returncode == 0:
        return None
    return ((p.stderr.strip() or p.stdout.strip()).splitlines() or [f"exit code {p.returncode}"])[0]


def machine_info(args, peer):
    model = re.search(r"Model name:\s*(.*)", sh("lscpu"))
    flags = sh("grep -m1 '^flags' /proc/cpuinfo").split()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni",
                        "amx_bf16") if f in flags]
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cpus": NCPU, "simd": " ".join(simd), "kernel": platform.release(),
        "torch": peer.get("torch", "not installed"),
        "peer": peer,
        "isa": args.isa, "isa_env": ISA_ENV[args.isa],
        "ctorch_reads_isa_env": ctorch_reads(args.ctorch, "CTORCH_CPU_ISA"),
        "openblas": sh("dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null") or "?",
        "cc": sh("${CC:-cc} --version | head -1"),
        "ctorch_rev": sh(f"git -C {ROOT} rev-parse --short HEAD 2>/dev/null")
        + (" + uncommitted changes" if sh(f"git -C {ROOT} status --porcelain -uno 2>/dev/null") else ""),
        "ctorch_binary": binary_info(args.ctorch),
        "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "load_at_start": sh("cat /proc/loadavg"),
    }


def main():
    ap = argparse.ArgumentParser(description="ctorch vs PyTorch, alternating, on this machine (docs/bench.md)")
    ap.add_argument("--pairs", type=int, default=3, help="clean pairs wanted per case (default 3)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--threads", type=int, default=2, help="thread count for both (default 2)")
    ap.add_argument("--parts", default="cases,scaling,gemm,layers,pipeline,rss",
                    help="comma-separated parts to run (default all): cases,scaling,gemm,layers,pipeline,rss")
    ap.add_argument("--steps", action="append", default=[], metavar="CASE=N",
                    help="steps per run for a case (repeatable); defaults: "
                    + ", ".join(f"{k}={v['steps']}" for k, v in CASES.items()))
    ap.add_argument("--scaling-cases", default="simple_cnn_train,simple_cnn_infer,mlp_train",
                    help="cases for the scaling part (resnet18_train is slow; add it to include it)")
    ap.add_argument("--scaling-pairs", type=int, default=2)
    ap.add_argument("--pipeline-pairs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=20000, help="CIFAR-10 images for the pipeline check")
    ap.add_argument("--layer-models", default="all", help="simple_cnn, resnet18_cifar or all")
    ap.add_argument("--gemm-sizes", default="2048,3072,4096")
    ap.add_argument("--peak", type=float, default=0.0, help="GEMM peak for the layers part when gemm is not run")
    ap.add_argument("--max-attempts", type=int, default=0,
                    help="attempts per case before giving up on clean pairs (default 2 x pairs + 2)")
    ap.add_argument("--threshold", type=float, default=0.10,
                    help="a run is contended when other processes used more than this fraction of "
                    "wall x cores (default 0.10)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="seconds to wait before each pair for the machine to go quiet (default 120)")
    ap.add_argument("--timeout", type=float, default=0.0, help="per-run timeout in s (default 600, resnet18_cifar 1800)")
    ap.add_argument("--ctorch", default=os.path.join(ROOT, "build", "ctorch"), help="the ctorch binary")
    ap.add_argument("--baseline-ctorch", default=None,
                    help="another ctorch binary (e.g. the previous build) run in the same pairs of the cases part")
    ap.add_argument("--lib", default=os.path.join(ROOT, "build", "libctorch.a"), help="libctorch.a for layer_bench")
    ap.add_argument("--peer-python", "--python", dest="peer_python",
                    default=VENV_PYTHON if os.path.exists(VENV_PYTHON) else
                    ("/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable),
                    help="the Python whose PyTorch is the peer (default bench/.venv/bin/python from "
                    "bench/setup-peer.sh when it exists, else /usr/bin/python3); --python is the old name")
    ap.add_argument("--variants", default=",".join(FP32_VARIANTS + BF16_VARIANTS),
                    help="PyTorch variants of the cases part (default all): float32 rows "
                    f"{','.join(FP32_VARIANTS)}; bf16 rows {','.join(BF16_VARIANTS)}")
    ap.add_argument("--amp-rows", default=None, metavar="CASES",
                    help="cases that also get a bf16 row, `ctorch bench --amp bf16` vs PyTorch autocast bf16 "
                    "(default: those of --cases; `none` for none)")
    ap.add_argument("--as-installed", action="store_true",
                    help="also run PyTorch eager in the environment as it is (float32 rows)")
    ap.add_argument("--isa", choices=tuple(ISA_ENV), default="native",
                    help="native (default) or avx2: ctorch and PyTorch restricted to AVX2 through "
                    "their environment variables (" + " ".join(f"{k}={v}" for k, v in ISA_ENV["avx2"].items()) + ")")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 data (default $CTORCH_DATA, ../shared/data, ./data)")
    ap.add_argument("--report", default=None, help="also write the Markdown tables to this file")
    ap.add_argument("--json-out", default=None, help="write every run's raw figures to this JSON file")
    a = ap.parse_args()

    a.cases = [c for c in a.cases.split(",") if c]
    a.amp_rows = list(a.cases) if a.amp_rows is None else \
        [c for c in a.amp_rows.split(",") if c and c != "none"]
    a.variants = [v for v in a.variants.split(",") if v]
    for v in a.variants:
        if v not in FP32_VARIANTS + BF16_VARIANTS:
            fail(f"unknown variant {v!r}; variants: {', '.join(FP32_VARIANTS + BF16_VARIANTS)}")
    a.scaling_cases = [c for c in a.scaling_cases.split(",") if c]
    for c in a.cases + a.scaling_cases + a.amp_rows:
        if c not in CASES:
            fail(f"unknown case {c!r}; cases: {', '.join(CASES)}")
    parts = [p for p in a.parts.split(",") if p]
    for p in parts:
        if p not in ("cases", "scaling", "gemm", "layers", "pipeline", "rss"):
            fail(f"unknown part {p!r}; parts: cases,scaling,gemm,layers,pipeline,rss")
    steps = {}
    for s in a.steps:
        k, _, v = s.partition("=")
        if k not in CASES or not v.isdigit() or int(v) < 1:
            fail(f"--steps wants CASE=N with N >= 1, got {s!r}")
        steps[k] = int(v)
    a.steps = steps
    if a.pairs < 1 or a.threads < 1:
        fail("--pairs and --threads must be >= 1")
    if not a.max_attempts:
        a.max_attempts = 2 * max(a.pairs, a.scaling_pairs, a.pipeline_pairs) + 2
    if a.data_dir is None:
        for d in (os.environ.get("CTORCH_DATA"), os.path.join(ROOT, "..", "shared", "data"), os.path.join(ROOT, "data")):
            if d and os.path.isdir(os.path.join(d, "cifar-10-batches-bin")):
                a.data_dir = os.path.abspath(d)
                break
    if not os.access(a.ctorch, os.X_OK) and any(p in parts for p in ("cases", "scaling", "pipeline", "rss")):
        fail(f"{a.ctorch} not found or not executable; build it with `make` (or give --ctorch)")
    if any(p in parts for p in ("cases", "scaling", "rss")):
        try:
            chk = subprocess.run([a.peer_python, "-c", "import torch, torchvision"], capture_output=True,
                                 text=True, timeout=300)
            why = (chk.stderr.strip().splitlines() or ["?"])[-1] if chk.returncode else ""
        except (OSError, subprocess.SubprocessError) as e:
            why = str(e)
        if why:
            fail(f"PyTorch is not importable by {a.peer_python} ({why}); "
                 f"install it: {TORCH_HINT}; or run only --parts gemm,layers,pipeline")

    snap = tempfile.mkdtemp(prefix="ctorch-bench-")
    try:
        # snapshot the binaries so that a rebuild during the run cannot mix two versions
        if os.path.exists(a.ctorch):
            shutil.copy2(a.ctorch, os.path.join(snap, "ctorch"))
        if a.baseline_ctorch:
            if not os.path.exists(a.baseline_ctorch):
                fail(f"--baseline-ctorch {a.baseline_ctorch} not found")
            shutil.copy2(a.baseline_ctorch, os.path.join(snap, "ctorch_baseline"))
        if "layers" in parts:
            if not os.path.exists(a.lib):
                fail(f"{a.lib} not found; build it with `make lib` (or give --lib)")
            shutil.copy2(a.lib, os.path.join(snap, "libctorch.a"))
        b = Bench(a, snap)
        torch_parts = any(p in parts for p in ("cases", "scaling", "rss"))
        peer = peer_info(a.peer_python, b.best_env) if torch_parts else {}
        info = machine_info(a, peer)
        # variants this PyTorch cannot run at all: reported as n/a, not run
        b.peer_unavailable = {}
        if torch_parts and not peer.get("has_compile", True):
            b.peer_unavailable["compile"] = f"PyTorch {peer.get('torch', '?')} has no torch.compile"
            b.peer_unavailable["compile_bf16"] = b.peer_unavailable["compile"]
        probe_amp = "cases" in parts and bool(a.amp_rows)
        b.amp_missing = ctorch_amp_missing(b.ctorch) if probe_amp else None
        info["ctorch_amp"] = "not checked" if not probe_amp else ("yes" if not b.amp_missing else f"no: {b.amp_missing}")
        log("machine: " + json.dumps(info))
        if "STALE" in info["ctorch_binary"]:
            log(f"warning: {info['ctorch_binary']}")
        log("command: " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]))
        report, results = [], {"machine": info, "argv": sys.argv[1:]}
        if a.isa != "native" and not info["ctorch_reads_isa_env"]:
            log(f"warning: {a.ctorch} does not read CTORCH_CPU_ISA: its figures are at its own ISA")
        pv = "; ".join(f"{v} n/a ({why})" for v, why in b.peer_unavailable.items())
        isa_line = ("ISA: native (each program picks its widest)." if a.isa == "native" else
                    f"ISA: {a.isa}, every run with " + " ".join(f"{k}={v}" for k, v in ISA_ENV[a.isa].items())
                    + f" (PyTorch's CPU capability then: {peer.get('cpu_capability', '?')}; this ctorch binary "
                    + ("reads" if info["ctorch_reads_isa_env"] else "does NOT read") + " CTORCH_CPU_ISA).")
        report.append("\n".join([
            f"Machine: {info['cpu']}, {info['cpus']} CPUs ({info['simd']}), Linux {info['kernel']}; "
            f"OpenBLAS {info['openblas']}; {info['cc']}; ctorch {info['ctorch_rev']}, "
            f"binary {info['ctorch_binary']}; ctorch bench --amp bf16: {info['ctorch_amp']}; "
            f"OPENBLAS_CORETYPE in the environment: {info['openblas_coretype_env']}; load at start "
            f"{info['load_at_start']}.", "",
            f"Peer: PyTorch {peer.get('torch', '?')}, torchvision {peer.get('torchvision', '?')} "
            f"({a.peer_python}, Python {peer.get('python_version', '?')}); BLAS {peer.get('blas', '?')}, "
            f"{peer.get('onednn', '?')}; CPU capability {peer.get('cpu_capability', '?')}. Variants: "
            f"{', '.join(a.variants)}{'; ' + pv if pv else ''}." if torch_parts else "Peer: not run.", "",
            isa_line, "",
            "PyTorch's variants run at its best: " + " ".join(f"{k}={v}" for k, v in BEST_ENV.items())
            + (", OPENBLAS_CORETYPE unset" if a.isa == "native" else "")
            + ". ctorch (and PyTorch as installed, --as-installed): the environment as it is"
            + (" plus the ISA variables." if a.isa != "native" else ".")]))
        t_start = time.monotonic()
        order = ["gemm", "layers", "cases", "scaling", "pipeline", "rss"]
        fns = {"cases": part_cases, "scaling": part_scaling, "gemm": part_gemm, "layers": part_layers,
               "pipeline": part_pipeline, "rss": part_rss}
        for p in order:
            if p in parts:
                fns[p](b, report, results)
        results["errors"] = b.errors
        results["seconds"] = time.monotonic() - t_start
        text = "\n\n".join(report) + "\n"
        log("\n" + "=" * 78 + "\n" + text)
        if b.errors:
            log("errors:\n  " + "\n  ".join(b.errors))
        if a.report:
            with open(a.report, "w") as f:
                f.write(text)
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(results, f, indent=1)
        log(f"total {results['seconds'] / 60:.1f} min")
        return 1 if b.errors else 0
    finally:
        shutil.rmtree(snap, ignore_errors=True)


def _on_term(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_term)  # clean up (child, snapshot) on kill as on Ctrl-C
    signal.signal(signal.SIGHUP, _on_term)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        if _current_child is not None:
            try:
                os.killpg(_current_child.pid, signal.SIGKILL)
            except OSError:
                pass
        sys.exit(130)
