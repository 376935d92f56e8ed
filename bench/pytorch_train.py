"""`ctorch train` in PyTorch, the peer for its recipes: the same data (the binary files
read directly, no torchvision download), the same normalisation (CIFAR-10 0.5/0.5, MNIST
0.1307/0.3081, as ctorch's ct_dataset_default_normalization), the same augmentation
(--augment standard: RandomCrop(32, padding=4) with zero padding of the uint8 image, then a
horizontal flip with p 0.5, before normalising, as ctorch's ct_transform_augment), the same
optimizers, per-step schedules (with the linear warm-up), label smoothing, gradient
clipping and bf16 autocast. Prints one JSON line per epoch with the keys of ctorch's
--log-json rows (epoch, step, train_loss, train_acc, test_loss, test_acc, lr, seconds).

Models: simple_cnn and mlp (the seed's), vit_tiny (torchvision's VisionTransformer with
ctorch's vit_tiny sizes: image 32, patch 4, 12 layers, 3 heads, hidden 192, MLP 768, so
its state_dict names are ctorch's). --save-init FILE.safetensors writes the initial
weights (ctorch train --init FILE starts from them); --init FILE starts from a file
(e.g. ctorch's --save of a --lr 0 run), so both sides can start from the same weights.

The vit_tiny recipe for CIFAR-10 (docs/models.md "Recipe: vit_tiny on CIFAR-10"):
  bench/.venv/bin/python bench/pytorch_train.py --model vit_tiny --dataset cifar10 \\
      --optimizer adamw --lr 1e-3 --weight-decay 0.05 --batch-size 128 --schedule cosine \\
      --warmup-epochs 0.2 --label-smoothing 0.1 --clip-grad-norm 1.0 --augment standard \\
      --amp bf16 --epochs 2

The data order is torch's (torch.randperm), not ctorch's: for step-by-step comparisons use
--no-shuffle and --augment none on both sides."""
import argparse
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WARMUP_START_FACTOR = 0.01  # ctorch train's (torchvision's reference --lr-warmup-decay)


