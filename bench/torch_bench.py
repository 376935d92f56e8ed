"""PyTorch peer of `ctorch bench`: the same models, synthetic data, batch size and thread
count. A training step is forward + cross_entropy + backward + SGD(lr 0.01,
momentum 0.9) step; inference is eval() under no_grad. Prints one JSON object with the keys
of `ctorch bench --json`: model, batch_size, threads, device, train_images_per_sec,
infer_images_per_sec (a phase skipped with --mode is reported as null).

usage: PYTHON bench/torch_bench.py --model simple_cnn|mlp|resnet18_cifar|resnet18|resnet34|resnet50|mobilenet_v2 --batch-size B
       [--steps N] [--warmup W] [--threads T] [--mode both|train|infer]
       [--variant eager|channels_last|compile|autocast_bf16|autocast_bf16_cl|compile_bf16]
       [--device cpu|cuda] [--tf32 0|1] [--cudnn-benchmark 0|1]

PYTHON: bench/.venv/bin/python (PyTorch 2.x from PyPI, bench/setup-peer.sh) or Debian's
/usr/bin/python3 (PyTorch 1.13: eager and channels_last; it has no torch.compile).

--variant (default eager, float32 as PyTorch runs out of the box):
  channels_last     the model and the input in torch.channels_last memory format
  compile           torch.compile(model), default mode (inductor); compilation happens in
                    the warm-up steps (at least 2 then), excluded from the timing; its time
                    is reported as compile_seconds (the first step of each phase)
  autocast_bf16     torch.autocast("cpu", dtype=torch.bfloat16) around forward + loss
                    (training) or forward (inference); weights stay float32 (master weights),
                    SGD updates them in float32
  autocast_bf16_cl  both: autocast bf16 with channels_last, PyTorch's best bf16 CPU setup
  compile_bf16      torch.compile(model) run under autocast bf16 (as autocast_bf16, compiled)

The environment decides which PyTorch is measured: as installed, or at its best with
OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
(and OPENBLAS_CORETYPE unset); bench/run_bench.py sets both up.

--device cuda: the peer of `ctorch bench --device cuda` (bench/gpu_bench.py runs both). The
model and the synthetic batch are moved to the GPU once, before the loop, as ctorch does. A
training step ends, as ctorch's, with the loss and the count of correct predictions read
back to the host (two device-to-host copies, each waiting for the GPU) and then
torch.cuda.synchronize(); an inference step copies the logits to the host (ctorch's
`ct_to_device(out, cpu)`) and synchronises. --tf32 sets TF32 for both matmuls (cuBLAS) and
convolutions (cuDNN), as CTORCH_TF32 does for ctorch (default 0: full float32);
--cudnn-benchmark sets torch.backends.cudnn.benchmark (default 1, as ctorch's
CTORCH_CUDNN_BENCHMARK default). The JSON then also carries gpu, torch, tf32 and
cudnn_benchmark. Exit status 2 with a message when CUDA is not usable, or when this PyTorch
cannot run the variant (e.g. compile on PyTorch 1.x)."""
import argparse
import contextlib
import json
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.exit(f"torch_bench.py: cannot import torch ({e}); run bench/setup-peer.sh (PyTorch 2.x in "
             "bench/.venv) or install Debian's PyTorch with "
             "`apt-get install -y python3-torch python3-torchvision` and run with /usr/bin/python3")

VARIANTS = ("eager", "channels_last", "compile", "autocast_bf16", "autocast_bf16_cl",
            "compile_bf16")

# steps when --steps is not given: a few seconds per phase on 2 cores
DEFAULT_STEPS = {"simple_cnn": 40, "mlp": 400, "resnet18_cifar": 4}


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
    if name == "resnet18_cifar":
        return resnet18_cifar(), (3, 32, 32)
    if name == "vit_tiny":  # torchvision's VisionTransformer at ctorch's vit_tiny sizes
        import torchvision
        return torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=12, num_heads=3,
                                                    hidden_dim=192, mlp_dim=768, num_classes=10), (3, 32, 32)
    if name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2"):  # torchvision's, as ctorch's
        import torchvision
        return getattr(torchvision.models, name)(num_classes=10), (3, 32, 32)
    sys.exit(f"torch_bench.py: unknown --model {name!r} (simple_cnn, mlp, resnet18_cifar, resnet18, "
             "resnet34, resnet50, mobilenet_v2, vit_tiny)")


