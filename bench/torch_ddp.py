"""PyTorch DistributedDataParallel (gloo), the peer of data-parallel `ctorch train`:
SimpleCNN on CIFAR-10 from ../shared/data, SGD lr 0.01 momentum 0.9, batch per process,
each rank a strided share of the epoch's permutation (DistributedSampler's order), one
thread per process (torch.set_num_threads). Prints one JSON line from rank 0:
{"world": N, "images_per_sec": global images/s, "seconds": ...}.

usage: bench/.venv/bin/python bench/torch_ddp.py --world 2 --batch-size 64 --images 12800
       [--channels-last] [--compile] [--data-dir DIR] [--threads 1]"""
import argparse
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_train import SimpleCNN, load_cifar, normalise  # noqa: E402  (one definition of the model)


def run(rank, args, port):
    torch.set_num_threads(args.threads)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if args.world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=args.world)
    x, y = load_cifar(args.data_dir, True, args.images)  # uint8, as the file holds it
    x = normalise(x, "cifar10")
    torch.manual_seed(0)
    model = SimpleCNN()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if args.world > 1 else model
    if args.compile:  # compiled during the warm-up steps, which are not timed
        ddp = torch.compile(ddp)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)[rank::args.world]
    steps = len(perm) // args.batch_size
    warm = 5

    def step(i):
        idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
        xb, yb = x[idx], y[idx]
        if args.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(xb), yb)
        loss.backward()
        opt.step()

    for i in range(warm):
        step(i)
    if args.world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for i in range(warm, steps):
        step(i)
    if args.world > 1:
        dist.barrier()
    secs = time.perf_counter() - t0
    if rank == 0:
        n = (steps - warm) * args.batch_size * args.world
        print(json.dumps({"world": args.world, "images_per_sec": n / secs, "seconds": secs,
                          "torch": torch.__version__, "channels_last": args.channels_last,
                          "compile": args.compile}),
              flush=True)
    if args.world > 1:
        dist.destroy_process_group()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=12800)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--data-dir", default=os.environ.get("CTORCH_DATA", os.path.join(here, "..", "..", "shared", "data")))
    args = ap.parse_args()
    port = free_port()
    if args.world == 1:
        run(0, args, port)
    else:
        mp.spawn(run, args=(args, port), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
