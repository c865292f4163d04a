"""The networks of the ``structsparse`` command, kept importable here; they live in
:mod:`structsparse.cli.models`."""

from .cli.models import MODELS, BasicBlock, LeNet5, SmallResNet, SmallVGG, build_model

__all__ = ["MODELS", "BasicBlock", "LeNet5", "SmallResNet", "SmallVGG", "build_model"]
