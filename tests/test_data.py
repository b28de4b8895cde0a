"""Datasets: CIFAR files in the official format, digits split, label noise, on-device augmentation."""

import pickle

import numpy as np
import pytest
import torch

from rst_tune.data import crop_and_flip, load_dataset, read_cifar, symmetric_label_noise


def write_cifar10(root, n_per_batch=6):
    """Tiny CIFAR-10 in the official python format: pickled dicts of bytes keys, rows of 3072 uint8."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * n_per_batch,
                },
                f,
            )
        written[name] = (data, labels)
    return written


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
    data = load_dataset("cifar100", data_dir=str(tmp_path))
    assert data.num_classes == 100 and data.shape == (3, 32, 32)
    assert data.crop_padding == 4 and data.flip
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        assert data.train_y.tolist() == pickle.load(f, encoding="bytes")[b"fine_labels"]


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
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=2)
    assert len(a.train_y) + len(a.val_y) == 1797 and len(a.val_y) == 360
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    counts = torch.bincount(a.val_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    train_rows = {tuple(x.flatten().tolist()) for x in a.train_x}
    overlap = sum(tuple(x.flatten().tolist()) in train_rows for x in a.val_x)
    assert overlap < 5  # a few digits images are exact duplicates in sklearn's set; no index leaks


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
    assert torch.equal(clean.val_y, noisy.val_y)
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
