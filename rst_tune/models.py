"""The networks a run trains, built by `build_model`: the built-in zoo by name, any torchvision
classification model as "torchvision:NAME", and user models as "package.module:function"."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rst_tune._imports import is_import_path, one_line, resolve

MODELS = ("digits_cnn", "mnist1d_cnn", "resnet18", "wrn", "pyramidnet", "vit")
"""The built-in models; "torchvision:NAME" and "package.module:function" name the others."""
TORCHVISION = "torchvision:"
TIMM = "timm:"


def _init_weights(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    return model


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def _check_depth(depth: int, offset: int, model: str) -> int:
    """Blocks per stage of a three-stage CIFAR net of `depth` layers, two convs per block."""
    blocks, rest = divmod(depth - offset, 6)
    if rest or blocks < 1:
        raise ValueError(
            f"{model}: depth {depth} is invalid; it needs (depth - {offset}) % 6 == 0 "
            f"and depth >= {offset + 6}"
        )
    return blocks


def _digits_cnn(num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
    model = nn.Sequential(
        _conv3x3(in_channels, width),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        _conv3x3(width, 2 * width),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        _conv3x3(2 * width, 4 * width),
        nn.BatchNorm2d(4 * width),
        nn.ReLU(),
        _head(4 * width, num_classes),
    )
    return _init_weights(model)


def _mnist1d_cnn(num_classes: int, in_channels: int, length: int, width: int) -> nn.Module:
    """Three stride-2 1-D convolutions (kernel 5) with BatchNorm and ReLU, then a linear layer."""
    layers: list[nn.Module] = []
    for index in range(3):
        layers += [
            nn.Conv1d(in_channels if index == 0 else width, width, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        ]
        length = (length + 1) // 2
    return _init_weights(nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * length, num_classes)))


def _resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import torchvision  # imported here: it costs 3 s of start-up that digits runs don't need

    model = torchvision.models.resnet18(num_classes=num_classes)
    # CIFAR stem: 32x32 inputs keep their resolution into layer1
    model.conv1 = _conv3x3(in_channels, 64)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


class _WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.shortcut = (
            None
            if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # a projecting shortcut takes the pre-activated input, as in the reference implementation
        return out + (x if self.shortcut is None else self.shortcut(pre))


def _wrn(
    num_classes: int, in_channels: int, image_size: int, depth: int, width: int, dropout: float
) -> nn.Module:
    blocks = _check_depth(depth, 4, "wrn")
    channels = [16, 16 * width, 32 * width, 64 * width]
    layers: list[nn.Module] = [_conv3x3(in_channels, channels[0])]
    for stage in range(3):
        for index in range(blocks):
            layers.append(
                _WideBlock(
                    channels[stage] if index == 0 else channels[stage + 1],
                    channels[stage + 1],
                    stride=2 if stage > 0 and index == 0 else 1,
                    dropout=dropout,
                )
            )
    layers += [nn.BatchNorm2d(channels[3]), nn.ReLU(), _head(channels[3], num_classes)]
    return _init_weights(nn.Sequential(*layers))


class _PyramidBlock(nn.Module):
    """PyramidNet basic block: BN-conv3x3-BN-ReLU-conv3x3-BN, zero-padded identity shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            _conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            _conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.downsample = nn.AvgPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pad(self.downsample(x), (0, 0, 0, 0, 0, self.extra_channels))
        return self.residual(x) + shortcut


def _pyramidnet(num_classes: int, in_channels: int, image_size: int, depth: int, alpha: float) -> nn.Module:
    blocks = _check_depth(depth, 2, "pyramidnet")
    step = alpha / (3 * blocks)
    layers: list[nn.Module] = [_conv3x3(in_channels, 16), nn.BatchNorm2d(16)]
    channels, width = 16, 16.0
    for stage in range(3):
        for index in range(blocks):
            # widths grow by alpha / N per block, rounded, as in the authors' code
            width += step
            layers.append(_PyramidBlock(channels, round(width), stride=2 if stage > 0 and index == 0 else 1))
            channels = round(width)
    layers += [nn.BatchNorm2d(channels), nn.ReLU(), _head(channels, num_classes)]
    return _init_weights(nn.Sequential(*layers))


def _vit(
    num_classes: int,
    in_channels: int,
    image_size: int,
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
    dropout: float,
) -> nn.Module:
    if image_size % patch_size:
        raise ValueError(f"vit: image_size {image_size} is not divisible by patch_size {patch_size}")
    if hidden_dim % num_heads:
        raise ValueError(f"vit: hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
    import torchvision

    model = torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        num_classes=num_classes,
    )
    if in_channels != 3:
        model.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
        # torchvision's initialisation of the patch embedding
        fan_in = in_channels * patch_size**2
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    return model


# name -> (builder, default params)
_BUILDERS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "digits_cnn": (_digits_cnn, {"width": 32}),
    "mnist1d_cnn": (_mnist1d_cnn, {"width": 32}),
    "resnet18": (_resnet18, {}),
    "wrn": (_wrn, {"depth": 28, "width": 10, "dropout": 0.0}),
    "pyramidnet": (_pyramidnet, {"depth": 110, "alpha": 270}),
    "vit": (
        _vit,
        {"patch_size": 4, "num_layers": 6, "num_heads": 8, "hidden_dim": 256, "mlp_dim": 512, "dropout": 0.0},
    ),
}


