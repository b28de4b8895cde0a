"""Image folders in torchvision's ImageFolder layout (`train/`, `val/`, optionally `test/`, each with
one folder per class), streamed: decoded, resized and augmented by loader workers, as uint8."""

from __future__ import annotations

from pathlib import Path

import torch

from rst_tune.data._streaming import StreamingSplits

AUGMENTATIONS = ("random_resized_crop", "pad_crop", "none")
EVAL_RESIZE = 1 / 0.875  # random_resized_crop: evaluate on a centre crop of the image resized to this × size


def load_imagefolder(
    root: str | Path,
    *,
    image_size: int = 224,
    augment: str = "random_resized_crop",
    padding: int = 4,
    flip: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    stats_images: int = 1000,
    workers: int = 2,
) -> StreamingSplits:
    """The folders under `root` as streamed parts of `image_size`² RGB images. Training images are
    augmented by `augment` (a random resized crop; or resize, `padding` zero pixels and a random
    crop; or nothing) and, with `flip`, random horizontal flips; evaluation images are resized and
    centre-cropped. `mean`/`std` (0–255 scale) default to the per-channel statistics of up to
    `stats_images` training images, evenly spaced through the folder."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment={augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if image_size < 1 or padding < 0 or stats_images < 1:
        raise ValueError("image_size and stats_images must be positive, padding not negative")
    root = Path(root).expanduser()
    missing = [name for name in ("train", "val") if not (root / name).is_dir()]
    if missing:
        raise ValueError(
            f"{root} has no {' or '.join(f'{name}/' for name in missing)} folder; imagefolder needs "
            "train/ and val/ (and optionally test/), each with one folder of images per class"
        )
    resize = round(image_size * EVAL_RESIZE) if augment == "random_resized_crop" else image_size
    evaluation = v2.Compose([v2.PILToTensor(), v2.Resize(resize), v2.CenterCrop(image_size)])
    crop = {
        "random_resized_crop": [v2.RandomResizedCrop(image_size)],
        "pad_crop": [v2.Resize(image_size), v2.RandomCrop(image_size, padding=padding)],
        "none": [v2.Resize(image_size), v2.CenterCrop(image_size)],
    }[augment]
    training = v2.Compose([v2.PILToTensor(), *crop, *([v2.RandomHorizontalFlip()] if flip else [])])
    names = [name for name in ("train", "val", "test") if (root / name).is_dir()]
    parts = {
        name: ImageFolder(str(root / name), transform=training if name == "train" else evaluation)
        for name in names
    }
    classes = parts["train"].classes
    for name in names[1:]:
        if parts[name].classes != classes:
            raise ValueError(
                f"{root / name} has classes {parts[name].classes}, but train/ has {classes}: "
                "every part needs the same class folders"
            )
    if mean is None or std is None:
        mean, std = _statistics(parts["train"], evaluation, stats_images)
    return StreamingSplits(
        parts,
        num_classes=len(classes),
        shape=(3, image_size, image_size),
        mean=tuple(mean),
        std=tuple(std),
        workers=workers,
    )


def _statistics(folder, transform, count: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of `count` images evenly spaced through `folder`."""
    indices = torch.linspace(0, len(folder) - 1, min(count, len(folder))).round().long().unique()
    pixels = torch.stack([transform(folder.loader(folder.samples[i][0])) for i in indices.tolist()])
    pixels = pixels.double().transpose(0, 1).flatten(1)
    return pixels.mean(1).tolist(), pixels.std(1).tolist()
