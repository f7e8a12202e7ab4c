"""A multi-exit ResNet-style CNN for 28x28 grey images (MNIST scale).

Four stages of residual blocks (32, 64, 128, 256 channels), each followed by a cheap exit
head (global average pool + linear). About 100 M multiply-accumulates for one full forward:
a few milliseconds on a 2-core x86 CPU, so per-call overheads of a staged runtime are
measured against real work, not against nothing.
"""
import torch
from torch import nn


def conv_bn(c_in, c_out, stride=1, relu=True):
    layers = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """The ResNet basic block; a 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), conv_bn(c_out, c_out, relu=False))
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ExitHead(nn.Module):
    """Average pool to a ``grid`` x ``grid`` map + linear classifier.

    Early exits keep a coarse spatial grid: a global average over shallow features loses the
    digit's layout (an early head with grid 1 reached 49% on MNIST, grid 4 keeps it useful).
    """

    def __init__(self, channels, grid, num_classes):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Linear(channels * grid * grid, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class MultiExitResNet(nn.Module):
    """Stages in ``self.stages``, heads in ``self.heads``; ``forward`` returns every exit's logits."""

    def __init__(self, widths=(32, 64, 128, 256), num_classes=10, in_channels=1):
        super().__init__()
        w = widths
        self.stages = nn.ModuleList([
            nn.Sequential(conv_bn(in_channels, w[0]), BasicBlock(w[0], w[0])),
            nn.Sequential(BasicBlock(w[0], w[1], 2), BasicBlock(w[1], w[1])),
            nn.Sequential(BasicBlock(w[1], w[2], 2), BasicBlock(w[2], w[2])),
            nn.Sequential(BasicBlock(w[2], w[3], 2), BasicBlock(w[3], w[3])),
        ])
        # Feature maps are 28, 14, 7 and 4 pixels wide; the grids divide them exactly, so the
        # pools export to ONNX as plain AveragePool.
        self.heads = nn.ModuleList([ExitHead(c, g, num_classes) for c, g in zip(w, (4, 2, 1, 1))])

    def forward(self, x):
        logits = []
        for stage, head in zip(self.stages, self.heads):
            x = stage(x)
            logits.append(head(x))
        return logits