def check_model_name(name: str) -> str:
    """`name` if it names a model (a user function is imported to see that it exists), else ValueError."""
    if name in _BUILDERS:
        return name
    if name.startswith(TORCHVISION):
        _torchvision_model(name.removeprefix(TORCHVISION))
        return name
    if name.startswith(TIMM):
        _timm_model(name.removeprefix(TIMM))
        return name
    if is_import_path(name):
        resolve(name)
        return name
    raise ValueError(
        f"unknown model {name!r}; valid: {', '.join(MODELS)}, torchvision:NAME, timm:NAME or "
        "package.module:function"
    )


def build_model(
    name: str, num_classes: int, input_shape: tuple[int, ...] = (3, 32, 32), **params: Any
) -> nn.Module:
    """Build model `name` for `num_classes` classes and inputs of `input_shape` ((C, H, W) images,
    (C, L) signals for mnist1d_cnn, any shape for a user model).

    Built-in models take `params` overriding their defaults: digits_cnn and mnist1d_cnn `width`;
    wrn `depth`, `width`, `dropout`; pyramidnet `depth`, `alpha`; vit `patch_size`, `num_layers`,
    `num_heads`, `hidden_dim`, `mlp_dim`, `dropout`; resnet18 none. "torchvision:NAME" passes them to
    `torchvision.models.get_model`, with `weights` (a weights name) loaded only from torch's hub cache
    on disk. "timm:NAME" passes them to `timm.create_model` (e.g. `img_size` for a vision transformer
    on small images), with the input channels from the data; pretrained weights come only from a local
    file (`pretrained_cfg_overlay: {file: PATH}`). "package.module:function" is called as
    `function(num_classes=..., input_shape=..., **params)` and must return an `nn.Module`.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if name.startswith(TORCHVISION):
        return _torchvision(name.removeprefix(TORCHVISION), num_classes, input_shape, params)
    if name.startswith(TIMM):
        return _timm(name.removeprefix(TIMM), num_classes, input_shape, params)
    if is_import_path(name):
        return _user_model(name, num_classes, input_shape, params)
    check_model_name(name)
    builder, defaults = _BUILDERS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValueError(f"unknown parameter {unknown[0]!r} for model {name!r}; valid parameters: {valid}")
    return builder(num_classes, input_shape[0], input_shape[-1], **{**defaults, **params})


def _torchvision_model(name: str) -> None:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(
            f"torchvision has no classification model {name!r}; e.g. {', '.join(known[:4])}, ..."
        )


def _torchvision(
    name: str, num_classes: int, input_shape: tuple[int, ...], params: dict[str, Any]
) -> nn.Module:
    import torchvision

    _torchvision_model(name)
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ValueError(f"torchvision:{name} takes 3×H×W images, not inputs of shape {input_shape}")
    params = dict(params)
    weights = params.pop("weights", None)
    if weights is not None:
        weights = torchvision.models.get_weight(weights) if "." in weights else _named_weights(name, weights)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            raise ValueError(
                f"weights {weights} are not on disk ({cached}); nothing is downloaded during a run: "
                "copy the file there, or run torchvision.models.get_model once on a machine that is online"
            )
    try:
        return torchvision.models.get_model(name, num_classes=num_classes, weights=weights, **params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"torchvision:{name}: {one_line(err)}") from None


def _timm_model(name: str):
    """timm, where it has model `name`; else ValueError saying how to install timm or what it has."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"timm:{name} needs timm: pip install 'rst-tune[timm]'") from None
    if not timm.is_model(name):
        raise ValueError(
            f"timm has no model {name!r}; e.g. {', '.join(timm.list_models()[:4])}, ... "
            "(timm.list_models('*pattern*') lists them)"
        )
    return timm


def _timm(name: str, num_classes: int, input_shape: tuple[int, ...], params: dict[str, Any]) -> nn.Module:
    timm = _timm_model(name)
    if len(input_shape) != 3:
        raise ValueError(f"timm:{name} takes C×H×W images, not inputs of shape {input_shape}")
    if params.get("pretrained") and "file" not in (params.get("pretrained_cfg_overlay") or {}):
        raise ValueError(
            f"timm:{name} would download its weights; nothing is downloaded during a run: give "
            "pretrained_cfg_overlay: {file: PATH} with the weights on disk"
        )
    try:
        return timm.create_model(name, num_classes=num_classes, in_chans=input_shape[0], **params)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"timm:{name}: {one_line(err)}") from None


def _named_weights(model: str, weights: str):
    """The weights enum value `weights` ("DEFAULT", "IMAGENET1K_V1", ...) of torchvision model `model`."""
    import torchvision

    enum = torchvision.models.get_model_weights(model)
    try:
        return enum[weights]
    except KeyError:
        raise ValueError(
            f"torchvision:{model} has no weights {weights!r}; "
            f"valid: {', '.join(['DEFAULT', *enum.__members__])}"
        ) from None


def _user_model(
    path: str, num_classes: int, input_shape: tuple[int, ...], params: dict[str, Any]
) -> nn.Module:
    function = resolve(path)
    try:
        model = function(num_classes=num_classes, input_shape=tuple(input_shape), **params)
    except Exception as err:
        raise ValueError(
            f"{path}(num_classes={num_classes}, input_shape={tuple(input_shape)}) raised {one_line(err)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
