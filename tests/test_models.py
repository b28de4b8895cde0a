"""Tests of the model zoo: shapes, gradients, memory formats, parameter counts and errors."""

import pytest
import torch
import torchvision
from torch import nn

from rst_tune.models import MODELS, build_model

# (name, in_channels, image_size, params): small versions of every model, fast on a CPU
CASES = [
    ("digits_cnn", 1, 8, {}),
    ("mnist1d_cnn", 1, 40, {}),  # a signal: inputs N×C×L
    ("resnet18", 3, 32, {}),
    ("resnet18", 1, 8, {}),
    ("wrn", 3, 32, {"depth": 10, "width": 1}),
    ("wrn", 1, 8, {"depth": 10, "width": 2}),
    ("pyramidnet", 3, 32, {"depth": 8, "alpha": 16}),
    ("pyramidnet", 1, 8, {"depth": 14, "alpha": 12}),
    ("vit", 3, 32, {"num_layers": 1, "hidden_dim": 32, "mlp_dim": 64, "num_heads": 2}),
    ("vit", 1, 8, {"patch_size": 2, "num_layers": 1, "hidden_dim": 32, "mlp_dim": 64, "num_heads": 2}),
]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_model_has_a_case():
    assert {case[0] for case in CASES} == set(MODELS)


@pytest.mark.parametrize(
    "name, in_channels, image_size, params", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in CASES]
)
def test_forward_backward_float64_channels_last(name, in_channels, image_size, params):
    torch.manual_seed(0)
    model = build_model(
        name, 5, (in_channels, image_size) + ((image_size,) if name != "mnist1d_cnn" else ()), **params
    ).double()
    if name == "vit":
        # torchvision zero-initialises the ViT head, which stops every gradient behind it at init
        nn.init.normal_(model.heads.head.weight)
    signal = name == "mnist1d_cnn"
    x = torch.randn(2, in_channels, image_size, *(() if signal else (image_size,)), dtype=torch.float64)
    expected = logits = model(x)
    if not signal:  # channels_last is a layout of images
        model.to(memory_format=torch.channels_last)
        logits = model(x.contiguous(memory_format=torch.channels_last))
    assert logits.shape == (2, 5)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, expected)

    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name


def test_digits_cnn_has_batchnorm_and_scales_with_width():
    model = build_model("digits_cnn", 10, (1, 8, 8))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in norms] == [32, 64, 128]
    narrow = build_model("digits_cnn", 10, (1, 8, 8), width=8)
    assert [m.num_features for m in narrow.modules() if isinstance(m, nn.BatchNorm2d)] == [8, 16, 32]


def test_mnist1d_cnn_is_three_stride_two_convolutions_of_32_channels_with_batchnorm():
    model = build_model("mnist1d_cnn", 10, (1, 40))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.stride) for c in convs] == [(32, (2,))] * 3
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [32] * 3
    assert model[-1].in_features == 32 * 5  # 40 -> 20 -> 10 -> 5 samples
    assert model(torch.randn(4, 1, 40)).shape == (4, 10)


def test_resnet18_has_cifar_stem_and_torchvision_body():
    for in_channels in (3, 1):
        model = build_model("resnet18", 100, (in_channels, 32, 32))
        assert model.conv1.kernel_size == (3, 3)
        assert model.conv1.stride == (1, 1)
        assert model.conv1.in_channels == in_channels
        assert isinstance(model.maxpool, nn.Identity)
        # only the stem differs from torchvision's: a 7x7 conv on 3 channels becomes a 3x3 one
        reference = count(torchvision.models.resnet18(num_classes=100))
        assert count(model) == reference - 64 * 3 * 7 * 7 + 64 * in_channels * 3 * 3


def test_wrn_28_10_parameter_count():
    with torch.device("meta"):
        model = build_model("wrn", 10)
    # WRN-28-10 on CIFAR-10: 36.5M parameters (Zagoruyko & Komodakis; 36,479,194 in reference code)
    assert count(model) == pytest.approx(36_479_194, rel=0.01)


def test_wrn_dropout_is_applied():
    torch.manual_seed(0)
    model = build_model("wrn", 10, (1, 8, 8), depth=10, width=1, dropout=0.5)
    x = torch.randn(2, 1, 8, 8)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_pyramidnet_parameter_counts_and_widths():
    with torch.device("meta"):
        default = build_model("pyramidnet", 10)
        small = build_model("pyramidnet", 10, alpha=48)
    # Han et al. 2017, Table 4: PyramidNet-110 basic, 28.3M params for alpha=270 and 1.7M for alpha=48
    assert count(default) == pytest.approx(28.3e6, rel=0.01)
    assert count(small) == pytest.approx(1.7e6, rel=0.05)
    # widths grow from 16 by alpha in total, with parameter-free (zero-padded) shortcuts
    assert default[-1][-1].in_features == 16 + 270
    assert all(m.kernel_size == (3, 3) for m in default.modules() if isinstance(m, nn.Conv2d))


def test_vit_uses_torchvision_and_adapts_input_channels():
    params = {"num_layers": 1, "hidden_dim": 32, "mlp_dim": 64, "num_heads": 2}
    model = build_model("vit", 10, (1, 8, 8), patch_size=2, **params)
    assert isinstance(model, torchvision.models.VisionTransformer)
    assert model.conv_proj.in_channels == 1
    assert model.conv_proj.kernel_size == (2, 2)
    assert model.seq_length == (8 // 2) ** 2 + 1


def test_unknown_model_names_it_and_lists_valid_ones():
    with pytest.raises(
        ValueError, match="'resnet50'.*digits_cnn, mnist1d_cnn, resnet18, wrn, pyramidnet, vit"
    ):
        build_model("resnet50", 10)


@pytest.mark.parametrize("name, param", [("wrn", "widht"), ("resnet18", "width"), ("vit", "depth")])
def test_unknown_param_names_it_and_the_model(name, param):
    with pytest.raises(ValueError, match=f"'{param}'.*'{name}'"):
        build_model(name, 10, **{param: 1})


@pytest.mark.parametrize(
    "name, depth, rule",
    [
        ("wrn", 27, r"\(depth - 4\) % 6"),
        ("wrn", 4, r"\(depth - 4\) % 6"),
        ("pyramidnet", 100, r"\(depth - 2\) % 6"),
    ],
)
def test_bad_depth_names_value_and_rule(name, depth, rule):
    with pytest.raises(ValueError, match=f"depth {depth} .*{rule}"):
        build_model(name, 10, depth=depth)


def test_other_invalid_arguments():
    with pytest.raises(ValueError, match="num_classes .* 1"):
        build_model("digits_cnn", 1, (1, 8, 8))
    with pytest.raises(ValueError, match="image_size 30 .*patch_size 4"):
        build_model("vit", 10, (3, 30, 30))