def load_cifar(d, train, limit=0):
    """uint8 images [N, 3, 32, 32] and int64 labels (the first `limit` records when > 0)."""
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    raw = np.concatenate([np.fromfile(os.path.join(d, "cifar-10-batches-bin", f), dtype=np.uint8)
                          .reshape(-1, 3073) for f in files])
    if limit:
        raw = raw[:limit]
    x = torch.from_numpy(np.ascontiguousarray(raw[:, 1:]).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(raw[:, 0].astype(np.int64))


def load_mnist(d, train, limit=0):
    p = "train" if train else "t10k"
    with gzip.open(os.path.join(d, "mnist", f"{p}-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(d, "mnist", f"{p}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    if limit:
        x, y = x[:limit], y[:limit]
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


NORM = {"cifar10": (0.5, 0.5), "mnist": (0.1307, 0.3081)}


def normalise(u8, dataset):
    """ToTensor + Normalize in ctorch's operation order: (x / 255 - mean) / std, float32."""
    m, s = NORM[dataset]
    return (u8.to(torch.float32) / 255.0 - m) / s


def augment_standard(u8, gen):
    """RandomCrop(size, padding=4) (zero fill) + RandomHorizontalFlip() per image, on uint8."""
    n, _, h, w = u8.shape
    padded = F.pad(u8, (4, 4, 4, 4))
    out = torch.empty_like(u8)
    offs = torch.randint(0, 9, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        img = padded[i, :, dy:dy + h, dx:dx + w]
        out[i] = img.flip(-1) if flips[i] else img
    return out


class SimpleCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def make_model(name):
    if name == "simple_cnn":
        return SimpleCNN()
    if name == "mlp":
        return MLP()
    if name == "vit_tiny":
        from torchvision.models import VisionTransformer
        return VisionTransformer(image_size=32, patch_size=4, num_layers=12, num_heads=3,
                                 hidden_dim=192, mlp_dim=768, num_classes=10)
    sys.exit(f"pytorch_train.py: --model {name}: one of simple_cnn, mlp, vit_tiny")


def warmup_steps(warmup_epochs, steps_per_epoch):
    """ctorch train's: round(E x steps per epoch) (halves away from zero), at least 1."""
    if warmup_epochs <= 0:
        return 0
    return max(1, math.floor(warmup_epochs * steps_per_epoch + 0.5))


def make_scheduler(opt, schedule, total, warmup):
    """Stepped once per optimizer step. warmup > 0: SequentialLR of LinearLR(start_factor
    0.01, total_iters=warmup) and CosineAnnealingLR(T_max=total - warmup) (--schedule
    cosine) or a constant lr (--schedule none), milestone warmup."""
    S = torch.optim.lr_scheduler
    if warmup > 0:
        after = (S.CosineAnnealingLR(opt, T_max=total - warmup) if schedule == "cosine"
                 else S.LambdaLR(opt, lambda _: 1.0))
        return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=WARMUP_START_FACTOR,
                                               total_iters=warmup), after], milestones=[warmup])
    if schedule == "cosine":
        return S.CosineAnnealingLR(opt, T_max=total)
    return None


def make_optimizer(a, params):
    wd, lr = a.weight_decay, a.lr
    if a.optimizer == "sgd":
        return torch.optim.SGD(params, lr=0.01 if lr is None else lr,
                               momentum=0.9 if a.momentum is None else a.momentum,
                               weight_decay=wd or 0.0)
    if a.optimizer == "adam":
        return torch.optim.Adam(params, lr=1e-3 if lr is None else lr, weight_decay=wd or 0.0)
    if a.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-3 if lr is None else lr,
                                 weight_decay=0.01 if wd is None else wd)
    sys.exit(f"pytorch_train.py: --optimizer {a.optimizer}: one of sgd, adam, adamw")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--dataset", default="cifar10", choices=["cifar10", "mnist"])
    ap.add_argument("--epochs", type=int, default=10, help="0 with --save-init: only write the weights")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    ap.add_argument("--weight-decay", type=float, default=None, help="default: 0, adamw 0.01")
    ap.add_argument("--schedule", default="none", choices=["none", "cosine"])
    ap.add_argument("--warmup-epochs", type=float, default=0.0)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--clip-grad-norm", type=float, default=None)
    ap.add_argument("--augment", default="none", choices=["none", "standard"])
    ap.add_argument("--amp", default="off", choices=["off", "bf16"])
    ap.add_argument("--init", help="start from these weights (safetensors, the model's names)")
    ap.add_argument("--save-init", help="write the initial weights here (safetensors)")
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--no-shuffle", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: the model and the "
                    "batches there (augmentation on the CPU), autocast on that device")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("CTORCH_DATA") or
                    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    a = ap.parse_args()
    if not 0.0 <= a.label_smoothing <= 1.0:
        ap.error("--label-smoothing must be between 0 and 1")
    if a.clip_grad_norm is not None and a.clip_grad_norm <= 0:
        ap.error("--clip-grad-norm must be > 0")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    load = load_cifar if a.dataset == "cifar10" else load_mnist
    xtr, ytr = load(a.data_dir, True, a.train_limit)
    xte, yte = load(a.data_dir, False, a.test_limit)
    model = make_model(a.model)
    if a.init:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(a.init), strict=True)
    if a.save_init:
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, a.save_init)
        if a.epochs == 0:  # only the initial weights
            return
    dev = torch.device(a.device)
    model.to(dev)
    opt = make_optimizer(a, model.parameters())
    bs = a.batch_size
    spe = (len(xtr) + bs - 1) // bs
    total = spe * a.epochs
    if a.max_steps and a.max_steps < total:
        total = a.max_steps
    warm = warmup_steps(a.warmup_epochs, spe)
    if a.schedule == "cosine" and warm >= total:
        ap.error(f"--warmup-epochs {a.warmup_epochs} is {warm} steps, not fewer than the run's {total}")
    sched = make_scheduler(opt, a.schedule, total, warm)
    criterion = nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp == "bf16")
    gen = torch.Generator().manual_seed(a.seed + 1)  # augmentation
    # without augmentation the whole set is normalised once (as the seed's script did)
    xtr_f = normalise(xtr, a.dataset) if a.augment == "none" else None
    xte_f = normalise(xte, a.dataset).to(dev)
    yte = yte.to(dev)
    start, step = time.time(), 0
    for epoch in range(a.epochs):
        if step >= total:
            break
        t0 = time.time()
        model.train()
        perm = torch.arange(len(xtr)) if a.no_shuffle else torch.randperm(len(xtr))
        tot, correct, n, lr = 0.0, 0, 0, opt.param_groups[0]["lr"]
        for i in range(0, len(xtr), bs):
            if step >= total:
                break
            idx = perm[i:i + bs]
            y = ytr[idx].to(dev)
            x = xtr_f[idx] if xtr_f is not None else normalise(augment_standard(xtr[idx], gen), a.dataset)
            x = x.to(dev)
            with amp:
                out = model(x)
                loss = criterion(out, y)
            opt.zero_grad()
            loss.backward()
            if a.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip_grad_norm)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            tot += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
        train_secs = time.time() - t0
        model.eval()
        with torch.no_grad(), amp:
            tl, tc = 0.0, 0
            for i in range(0, len(xte), 256):
                out = model(xte_f[i:i + 256])
                tl += F.cross_entropy(out.float(), yte[i:i + 256], reduction="sum").item()
                tc += (out.argmax(1) == yte[i:i + 256]).sum().item()
        print(json.dumps({"epoch": epoch + 1, "step": step, "train_loss": tot / n,
                          "train_acc": correct / n, "test_loss": tl / len(xte),
                          "test_acc": tc / len(xte), "lr": lr,
                          "images_per_sec": n / train_secs if train_secs > 0 else 0.0,
                          "seconds": time.time() - t0, "total_seconds": time.time() - start}),
              flush=True)


if __name__ == "__main__":
    main()
