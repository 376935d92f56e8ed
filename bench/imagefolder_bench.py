#!/usr/bin/env python3
"""ImageFolder decoding + augmentation speed: ctorch's DataLoader (one worker thread)
against torchvision's ImageFolder + PIL (DataLoader num_workers=0, torch.set_num_threads(1)),
the same folders and the same transforms, run alternately; then the data-wait share of
`ctorch train --dataset imagefolder` at 2 threads.

Folders (made once under --work from the CIFAR-10 test set in $CTORCH_DATA):
  c32:  the 32x32 images, half JPEG (quality 90), half PNG
  c224: the same images upscaled to 224x224 with PIL (bicubic), half JPEG, half PNG
Pipelines: train = RandomResizedCrop(S) + RandomHorizontalFlip + ToTensor + Normalize,
           val   = Resize(S*256/224) + CenterCrop(S) + ToTensor + Normalize,
S = 32 on c32, 224 on c224.

  flock /tmp/bench.lock $CTORCH_PEER_PYTHON bench/imagefolder_bench.py [--images 2000] [--pairs 5]

Prints one line per run, then per (folder, pipeline) the median images/s of each and the
median of the per-pair ratios ctorch / torchvision (> 1: ctorch faster per core)."""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_folders(work, n_images, data):
    import numpy as np
    from PIL import Image

    raw = open(os.path.join(data, "cifar-10-batches-bin", "test_batch.bin"), "rb").read()
    for name, size in (("c32", 32), ("c224", 224)):
        top = os.path.join(work, name)
        stamp = os.path.join(top, f".done-{n_images}")
        if os.path.exists(stamp):
            continue
        for i in range(n_images):
            rec = raw[i * 3073:(i + 1) * 3073]
            img = Image.fromarray(np.frombuffer(rec[1:], np.uint8).reshape(3, 32, 32).transpose(1, 2, 0))
            if size != 32:
                img = img.resize((size, size), Image.BICUBIC)
            split = "val" if i % 10 == 9 else "train"
            d = os.path.join(top, split, CLASSES[rec[0]])
            os.makedirs(d, exist_ok=True)
            if i % 2:
                img.save(os.path.join(d, f"{i:05d}.png"))
            else:
                img.save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
        open(stamp, "w").close()


def build_loader(build):
    exe = os.path.join(build, "imagefolder_loader")
    src = os.path.join(ROOT, "bench", "imagefolder_loader.c")
    lib = os.path.join(build, "libctorch.a")
    if not os.path.exists(exe) or os.path.getmtime(exe) < max(os.path.getmtime(src), os.path.getmtime(lib)):
        cmd = ["cc", "-std=c11", "-D_GNU_SOURCE", "-O2", "-I" + os.path.join(ROOT, "include"), src, lib,
               "-lopenblas", "-lz", "-ljansson", "-lcrypto", "-larchive", "-ljpeg", "-lpng", "-lpthread",
               "-ldl", "-lm", "-rdynamic", "-o", exe]
        subprocess.run(cmd, check=True)
    return exe


def run_ctorch(exe, folder, split, size):
    out = subprocess.run([exe, folder, split, str(size), "1", "64", "1"], check=True,
                         capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["images"] / r["wall_s"], r["cpu_s"] / r["wall_s"]


def run_torchvision(folder, split, size):
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    torch.set_num_threads(1)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if split == "train":
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    else:
        tf = T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), T.ToTensor(), norm])
    ds = ImageFolder(os.path.join(folder, split), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=split == "train", num_workers=0)
    w0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for x, _ in dl:
        n += x.shape[0]
    w1, c1 = time.perf_counter(), time.process_time()
    return n / (w1 - w0), (c1 - c0) / (w1 - w0)


def data_wait(ctorch, folder, size, model, epochs, limit, tmp):
    run_dir = os.path.join(tmp, f"run-{model}-{size}-{time.time_ns()}")
    cmd = [ctorch, "train", "--model", model, "--dataset", "imagefolder", "--data-dir", folder,
           "--image-size", str(size), "--epochs", str(epochs), "--batch-size", "64", "--threads", "2",
           "--run-dir", run_dir, "--no-checkpoints", "--train-limit", str(limit), "--test-limit", "64"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [(r["data_wait_frac"], r["images_per_sec"]) for r in rows], " ".join(cmd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--work", default="/tmp/ctorch-imagefolder-bench")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--data", default=os.environ.get("CTORCH_DATA", "/work/shared/data"))
    ap.add_argument("--no-train", action="store_true", help="skip the data-wait runs")
    ap.add_argument("--no-loader", action="store_true", help="only the data-wait runs")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    make_folders(a.work, a.images, a.data)
    exe = build_loader(a.build)
    import PIL
    import torchvision
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# cpu: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}, torchvision "
          f"{torchvision.__version__}, Pillow {PIL.__version__}; {a.images} images per folder")
    results = {}
    for folder, size in () if a.no_loader else (("c32", 32), ("c224", 224)):
        for split in ("train", "val"):
            key = f"{folder}/{split}"
            pairs = []
            for p in range(a.pairs):
                order = [0, 1] if p % 2 == 0 else [1, 0]  # alternate who goes first
                got = {}
                for who in order:
                    if who == 0:
                        got["ctorch"] = run_ctorch(exe, os.path.join(a.work, folder), split, size)
                    else:
                        got["torchvision"] = run_torchvision(os.path.join(a.work, folder), split, size)
                (ci, cc), (ti, tc) = got["ctorch"], got["torchvision"]
                print(f"{key} pair {p}: ctorch {ci:.0f} img/s ({cc:.2f} cores busy), torchvision "
                      f"{ti:.0f} img/s ({tc:.2f} cores busy), ratio {ci / ti:.2f}", flush=True)
                pairs.append((ci, ti, ci / ti, ci / cc / (ti / tc)))
            results[key] = pairs
    print("\n| folder / pipeline | ctorch img/s (1 worker) | torchvision+PIL img/s (num_workers=0) "
          "| ratio, wall (median of pairs) | ratio per CPU-second (median of pairs) |")
    print("|---|---|---|---|---|")
    for key, pairs in results.items():
        print(f"| {key} | {statistics.median(p[0] for p in pairs):.0f} | "
              f"{statistics.median(p[1] for p in pairs):.0f} | {statistics.median(p[2] for p in pairs):.2f} | "
              f"{statistics.median(p[3] for p in pairs):.2f} |")
    if a.no_train:
        return
    ctorch = os.path.join(a.build, "ctorch")
    print()
    # --train-limit keeps the first classes only: speed, not accuracy, is measured here
    for folder, size, model, epochs, limit in (("c32", 32, "resnet18", 2, 1280),
                                               ("c224", 224, "simple_cnn", 1, 1280),
                                               ("c224", 64, "resnet18", 1, 320)):
        rows, cmd = data_wait(ctorch, os.path.join(a.work, folder), size, model, epochs, limit, a.work)
        print(f"data wait: {cmd}")
        for i, (w, ips) in enumerate(rows):
            print(f"  epoch {i + 1}: data_wait {100 * w:.1f}% of step time, {ips:.0f} img/s")


if __name__ == "__main__":
    sys.exit(main())
