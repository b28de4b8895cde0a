"""Step time of RandomizedSAM on 1 process and on 2 data-parallel processes, SGD and SAM branches, and
the gradient all-reduces each step makes.

The same global batch each step: one process takes all of it, each of 2 ranks (DistributedDataParallel,
gloo on CPU, NCCL on GPU, one device per rank) takes half. The CPU's cores are split evenly between the
ranks (torch threads), so 1 and 2 processes use the same cores. Every step is timed on rank 0 after
`--warmup` steps; the median over `--rounds` rounds of `--steps` steps is reported, with the ratio of 2
processes to 1 per branch. The all-reduces are counted by a DDP communication hook around the default
all-reduce: one call per gradient bucket (25 MB each, the first 1 MB), so one reduction per step is 1
call for the digits CNN and 3 for ResNet-18's 11 M parameters, on SGD and SAM steps alike.

    python benchmarks/data_parallel.py                       # CPU, gloo
    python benchmarks/data_parallel.py --device cuda         # NCCL: needs 2 GPUs
Writes data_parallel_<device>.txt (what it prints) and .json (every figure) next to itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from _machine import cpu_model
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from rst_tune.models import build_model
from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM

# name -> (input shape, global batch on CPU, global batch on CUDA)
MODELS = {"digits_cnn": ((1, 8, 8), 256, 4096), "resnet18": ((3, 32, 32), 64, 512)}
BRANCHES = {"SGD": 0.0, "SAM": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, job: dict, out: str) -> None:
    device = torch.device(job["device"], rank) if job["device"] == "cuda" else torch.device("cpu")
    torch.set_num_threads(max(1, job["cores"] // world_size))
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
    shape, batch = job["shape"], job["batch"] // world_size
    torch.manual_seed(0)
    model = build_model(job["model"], 10, shape).to(device)
    network, reduces = model, [0]
    if world_size > 1:
        network = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

        def counting(state, bucket):
            reduces[0] += 1
            return allreduce_hook(state, bucket)

        network.register_comm_hook(None, counting)
    images = torch.randn(batch, *shape, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    base = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total = job["warmup"] + job["rounds"] * job["steps"]
    optimizer = RandomizedSAM(base, make_schedule("constant", p=job["p"]), total, model=network)

    def closure():
        loss = F.cross_entropy(network(images), labels)
        loss.backward()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(job["warmup"]):
        optimizer.step(closure)
    sync()
    reduces[0], step_s = 0, []
    for _ in range(job["rounds"]):
        start = time.perf_counter()
        for _ in range(job["steps"]):
            optimizer.step(closure)
        sync()
        step_s.append((time.perf_counter() - start) / job["steps"])
    if rank == 0:
        measured = {
            "step_ms": 1e3 * statistics.median(step_s),
            "reduces_per_step": reduces[0] / (total - job["warmup"]),
        }
        Path(out).write_text(json.dumps(measured))
    if world_size > 1:
        dist.destroy_process_group()


def measure(job: dict, world_size: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.json")
        mp.spawn(_rank, args=(world_size, _free_port(), job, out), nprocs=world_size)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores split among the ranks")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "no GPU"
    lines = [
        f"$ python benchmarks/data_parallel.py --device {args.device}   ({datetime.date.today()}, "
        f"{cpu_model()}, {args.cores} cores, {gpu}, torch {torch.__version__}, "
        f"backend {'nccl' if args.device == 'cuda' else 'gloo'})"
    ]
    results = []
    for model in args.models:
        shape, cpu_batch, cuda_batch = MODELS[model]
        batch = cuda_batch if args.device == "cuda" else cpu_batch
        lines += ["", f"{model}, global batch {batch} (median of {args.rounds} rounds of {args.steps} steps)"]
        lines.append(
            f"  {'branch':6}  {'1 process':>10}  {'2 processes':>11}  {'2 / 1':>6}  "
            f"{'all-reduces/step (2)':>20}"
        )
        for branch, p in BRANCHES.items():
            job = {
                "model": model,
                "shape": shape,
                "batch": batch,
                "p": p,
                "device": args.device,
                "cores": args.cores,
                "steps": args.steps,
                "rounds": args.rounds,
                "warmup": args.warmup,
            }
            one, two = measure(job, 1), measure(job, 2)
            results.append(
                {**job, "one": one, "two": two, "ratio": two["step_ms"] / one["step_ms"], "branch": branch}
            )
            lines.append(
                f"  {branch:6}  {one['step_ms']:8.1f} ms  {two['step_ms']:9.1f} ms  "
                f"{two['step_ms'] / one['step_ms']:5.2f}×  {two['reduces_per_step']:20.2f}"
            )
    print("\n".join(lines))
    stem = Path(__file__).with_name(f"data_parallel_{args.device}")
    stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    record = {"date": str(datetime.date.today()), "torch": torch.__version__, "cpu": cpu_model(), "gpu": gpu}
    stem.with_suffix(".json").write_text(json.dumps({**record, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
