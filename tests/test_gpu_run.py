"""The prepared GPU run rehearsed on the CPU: every stage runs and writes its file as it ends, the
CUDA-only parts are reported as skipped, and the figures are the ones the stages promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["env", "probe", "tests", "step_cost", "dropout_state", "epoch_throughput", "trials_per_gpu"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is the run without CUDA")
def test_the_gpu_run_rehearses_on_the_cpu_with_its_cuda_parts_skipped(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), str(out), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = [out / f"{stage}.json" for stage in STAGES]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files)  # no temporary left
    written = [p.stat().st_mtime_ns for p in files]
    assert written == sorted(written)  # each stage's file is written as that stage ends
    env, probe, tests, step_cost, dropout, throughput, trials = (json.loads(p.read_text()) for p in files)

    assert env["torch"] == torch.__version__ and env["gpu"] is None and env["device"] == "cpu"
    assert tests["skipped"] == "needs CUDA"
    assert probe["fp16_syncs"] == {"skipped": "needs CUDA"}
    assert all(probe[check]["passed"] for check in ("dropout_masks", "batchnorm", "float64_reference"))
    bf16 = probe["bf16_perturbation"]
    assert bf16["passed"] and bf16["around the step"]["distance_to_sam"] < bf16["tolerance"]

    (costs,) = step_cost["results"]
    variants = costs["variants"]
    assert variants["sgd"]["ratio_to_sgd"] == 1.0
    assert (variants["p=0"]["sam_fraction"], variants["p=1"]["sam_fraction"]) == (0.0, 1.0)

    assert [r["model"] for r in dropout["results"]] == ["mlp", "digits_cnn"]
    assert all(0 < r["ratio"] < 1 and 0 < r["reseed_ratio"] < 1 for r in dropout["results"])

    loops = throughput["loops"]
    assert set(loops) == {
        "engine sgd", "engine sam", "engine+compile sgd", "dataloader 0 workers", "dataloader 1 workers"
    }  # fmt: skip
    assert (loops["engine sgd"]["passes_per_step"], loops["engine sam"]["passes_per_step"]) == (1.0, 2.0)
    assert all(loop["mfu"] > 0 for loop in loops.values())
    assert set(throughput["verdicts"]) and "compile_speedup" in throughput["figures"]

    runs = trials["default"]["runs"]
    assert [run["processes"] for run in runs] == [1, 2] and len(runs[1]["epoch_s"]) == 2
    assert runs[0]["speedup"] == 1.0 and all(run["items_per_s"] > 0 for run in runs)
