"""How far two float32 trainings of resnet18 drift apart when only the order of the
float32 sums differs (PyTorch 2.x against itself: contiguous vs channels-last, and float32
vs float64), after 1, 5 and 20 SGD steps (lr 0.01, momentum 0.9, batch 64, CIFAR-10).

This is the noise floor for issue 13's "2 ranks x 32 vs 1 rank x 64" comparison of resnet18
with SyncBatchNorm: a data-parallel run sums the same numbers in another order, so in
float32 it cannot be closer to the single process than this. Metrics: the largest relative
L2 difference of one tensor, of the conv/fc weights, and over all parameters together.

usage: bench/.venv/bin/python bench/float32_drift.py [--data-dir DIR] [--steps 1,5,20]
"""
import argparse
import os, sys, numpy as np, torch, torch.nn as nn, torchvision
ap = argparse.ArgumentParser()
ap.add_argument("--data-dir", default=os.environ.get("CTORCH_DATA", "../shared/data"))
ap.add_argument("--steps", default="1,5,20")
args = ap.parse_args()
torch.set_num_threads(2)
def model():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity(); return m
raw = np.fromfile(os.path.join(args.data_dir, 'cifar-10-batches-bin', 'data_batch_1.bin'), dtype=np.uint8).reshape(-1, 3073)
X = torch.tensor(raw[:1280, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
X = (X - X.mean((0, 2, 3), keepdim=True)) / X.std((0, 2, 3), keepdim=True)
Y = torch.tensor(raw[:1280, 0].astype(np.int64))
def train(steps, dtype=torch.float32, cl=False, split=False):
    m = model().to(dtype)
    if cl: m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    for s in range(steps):
        x = X[s*64:(s+1)*64].to(dtype); y = Y[s*64:(s+1)*64]
        if cl: x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return {k: v.detach().double() for k, v in m.state_dict().items() if v.is_floating_point()}
def cmp(a, b):
    per = {k: ((a[k]-b[k]).norm() / max(a[k].norm(), 1e-30)).item() for k in a if 'running' not in k}
    w = max(v for k, v in per.items() if k.endswith('weight') and a[k].numel() > 1000)
    g = (sum(((a[k]-b[k])**2).sum() for k in per) / sum((a[k]**2).sum() for k in per)).sqrt().item()
    return max(per.values()), w, g
for steps in [int(v) for v in args.steps.split(',')]:
    A = train(steps); B = train(steps, cl=True); D = train(steps, torch.float64)
    print(f"PyTorch {torch.__version__} resnet18 (CIFAR stem) {steps} steps: "
          "float32 contiguous vs channels-last: max per-tensor %.3g, conv/fc weights %.3g, global %.3g" % cmp(A, B),
          "| float32 vs float64: max %.3g, conv/fc %.3g, global %.3g" % cmp(A, D), flush=True)
