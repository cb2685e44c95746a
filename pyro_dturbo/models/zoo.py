"""A zoo of plain PyTorch networks to be made Bayesian and sparse by name.

Every network is an :class:`torch.nn.Sequential` whose children have readable names, so that
compact export can walk it as a chain and per-layer priors can refer to its layers: ``fc1, fc2,
...`` (:class:`~torch.nn.Linear`), ``conv1, conv2, ...`` (:class:`~torch.nn.Conv2d`), ``relu1,
...`` (or ``tanh1, ...``) for activations, ``pool1, ...`` for pooling and ``flatten`` before the
first linear layer. Only ``Linear``, ``Conv2d``, ``ReLU``, ``Tanh``, ``MaxPool2d``, ``AvgPool2d``
and ``Flatten`` appear, and the last layer returns logits. No Pyro is involved here.

References

[1] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-Based Learning Applied to Document
    Recognition", Proc. IEEE 86(11), 1998 (LeNet-300-100 and LeNet-5).
[2] S. Han, J. Pool, J. Tran, W. J. Dally, "Learning both Weights and Connections for Efficient
    Neural Networks", NeurIPS 2015 (the LeNet compression benchmarks).
[3] A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep Convolutional
    Neural Networks", NeurIPS 2012 (AlexNet).
[4] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. VI (the small
    AlexNet of its experiments).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import ClassVar

from torch import nn

__all__ = [
    "MLP",
    "LeNet300100",
    "LeNet5",
    "DemoAlexNet",
    "ZOO",
    "build_model",
    "layer_names",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _spatial_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Side length after a square convolution or pooling (floor mode, no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_stack(model: str, image_size: int, stages: Sequence[tuple[str, int, int, int]]) -> int:
    """Run ``image_size`` through ``(layer, kernel, stride, padding)`` stages; the final side.

    :raises ValueError: when a stage's input is smaller than its kernel (after padding).
    """
    size = _positive("image_size", image_size)
    for layer, kernel, stride, padding in stages:
        if size + 2 * padding < kernel:
            raise ValueError(
                f"{model}: image_size={image_size} is too small; {layer} (kernel {kernel}) "
                f"sees a {size}x{size} input"
            )
        size = _spatial_out(size, kernel, stride, padding)
    return size


class MLP(nn.Sequential):
    """A fully connected classifier: ``flatten``, then ``fc1, act, fc2, act, ..., fcK``.

    Hidden layers are followed by the activation (named ``relu1, relu2, ...`` or ``tanh1,
    tanh2, ...``); the last layer ``fcK`` returns logits. The input is flattened first, so
    images ``(B, C, H, W)`` are accepted when ``in_features == C * H * W``.

    Example::

        >>> model = MLP(64, hidden=(32,), num_classes=3)
        >>> [name for name, _ in model.named_children()]
        ['flatten', 'fc1', 'relu1', 'fc2']

    :param int in_features: number of input features (after flattening).
    :param hidden: widths of the hidden layers; empty for a linear classifier.
    :type hidden: Sequence[int]
    :param int num_classes: number of output logits.
    :param str activation: ``"relu"`` or ``"tanh"``.
    :raises ValueError: on an unknown activation or a non-positive width.
    """

    #: How :func:`build_model` reads ``input_shape``: flattened to ``in_features``.
    input_kind: ClassVar[str] = "flat"

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 256),
        num_classes: int = 10,
        activation: str = "relu",
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        widths = [_positive("in_features", in_features)]
        widths += [_positive("hidden width", h) for h in hidden]
        widths.append(_positive("num_classes", num_classes))
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            layers[f"fc{i}"] = nn.Linear(n_in, n_out)
            if i < len(widths) - 1:
                layers[f"{activation}{i}"] = _ACTIVATIONS[activation]()
        super().__init__(layers)
        self.in_features = in_features
        self.hidden = tuple(hidden)
        self.num_classes = num_classes
        self.activation = activation


class LeNet300100(MLP):
    """LeNet-300-100: the MLP ``784-300-100-10`` with ReLU [1], a standard pruning benchmark [2].

    Children: ``flatten, fc1, relu1, fc2, relu2, fc3``; 266,610 parameters for 784 inputs and
    10 classes.

    Example::

        >>> model = LeNet300100()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])

    :param int in_features: number of input features (784 for flattened MNIST).
    :param int num_classes: number of output logits.

    References

    [1] Y. LeCun et al., "Gradient-Based Learning Applied to Document Recognition", 1998.
    [2] S. Han et al., "Learning both Weights and Connections for Efficient Neural Networks",
        NeurIPS 2015, Table 1.
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__(in_features, hidden=(300, 100), num_classes=num_classes)


