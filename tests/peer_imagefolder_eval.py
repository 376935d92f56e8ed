"""PyTorch's side of tests/test_imagefolder.c's fine-tuning test: torchvision's ImageFolder
(PIL decoding) over ROOT/val with the validation transforms ctorch uses at --image-size S
(Resize(S*256//224), CenterCrop(S), ToTensor, Normalize with ImageNet's mean/std), through
torchvision's resnet18 holding the weights of a torch.save file, in eval mode.

Usage: python tests/peer_imagefolder_eval.py ROOT WEIGHTS.pt S
Prints one JSON object: images, test_loss (mean cross-entropy), correct."""
import json
import sys

import torch
import torchvision
from torchvision import transforms

root, weights, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
tf = transforms.Compose([
    transforms.Resize(size * 256 // 224),
    transforms.CenterCrop(size),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
ds = torchvision.datasets.ImageFolder(f"{root}/val", transform=tf)
model = torchvision.models.resnet18(weights=None)
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval()
loss, correct, n = 0.0, 0, 0
with torch.no_grad():
    for x, y in torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False):
        out = model(x)
        loss += torch.nn.functional.cross_entropy(out.double(), y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
print(json.dumps({"images": n, "test_loss": loss / n, "correct": correct}))
