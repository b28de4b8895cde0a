"""Datasets: CIFAR files in the official format, three fixed splits, MNIST-1D generated offline, label
noise, on-device augmentation."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_cifar10

from rst_tune.data import crop_and_flip, load_dataset, read_cifar, symmetric_label_noise


def write_cifar100(root, n=8):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"filenames": [b"x.png"] * n,
                    b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                    b"coarse_labels": [0] * n,
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                },
                f,
            )


def test_cifar10_reader_decodes_the_official_layout(tmp_path):
    written = write_cifar10(tmp_path)
    images, labels = read_cifar("cifar10", tmp_path, train=True)
    assert images.shape == (30, 3, 32, 32) and images.dtype == np.uint8
    data, first_labels = written["data_batch_1"]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    assert images[0, 1, 2, 3] == data[0, 1024 + 2 * 32 + 3]
    assert list(labels[:6]) == first_labels
    test_images, test_labels = read_cifar("cifar10", tmp_path, train=False)
    assert np.array_equal(test_images.reshape(6, -1), written["test_batch"][0])


def test_load_dataset_cifar100_uses_fine_labels_and_augments(tmp_path):
    write_cifar100(tmp_path)
    data = load_dataset("cifar100", data_dir=str(tmp_path), val_size=2)
    assert data.num_classes == 100 and data.shape == (3, 32, 32)
    assert data.crop_padding == 4 and data.flip
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        fine = pickle.load(f, encoding="bytes")[b"fine_labels"]
    assert len(data.train_y) == 6 and len(data.val_y) == 2
    assert sorted(data.train_y.tolist() + data.val_y.tolist()) == sorted(fine)
    with open(tmp_path / "cifar-100-python" / "test", "rb") as f:
        assert data.test_y.tolist() == pickle.load(f, encoding="bytes")[b"fine_labels"]


def rows(images: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


def test_cifar_splits_are_disjoint_fixed_and_independent_of_the_trial_seed(tmp_path):
    written = write_cifar10(tmp_path, n_per_batch=40)
    a = load_dataset("cifar10", data_dir=str(tmp_path), val_size=50, seed=1)
    b = load_dataset("cifar10", data_dir=str(tmp_path), val_size=50, seed=2, label_noise=0.5)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (150, 50, 40)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    # train and validation partition the five training files; the test part is test_batch, in order
    files = [written[f"data_batch_{i}"][0] for i in range(1, 6)]
    training = {row.tobytes() for batch in files for row in batch.reshape(-1, 3, 32, 32)}
    train, val = set(rows(a.train_x)), set(rows(a.val_x))
    assert not train & val and train | val == training and len(training) == 200
    assert rows(a.test_x) == [row.tobytes() for row in written["test_batch"][0].reshape(-1, 3, 32, 32)]
    # stratified: each class's share of the validation part is its share of the training files
    labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    expected = np.bincount(labels, minlength=10) * 50 / 200
    assert np.abs(np.bincount(a.val_y.numpy(), minlength=10) - expected).max() <= 1
    c = load_dataset("cifar10", data_dir=str(tmp_path), val_size=30)
    assert len(c.val_y) == 30 and not set(rows(c.train_x)) & set(rows(c.val_x))
    with pytest.raises(ValueError, match="val_size=200 must be between 0 and the 200 training items"):
        load_dataset("cifar10", data_dir=str(tmp_path), val_size=200)


def test_val_size_zero_trains_on_every_training_image(tmp_path):
    write_cifar10(tmp_path, n_per_batch=40)
    data = load_dataset("cifar10", data_dir=str(tmp_path), val_size=0)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (200, 0, 40)


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"cifar10 not found: data_batch_1, .*data_batch_5 missing in .*nowhere/cifar-10-batches-py"
        r".*download=true",
    ):
        load_dataset("cifar10", data_dir=str(tmp_path / "nowhere"))


def test_unknown_dataset_is_an_error():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=2, label_noise=0.3)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (1150, 288, 359)
    for part in ("val_x", "val_y", "test_x", "test_y", "train_x"):
        assert torch.equal(getattr(a, part), getattr(b, part))
    for labels, size in ((a.val_y, 288), (a.test_y, 359)):
        counts = torch.bincount(labels, minlength=10)
        assert counts.min() >= size // 10 - 2 and counts.max() <= size // 10 + 2
    train_rows = set(rows(a.train_x))
    for part in (a.val_x, a.test_x):
        # a few digits images are exact duplicates in sklearn's set; no index leaks
        assert sum(row in train_rows for row in rows(part)) < 5
    assert sum(row in set(rows(a.val_x)) for row in rows(a.test_x)) < 5


@pytest.mark.slow
def test_mnist1d_is_generated_offline_with_the_published_shapes_identically_twice():
    """Generated in a fresh interpreter whose sockets raise, twice: the same signals, the published
    4,000/1,000 split of 40-sample signals, 10 balanced classes."""
    script = (
        "import hashlib, socket, sys\n"
        "class Offline(socket.socket):\n"
        "    def connect(self, *a): raise OSError('network used')\n"
        "socket.socket = Offline\n"
        "socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(OSError('network used'))\n"
        "from rst_tune.data import load_dataset\n"
        "d = load_dataset('mnist1d')\n"
        "parts = [d.train_x, d.train_y, d.val_x, d.val_y, d.test_x, d.test_y]\n"
        "print([tuple(p.shape) for p in parts], hashlib.sha256(b''.join(p.numpy().tobytes() for p in parts))"
        ".hexdigest())\n"
    )
    outputs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("[(3200, 1, 40), (3200,), (800, 1, 40), (800,), (1000, 1, 40), (1000,)]")
    data = load_dataset("mnist1d")
    labels = torch.cat([data.train_y, data.val_y, data.test_y])
    assert torch.bincount(labels, minlength=10).tolist() == [500] * 10
    assert data.train_x.dtype == torch.float32 and data.num_classes == 10
    bigger = load_dataset("mnist1d", dataset_params={"num_samples": 10_000}, val_size=1000)
    assert (len(bigger.train_y), len(bigger.val_y), len(bigger.test_y)) == (7000, 1000, 2000)


def test_symmetric_label_noise_flips_exactly_that_fraction_to_other_classes():
    labels = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0))
    noisy = symmetric_label_noise(labels, 10, 0.4, seed=3)
    changed = noisy != labels
    assert changed.sum().item() == 400
    assert torch.equal(noisy, symmetric_label_noise(labels, 10, 0.4, seed=3))
    assert not torch.equal(noisy, symmetric_label_noise(labels, 10, 0.4, seed=4))
    # the new class is uniform over the 9 others: each offset 1..9 about 400/9 times
    offsets = torch.bincount((noisy[changed] - labels[changed]) % 10, minlength=10)
    assert offsets[0] == 0 and offsets[1:].min() > 20


def test_label_noise_goes_to_training_labels_only():
    clean, noisy = load_dataset("digits"), load_dataset("digits", label_noise=0.4, seed=0)
    assert torch.equal(clean.val_y, noisy.val_y) and torch.equal(clean.test_y, noisy.test_y)
    assert (clean.train_y != noisy.train_y).float().mean().item() == pytest.approx(0.4, abs=1e-3)


def test_crop_and_flip_match_a_per_image_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8, generator=g)
    pad = 2
    padded = torch.nn.functional.pad(images, (pad,) * 4)
    shifts = torch.randint(0, 2 * pad + 1, (5, 2), generator=g)
    flips = torch.tensor([True, False, True, False, True])
    out = crop_and_flip(padded, shifts, flips, 6)
    for i in range(5):
        r, c = shifts[i].tolist()
        expected = padded[i, :, r : r + 6, c : c + 6]
        assert torch.equal(out[i], expected.flip(-1) if flips[i] else expected)


def test_train_batches_are_a_seeded_permutation_without_augmentation():
    data = load_dataset("digits")
    batches = list(data.train_batches(100, torch.Generator().manual_seed(0)))
    assert len(batches) == len(data.train_y) // 100
    again = list(data.train_batches(100, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    seen = torch.cat([y for _, y in batches])
    assert len(seen) == 100 * len(batches)
    x0 = batches[0][0]
    assert x0.dtype == torch.float32 and abs(x0.mean().item()) < 0.2  # normalised
