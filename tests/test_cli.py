"""`rst-tune train` as a user runs it: a subprocess, its table, its exit codes, its checkpoint (the
config merge, in process)."""

import re
import subprocess
import sys

import pytest

from rst_tune.cli import main


def rst_tune(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rst_tune.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.slow
def test_train_prints_a_table_and_resumes_from_its_checkpoint(tmp_path):
    ckpt = tmp_path / "run.pt"
    first = rst_tune(
        "train",
        "--quiet",
        "--checkpoint",
        str(ckpt),
        "epochs=2",
        "batch_size=256",
        "schedule.name=step_down",
        "schedule.params.switch=0.5",
    )
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert "schedule step_down(switch=0.5) (p̄ = 0.500, expected cost 1.500)" in lines[0]
    header, *rows, test = lines[1:]
    assert header.split()[:5] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert re.fullmatch(r"test part: loss \d+\.\d{4}, accuracy \d+\.\d\d%", test)  # after the last epoch
    assert [row.split()[0] for row in rows] == ["1", "2"]
    assert ckpt.exists()
    # step_down(0.5) over 2 epochs: every step of epoch 1 is sharpness-aware, so its cost is 2
    assert rows[0].split()[5] == "2.000"

    again = rst_tune(
        "train",
        "--quiet",
        "--checkpoint",
        str(ckpt),
        "epochs=2",
        "batch_size=256",
        "schedule.name=step_down",
        "schedule.params.switch=0.5",
    )
    assert again.returncode == 0
    assert "resumed from" in again.stdout and "at epoch 2" in again.stdout
    # resumed line, banner, header, the finished run's test line: nothing left to train
    assert len(again.stdout.splitlines()) == 4 and again.stdout.splitlines()[-1] == test


@pytest.mark.parametrize(
    "args, message",
    [
        (["rho=-1"], "rho: Input should be greater than or equal to 0"),
        (["learning_rate=0.1"], "learning_rate: unknown key"),
        (["schedule.name=zigzag"], "unknown schedule 'zigzag'"),
        (["epochs"], "'epochs': expected key=value"),
        (["--config", "/nonexistent.yaml"], "/nonexistent.yaml: No such file or directory"),
        (["dataset=cifar10", "model=resnet18", "data_dir=/nonexistent"], "cifar10 not found"),
        pytest.param(
            ["dataset=mnist1d", "model=mnist1d_cnn", "channels_last=true"],
            "channels_last: is a layout of images",
            marks=pytest.mark.slow,  # generates MNIST-1D: the data tests hold that
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    result = rst_tune("train", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_config_file_and_overrides_merge(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\nbatch_size: 512\nschedule:\n  name: constant\n  params: {p: 0.0}\n")
    assert main(["train", "--quiet", "--config", str(config), "schedule.params.p=1.0"]) == 0  # in process
    row = (
        capsys.readouterr().out.splitlines()[-2].split()
    )  # the last epoch's row; the test part's line follows
    assert row[0] == "1" and row[5] == "2.000"  # p = 1 from the command line won over the file's 0


@pytest.mark.slow
def test_search_with_a_bad_space_exits_2_with_one_line_and_starts_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nspace:\n  schedule:\n    constant: {p: {low: 0, high: 1}}\n  rho: {low: 0.5, high: 0.1}\n"
    )
    result = rst_tune("search", "--space", str(bad), "--results-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert result.stderr == f"rst-tune: error: {bad}:5: space.rho: low (0.5) must be below high (0.1)\n"
    assert not (tmp_path / "runs").exists()
    missing = rst_tune("search", "--space", "nonexistent")
    assert (
        missing.returncode == 2 and "shipped: cifar100_wrn28_10, cifar10_resnet18, default" in missing.stderr
    )
    assert rst_tune("pareto", str(tmp_path)).returncode == 2
