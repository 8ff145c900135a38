"""The models of pipe's families written the way a PyTorch user writes them: plain torch.nn
modules, one class each, no layer program. bench/torch_e2e.py trains them end to end and
bench/torch_family_step.py times their steps; `standard(name)` builds the model of one
examples/family_step.rs case, whose parameter count the caller checks against pipe's.
"""

import torch.nn as nn
import torch.nn.functional as F


class LeNet300100(nn.Module):
    def __init__(self, widths=(784, 300, 100, 10)):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.fcs[:-1]:
            x = F.relu(fc(x))
        return self.fcs[-1](x)


class ConvNet(nn.Module):
    """Frankle & Carbin's Conv-2/4/6: 3×3 convolutions with bias ("M": 2×2 max pool), then
    fully connected layers and a classifier."""

    def __init__(self, layers, fc, input=(1, 28, 28), classes=10):
        super().__init__()
        c, h, w = input
        body = []
        for v in layers:
            if v == "M":
                body.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                body += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*body)
        widths = [c * h * w, *fc]
        head = []
        for a, b in zip(widths, widths[1:]):
            head += [nn.Linear(a, b), nn.ReLU()]
        self.head = nn.Sequential(*head, nn.Linear(widths[-1], classes))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class VGG(nn.Module):
    """CIFAR VGG with batch norm (bias-free convolutions) and one linear classifier."""

    CONFIGS = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}

    def __init__(self, depth=11, input=(3, 32, 32), classes=10):
        super().__init__()
        c, body = input[0], []
        for v in self.CONFIGS[depth]:
            if v == "M":
                body.append(nn.MaxPool2d(2))
            else:
                body += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*body)
        self.fc = nn.Linear(c * (input[1] // 32) * (input[2] // 32), classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = c_out - c_in
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            # Option A: subsample, zero-pad the new channels.
            short = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + short)


class ResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2), option-A shortcuts."""

    def __init__(self, depth=20, channels=3, width=16, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c = [], width
        for stage, w in enumerate([width, 2 * width, 4 * width]):
            for i in range(n):
                layers.append(BasicBlock(c, w, 2 if stage > 0 and i == 0 else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def divisible(v, d=8):
    r = max(d, int(v + d / 2) // d * d)
    return r + d if r < 0.9 * v else r


class InvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, t):
        super().__init__()
        hidden = c_in * t
        layers = []
        if t != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 in its CIFAR form (stem and second stage at stride 1)."""

    STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width=1.0, channels=3, classes=10):
        super().__init__()
        c = divisible(32 * width)
        layers = [nn.Conv2d(channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]
        for t, w, n, s in self.STAGES:
            out = divisible(w * width)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        last = divisible(1280 * width) if width > 1.0 else 1280
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def standard(name):
    """The hand-written model of examples/family_step.rs's case `name`."""
    return {
        "lenet_28": lambda: LeNet300100(),
        "conv4_28": lambda: ConvNet([64, 64, "M", 128, 128, "M"], [256, 256], (1, 28, 28)),
        "conv4_32": lambda: ConvNet([64, 64, "M", 128, 128, "M"], [256, 256], (3, 32, 32)),
        "vgg11_32": lambda: VGG(11),
        "resnet20_28": lambda: ResNet(20, channels=1),
        "resnet20_32": lambda: ResNet(20),
        "mobilenet_v2_32": lambda: MobileNetV2(),
        "mobilenet_v2_tiny_32": lambda: MobileNetV2(0.35),
    }[name]()
