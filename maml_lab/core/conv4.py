"""The MAML paper's conv-4 image classifier as a functional model (Finn et al. 2017, Sec. 5.2).

Four blocks of [3x3 conv (64 filters; 32 for 84x84 inputs) -> batch norm -> ReLU -> downsample], where the
downsampling is a stride-2 convolution (Omniglot) or a 2x2 max-pool (MiniImagenet); then flatten and a
linear N-way head. Batch norm always uses the statistics of the batch it sees (no running statistics), as
in MAML, and a "batch" is one task: statistics never mix tasks.

Parameter names are those of the equivalent `torch.nn.Sequential` (`torch_module()`), e.g. "0.weight" for
the first conv, "1.weight" / "1.bias" for its batch norm, so an exported state_dict loads into plain PyTorch
(BatchNorm2d with track_running_stats=False gives the same outputs in train and eval mode).

Per-task parameters ([B, ...] on every tensor) run as one grouped convolution: the B tasks become B groups
of channels of a single [N, B*C, H, W] batch, so batch norm over that batch is per-task per-channel for free.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

DOWNSAMPLING = ("stride", "maxpool")


class Conv4:
    """Conv-4 for [B, N, C, H, W] inputs and `ways` outputs."""

    blocks = 4
    kernel = 3

    def __init__(self, in_channels: int = 1, image_size: int | tuple[int, int] = 28, ways: int = 5,
                 filters: int | None = None, downsample: str | None = None, eps: float = 1e-5,
                 batched: str = "grouped"):
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image size must be a positive int or (height, width), got {image_size}")
        large = min(size) >= 64
        self.in_channels = int(in_channels)
        self.image_size = size
        self.ways = int(ways)
        self.filters = int(filters if filters is not None else (32 if large else 64))
        self.downsample = downsample if downsample is not None else ("maxpool" if large else "stride")
        self.eps = float(eps)
        self.batched = batched
        if self.in_channels < 1 or self.ways < 1 or self.filters < 1:
            raise ValueError(f"conv4 needs positive in_channels, ways and filters, got "
                             f"{self.in_channels}, {self.ways}, {self.filters}")
        if self.downsample not in DOWNSAMPLING:
            raise ValueError(f"unknown downsampling {self.downsample!r} (one of {', '.join(DOWNSAMPLING)})")
        if batched not in ("grouped", "vmap"):
            raise ValueError(f"batched must be 'grouped' or 'vmap', got {batched!r}")
        h, w = self.feature_map
        if h < 1 or w < 1:
            raise ValueError(f"images of {size[0]}x{size[1]} are too small for four downsampling blocks")

    # ---------------------------------------------------------------------------------------------------------
    # description

    def spec(self) -> dict:
        size = self.image_size[0] if self.image_size[0] == self.image_size[1] else list(self.image_size)
        return {"kind": "conv4", "in_channels": self.in_channels, "image_size": size, "ways": self.ways,
                "filters": self.filters, "downsample": self.downsample}

    @classmethod
    def from_spec(cls, spec: dict) -> "Conv4":
        if spec.get("kind", "conv4") != "conv4":
            raise ValueError(f"not a conv4 spec: kind {spec.get('kind')!r}")
        size = spec.get("image_size", 28)
        return cls(in_channels=spec.get("in_channels", 1), image_size=size if isinstance(size, int) else tuple(size),
                   ways=spec.get("ways", 5), filters=spec.get("filters"), downsample=spec.get("downsample"))

    @property
    def _stride(self) -> int:
        return 2 if self.downsample == "stride" else 1

    @property
    def feature_map(self) -> tuple[int, int]:
        """Spatial size after the four blocks."""
        h, w = self.image_size
        for _ in range(self.blocks):
            if self.downsample == "stride":
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # 3x3, padding 1, stride 2
            else:
                h, w = h // 2, w // 2  # 3x3, padding 1, stride 1, then 2x2 max-pool
        return h, w

    @property
    def feature_dim(self) -> int:
        h, w = self.feature_map
        return self.filters * h * w

    @property
    def _per_block(self) -> int:
        return 3 if self.downsample == "stride" else 4  # conv, bn, relu[, pool]

    def _names(self, block: int) -> tuple[str, str]:
        i = block * self._per_block
        return str(i), str(i + 1)

    @property
    def _head(self) -> str:
        return str(self.blocks * self._per_block + 1)  # after Flatten

    def param_shapes(self) -> "OrderedDict[str, tuple[int, ...]]":
        shapes = OrderedDict()
        c_in = self.in_channels
        for k in range(self.blocks):
            conv, bn = self._names(k)
            shapes[f"{conv}.weight"] = (self.filters, c_in, self.kernel, self.kernel)
            shapes[f"{conv}.bias"] = (self.filters,)
            shapes[f"{bn}.weight"] = (self.filters,)
            shapes[f"{bn}.bias"] = (self.filters,)
            c_in = self.filters
        shapes[f"{self._head}.weight"] = (self.ways, self.feature_dim)
        shapes[f"{self._head}.bias"] = (self.ways,)
        return shapes

    def init_params(self, generator: torch.Generator, device=None, dtype=None) -> "OrderedDict[str, torch.Tensor]":
        """PyTorch's default initialization (U(+-1/sqrt(fan_in)) for conv and linear, BN 1 and 0), seeded."""
        dtype = dtype or torch.float32
        params = OrderedDict()
        bn_names = {self._names(k)[1] for k in range(self.blocks)}
        for name, shape in self.param_shapes().items():
            layer, kind = name.split(".")
            if layer in bn_names:
                t = torch.ones(shape, dtype=dtype) if kind == "weight" else torch.zeros(shape, dtype=dtype)
            else:
                w_shape = self.param_shapes()[f"{layer}.weight"]
                fan_in = math.prod(w_shape[1:])
                bound = 1.0 / math.sqrt(fan_in)
                t = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound
            params[name] = t.to(device)
        return params

    def torch_module(self) -> nn.Module:
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for _ in range(self.blocks):
            layers += [nn.Conv2d(c_in, self.filters, self.kernel, stride=self._stride, padding=1),
                       nn.BatchNorm2d(self.filters, eps=self.eps, track_running_stats=False), nn.ReLU()]
            if self.downsample == "maxpool":
                layers.append(nn.MaxPool2d(2))
            c_in = self.filters
        layers += [nn.Flatten(), nn.Linear(self.feature_dim, self.ways)]
        return nn.Sequential(*layers)

    # ---------------------------------------------------------------------------------------------------------
    # forward

    def forward(self, params, x: torch.Tensor) -> torch.Tensor:
        """params: shared (shapes as param_shapes) or per-task ([B, ...]); x [B, N, C, H, W] -> logits [B, N, ways].

        Batch-norm statistics are computed per task (over that task's N images) in both cases.
        """
        if x.dim() != 5:
            raise ValueError(f"conv4 expects x of shape [tasks, images, C, H, W], got {tuple(x.shape)}")
        shapes = self.param_shapes()
        per_task = any(params[k].dim() == len(s) + 1 for k, s in shapes.items())
        if self.batched == "vmap" and not per_task:
            return self._forward_folded(params, x)
        # Shared parameters also take the grouped path (as a free expand): it measured faster on CPU than
        # folding tasks into the batch, whose per-task batch-norm statistics need a slow strided reduction.
        b = x.shape[0]
        params = OrderedDict((k, v if v.dim() == len(shapes[k]) + 1 else v.unsqueeze(0).expand(b, *v.shape))
                             for k, v in params.items())
        if self.batched == "vmap":
            return self._forward_vmap(params, x)
        return self._forward_grouped(params, x)

    def _forward_folded(self, params, x: torch.Tensor) -> torch.Tensor:
        """Shared parameters, tasks folded into the batch; batch-norm statistics per task (reference path)."""
        b, n = x.shape[:2]
        h = x.reshape(b * n, *x.shape[2:])
        for k in range(self.blocks):
            conv, bn = self._names(k)
            h = F.conv2d(h, params[f"{conv}.weight"], params[f"{conv}.bias"], stride=self._stride, padding=1)
            h5 = h.view(b, n, *h.shape[1:])
            var, mean = torch.var_mean(h5, dim=(1, 3, 4), correction=0, keepdim=True)
            scale = params[f"{bn}.weight"].view(1, 1, -1, 1, 1) * torch.rsqrt(var + self.eps)
            h5 = torch.addcmul(params[f"{bn}.bias"].view(1, 1, -1, 1, 1) - mean * scale, h5, scale)
            h = F.relu(h5.view_as(h))
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        feats = h.reshape(b, n, -1)
        head = self._head
        return F.linear(feats, params[f"{head}.weight"], params[f"{head}.bias"])

    def _forward_grouped(self, params, x: torch.Tensor) -> torch.Tensor:
        """Per-task parameters: tasks are channel groups of one [N, B*C, H, W] batch."""
        b, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, b * x.shape[2], *x.shape[3:])
        for k in range(self.blocks):
            conv, bn = self._names(k)
            w = params[f"{conv}.weight"]
            h = F.conv2d(h, w.reshape(b * w.shape[1], *w.shape[2:]), params[f"{conv}.bias"].reshape(-1),
                         stride=self._stride, padding=1, groups=b)
            h = F.batch_norm(h, None, None, params[f"{bn}.weight"].reshape(-1), params[f"{bn}.bias"].reshape(-1),
                             training=True, eps=self.eps)
            h = F.relu(h)
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        feats = h.reshape(n, b, -1).transpose(0, 1)  # [B, N, F*h*w]
        head = self._head
        return torch.baddbmm(params[f"{head}.bias"].unsqueeze(1), feats, params[f"{head}.weight"].transpose(1, 2))

    def _forward_vmap(self, params, x: torch.Tensor) -> torch.Tensor:
        """Per-task parameters with torch.func.vmap over the task dimension (kept for comparison)."""

        def one(p, xi):
            return self._forward_folded(p, xi.unsqueeze(0)).squeeze(0)

        return torch.func.vmap(one)(dict(params), x)
