"""torchvision's resnet18() as torchvision initialises it (seeded), saved the two ways
people save weights, and its eval-mode logits on a fixed batch, for
tests/test_torchvision_models.c and the fine-tuning CLI tests.

Usage: python tests/peer_torchvision_weights.py OUT_DIR
Writes OUT_DIR/resnet18.safetensors (safetensors.torch.save_file), OUT_DIR/resnet18.pt
(torch.save of the state_dict) and OUT_DIR/logits.safetensors ("x": 2x3x64x64 float32,
"logits": 2x1000)."""
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None)
model.eval()
sd = {k: v.contiguous() for k, v in model.state_dict().items()}
save_file(sd, os.path.join(out, "resnet18.safetensors"))
torch.save(model.state_dict(), os.path.join(out, "resnet18.pt"))
i = torch.arange(2 * 3 * 64 * 64, dtype=torch.float64)
x = torch.sin(0.37 * i + 0.5).float().reshape(2, 3, 64, 64) * 2
with torch.no_grad():
    logits = model(x)
save_file({"x": x, "logits": logits.contiguous()}, os.path.join(out, "logits.safetensors"))
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}: wrote {out}")
