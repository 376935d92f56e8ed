"""torchvision's vit_b_16() and vit_tiny (VisionTransformer(32, 4, 12, 3, 192, 768)) as
torchvision initialises them (seeded; heads.head, which torchvision zeroes, drawn from
N(0, 0.02) so that the logits are not all zero), saved by safetensors.torch.save_file and by
torch.save, with their eval-mode logits on a fixed batch, for tests/test_transformer.c.

Usage: python tests/peer_torchvision_vit.py OUT_DIR
Writes OUT_DIR/vit_tiny.safetensors, OUT_DIR/vit_b_16.pt and OUT_DIR/{vit_b_16,vit_tiny}_logits
.safetensors ("x": 1x3x224x224 / 2x3x32x32 float32, "logits": N x 1000)."""
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.vision_transformer import VisionTransformer

out = sys.argv[1]
torch.set_num_threads(2)
for name, n, size in [("vit_tiny", 2, 32), ("vit_b_16", 1, 224)]:
    torch.manual_seed(0)
    if name == "vit_b_16":
        model = torchvision.models.vit_b_16(weights=None)
    else:
        model = VisionTransformer(image_size=32, patch_size=4, num_layers=12, num_heads=3,
                                  hidden_dim=192, mlp_dim=768)
    with torch.no_grad():
        model.heads.head.weight.normal_(std=0.02)
        model.heads.head.bias.normal_(std=0.02)
    model.eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if name == "vit_tiny":
        save_file(sd, os.path.join(out, name + ".safetensors"))
    else:
        torch.save(model.state_dict(), os.path.join(out, name + ".pt"))
    i = torch.arange(n * 3 * size * size, dtype=torch.float64)
    x = torch.sin(0.37 * i + 0.5).float().reshape(n, 3, size, size) * 2
    with torch.no_grad():
        logits = model(x)
    save_file({"x": x, "logits": logits.contiguous()},
              os.path.join(out, name + "_logits.safetensors"))
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}: wrote {out}")
