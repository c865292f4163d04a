"""Models for the ``structsparse`` command, each adapted to the input shape ``[C, H, W]``.

- ``logreg``: multinomial logistic regression (one Linear layer on the flattened input).
- ``mlp``: fully connected ReLU network (hidden widths 256, 128 by default).
- ``lenet5``: the RMDA paper's modified LeNet5: conv 3×3 (20) → max-pool → conv 3×3 (50) → max-pool
  → FC 500 → FC classes; the convolutions pad by 1 on small inputs (< 16 px) so 8×8 digits fit.
- ``vgg``: a small VGG (conv-BN-ReLU blocks 32, 64, 128, 128 with max-pooling while the map is at
  least 2×2, global average pooling, one Linear head).
- ``resnet``: a small CIFAR-style ResNet (3 stages of one basic block, 16/32/64 channels).
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("logreg", "mlp", "lenet5", "vgg", "resnet")


def _flat(shape: tuple[int, int, int]) -> int:
    c, h, w = shape
    return c * h * w


class LeNet5(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, _ = shape
        pad = 1 if h < 16 else 0
        self.features = nn.Sequential(
            nn.Conv2d(c, 20, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, *shape)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(n, 500), nn.ReLU(), nn.Linear(500, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallVGG(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int, widths=(32, 64, 128, 128)) -> None:
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int, widths=(16, 32, 64)) -> None:
        super().__init__()
        c, h, _ = shape
        self.stem = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks, cin = [], widths[0]
        for i, width in enumerate(widths):
            stride = 2 if i > 0 and h >= 2 else 1
            h = (h + 1) // 2 if stride == 2 else h
            blocks.append(BasicBlock(cin, width, stride))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build_model(name: str, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Model ``name`` (one of :data:`MODELS`) for inputs of shape ``[C, H, W]``."""
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3:
        raise ValueError(f"model: expected an input shape [C, H, W], got {shape}")
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(_flat(shape), num_classes))
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(_flat(shape), 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )
    if name == "lenet5":
        return LeNet5(shape, num_classes)
    if name == "vgg":
        return SmallVGG(shape, num_classes)
    if name == "resnet":
        return SmallResNet(shape, num_classes)
    raise ValueError(f"model: unknown model {name!r}; expected one of {', '.join(MODELS)}")
