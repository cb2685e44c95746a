import pytest
import torch
from torch import nn

from pyro_dturbo.models.zoo import (
    MLP,
    ZOO,
    DemoAlexNet,
    LeNet5,
    LeNet300100,
    build_model,
    layer_names,
)

ALLOWED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _children(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def test_mlp_shapes_flat_and_image():
    model = MLP(64, hidden=(32, 16), num_classes=3)
    assert model(torch.randn(5, 64)).shape == (5, 3)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 3)
    assert _children(model) == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]


def test_mlp_tanh_and_linear_classifier():
    model = MLP(10, hidden=(4,), num_classes=2, activation="tanh")
    assert _children(model) == ["flatten", "fc1", "tanh1", "fc2"]
    assert isinstance(model.tanh1, nn.Tanh)
    linear = MLP(10, hidden=(), num_classes=2)
    assert _children(linear) == ["flatten", "fc1"]
    assert linear(torch.randn(3, 10)).shape == (3, 2)


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        MLP(10, activation="sigmoid")
    with pytest.raises(ValueError, match="hidden width"):
        MLP(10, hidden=(0,))
    with pytest.raises(ValueError, match="in_features"):
        MLP(0)


def test_lenet300100_structure_and_params():
    model = LeNet300100()
    assert _children(model) == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # (784*300 + 300) + (300*100 + 100) + (100*10 + 10) = 235500 + 30100 + 1010 = 266610
    assert _num_params(model) == 266610


def test_lenet5_structure_shape_and_params():
    model = LeNet5()
    assert _children(model) == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
        "flatten", "fc1", "relu3", "fc2", "relu4", "fc3",
    ]  # fmt: skip
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # 28 -conv1(pad 2)-> 28 -pool-> 14 -conv2-> 10 -pool-> 5, so fc1 sees 16*5*5 = 400.
    assert model.fc1.in_features == 400
    # conv1 1*6*25+6 = 156, conv2 6*16*25+16 = 2416, fc1 400*120+120 = 48120,
    # fc2 120*84+84 = 10164, fc3 84*10+10 = 850; total 61706.
    assert _num_params(model) == 61706


def test_lenet5_image_size():
    # 8 -conv1-> 8 -pool-> 4: too small for conv2's 5x5 kernel.
    with pytest.raises(ValueError, match="too small"):
        LeNet5(image_size=8)
    # 12 is the smallest that works: 12 -> 12 -> 6 -> 2 -> 1.
    model = LeNet5(in_channels=3, num_classes=4, image_size=12)
    assert model.fc1.in_features == 16
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 4)
    assert LeNet5(image_size=32)(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_demo_alexnet_structure_and_shape():
    model = DemoAlexNet()
    assert _children(model) == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
        "conv3", "relu3", "conv4", "relu4", "pool3",
        "flatten", "fc1", "relu5", "fc2", "relu6", "fc3",
    ]  # fmt: skip
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # 32 -pool1-> 15 -pool2-> 7 -pool3-> 3 (convs are "same"): 64*3*3 = 576.
    assert model.fc1.in_features == 576
    assert isinstance(model.fc3, nn.Linear)  # logits, no softmax after it


def test_demo_alexnet_image_size():
    with pytest.raises(ValueError, match="too small"):
        DemoAlexNet(image_size=14)
    small = DemoAlexNet(in_channels=1, num_classes=2, image_size=15)
    assert small.fc1.in_features == 64
    assert small(torch.randn(1, 1, 15, 15)).shape == (1, 2)
    large = DemoAlexNet(image_size=64)  # 64 -> 31 -> 15 -> 7
    assert large.fc1.in_features == 64 * 7 * 7
    assert large(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(
    "name, input_shape",
    [
        ("mlp", (64,)),
        ("mlp", (1, 8, 8)),
        ("lenet300100", (784,)),
        ("lenet300100", (1, 28, 28)),
        ("lenet5", (1, 28, 28)),
        ("alexnet", (3, 32, 32)),
    ],
)
def test_build_model_every_entry(name, input_shape):
    model = build_model(name, input_shape=input_shape, num_classes=7)
    assert isinstance(model, nn.Sequential)
    assert isinstance(model, ZOO[name])
    assert all(isinstance(m, ALLOWED) for m in model.children())
    assert isinstance(list(model.children())[-1], nn.Linear)
    assert model(torch.randn(2, *input_shape)).shape == (2, 7)


def test_build_model_passes_kwargs():
    model = build_model("mlp", input_shape=(3, 4), num_classes=2, hidden=(5,), activation="tanh")
    assert model.fc1.in_features == 12
    assert layer_names(model) == ["fc1", "fc2"]
    assert isinstance(model.tanh1, nn.Tanh)


def test_build_model_errors():
    with pytest.raises(ValueError, match="valid names are.*alexnet.*lenet300100.*lenet5.*mlp"):
        build_model("resnet", input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match=r"square image inputs \(C, H, W\)"):
        build_model("lenet5", input_shape=(1, 28, 32), num_classes=10)
    with pytest.raises(ValueError, match=r"square image inputs \(C, H, W\)"):
        build_model("alexnet", input_shape=(3072,), num_classes=10)
    with pytest.raises(ValueError, match=r"square image inputs \(C, H, W\)"):
        build_model("alexnet", input_shape=(2, 3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", input_shape=(), num_classes=10)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", input_shape=(0, 4), num_classes=10)
    with pytest.raises(ValueError, match="too small"):
        build_model("lenet5", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(TypeError, match="in_features"):
        build_model("mlp", input_shape=(4,), num_classes=10, in_features=4)


def test_layer_names_order():
    assert layer_names(LeNet300100()) == ["fc1", "fc2", "fc3"]
    assert layer_names(LeNet5()) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert layer_names(DemoAlexNet()) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "fc3"]
    nested = nn.Sequential(LeNet300100(), nn.ReLU(), nn.Linear(10, 2))
    assert layer_names(nested) == ["0.fc1", "0.fc2", "0.fc3", "2"]


def test_models_are_plain_modules_in_the_default_dtype():
    # The zoo follows the default dtype (float64 or float32 by the test job) and holds no Pyro
    # state.
    model = LeNet5()
    assert all(p.dtype == torch.get_default_dtype() for p in model.parameters())
    assert not any(name.startswith("_pyro") for name in model.state_dict())
