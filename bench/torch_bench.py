"""PyTorch peer of `ctorch bench`: the same models, synthetic data, batch size and thread
count, float32. A training step is forward + cross_entropy + backward + SGD(lr 0.01,
momentum 0.9) step; inference is eval() under no_grad. Prints one JSON object with the keys
of `ctorch bench --json`: model, batch_size, threads, device, train_images_per_sec,
infer_images_per_sec (a phase skipped with --mode is reported as null).

usage: /usr/bin/python3 bench/torch_bench.py --model simple_cnn|mlp|resnet18 --batch-size B
       [--steps N] [--warmup W] [--threads T] [--mode both|train|infer]

The environment decides which PyTorch is measured: as installed, or at its best with
OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
(and OPENBLAS_CORETYPE unset); bench/run_bench.py sets both up."""
import argparse
import json
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.exit(f"torch_bench.py: cannot import torch ({e}); install Debian's PyTorch with "
             "`apt-get install -y python3-torch python3-torchvision` and run with /usr/bin/python3")

# steps when --steps is not given: a few seconds per phase on 2 cores
DEFAULT_STEPS = {"simple_cnn": 40, "mlp": 400, "resnet18": 4}


class SimpleCNN(nn.Module):
    """ctorch's simple_cnn (the seed's SimpleCNN), as in bench/pytorch_train.py."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(64 * 8 * 8, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class MLP(nn.Module):
    """ctorch's mlp: 784-128-10 with ReLU."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def resnet18_cifar(num_classes=10):
    """torchvision's resnet18 with the CIFAR stem: 3x3 stride-1 conv1, no max-pool."""
    try:
        import torchvision
    except ImportError as e:
        sys.exit(f"torch_bench.py: cannot import torchvision ({e}); "
                 "`apt-get install -y python3-torch python3-torchvision`")
    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


def make_model(name):
    if name == "simple_cnn":
        return SimpleCNN(), (3, 32, 32)
    if name == "mlp":
        return MLP(), (1, 28, 28)
    if name == "resnet18":
        return resnet18_cifar(), (3, 32, 32)
    sys.exit(f"torch_bench.py: unknown --model {name!r} (simple_cnn, mlp, resnet18)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=("both", "train", "infer"), default="both")
    a = ap.parse_args()
    steps = a.steps or DEFAULT_STEPS.get(a.model, 20)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, shape = make_model(a.model)
    x = torch.randn(a.batch_size, *shape)
    y = (torch.rand(a.batch_size) * 10).long()
    train_ips = infer_ips = None

    if a.mode in ("both", "train"):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        t = 0.0
        for i in range(a.warmup + steps):
            t0 = time.perf_counter()
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            # as ctorch's step: the loss and the count of correct predictions on the host
            loss.item()
            (out.detach().argmax(1) == y).sum().item()
            if i >= a.warmup:
                t += time.perf_counter() - t0
        train_ips = a.batch_size * steps / t

    if a.mode in ("both", "infer"):
        model.eval()
        t = 0.0
        with torch.no_grad():
            for i in range(a.warmup + steps):
                t0 = time.perf_counter()
                out = model(x)
                if i >= a.warmup:
                    t += time.perf_counter() - t0
                del out
        infer_ips = a.batch_size * steps / t

    print(json.dumps({"model": a.model, "batch_size": a.batch_size, "threads": torch.get_num_threads(),
                      "device": "cpu",
                      "train_images_per_sec": None if train_ips is None else round(train_ips, 1),
                      "infer_images_per_sec": None if infer_ips is None else round(infer_ips, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
