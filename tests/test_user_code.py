"""User code by import path: a package written here, trained by `rst-tune train` and searched on a
local Ray cluster whose workers import it; torchvision models by name; image folders of PNG files;
the streaming loader against the device-resident path; and a one-line error for each bad input."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import Crash, crash_after_saving

from rst_tune._train import Trainer
from rst_tune.cli import main
from rst_tune.config import load_config
from rst_tune.data import StreamingSplits, load_dataset
from rst_tune.models import build_model

CONSOLE_SCRIPT = str(Path(sys.executable).parent / "rst-tune")

PACKAGE = {
    "outside/__init__.py": "",
    "outside/nets.py": """
        import math

        from torch import nn


        def mlp(num_classes, input_shape, hidden=32, dropout=0.0):
            return nn.Sequential(
                nn.Flatten(),
                nn.Linear(math.prod(input_shape), hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )


        def not_a_model(num_classes, input_shape):
            return 3


        def raises(num_classes, input_shape):
            raise RuntimeError("out of ideas")


        def one_logit_too_many(num_classes, input_shape):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 1))
        """,
    "outside/tables.py": """
        import numpy as np
        import torch


        class Rows(torch.utils.data.Dataset):
            def __init__(self, x, y):
                self.x, self.targets = x, list(y)

            def __len__(self):
                return len(self.targets)

            def __getitem__(self, index):
                return self.x[index], self.targets[index]


        def blobs(n=900, features=6, classes=3, seed=0, streamed=False):
            rng = np.random.default_rng(seed)
            centres = rng.normal(0, 3, (classes, features))
            y = rng.integers(0, classes, n)
            x = (centres[y] + rng.normal(0, 1, (n, features))).astype(np.float32)
            cut = [0, 2 * n // 3, 5 * n // 6, n]
            parts = {
                name: (x[a:b], y[a:b]) for name, a, b in zip(("train", "val", "test"), cut, cut[1:])
            }
            return {name: Rows(*part) for name, part in parts.items()} if streamed else parts


        def short_labels():
            x, y = blobs()["train"]
            return {"train": (x, y[:-1]), "val": (x, y)}


        def float_labels():
            x, y = blobs()["train"]
            return {"train": (x, y.astype(np.float32)), "val": (x, y)}


        def raises():
            raise OSError("disk on fire")


        def a_list():
            return [1, 2]
        """,
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The outside package in a fresh folder, on this process's path and as its working directory."""
    folder = tmp_path / "project"
    for name, text in PACKAGE.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(folder))
    for module in [m for m in sys.modules if m.split(".")[0] == "outside"]:
        monkeypatch.delitem(sys.modules, module)
    return folder


