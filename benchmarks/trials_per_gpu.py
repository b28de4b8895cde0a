"""How many trials to pack on one GPU: the throughput of 1, 2 and 4 training processes sharing it.

Each process is one trial as a search runs it: its own Python process training a `Trainer` on the
device. The processes start together, each trains a warm-up epoch (CUDA context, cuDNN autotuning),
waits until all are ready, then times `--epochs` epochs. The throughput is the sum over processes
of training items per second (each process's median epoch); its ratio to one process says what
packing buys, and the slowdown of each process's epoch what it costs a trial (`resources.gpu: 0.5`
or `0.25` in a search file packs 2 or 4). Two problems: the default search's (MNIST-1D with its
`train:` settings from rst_tune/search_spaces/default.yaml, RST at p = 0.5) and ResNet-18 on CIFAR-shaped
images (batch 512, bf16, channels_last on CUDA).

    python benchmarks/trials_per_gpu.py --json out.json        # CUDA when present
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _machine import engine_setup, pythonpath

SPACES = Path(__file__).resolve().parent.parent / "rst_tune" / "search_spaces"


def problems(device: str, quick: bool = False) -> dict[str, dict]:
    """The training settings of each problem on `device`; `quick`: the default problem only."""
    default = yaml.safe_load((SPACES / "default.yaml").read_text())["train"]
    found = {"default": {**default, "device": device, "schedule": {"name": "constant", "params": {"p": 0.5}}}}
    if not quick:
        found["resnet18"] = {
            "dataset": "synthetic",
            "model": "resnet18",
            "batch_size": 512,
            "device": device,
            **engine_setup(torch.device(device)),
            "schedule": {"name": "constant", "params": {"p": 0.5}},
        }
    return found


def _one_trial(settings: dict, epochs: int, folder: Path, index: int, timeout: float) -> None:
    """A worker process: a warm-up epoch, ready, wait for go, then `epochs` timed epochs. It gives up
    when its parent is gone or go has not come within `timeout` seconds."""
    from rst_tune._train import Trainer
    from rst_tune.config import load_config

    parent, deadline = os.getppid(), time.time() + timeout
    trainer = Trainer(load_config({**settings, "epochs": epochs + 1}))
    trainer.train_epoch()
    (folder / f"ready-{index}").touch()
    while not (folder / "go").exists():
        if os.getppid() != parent or time.time() > deadline:
            sys.exit("no go: the measuring process is gone or gave up")
        time.sleep(0.01)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        trainer.train_epoch()  # reads its sums back: the epoch's work is done when it returns
        seconds.append(time.perf_counter() - start)
    items = trainer.steps_per_epoch * trainer.config.batch_size
    (folder / f"result-{index}.json").write_text(json.dumps({"epoch_s": seconds, "items": items}))


def _failure(folder: Path, index: int) -> str:
    return f"trial process {index} failed: {(folder / f'stderr-{index}').read_text()[-2000:]}"


def concurrent(settings: dict, processes: int, epochs: int, timeout: float = 300) -> dict:
    """`processes` trials of `settings` at once: their epoch times and summed throughput."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        # each its share of the CPU's cores, as Ray gives a trial its `cpu` (OMP_NUM_THREADS)
        threads = str(max(1, (os.cpu_count() or 1) // processes))
        env = {**os.environ, "PYTHONPATH": pythonpath(SPACES.parent), "OMP_NUM_THREADS": threads}
        workers: list[subprocess.Popen] = []
        try:
            for i in range(processes):
                with open(folder / f"stderr-{i}", "w") as stderr:
                    arguments = [json.dumps(settings), str(epochs), str(folder), str(i), str(timeout)]
                    workers.append(
                        subprocess.Popen(
                            [sys.executable, __file__, "--worker", *arguments],
                            env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=stderr,
                        )
                    )
            deadline = time.time() + timeout
            while len(list(folder.glob("ready-*"))) < processes:
                failed = [i for i, w in enumerate(workers) if w.poll() not in (None, 0)]
                if failed:
                    raise RuntimeError(_failure(folder, failed[0]))
                if time.time() > deadline:
                    raise RuntimeError(f"the trial processes were not ready in {timeout} s")
                time.sleep(0.05)
            (folder / "go").touch()
            for i, worker in enumerate(workers):
                if worker.wait(timeout=max(1.0, deadline - time.time())) != 0:
                    raise RuntimeError(_failure(folder, i))
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        results = [json.loads((folder / f"result-{i}.json").read_text()) for i in range(processes)]
    epoch_s = [statistics.median(r["epoch_s"]) for r in results]
    return {
        "processes": processes,
        "epoch_s": epoch_s,
        "items_per_s": sum(r["items"] / s for r, s in zip(results, epoch_s)),
    }


def measure(device: str, counts=(1, 2, 4), epochs: int = 3, quick: bool = False, report=print) -> dict:
    """Every problem at every process count, `report`ing a line as each finishes."""
    results = {}
    for name, settings in problems(device, quick).items():
        runs = []
        for processes in counts:
            run = concurrent(settings, processes, epochs)
            run["speedup"] = run["items_per_s"] / runs[0]["items_per_s"] if runs else 1.0
            run["epoch_slowdown"] = statistics.median(run["epoch_s"]) / runs[0]["epoch_s"][0] if runs else 1.0
            runs.append(run)
            report(
                f"  {name}: {processes} at once: {run['items_per_s']:.0f} items/s in all "
                f"({run['speedup']:.2f}x one), each epoch {run['epoch_slowdown']:.2f}x as long"
            )
        results[name] = {"settings": settings, "runs": runs}
    return results


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        settings, epochs, folder, index, timeout = sys.argv[2:7]
        _one_trial(json.loads(settings), int(epochs), Path(folder), int(index), float(timeout))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per process, after a warm-up")
    parser.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    args = parser.parse_args()
    result = measure(args.device, args.counts, args.epochs)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "results": result}, indent=2))


if __name__ == "__main__":
    main()
