#!/usr/bin/env python3
"""Loads a ctorch run's model.safetensors into the PyTorch model it was trained as
(safetensors.torch.load_file + load_state_dict(strict=True)), then checks the logits of a
fixed batch against ctorch's own (a .npy-free raw float32 file written by the test).

usage: peer_load_run.py RUN_DIR/model.safetensors MODEL INPUT.f32 LOGITS.f32
Prints "ok max_abs_diff=..." and exits 0, or says why and exits 1.
"""
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file


class SimpleCNN(nn.Module):  # the seed's model (tests/fixtures/gen_train_steps.py)
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def main():
    path, model, inp, want = sys.argv[1:5]
    if model != "simple_cnn":
        sys.exit(f"only simple_cnn is defined here, not {model}")
    net = SimpleCNN()
    net.load_state_dict(load_file(path), strict=True)
    net.eval()
    x = torch.frombuffer(bytearray(open(inp, "rb").read()), dtype=torch.float32).reshape(-1, 3, 32, 32)
    w = torch.frombuffer(bytearray(open(want, "rb").read()), dtype=torch.float32).reshape(x.shape[0], 10)
    with torch.no_grad():
        got = net(x)
    d = (got - w).abs().max().item()
    print(f"ok max_abs_diff={d:.3g}")
    sys.exit(0 if d < 1e-3 else 1)


if __name__ == "__main__":
    main()
