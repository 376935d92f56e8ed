"""The seed's recipe in PyTorch, the peer for `ctorch train`: SimpleCNN (or the MLP) on
CIFAR-10 / MNIST from ../shared/data, SGD lr 0.01 momentum 0.9 (or Adam), batch 64,
shuffled, normalised (CIFAR 0.5/0.5, MNIST 0.1307/0.3081), no augmentation. Reads the
binary files directly (no torchvision download). Prints one JSON line per epoch.

usage: /usr/bin/python3 bench/pytorch_train.py --model simple_cnn|mlp --dataset cifar10|mnist
       [--epochs N] [--optimizer sgd|adam] [--lr LR] [--threads T] [--data-dir DIR] [--seed S]"""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_cifar(d, train):
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    raw = np.concatenate([np.fromfile(os.path.join(d, "cifar-10-batches-bin", f), dtype=np.uint8)
                          .reshape(-1, 3073) for f in files])
    x = torch.from_numpy(raw[:, 1:].astype(np.float32).reshape(-1, 3, 32, 32) / 255.0)
    return (x - 0.5) / 0.5, torch.from_numpy(raw[:, 0].astype(np.int64))


def load_mnist(d, train):
    p = "train" if train else "t10k"
    with gzip.open(os.path.join(d, "mnist", f"{p}-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(d, "mnist", f"{p}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    x = torch.from_numpy(x.astype(np.float32) / 255.0)
    return (x - 0.1307) / 0.3081, torch.from_numpy(y.astype(np.int64))


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    load = load_cifar if a.dataset == "cifar10" else load_mnist
    xtr, ytr = load(a.data_dir, True)
    xte, yte = load(a.data_dir, False)
    model = SimpleCNN() if a.model == "simple_cnn" else MLP()
    if a.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=a.lr or 0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=a.lr or 1e-3)
    start = time.time()
    for epoch in range(a.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(xtr))
        tot, correct, n = 0.0, 0, 0
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            x, y = xtr[idx], ytr[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
        model.eval()
        with torch.no_grad():
            tl, tc = 0.0, 0
            for i in range(0, len(xte), 256):
                out = model(xte[i:i + 256])
                tl += F.cross_entropy(out, yte[i:i + 256], reduction="sum").item()
                tc += (out.argmax(1) == yte[i:i + 256]).sum().item()
        print(json.dumps({"epoch": epoch + 1, "train_loss": tot / n, "train_acc": correct / n,
                          "test_loss": tl / len(xte), "test_acc": tc / len(xte),
                          "seconds": time.time() - t0, "total_seconds": time.time() - start}),
              flush=True)


if __name__ == "__main__":
    main()
