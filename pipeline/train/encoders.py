"""Encoders of the in-batch trainer, and many runs of one encoder stacked into one program.

Every encoder maps a sample to a d-dimensional vector (normalised by the trainer): a backbone and a
two-layer projection head (width ``hidden``), as SimCLR and SupCon train them.

=========  ================  =====================================================================
name       input (per item)  backbone
=========  ================  =====================================================================
ufm        a sample index    a free vector per training sample (the theory's unconstrained model)
mlp        any (flattened)   the head alone on the flattened input
cnn1d      (1, L) signals    three strided 1-D convolutions (MNIST-1D's CNN, Greydanus 2020)
cnn        (1, H, W) images  two 3x3 convolution + max-pool stages
resnet     (1, H, W) images  the CIFAR-style ResNet-8 of He et al. (2016): 16-32-64 channels,
                             one basic block a stage; GroupNorm (see below)
=========  ================  =====================================================================

torchvision's ResNets are not used: PyPI's torchvision does not import beside the CPU build of torch
the project pins (``operator torchvision::nms does not exist``), and its resnet18 stem is for
224-pixel images. The ResNet here normalises with GroupNorm rather than BatchNorm: batch statistics
would couple the samples of a batch (a known shortcut in contrastive learning) and would need running
statistics per run inside the stacked program.

Stacking (:class:`Stacked`): the runs' parameters are stacked along a leading run axis
(``torch.func.stack_module_state``) and one ``functional_call`` of the encoder is vmapped over it, so
R runs are one tensor program (convolutions become grouped ones) on CPU or CUDA. Runs stay
independent: each run's loss depends on its own parameters only, and Adam is elementwise.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pipeline.train.inputs import ENCODERS, input_mismatch


def _head(width_in: int, hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class FreeFeatures(nn.Module):
    """One free vector per training sample (the unconstrained features model); input: row indices."""

    def __init__(self, n_samples: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_samples, dim))  # (N, d)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.weight[index]  # (B, d)


class CNN1d(nn.Module):
    """Three strided convolutions (kernel 5, 32 channels) and a projection head, for (1, L) signals."""

    def __init__(self, length: int, hidden: int, dim: int, channels: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=1, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        self.head = _head(channels * math.ceil(math.ceil(length / 2) / 2), hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, L) -> (B, d)
        return self.head(self.body(x))


class CNN(nn.Module):
    """Two 3x3 convolution + 2x2 max-pool stages (32, 64 channels) and a projection head."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, dim: int) -> None:
        super().__init__()
        c, h, w = shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        self.head = _head(64 * (h // 4) * (w // 4), hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B, d)
        return self.head(self.body(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016); GroupNorm, 8 groups."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(8, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n + 2) (He et al. 2016), n = ``blocks`` a stage: 16, 32, 64 channels,
    global average pooling, then the projection head. n = 1 is ResNet-8; the long-tail papers'
    ResNet-32 is n = 5."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, dim: int, blocks: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(shape[0], 16, 3, padding=1, bias=False), nn.GroupNorm(8, 16), nn.ReLU()]
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks):
                layers.append(BasicBlock(c_in, c_out, stride if b == 0 else 1))
                c_in = c_out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = _head(64, hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B, d)
        return self.head(self.body(x))


def build_encoder(name: str, input_shape: tuple[int, ...], dim: int, hidden: int, n_samples: int = 0) -> nn.Module:
    """One encoder (random initialisation from torch's global generator).

    Parameters
    ----------
    name : one of :data:`ENCODERS`.
    input_shape : the shape of one item (ignored by ufm).
    dim : output dimension d; hidden : width of the projection head.
    n_samples : training samples (ufm: one vector each).
    """
    if (why := input_mismatch(name, input_shape)) is not None:
        raise ValueError(why)
    if name == "ufm":
        return FreeFeatures(n_samples, dim)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), _head(math.prod(input_shape), hidden, dim))
    if name == "cnn1d":
        return CNN1d(input_shape[-1], hidden, dim)
    if name == "cnn":
        return CNN(input_shape, hidden, dim)
    if name == "resnet":
        return ResNet(input_shape, hidden, dim)
    raise ValueError(f"encoder {name!r}: expected one of {', '.join(ENCODERS)}")


class Stacked:
    """R encoders of one architecture as one program: parameters with a leading run axis.

    Parameters
    ----------
    modules : the R encoders (same architecture, each initialised with its own seed).
    device : where the stacked parameters live.
    """

    def __init__(self, modules: list[nn.Module], device: torch.device, vectorize: bool = True) -> None:
        params, buffers = torch.func.stack_module_state(modules)
        self.params = {name: p.to(device).detach().requires_grad_() for name, p in params.items()}  # (R, ...) each
        self.buffers = {name: b.to(device) for name, b in buffers.items()}
        self.base = copy.deepcopy(modules[0]).to("meta")
        self.vectorize = vectorize

        def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.base, (params, buffers), (x,))

        self._one = one
        self._forward = torch.func.vmap(one)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(R, B, *item) inputs, one batch per run -> (R, B, d) outputs (not normalised)."""
        if self.vectorize:
            return self._forward(self.params, self.buffers, x)
        return torch.stack([self._one({n: p[r] for n, p in self.params.items()},
                                      {n: b[r] for n, b in self.buffers.items()}, x[r])
                            for r in range(x.shape[0])])  # fmt: skip


# On a CPU, vmap turns the runs' 2-D convolutions into one grouped convolution, which oneDNN runs far
# slower than R plain ones (benchmarks/bench_encoders.py, ResNet-8 at B = 256, 16 runs: 0.47x the plain
# loop); there the stack calls each run's convolutions in turn (same parameters, same program).
LOOP_ON_CPU = ("cnn", "resnet")


def vectorized(encoder: str, device: torch.device) -> bool:
    """Whether the stacked runs of ``encoder`` are vmapped on ``device`` (else called in turn)."""
    return device.type != "cpu" or encoder not in LOOP_ON_CPU
