"""The prepared GPU run: every check and figure the project owes a GPU, in one call of at most 9 minutes.

Stages, each written to OUT/<stage>.json as soon as it ends (a run cut short keeps what ran):
1. env: the GPU as nvidia-smi names it, the torch, CUDA and cuDNN versions, the CPU;
2. probe: `gpu_probe.py`'s checks of a sharpness-aware step on the device (dropout masks, BatchNorm,
   bf16 perturbation, fp16 host syncs, a float64 CPU reference);
3. tests (CUDA only): tests/test_fast_path.py, tests/test_sharpness.py (its dropout test on CUDA too),
   tests/test_train.py and the CLI's training tests (which train on CUDA there, or are pinned to the
   CPU), the compile test on CUDA; each test at most 120 s (pytest-timeout), the stage 300 s;
4. step_cost: `step_cost.py`, shortened; 5. dropout_state: `dropout_state.py`; 6. epoch_throughput:
   `epoch_throughput.py` (MFU, SAM/SGD, the DataLoader loop at 0–16 workers, torch.compile);
7. trials_per_gpu: `trials_per_gpu.py`.
Without CUDA the CUDA-only parts are reported as skipped and the rest runs on the CPU; `--quick`
shrinks every stage to a rehearsal of under a minute (the test suite runs it so). No stage starts
after `--deadline` seconds; `--stages` reruns some. The exit status is 1 when a stage raised, a probe
check failed or a test failed.

A GPU machine may hold only torch, torchvision, scikit-learn, scipy, matplotlib, tqdm, pyyaml and
pytest: the engine's other needs travel as wheels (`--wheels DIR`, installed into a temporary folder
first), fetched where pip works:
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        pydantic pydantic-core annotated-types typing-inspection typing-extensions mnist1d
    python benchmarks/gpu_run.py OUT --wheels .whl 2>&1 | tee OUT/log.txt
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from _machine import pythonpath

ROOT = Path(__file__).resolve().parent.parent
# what the tests stage runs on a GPU machine: nothing that needs Ray, Optuna or MLflow (not there)
GPU_TESTS = [
    "tests/test_fast_path.py",
    "tests/test_sharpness.py",
    "tests/test_train.py",
    "tests/test_cli.py",
    "-k",
    "not search and not (compile and cpu)",
]
TESTS_TIMEOUT_S = 300


def _say(line: str) -> None:
    print(line, flush=True)


def _install(wheels: Path) -> None:
    """Install the wheels in `wheels` into a temporary folder seen by this process and its children."""
    target = Path(tempfile.mkdtemp(prefix="rst_tune_site_"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--target", str(target), *map(str, sorted(wheels.glob("*.whl")))],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = pythonpath(target)


def env_stage(device, quick: bool) -> dict:
    import torch
    from _machine import cpu_model

    from rst_tune._train import native_bf16

    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ) if device.type == "cuda" else None  # fmt: skip
    return {
        "date": str(datetime.date.today()),
        "gpu": smi.stdout.strip() if smi and smi.returncode == 0 else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "native_bf16": native_bf16(device),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "device": str(device),
    }


def probe_stage(device, quick: bool) -> dict:
    from gpu_probe import probe

    checks = probe(device)
    for name, check in checks.items():
        _say(f"  {name}: {'skipped' if 'skipped' in check else 'passed' if check['passed'] else 'FAILED'}")
    return {**checks, "passed": all(check.get("passed", True) for check in checks.values())}


def tests_stage(device, quick: bool) -> dict:
    if device.type != "cuda":
        return {"skipped": "needs CUDA"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *GPU_TESTS]
    if importlib.util.find_spec("pytest_timeout"):
        command.append("--timeout=120")  # a hung test fails alone
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": pythonpath(ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=TESTS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # pytest and the training runs it started
            returncode = process.wait()
        output.seek(0)
        text = output.read()
    last = text.strip().splitlines()[-1] if text.strip() else ""
    counts = {
        kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)
    }
    _say(f"  {last}")
    return {
        "command": " ".join(command[1:]),
        "returncode": returncode,
        "passed": returncode == 0,
        "counts": counts,
        "output_tail": text[-8000:],
    }


def step_cost_stage(device, quick: bool) -> dict:
    import step_cost

    models, rounds = (["digits_cnn"], 1) if quick else (list(step_cost.MODELS), 5)
    results = []
    for model in models:
        size = 16 if quick else step_cost.default_batch(model, device)
        result = step_cost.measure(
            model, device, size, steps=1 if quick else 4, rounds=rounds, warmup=1 if quick else 3
        )
        results.append(result)
        ratios = ", ".join(f"{v} {r['ratio_to_sgd']:.3f}x" for v, r in result["variants"].items())
        _say(f"  {model}, batch {size}: SGD {result['sgd_ms']:.2f} ms; {ratios}")
    return {"results": results}


def dropout_state_stage(device, quick: bool) -> dict:
    import dropout_state

    steps, rounds = (1, 1) if quick else (10, 15)
    results = [
        dropout_state.measure(name, device, steps, rounds, warmup=1 if quick else 3)
        for name in dropout_state.MODELS
    ]
    for r in results:
        shares = f"save + restore {100 * r['ratio']:.3f} %, reseed {100 * r['reseed_ratio']:.3f} %"
        _say(f"  {r['model']}: {shares} of a sharpness-aware step")
    return {"results": results}


def epoch_throughput_stage(device, quick: bool) -> dict:
    from _machine import engine_setup
    from epoch_throughput import Setup, measure

    if quick:
        setup = Setup(str(device), images=128, batch_size=64, precision="fp32", channels_last=False, epochs=1,
                      matmul_size=256, model="digits_cnn", model_params={"width": 8})  # fmt: skip
        workers = [0, 1]
    else:
        setup = Setup(str(device), **engine_setup(device), epochs=2)
        workers = [n for n in (0, 4, 8, 16) if n <= (os.cpu_count() or 1)]
    return measure(setup, compile_model=True, workers=workers, report=_say)


def trials_stage(device, quick: bool) -> dict:
    from trials_per_gpu import measure

    counts = (1, 2) if quick else (1, 2, 4)
    return measure(str(device), counts, epochs=1 if quick else 3, quick=quick, report=_say)


STAGES: dict[str, Callable] = {
    "env": env_stage,
    "probe": probe_stage,
    "tests": tests_stage,
    "step_cost": step_cost_stage,
    "dropout_state": dropout_state_stage,
    "epoch_throughput": epoch_throughput_stage,
    "trials_per_gpu": trials_stage,
}


def _outcome(result: dict) -> str:
    """A stage's result in a word or two: done, skipped, or FAILED (with its error)."""
    if "error" in result:
        return f"FAILED: {result['error']}"
    if result.get("passed") is False:
        return "FAILED"
    return "skipped" if "skipped" in result else "done"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the stages' JSON files")
    parser.add_argument("--quick", action="store_true", help="a rehearsal: every stage shrunk")
    parser.add_argument("--wheels", type=Path, help="a folder of wheels to install first (see above)")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument(
        "--deadline", type=float, default=540, help="seconds after which no stage starts (default 540)"
    )
    args = parser.parse_args()
    began = time.perf_counter()
    if args.wheels:
        _install(args.wheels)
    sys.path.insert(0, str(ROOT))
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = {}
    for name in args.stages:
        start = time.perf_counter()
        _say(f"[{name}] on {device}")
        if start - began > args.deadline:
            result = {"skipped": f"past the {args.deadline:g} s deadline"}
        else:
            try:
                result = STAGES[name](device, args.quick)
            except Exception as err:
                result = {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc()[-4000:],
                }
        result = {"stage": name, "seconds": time.perf_counter() - start, **result}
        temporary = args.out / f".{name}.json"
        temporary.write_text(json.dumps(result, indent=2, default=str) + "\n")
        temporary.replace(args.out / f"{name}.json")
        outcomes[name] = _outcome(result)
        _say(f"[{name}] {outcomes[name]} in {result['seconds']:.1f} s")
    _say("; ".join(f"{name}: {outcome.split(':')[0]}" for name, outcome in outcomes.items()))
    return 1 if any(outcome.startswith("FAILED") for outcome in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
