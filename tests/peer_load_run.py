#!/usr/bin/env python3
"""Loads a ctorch run's model.safetensors into the PyTorch model it was trained as
(safetensors.torch.load_file + load_state_dict(strict=True)), then checks the logits of a
fixed batch against ctorch's own (a .npy-free raw float32 file written by the test).

usage: peer_load_run.py RUN_DIR/model.safetensors MODEL INPUT.f32 LOGITS.f32
Prints "ok max_abs_diff=..." and exits 0, or says why and exits 1.
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
from gen_train_steps import SimpleCNN  # noqa: E402  (the seed's model, one definition)


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