def set_tf32(on):
    """TF32 for cuBLAS matmuls and cuDNN convolutions, through the API this PyTorch prefers
    (fp32_precision from 2.9 on, whose docs deprecate allow_tf32; the two must not be mixed).
    Returns what PyTorch reports afterwards, as a dict for the JSON."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        mode = "tf32" if on else "ieee"
        matmul.fp32_precision = mode
        conv.fp32_precision = mode
        return {"matmul_fp32_precision": matmul.fp32_precision,
                "cudnn_conv_fp32_precision": conv.fp32_precision}
    matmul.allow_tf32 = bool(on)
    cudnn.allow_tf32 = bool(on)
    return {"matmul_allow_tf32": matmul.allow_tf32, "cudnn_allow_tf32": cudnn.allow_tf32}


def setup_cuda(a):
    """Checks that CUDA is usable and sets TF32 and cudnn.benchmark; returns the JSON extras."""
    if not torch.cuda.is_available():
        print(f"torch_bench.py: --device cuda: CUDA is not available to this PyTorch "
              f"({torch.__version__}, built with CUDA {torch.version.cuda}); run it on a machine "
              "with an NVIDIA GPU and a CUDA build of PyTorch", file=sys.stderr, flush=True)
        sys.exit(2)
    torch.backends.cudnn.benchmark = bool(a.cudnn_benchmark)
    tf32 = set_tf32(a.tf32)
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "tf32": bool(a.tf32), "tf32_settings": tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=("both", "train", "infer"), default="both")
    ap.add_argument("--variant", choices=VARIANTS, default="eager")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--tf32", type=int, choices=(0, 1), default=0)
    ap.add_argument("--cudnn-benchmark", type=int, choices=(0, 1), default=1)
    a = ap.parse_args()
    steps = a.steps or DEFAULT_STEPS.get(a.model, 20)
    torch.set_num_threads(a.threads)
    cuda = a.device == "cuda"
    extra = setup_cuda(a) if cuda else {}
    v = a.variant
    channels_last = v in ("channels_last", "autocast_bf16_cl")
    bf16 = v.startswith("autocast_bf16") or v == "compile_bf16"
    compiled = v in ("compile", "compile_bf16")
    if compiled and not hasattr(torch, "compile"):
        print(f"torch_bench.py: --variant compile: PyTorch {torch.__version__} has no torch.compile "
              "(PyTorch 2.x has: bench/setup-peer.sh installs it in bench/.venv)", file=sys.stderr, flush=True)
        sys.exit(2)
    if bf16 and cuda:
        sys.exit("torch_bench.py: --variant autocast_bf16*: CPU only")
    torch.manual_seed(0)
    model, shape = make_model(a.model)
    x = torch.randn(a.batch_size, *shape)
    y = (torch.rand(a.batch_size) * 10).long()
    if cuda:
        model, x, y = model.to("cuda"), x.to("cuda"), y.to("cuda")
        torch.cuda.synchronize()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = model
    if compiled:
        # compile in this process: inductor's worker processes would not be counted in this
        # run's CPU time by run_bench.py (and 2 cores gain little from them)
        import torch._inductor.config as inductor_config
        inductor_config.compile_threads = 1
        net = torch.compile(model)
    warmup = max(a.warmup, 2) if compiled else a.warmup

    def autocast():
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    train_ips = infer_ips = None
    first_step = {}

    if a.mode in ("both", "train"):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        t = 0.0
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            with autocast():
                out = net(x)
                loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            # as ctorch's step: the loss and the count of correct predictions on the host
            loss.item()
            (out.detach().argmax(1) == y).sum().item()
            if cuda:
                torch.cuda.synchronize()
            if i == 0:
                first_step["train"] = time.perf_counter() - t0
            if i >= warmup:
                t += time.perf_counter() - t0
        train_ips = a.batch_size * steps / t

    if a.mode in ("both", "infer"):
        model.eval()
        t = 0.0
        with torch.no_grad():
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                with autocast():
                    out = net(x)
                if cuda:  # as ctorch: the result on the host counts as done
                    out = out.cpu()
                    torch.cuda.synchronize()
                if i == 0:
                    first_step["infer"] = time.perf_counter() - t0
                if i >= warmup:
                    t += time.perf_counter() - t0
                del out
        infer_ips = a.batch_size * steps / t

    res = {"model": a.model, "batch_size": a.batch_size, "threads": torch.get_num_threads(),
           "device": a.device, "variant": v, "torch": torch.__version__, "warmup": warmup,
           "train_images_per_sec": None if train_ips is None else round(train_ips, 1),
           "infer_images_per_sec": None if infer_ips is None else round(infer_ips, 1)}
    if compiled:  # the first step of a phase compiles (the inference graph is another one)
        res["compile_seconds"] = {k: round(t, 1) for k, t in first_step.items()}
    res.update(extra)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
