"""Step time of RandomizedSAM on 1 process and on 2 data-parallel processes, SGD and SAM branches, and
the gradient all-reduces each step makes.

The same global batch each step: one process takes all of it, each of 2 ranks (DistributedDataParallel,
gloo on CPU, NCCL on GPU, one device per rank) takes half. The CPU's cores are split evenly between the
ranks (torch threads), so 1 and 2 processes use the same cores. Every step is timed on rank 0 after
`--warmup` steps; the median over `--rounds` rounds of `--steps` steps is reported, with the ratio of 2
processes to 1 per branch. The all-reduces are counted by a DDP communication hook around the default
all-reduce: one call per gradient bucket (25 MB each, the first 1 MB), so one reduction per step is 1
call for the digits CNN and 3 for ResNet-18's 11 M parameters, on SGD and SAM steps alike.

On CUDA the steps run as the engine runs them on a GPU: the forward pass under autocast (`--precision`:
by default bf16 where the GPU has it natively, else fp32; fp32 on the CPU), inputs and weights
channels_last, cuDNN benchmark mode, fused SGD. NCCL runs one rank per GPU: with one GPU the 1-process figures
are measured and the 2-process ones reported as not measurable (null in the JSON, the reason under
"two_skipped"); with none, `--device cuda` exits with status 2.

    python benchmarks/data_parallel.py                       # CPU, gloo
    python benchmarks/data_parallel.py --device cuda         # 1 process on cuda:0; 2 on cuda:0, cuda:1
    python benchmarks/data_parallel.py --rounds 1 --steps 1 --warmup 1 --models digits_cnn --out /tmp/dp
Writes data_parallel_<device>.txt (what it prints) and .json (every figure) next to itself, or
`--out`.txt and `--out`.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from _machine import cpu_model, engine_setup
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from rst_tune.models import build_model
from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM

# name -> (input shape, global batch on CPU, global batch on CUDA)
MODELS = {"digits_cnn": ((1, 8, 8), 256, 4096), "resnet18": ((3, 32, 32), 64, 512)}
BRANCHES = {"SGD": 0.0, "SAM": 1.0}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, job: dict, out: str) -> None:
    device = torch.device(job["device"], rank) if job["device"] == "cuda" else torch.device("cpu")
    torch.set_num_threads(max(1, job["cores"] // world_size))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicators and barriers use the current device
        torch.backends.cudnn.benchmark = True  # one batch shape: as the Trainer on a GPU
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
    shape, batch = job["shape"], job["batch"] // world_size
    torch.manual_seed(0)
    layout = torch.channels_last if job["channels_last"] else torch.contiguous_format
    model = build_model(job["model"], 10, shape).to(device, memory_format=layout)
    network, reduces = model, [0]
    if world_size > 1:
        network = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

        def counting(state, bucket):
            reduces[0] += 1
            return allreduce_hook(state, bucket)

        network.register_comm_hook(None, counting)
    images = torch.randn(batch, *shape, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,), device=device)
    base = torch.optim.SGD(
        model.parameters(),
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        fused=device.type == "cuda",  # as the Trainer on a GPU (no GradScaler here)
    )
    total = job["warmup"] + job["rounds"] * job["steps"]
    optimizer = RandomizedSAM(base, make_schedule("constant", p=job["p"]), total, model=network)

    dtype = PRECISIONS[job["precision"]]

    def closure():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):  # as Trainer._loss
            loss = F.cross_entropy(network(images).float(), labels)
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
        os._exit(0)  # gloo's threads can abort the interpreter's teardown (tests/test_parallel.py)


def measure(job: dict, world_size: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.json")
        mp.spawn(_rank, args=(world_size, _free_port(), job, out), nprocs=world_size)
        return json.loads(Path(out).read_text())


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores split among the ranks")
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        help="autocast of the forward pass (default: bf16 on a GPU that has it, else fp32)",
    )
    parser.add_argument(
        "--out", help="write OUT.txt and OUT.json (default: data_parallel_<device> next to this script)"
    )
    args = parser.parse_args()
    gpus = gpu_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus == 0:
        print("data_parallel.py: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
        sys.exit(2)
    setup = engine_setup(torch.device(args.device))  # every model here takes images (N, C, H, W)
    precision, channels_last = args.precision or setup["precision"], setup["channels_last"]
    skipped = f"needs 2 GPUs, found {gpus}" if args.device == "cuda" and gpus < 2 else None
    if args.device == "cuda":
        name = torch.cuda.get_device_name(0)
        gpu = name if gpus == 1 else f"{gpus} × {name}"
    else:
        gpu = "no GPU"
    lines = [
        f"$ python benchmarks/data_parallel.py --device {args.device}   ({datetime.date.today()}, "
        f"{cpu_model()}, {args.cores} cores, {gpu}, torch {torch.__version__}, "
        f"backend {'nccl' if args.device == 'cuda' else 'gloo'}, {precision}"
        f"{', channels_last' if channels_last else ''})"
    ]
    if skipped:
        lines.append(f"2 processes not measured: {skipped} (NCCL runs one rank per GPU)")
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
                "precision": precision,
                "channels_last": channels_last,
                "cores": args.cores,
                "steps": args.steps,
                "rounds": args.rounds,
                "warmup": args.warmup,
            }
            one = measure(job, 1)
            two = None if skipped else measure(job, 2)
            ratio = two["step_ms"] / one["step_ms"] if two else None
            results.append(
                {**job, "one": one, "two": two, "two_skipped": skipped, "ratio": ratio, "branch": branch}
            )
            if two:
                lines.append(
                    f"  {branch:6}  {one['step_ms']:8.1f} ms  {two['step_ms']:9.1f} ms  "
                    f"{ratio:5.2f}×  {two['reduces_per_step']:20.2f}"
                )
            else:
                lines.append(f"  {branch:6}  {one['step_ms']:8.1f} ms  {'n/a':>11}  {'n/a':>6}  {'n/a':>20}")
    print("\n".join(lines))
    stem = Path(args.out) if args.out else Path(__file__).with_name(f"data_parallel_{args.device}")
    if stem.suffix in (".txt", ".json"):
        stem = stem.with_suffix("")
    Path(f"{stem}.txt").write_text("\n".join(lines) + "\n")
    record = {"date": str(datetime.date.today()), "torch": torch.__version__, "cpu": cpu_model(), "gpu": gpu}
    Path(f"{stem}.json").write_text(json.dumps({**record, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