class LeNet5(nn.Sequential):
    """LeNet-5 [1] as used in compression benchmarks [2], with ReLU and max pooling.

    Children: ``conv1`` (5x5, ``in_channels -> 6``, padding 2), ``relu1``, ``pool1`` (max 2x2),
    ``conv2`` (5x5, ``6 -> 16``, no padding), ``relu2``, ``pool2`` (max 2x2), ``flatten``,
    ``fc1`` (``-> 120``), ``relu3``, ``fc2`` (``120 -> 84``), ``relu4``, ``fc3``
    (``84 -> num_classes``, logits). For 28x28 inputs ``fc1`` sees ``16 * 5 * 5 = 400``
    features and the network has 61,706 parameters.

    Example::

        >>> model = LeNet5(image_size=28)
        >>> model.fc1.in_features
        400
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])

    :param int in_channels: number of input channels.
    :param int num_classes: number of output logits.
    :param int image_size: side of the (square) input images.
    :raises ValueError: when the image is too small for the conv stack (below 12x12).

    References

    [1] Y. LeCun et al., "Gradient-Based Learning Applied to Document Recognition", 1998.
    [2] S. Han et al., "Learning both Weights and Connections for Efficient Neural Networks",
        NeurIPS 2015, Table 2.
    """

    #: How :func:`build_model` reads ``input_shape``: ``(C, H, W)`` with ``H == W``.
    input_kind: ClassVar[str] = "image"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        _positive("in_channels", in_channels)
        _positive("num_classes", num_classes)
        side = _check_stack(
            "LeNet5",
            image_size,
            [("conv1", 5, 1, 2), ("pool1", 2, 2, 0), ("conv2", 5, 1, 0), ("pool2", 2, 2, 0)],
        )
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(6, 16, kernel_size=5),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(16 * side * side, 120),
                relu3=nn.ReLU(),
                fc2=nn.Linear(120, 84),
                relu4=nn.ReLU(),
                fc3=nn.Linear(84, num_classes),
            )
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size


class DemoAlexNet(nn.Sequential):
    """The small AlexNet-style network [1] of the Turbo-VBI compression experiments [2].

    Children: ``conv1`` (7x7, ``in_channels -> 6``), ``relu1``, ``pool1``, ``conv2`` (5x5,
    ``6 -> 16``), ``relu2``, ``pool2``, ``conv3`` (3x3, ``16 -> 32``), ``relu3``, ``conv4``
    (3x3, ``32 -> 64``), ``relu4``, ``pool3``, ``flatten``, ``fc1`` (``-> 120``), ``relu5``,
    ``fc2`` (``120 -> 84``), ``relu6``, ``fc3`` (``84 -> num_classes``, logits). Convolutions
    are "same" padded (stride 1) and every pool is a 3x3 max pool with stride 2, so for 32x32
    inputs the side runs ``32 -> 15 -> 7 -> 3`` and ``fc1`` sees ``64 * 3 * 3 = 576`` features.

    Example::

        >>> model = DemoAlexNet(image_size=32)
        >>> model.fc1.in_features
        576
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])

    :param int in_channels: number of input channels.
    :param int num_classes: number of output logits.
    :param int image_size: side of the (square) input images.
    :raises ValueError: when the image is too small for the conv stack (below 15x15).

    References

    [1] A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep
        Convolutional Neural Networks", NeurIPS 2012.
    [2] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural
        Networks Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. VI.
    """

    #: How :func:`build_model` reads ``input_shape``: ``(C, H, W)`` with ``H == W``.
    input_kind: ClassVar[str] = "image"

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        _positive("in_channels", in_channels)
        _positive("num_classes", num_classes)
        side = _check_stack(
            "DemoAlexNet",
            image_size,
            [
                ("conv1", 7, 1, 3),
                ("pool1", 3, 2, 0),
                ("conv2", 5, 1, 2),
                ("pool2", 3, 2, 0),
                ("conv3", 3, 1, 1),
                ("conv4", 3, 1, 1),
                ("pool3", 3, 2, 0),
            ],
        )
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 6, kernel_size=7, padding=3),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(kernel_size=3, stride=2),
                conv2=nn.Conv2d(6, 16, kernel_size=5, padding=2),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(kernel_size=3, stride=2),
                conv3=nn.Conv2d(16, 32, kernel_size=3, padding=1),
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(32, 64, kernel_size=3, padding=1),
                relu4=nn.ReLU(),
                pool3=nn.MaxPool2d(kernel_size=3, stride=2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(64 * side * side, 120),
                relu5=nn.ReLU(),
                fc2=nn.Linear(120, 84),
                relu6=nn.ReLU(),
                fc3=nn.Linear(84, num_classes),
            )
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size