def _run(*args, cwd, env=None):
    return subprocess.run(
        [CONSOLE_SCRIPT, *args],
        cwd=cwd,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_rst_tune_train_trains_a_user_model_on_user_data_from_the_working_directory(project):
    result = _run(
        "train", "--quiet", "dataset=outside.tables:blobs", "model=outside.nets:mlp", "epochs=3",
        "batch_size=50", "lr=0.1", cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    last_epoch = result.stdout.strip().splitlines()[-2].split()
    assert last_epoch[0] == "3"
    assert float(last_epoch[4].rstrip("%")) > 90  # three separable blobs: the data reached the model
    assert "test part:" in result.stdout


STREAMED_DROPOUT = {
    "dataset": "outside.tables:blobs",
    "dataset_params": {"streamed": True},
    "model": "outside.nets:mlp",
    "model_params": {"dropout": 0.5},
    "epochs": 2,
    "batch_size": 50,
}


@pytest.mark.slow
def test_a_search_imports_the_user_package_in_its_ray_workers(project, tmp_path):
    space = {
        "name": "outside",
        "train": {**STREAMED_DROPOUT, "model_params": {"dropout": 0.2}, "loader_workers": 1},
        "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}},
        "num_samples": 2,
        "confirm": {"seeds": 0},
    }
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(space))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _run(
        "search", "--space", str(tmp_path / "outside.yaml"), "--results-dir", str(tmp_path / "runs"),
        cwd=elsewhere, env={"PYTHONPATH": str(project)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pareto = json.loads((tmp_path / "runs" / "outside" / "pareto.json").read_text())
    trials = pareto["trials"]
    assert len(trials) == 2 and all(t["state"] == "COMPLETE" for t in trials)
    assert all(t["val_accuracy"] > 0.5 for t in trials)  # chance is 1/3


def test_the_streaming_path_trains_exactly_as_the_device_resident_path_on_the_same_data(project):
    common = {
        "dataset": "outside.tables:blobs",
        "model": "outside.nets:mlp",
        "epochs": 1,
        "batch_size": 50,
        "device": "cpu",  # the tolerances below were measured on the CPU
    }
    resident = Trainer(load_config(common))
    streamed = Trainer(load_config({**common, "dataset_params": {"streamed": True}, "loader_workers": 2}))
    assert isinstance(streamed.data, StreamingSplits) and not isinstance(resident.data, StreamingSplits)
    first, second = next(resident.fit()), next(streamed.fit())
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy"):
        assert first[name] == pytest.approx(second[name], rel=1e-6), name
    for a, b in zip(resident.model.parameters(), streamed.model.parameters()):
        torch.testing.assert_close(a, b)


def test_a_streamed_dropout_run_resumes_mid_epoch_to_the_same_weights(project, tmp_path):
    config = load_config(
        {**STREAMED_DROPOUT, "device": "cpu", "schedule": {"name": "constant", "params": {"p": 0.5}}}
    )  # bit for bit below, which CUDA kernels do not promise
    straight = Trainer(config)
    list(straight.fit())
    first = Trainer(config)
    with pytest.raises(Crash):
        list(first.fit(every=4, on_steps=crash_after_saving(tmp_path / "ckpt.pt", 1, 4)))
    resumed = Trainer(config.model_copy(update={"loader_workers": 0}))  # another worker count
    resumed.load(tmp_path / "ckpt.pt")
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 4) and resumed.steps_per_epoch == 12
    list(resumed.fit())
    assert straight.optimizer.sam_steps == resumed.optimizer.sam_steps > 0
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)  # the same batches, and the same dropout masks after the resume
    assert straight.history[1].train_loss == resumed.history[1].train_loss


@pytest.mark.slow
def test_rst_tune_train_writes_and_resumes_a_mid_epoch_checkpoint(project, tmp_path, monkeypatch):
    settings = ["dataset=outside.tables:blobs", "model=outside.nets:mlp", "model_params.dropout=0.5",
                "epochs=2", "batch_size=50", "device=cpu", "--quiet"]  # fmt: skip
    straight = _run("train", *settings, "--checkpoint", str(tmp_path / "straight.pt"), cwd=project)
    assert straight.returncode == 0, straight.stderr
    checkpoint, saved, save = str(tmp_path / "resumed.pt"), [], Trainer.save

    def save_then_crash(trainer, path):
        save(trainer, path)
        saved.append((trainer.epoch, trainer.step_in_epoch))
        if saved[-1] == (1, 5):
            raise Crash

    monkeypatch.setattr(Trainer, "save", save_then_crash)
    with pytest.raises(Crash):
        main(["train", *settings, "--checkpoint", checkpoint, "--checkpoint-every", "5"])
    assert saved == [(0, 5), (0, 10), (1, 0), (1, 5)]  # 12 steps an epoch: every 5, and at its end
    resumed = _run("train", *settings, "--checkpoint", checkpoint, "--checkpoint-every", "5", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoint} at epoch 1, step 5" in resumed.stdout
    rows = [[line.split()[:-1] for line in run.stdout.splitlines() if line.split()[0].isdigit()]
            for run in (straight, resumed)]  # fmt: skip
    assert [row[0] for row in rows[0]] == ["1", "2"] and rows[1] == rows[0][1:]  # same epoch 2 but wall_s
    ends = [torch.load(tmp_path / name, weights_only=True) for name in ("straight.pt", "resumed.pt")]
    assert ends[0]["history"][1]["steps"] == ends[1]["history"][1]["steps"] == 24
    for name, weight in ends[0]["model"].items():
        torch.testing.assert_close(weight, ends[1]["model"][name], rtol=1e-6, atol=1e-7)


def test_checkpoint_every_without_a_checkpoint_file_is_one_line(project, capsys):
    assert main(["train", "dataset=outside.tables:blobs", "--checkpoint-every", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rst-tune: error: --checkpoint-every: takes a number")


def test_torchvision_models_by_name_get_the_number_of_classes(tmp_path, monkeypatch):
    resnet = build_model("torchvision:resnet18", 7, (3, 32, 32))
    assert resnet.fc.out_features == 7
    assert build_model("torchvision:mobilenet_v3_small", 7, (3, 32, 32))(torch.zeros(2, 3, 32, 32)).shape == (
        2,
        7,
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="weights ResNet18_Weights.IMAGENET1K_V1 are not on disk"):
        build_model("torchvision:resnet18", 1000, (3, 224, 224), weights="IMAGENET1K_V1")
    import torchvision

    saved = torchvision.models.resnet18().state_dict()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / Path(url).name)
    loaded = build_model("torchvision:resnet18", 1000, (3, 224, 224), weights="IMAGENET1K_V1")
    torch.testing.assert_close(loaded.state_dict()["fc.weight"], saved["fc.weight"])
    with pytest.raises(ValueError, match="torchvision:resnet18 takes 3×H×W images"):
        build_model("torchvision:resnet18", 10, (1, 28, 28))


def test_timm_models_by_name_take_classes_and_channels_from_the_data(tmp_path):
    import timm

    config = load_config({"dataset": "digits", "model": "timm:resnet18", "epochs": 1, "device": "cpu"})
    trainer = Trainer(config)  # digits: 1×8×8 images, 10 classes
    assert trainer.model.conv1.in_channels == 1 and trainer.model.fc.out_features == 10
    assert next(trainer.fit()).steps == trainer.steps_per_epoch
    vit = build_model("timm:vit_tiny_patch16_224", 7, (3, 32, 32), img_size=32, patch_size=8)
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    saved = timm.create_model("resnet18").state_dict()  # weights come from a file on disk, or not at all
    torch.save(saved, tmp_path / "resnet18.pth")
    overlay = {"file": str(tmp_path / "resnet18.pth")}
    loaded = build_model("timm:resnet18", 10, (3, 32, 32), pretrained=True, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(loaded.state_dict()["conv1.weight"], saved["conv1.weight"])
    with pytest.raises(ValueError, match="timm:resnet18 would download its weights; nothing is downloaded"):
        build_model("timm:resnet18", 10, (3, 32, 32), pretrained=True)
    with pytest.raises(ValueError, match=r"timm has no model 'create_model'; e\.g\. "):
        build_model("timm:create_model", 10, (3, 32, 32))


def test_a_timm_model_without_timm_is_one_line_saying_how_to_install_it(tmp_path):
    """timm made unimportable in a fresh interpreter, as on a machine without it."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "train: {model: 'timm:resnet18'}\nspace: {rho: {low: 0.01, high: 0.1}}\nbaselines: false\n"
    )
    blocked = (
        "import sys; sys.modules['timm'] = None; from rst_tune.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked, "search", "--space", str(space), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "train.model: timm:resnet18 needs timm: pip install 'rst-tune[timm]'" in done.stderr, done.stderr


def _write_folder(root: Path, colours: dict[str, list[tuple[int, int, int]]], size: int = 20) -> None:
    from PIL import Image

    for label, values in colours.items():
        (root / label).mkdir(parents=True)
        for index, colour in enumerate(values):
            Image.new("RGB", (size + index % 3, size), colour).save(root / label / f"{index}.png")


def _image_folder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Solid-colour PNGs: class "red" reddish, class "blue" bluish; returns the folder and the
    training colours."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    train_colours = []
    for part, count in (("train", 12), ("val", 4), ("test", 4)):
        colours = {
            "blue": [(int(v), int(v), 200 + int(v) // 4) for v in rng.integers(0, 100, count)],
            "red": [(200 + int(v) // 4, int(v), int(v)) for v in rng.integers(0, 100, count)],
        }
        _write_folder(root / part, colours)
        if part == "train":
            train_colours = colours["blue"] + colours["red"]
    return root, np.array(train_colours, dtype=np.float64)


def test_an_image_folder_trains_and_its_statistics_come_from_the_training_images(tmp_path):
    root, colours = _image_folder(tmp_path)
    data = load_dataset("imagefolder", data_dir=str(root), dataset_params={"image_size": 16})
    assert (data.size("train"), data.size("val"), data.size("test"), data.num_classes) == (24, 8, 8, 2)
    np.testing.assert_allclose(data.mean, colours.mean(0), atol=1e-6)  # every pixel of an image is its colour
    pixels = np.repeat(colours, 16 * 16, axis=0)
    np.testing.assert_allclose(data.std, pixels.std(0, ddof=1), rtol=1e-6)
    config = load_config({
        "dataset": "imagefolder", "data_dir": str(root), "dataset_params": {"image_size": 16},
        "model": "digits_cnn", "epochs": 3, "batch_size": 8, "lr": 0.05, "loader_workers": 2,
    })  # fmt: skip
    history = list(Trainer(config).fit())
    assert history[-1].test_accuracy is not None and history[-1].val_accuracy >= 0.75


def test_the_image_loader_resumes_mid_epoch_to_the_same_augmented_batches(tmp_path):
    root, _ = _image_folder(tmp_path)
    params = {"image_size": 16, "augment": "random_resized_crop"}
    generator = torch.Generator().manual_seed(5)
    start_of_epoch = generator.get_state()
    with_workers = load_dataset("imagefolder", data_dir=str(root), dataset_params=params, workers=2)
    whole = list(with_workers.train_batches(4, generator))
    again = list(with_workers.train_batches(4, generator))  # the next epoch: fresh order and crops
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(whole, again))
    resumed_generator = torch.Generator()
    resumed_generator.set_state(start_of_epoch)  # what a checkpoint taken at this epoch's start holds
    fresh = load_dataset("imagefolder", data_dir=str(root), dataset_params=params, workers=0)
    resumed = list(fresh.train_batches(4, resumed_generator, start=2))
    assert len(resumed) == len(whole) - 2 == 4
    for (x, y), (rx, ry) in zip(whole[2:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert torch.equal(resumed_generator.get_state(), generator.get_state()) is False  # one epoch behind


def test_label_noise_reaches_a_streamed_training_part(tmp_path):
    root, _ = _image_folder(tmp_path)
    clean = load_dataset("imagefolder", data_dir=str(root), dataset_params={"image_size": 16})
    noisy = load_dataset(
        "imagefolder", data_dir=str(root), dataset_params={"image_size": 16}, label_noise=0.5
    )
    targets = torch.tensor(clean.parts["train"].targets)
    assert clean.train_labels is None
    assert int((noisy.train_labels != targets).sum()) == 12
    labels = torch.cat([y for _, y in noisy.train_batches(24, torch.Generator().manual_seed(0))])
    assert sorted(labels.tolist()) == sorted(noisy.train_labels.tolist())


BLOBS = "dataset=outside.tables:blobs"


@pytest.mark.parametrize(
    "settings, message",
    [
        (["dataset=nowhere.mod:fn"], "train.dataset: cannot import nowhere.mod"),
        (["dataset=outside.tables:missing"], "train.dataset: outside.tables has no missing"),
        (["dataset=outside.tables:raises"], "dataset: outside.tables:raises() raised OSError: disk on fire"),
        (["dataset=outside.tables:a_list"], "outside.tables:a_list returned a list; expected a mapping"),
        (["dataset=outside.tables:short_labels"], "short_labels: train has 600 inputs but 599 labels"),
        (["dataset=outside.tables:float_labels"], "labels are torch.float32 of shape (600,); expected one"),
        ([BLOBS, "model=outside.nets:not_a_model"], "not_a_model returned a int, not a torch.nn.Module"),
        ([BLOBS, "model=outside.nets:raises"], "model: outside.nets:raises(num_classes=3, input_shape=(6,))"),
        ([BLOBS, "model=outside.nets:one_logit_too_many"], "returns (2, 4) for 2 inputs; expected logits"),
        (["model=torchvision:resnet9000"], "train.model: torchvision has no classification model"),
        (["dataset=imagefolder", "data_dir=/nonexistent"], "/nonexistent has no train/ or val/ folder"),
        ([BLOBS, "val_size=10"], "val_size: does not apply: outside.tables:blobs brings its own"),
        (
            [BLOBS, "channels_last=true"],
            "train.channels_last: is a layout of images (C, H, W); "
            "outside.tables:blobs's inputs have shape (6,): leave it false",
        ),
        (
            ["dataset=mnist1d", "model=mnist1d_cnn", "channels_last=true"],
            "mnist1d's inputs have shape (1, 40)",
        ),
    ],
)
def test_each_bad_input_is_one_line_exit_2_and_nothing_started(project, tmp_path, capsys, settings, message):
    train = dict(setting.split("=", 1) for setting in settings)
    space = tmp_path / "space.yaml"
    schedule = {"constant": {"p": {"low": 0, "high": 1}}}
    space.write_text(yaml.safe_dump({"name": "bad", "train": train, "space": {"schedule": schedule}}))
    code = main(["search", "--space", str(space), "--results-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rst-tune: error: ")
    assert message in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_example_package_runs_as_the_readme_shows(tmp_path):
    example = Path(__file__).parent.parent / "examples" / "tabular"
    copy = shutil.copytree(example, tmp_path / "tabular")
    result = _run(
        "search", "--space", "search.yaml", "--num-samples", "2", "--epochs", "2",
        "--results-dir", str(tmp_path / "runs"), cwd=copy,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pareto = json.loads((tmp_path / "runs" / "tabular" / "pareto.json").read_text())
    assert [t["state"] for t in pareto["trials"]] == ["COMPLETE", "COMPLETE"]
