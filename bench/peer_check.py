"""Checks that a PyTorch works for bench/torch_bench.py on the CPU and prints one JSON line:
versions, the CPU capability ATen dispatches to, and whether each variant of torch_bench.py
works (a tiny conv net, forward + backward). bench/setup-peer.sh runs it after installing
bench/.venv; bench/run_bench.py runs it with --quick (no torch.compile) to describe the peer.

usage: PYTHON bench/peer_check.py [--quick]

Exit status 0 when eager float32 works (a variant that fails is reported in the JSON, with
the reason, under "variants"), 1 when it does not (or torch cannot be imported)."""
import json
import os
import re
import sys
import time
import traceback


def main():
    quick = "--quick" in sys.argv[1:]
    res = {"python": sys.executable, "python_version": sys.version.split()[0]}
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 - any import failure is the answer
        res["error"] = f"import torch: {type(e).__name__}: {e}"
        print(json.dumps(res), flush=True)
        return 1
    res["torch"] = torch.__version__
    try:
        import torchvision
        res["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        res["torchvision"] = f"not importable: {type(e).__name__}: {e}"
    cfg = torch.__config__.show()
    cpu = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    cap = re.search(r"CPU capability usage: (\S+)", cfg)
    res["cpu_capability"] = cpu() if cpu else (cap.group(1) if cap else "?")
    blas = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    res["blas"] = blas.group(1) if blas else "?"  # mkl (PyPI); generic = libblas.so.3 (Debian)
    onednn = [ln.strip() for ln in cfg.splitlines() if "DNN" in ln and "v" in ln]
    res["onednn"] = onednn[0].lstrip("- ") if onednn else "?"
    res["has_compile"] = hasattr(torch, "compile")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(8 * 4 * 4, 10))

    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 10, (4,))

    def step(model, inp, bf16=False):
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(inp), y)
        else:
            loss = F.cross_entropy(model(inp), y)
        loss.backward()
        g = model[0].weight.grad
        if g is None or not torch.isfinite(g).all() or g.dtype != torch.float32:
            raise RuntimeError("no finite float32 weight gradient")
        return loss.item()

    def run(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
            res["variants"][name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001
            res["variants"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0][:400]}
            if os.environ.get("PEER_CHECK_TRACEBACK"):
                traceback.print_exc()

    res["variants"] = {}
    cl = torch.channels_last
    run("matmul", lambda: torch.randn(2, 2) @ torch.randn(2, 2))
    run("eager", lambda: step(net(), x))
    run("channels_last", lambda: step(net().to(memory_format=cl), x.to(memory_format=cl)))
    run("autocast_bf16", lambda: step(net(), x, bf16=True))
    run("autocast_bf16_cl", lambda: step(net().to(memory_format=cl), x.to(memory_format=cl), bf16=True))
    if not quick:
        def compiled():
            if not hasattr(torch, "compile"):
                raise RuntimeError(f"PyTorch {torch.__version__} has no torch.compile")
            import torch._inductor.config as icfg
            icfg.compile_threads = 1  # as torch_bench.py: no worker processes
            m = net()
            mc = torch.compile(m)
            step2 = lambda: (m.zero_grad(), F.cross_entropy(mc(x), y).backward())  # noqa: E731
            step2()
            step2()
            if not torch.isfinite(m[0].weight.grad).all():
                raise RuntimeError("no finite weight gradient")
        run("compile", compiled)
    ok = res["variants"]["eager"]["ok"] and res["variants"]["matmul"]["ok"]
    print(json.dumps(res), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