#: The networks :func:`build_model` knows, by name.
ZOO: dict[str, Callable[..., nn.Sequential]] = {
    "mlp": MLP,
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "alexnet": DemoAlexNet,
}


def build_model(
    name: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs: object
) -> nn.Sequential:
    """Build a zoo network by name, sizing its input layer from the shape of one example.

    Fully connected models (``"mlp"``, ``"lenet300100"``) take ``in_features`` as the product
    of ``input_shape``, so flat ``(F,)`` and image ``(C, H, W)`` shapes both work. Conv models
    (``"lenet5"``, ``"alexnet"``) need a square image ``(C, H, W)`` and take ``in_channels=C``,
    ``image_size=H``.

    Example::

        >>> model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
        >>> layer_names(model)
        ['conv1', 'conv2', 'fc1', 'fc2', 'fc3']

    :param str name: a key of :data:`ZOO`.
    :param tuple input_shape: shape of one example, without the batch dimension.
    :param int num_classes: number of output logits.
    :param kwargs: further constructor arguments (e.g. ``hidden``, ``activation`` for ``"mlp"``).
    :returns: the network, a :class:`torch.nn.Sequential`.
    :rtype: torch.nn.Sequential
    :raises ValueError: on an unknown name, a bad ``input_shape`` (empty or non-positive; for
        conv models not 3-D or not square).
    :raises TypeError: when ``kwargs`` repeat an argument derived from ``input_shape``.
    """
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; valid names are {sorted(ZOO)}")
    factory = ZOO[name]
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be non-empty positive integers, got {input_shape!r}")
    kind = getattr(factory, "input_kind", None)
    derived: dict[str, int]
    if kind == "flat":
        derived = {"in_features": math.prod(shape)}
    elif kind == "image":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(
                f"{name!r} is a conv model and needs square image inputs (C, H, W) with H == W, "
                f"got input_shape={shape}"
            )
        derived = {"in_channels": shape[0], "image_size": shape[1]}
    else:
        raise ValueError(f"ZOO[{name!r}] has no input_kind ('flat' or 'image'); got {kind!r}")
    repeated = sorted(set(kwargs) & (set(derived) | {"num_classes"}))
    if repeated:
        raise TypeError(f"build_model derives {repeated} itself; do not pass them as kwargs")
    return factory(**derived, num_classes=num_classes, **kwargs)


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the ``Linear`` and ``Conv2d`` submodules, in module order.

    These are the names per-layer priors refer to.

    Example::

        >>> layer_names(LeNet300100())
        ['fc1', 'fc2', 'fc3']

    :param torch.nn.Module model: any network.
    :returns: the names, as :meth:`torch.nn.Module.named_modules` yields them.
    :rtype: list[str]
    """
    return [
        name for name, module in model.named_modules() if isinstance(module, nn.Linear | nn.Conv2d)
    ]
