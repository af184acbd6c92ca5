"""The MAML paper's conv-4 image classifier as a functional model (Finn et al. 2017, Sec. 5.2).

Four blocks of [3x3 conv (64 filters; 32 for 84x84 inputs) -> batch norm -> ReLU -> downsample], where the
downsampling is a stride-2 convolution (Omniglot) or a 2x2 max-pool (MiniImagenet); then flatten and a
linear N-way head. Batch norm uses the statistics of the batch it sees (no running statistics), as in MAML,
and a "batch" is one task: statistics never mix tasks. An evaluation may predict with other statistics instead
(`forward(..., norm=...)`: the support set's, or fixed population statistics; the batch-norm modes of
models/batch_norm.py).

Parameter names are those of the equivalent `torch.nn.Sequential` (`torch_module()`), e.g. "0.weight" for
the first conv, "1.weight" / "1.bias" for its batch norm, so an exported state_dict loads into plain PyTorch
(BatchNorm2d with track_running_stats=False gives the same outputs in train and eval mode).

Conventions (`convention`): "lab" is the layout above. "cbfinn" is cbfinn/maml's: batch norm without a scale
(tf.contrib.layers.batch_norm's default scale=False, so no "1.weight"), eps 1e-3, its shift (beta) not adapted
in the inner loop (`inner_frozen`; the outer loop trains it), and for strided downsampling (Omniglot) a head on
the mean of the final feature map ([N, F]) instead of the flattened map (cbfinn's reduce_mean over [1, 2];
MiniImagenet, max-pool, flattens). Its loss convention lives in tasks/losses.py (`cross_entropy_sum`). The fast
explicit paths (`batched_loss_grad`, `explicit_meta_gradient`) are written for "lab" and return None otherwise,
so other conventions differentiate by autograd.

CAVIA's context (models/context.py: `context` and a FiLM generator `context.film<b>.*` in the parameter dict)
modulates block b's batch-normalized map before its ReLU, per task; such parameter dicts take the per-task paths
(loop, grouped, the batch-norm modes' reference loop), never the shared or explicit ones.

How a meta-batch of B tasks runs (measured on CPU with benchmarks/bench_meta_step.py --model conv4):

* Shared parameters (theta, or its stride-0 per-task view at the first inner step): tasks are folded into the
  batch of one convolution in channels-last layout, where a task's activations are one contiguous
  [N*H*W, C] block, so per-task batch-norm statistics are a fast reduction over the middle dimension. With
  strided downsampling the first layer is one matmul of im2col patches (a convolution would return NCHW for
  a single input channel, and every later op would transpose it).
* The first inner step's per-task gradients (`batched_loss_grad`, CPU, stride downsampling, cross-entropy) are
  explicit backpropagation written with differentiable ops on that folded batch: shared-weight convolutions
  and their transposes stay single calls, only the per-task weight gradients are per task (a batched matmul
  of the first layer's patches; per-task convolution weight gradients for the others). MAML's second-order
  term is then autograd of ordinary first-order ops, not the double backward of grouped convolutions and of
  batch norm, which were most of the previous meta-step.
* MAML/FOMAML training with one inner step (the paper's Omniglot setting; CPU, strided downsampling,
  cross-entropy) does not go through autograd at all: `explicit_meta_gradient` (conv4_meta.py) computes the
  support pass, the per-task query backward and the Hessian-vector products of the support losses
  (Pearlmutter's R-operator through conv, batch norm with batch statistics, ReLU and cross-entropy)
  explicitly, tasks folded into one convolution wherever the weights are theta. The first layer (K = 9 * C
  patch columns) never materializes its pre-activations: batch-norm statistics and every reduction against
  them are [K, F] products of the patches' float64 covariance. With the autograd path below, the meta-step
  spent ~45% in the support pass and its double backward (graph bookkeeping, layout conversions, stacks of
  per-task pieces); explicit, a meta-step went from 419-435 to 266-284 ms at 1 thread and from 542-557 to
  368-371 ms at 2 threads (bench_meta_step.py --model conv4 --clock process, before/after in one session):
  2.0-2.2x the per-task autograd loop, 2.1-2.5x `higher`. Exact to rounding in float64
  (tests/core/test_conv4_explicit.py). ANIL and BOIL (an adapted subset) take it too, the held part copied
  instead of stepped; the pretrained baseline takes its support pass (`mean_loss_grad`, `adapted_logits`).
  Other settings (several inner steps, max-pool, MSE, CUDA) use the paths below.
* Per-task parameters ([B, ...] on every tensor, e.g. adapted weights on the query set): on CPU a loop over
  tasks of channels-last convolutions and native batch norm (each task's activations stay in cache; measured
  faster than one grouped convolution at 1 and 2 threads), the first strided layer as batched matmuls; tasks
  are split along their memory layout so that autograd stacks their gradients without transposing copies.
  Elsewhere (CUDA, unmeasured here) one grouped convolution, the B tasks being B groups of channels of a
  single [N, B*C, H, W] batch, so batch norm over it is per task and channel for free.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import context as ctx

DOWNSAMPLING = ("stride", "maxpool")
BATCHING = ("auto", "loop", "grouped", "vmap")
CONVENTIONS = ("lab", "cbfinn")  # see the module docstring
CBFINN_EPS = 1e-3  # tf.contrib.layers.batch_norm's default epsilon


def _channels_last_parts(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-task conv weights [B, F, C, kh, kw] as B channels-last [F, C, kh, kw] views of one copy: a
    convolution would otherwise convert every task's weight (and its gradient) on every call."""
    return tuple(p.permute(0, 3, 1, 2) for p in w.permute(0, 1, 3, 4, 2).contiguous().unbind(0))


def _film(h: torch.Tensor, film, block: int, task: int | None = None) -> torch.Tensor:
    """FiLM of block `block`'s (0-based) normalized map h when `film` (block 1-based, gamma, beta [B, F]) modulates
    it: task i's gamma * h + beta (h [N, F, H, W], task given), or every task's at once (h [N, B*F, H, W])."""
    if film is None or film[0] != block + 1:
        return h
    _, gamma, beta = film
    if task is not None:
        return torch.addcmul(beta[task].view(1, -1, 1, 1), h, gamma[task].view(1, -1, 1, 1))
    return torch.addcmul(beta.reshape(1, -1, 1, 1), h, gamma.reshape(1, -1, 1, 1))


def _ones_like(beta: torch.Tensor) -> torch.Tensor:
    """A constant unit scale for batch norm without one (cbfinn): native batch norm's double backward needs a
    weight tensor when the shift requires grad."""
    return torch.ones(beta.shape, dtype=beta.dtype, device=beta.device)


class Conv4:
    """Conv-4 for [B, N, C, H, W] inputs and `ways` outputs."""

    blocks = 4
    kernel = 3

    def __init__(self, in_channels: int = 1, image_size: int | tuple[int, int] = 28, ways: int = 5,
                 filters: int | None = None, downsample: str | None = None, eps: float | None = None,
                 batched: str = "auto", convention: str = "lab"):
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image size must be a positive int or (height, width), got {image_size}")
        large = min(size) >= 64
        self.in_channels = int(in_channels)
        self.image_size = size
        self.ways = int(ways)
        self.filters = int(filters if filters is not None else (32 if large else 64))
        self.downsample = downsample if downsample is not None else ("maxpool" if large else "stride")
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r} (one of {', '.join(CONVENTIONS)})")
        self.convention = convention
        self.eps = float(eps if eps is not None else (CBFINN_EPS if convention == "cbfinn" else 1e-5))
        self.batched = batched
        if self.in_channels < 1 or self.ways < 1 or self.filters < 1:
            raise ValueError(f"conv4 needs positive in_channels, ways and filters, got "
                             f"{self.in_channels}, {self.ways}, {self.filters}")
        if self.downsample not in DOWNSAMPLING:
            raise ValueError(f"unknown downsampling {self.downsample!r} (one of {', '.join(DOWNSAMPLING)})")
        if batched not in BATCHING:
            raise ValueError(f"batched must be one of {', '.join(BATCHING)}, got {batched!r}")
        h, w = self.feature_map
        if h < 1 or w < 1:
            raise ValueError(f"images of {size[0]}x{size[1]} are too small for four downsampling blocks")

    # ---------------------------------------------------------------------------------------------------------
    # description

    def spec(self) -> dict:
        size = self.image_size[0] if self.image_size[0] == self.image_size[1] else list(self.image_size)
        out = {"kind": "conv4", "in_channels": self.in_channels, "image_size": size, "ways": self.ways,
               "filters": self.filters, "downsample": self.downsample}
        if self.convention != "lab":  # lab specs keep the format they always had
            out["convention"] = self.convention
        return out

    @classmethod
    def for_family(cls, family, convention: str | None = None) -> "Conv4":
        """The MAML paper's conv-4 for a family's images ([C, H, W] input_shape) and its number of ways; the
        convention is the family's (`convention` attribute) unless given."""
        c, h, w = (int(s) for s in family.input_shape)
        convention = convention or getattr(family, "convention", "lab")
        return cls(in_channels=c, image_size=h if h == w else (h, w), ways=family.output_dim, convention=convention)

    @classmethod
    def from_spec(cls, spec: dict) -> "Conv4":
        if spec.get("kind", "conv4") != "conv4":
            raise ValueError(f"not a conv4 spec: kind {spec.get('kind')!r}")
        size = spec.get("image_size", 28)
        return cls(in_channels=spec.get("in_channels", 1), image_size=size if isinstance(size, int) else tuple(size),
                   ways=spec.get("ways", 5), filters=spec.get("filters"), downsample=spec.get("downsample"),
                   convention=spec.get("convention", "lab"))

    @property
    def bn_scale(self) -> bool:
        """Whether batch norm has a learned scale (gamma, "<bn>.weight"): not in cbfinn's convention."""
        return self.convention == "lab"

    @property
    def head_pool(self) -> str:
        """How the final feature map reaches the head: "flatten", or "mean" over its positions (cbfinn, strided)."""
        return "mean" if self.convention == "cbfinn" and self.downsample == "stride" else "flatten"

    @property
    def inner_frozen(self) -> tuple[str, ...]:
        """Parameters the inner loop never adapts (the outer loop trains them): cbfinn's batch-norm shifts."""
        if self.convention == "cbfinn":
            return tuple(f"{self._names(k)[1]}.bias" for k in range(self.blocks))
        return ()

    def batch_norm_names(self) -> tuple[str, ...]:
        """The batch-norm parameters (weights where the model has them, biases), in parameter order (MAML++'s
        per-step batch norm)."""
        bn = {self._names(k)[1] for k in range(self.blocks)}
        return tuple(k for k in self.param_shapes() if k.split(".")[0] in bn)

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
        if self.head_pool == "mean":
            return self.filters
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
        return str(self.blocks * self._per_block + (2 if self.head_pool == "mean" else 1))  # after [pool,] Flatten

    def head_names(self, params=None) -> tuple[str, ...]:
        """The linear head (what ANIL adapts and BOIL holds fixed in the inner loop)."""
        return (f"{self._head}.weight", f"{self._head}.bias")

    def _head_input(self, h: torch.Tensor) -> torch.Tensor:
        """The final feature map [M, F, h, w] as the head's input [M, features]: flattened (NCHW order, as
        nn.Flatten) or, cbfinn's Omniglot head, averaged over its positions."""
        return h.mean((2, 3)) if self.head_pool == "mean" else h.reshape(h.shape[0], -1)

    def layer_groups(self) -> "OrderedDict[str, tuple[str, ...]]":
        """Each layer's label and parameter names, input to output: the four blocks (conv + batch norm), the
        head (the per-layer view)."""
        groups = OrderedDict()
        for k in range(self.blocks):
            conv, bn = self._names(k)
            groups[f"block {k + 1}"] = tuple(n for n in (f"{conv}.weight", f"{conv}.bias", f"{bn}.weight", f"{bn}.bias")
                                             if n in self.param_shapes())
        groups["head"] = self.head_names()
        return groups

    def layer_activations(self, params, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output and the logits, flattened per image [B, N, features], in `layer_groups` order; one
        task at a time (a reference computation for analysis, not the training path). params: shared or [B, ...]."""
        shapes = self.param_shapes()
        b = x.shape[0]
        params, context = ctx.split(params)
        film = ctx.film(context, b)
        per_task = [OrderedDict((k, v[i] if v.dim() == len(shapes[k]) + 1 else v) for k, v in params.items())
                    for i in range(b)]
        outs: list[list[torch.Tensor]] = [[] for _ in range(self.blocks + 1)]
        for i in range(b):
            p, h = per_task[i], x[i]
            for k in range(self.blocks):
                conv, bn = self._names(k)
                h = F.conv2d(h, p[f"{conv}.weight"], p[f"{conv}.bias"], stride=self._stride, padding=1)
                h = F.batch_norm(h, None, None, p.get(f"{bn}.weight"), p[f"{bn}.bias"], training=True, eps=self.eps)
                h = F.relu(_film(h, film, k, i))
                if self.downsample == "maxpool":
                    h = F.max_pool2d(h, 2)
                outs[k].append(h.reshape(h.shape[0], -1))
            outs[-1].append(F.linear(self._head_input(h), p[f"{self._head}.weight"], p[f"{self._head}.bias"]))
        return [torch.stack(o) for o in outs]

    def context_init(self, num_context: int, generator: torch.Generator, layer: int | None = None, device=None,
                     dtype=None) -> "OrderedDict[str, torch.Tensor]":
        """CAVIA's context network for `num_context` context parameters: a FiLM generator on block `layer` (1-based;
        default 3, the reference's `context_in`)."""
        block = 3 if layer is None else int(layer)
        if not 1 <= block <= self.blocks:
            raise ValueError(f"the conv-4 has blocks 1 to {self.blocks}, not {block}")
        return OrderedDict((k, v.to(device)) for k, v in
                           ctx.film_init(self.filters, num_context, block, generator, dtype or torch.float32).items())

    def param_shapes(self) -> "OrderedDict[str, tuple[int, ...]]":
        shapes = OrderedDict()
        c_in = self.in_channels
        for k in range(self.blocks):
            conv, bn = self._names(k)
            shapes[f"{conv}.weight"] = (self.filters, c_in, self.kernel, self.kernel)
            shapes[f"{conv}.bias"] = (self.filters,)
            if self.bn_scale:
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
            bn = nn.BatchNorm2d(self.filters, eps=self.eps, affine=self.bn_scale, track_running_stats=False)
            if not self.bn_scale:  # cbfinn: a shift without a scale (F.batch_norm takes weight None, bias given)
                bn.bias = nn.Parameter(torch.zeros(self.filters))
            layers += [nn.Conv2d(c_in, self.filters, self.kernel, stride=self._stride, padding=1), bn, nn.ReLU()]
            if self.downsample == "maxpool":
                layers.append(nn.MaxPool2d(2))
            c_in = self.filters
        if self.head_pool == "mean":
            layers.append(nn.AdaptiveAvgPool2d(1))
        layers += [nn.Flatten(), nn.Linear(self.feature_dim, self.ways)]
        return nn.Sequential(*layers)

    # ---------------------------------------------------------------------------------------------------------
    # forward

    def forward(self, params, x: torch.Tensor, norm=None) -> torch.Tensor:
        """params: shared (shapes as param_shapes) or per-task ([B, ...]); x [B, N, C, H, W] -> logits [B, N, ways].

        Batch-norm statistics are computed per task (over that task's N images) in both cases. `norm` (a batch-norm
        mode's statistics, models/batch_norm.py): None, the batch's own; an int S, those of each task's first S
        images (the support set's, the others normalized with them); or per-block (mean, var) pairs (fixed).
        """
        if x.dim() != 5:
            raise ValueError(f"conv4 expects x of shape [tasks, images, C, H, W], got {tuple(x.shape)}")
        # Stride-0 task views that autograd differentiates must keep their per-task gradient (adapt() takes the
        # gradient of the summed task losses with respect to them), so they take the per-task path.
        return self.apply_head(params, self.features(params, x, norm))

    def features(self, params, x: torch.Tensor, norm=None) -> torch.Tensor:
        """The body's output, the head's input [B, N, feature_dim]: the forward pass without the linear head
        (ProtoNets' embedding, Baseline's frozen features, a linear probe). params as `forward`; the head's
        entries are not read, so a dict without them works too. Batch norm as `forward`: per task, with the
        statistics `norm` names (then by `_trunk`, a reference loop over tasks)."""
        if x.dim() != 5:
            raise ValueError(f"conv4 expects x of shape [tasks, images, C, H, W], got {tuple(x.shape)}")
        film = None
        if ctx.has_context(params):  # CAVIA: FiLM per task, on the per-task paths
            params, context = ctx.split(params)
            film = ctx.film(context, x.shape[0])
        if norm is not None:
            return self._trunk(params, x, norm, film=film)
        shapes = self.param_shapes()
        head = set(self.head_names())
        params = OrderedDict((k, v) for k, v in params.items() if k not in head)
        shared = None if film is not None else self.shared_params(
            params, views=not (torch.is_grad_enabled() and any(v.requires_grad for v in params.values())))
        if shared is not None:
            return self._features_shared(shared, x)
        b = x.shape[0]
        params = OrderedDict((k, v if v.dim() == len(shapes[k]) + 1 else v.unsqueeze(0).expand(b, *v.shape))
                             for k, v in params.items())
        strategy = self.per_task_strategy(x.device)
        if strategy == "vmap" and film is None:
            return self._features_vmap(params, x)
        if strategy == "grouped":
            return self._features_grouped(params, x, film)
        return self._features_loop(params, x, film)

    def apply_head(self, params, feats: torch.Tensor) -> torch.Tensor:
        """The linear head on features [B, N, feature_dim] -> logits [B, N, ways]; its parameters shared or
        per task ([B, ...])."""
        weight, bias = (params[k] for k in self.head_names())
        if weight.dim() == 3:
            return torch.baddbmm(bias.unsqueeze(1), feats, weight.transpose(1, 2))
        return F.linear(feats, weight, bias)

    def batch_norm_stats(self, params, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch-norm layer's per-task, per-channel batch statistics on x: [(mean [B, F], biased var [B, F]),
        ...] in block order (what the "running" mode pools over training tasks)."""
        stats: list = []
        self._trunk(params, x, None, collect=stats)
        return [(torch.stack([m for m, _ in block]), torch.stack([v for _, v in block])) for block in stats]

    def _trunk(self, params, x: torch.Tensor, norm=None, collect: list | None = None, film=None) -> torch.Tensor:
        """The four blocks, one task at a time, then the head's input [B, N, feature_dim]; batch norm per task with
        the statistics `norm` names (forward). collect: a list that receives, per block, each task's (mean, var).
        film: CAVIA's FiLM (block, gamma, beta), or None."""
        if film is None and ctx.has_context(params):
            params, context = ctx.split(params)
            film = ctx.film(context, x.shape[0])
        shapes = self.param_shapes()
        b = x.shape[0]
        if isinstance(norm, int) and not 0 < norm <= x.shape[1]:
            raise ValueError(f"support statistics from the first {norm} of {x.shape[1]} images per task")
        if collect is not None:
            collect.extend([] for _ in range(self.blocks))
        feats = []
        for i in range(b):
            p = {k: (v[i] if v.dim() == len(shapes[k]) + 1 else v) for k, v in params.items()}
            h = x[i]
            for k in range(self.blocks):
                conv, bn = self._names(k)
                h = F.conv2d(h, p[f"{conv}.weight"], p[f"{conv}.bias"], stride=self._stride, padding=1)
                if norm is None or isinstance(norm, int):
                    ref = h if norm is None else h[:norm]
                    var, mean = torch.var_mean(ref, dim=(0, 2, 3), correction=0)
                else:
                    mean, var = norm[k]
                    if mean.dim() == 2:
                        mean, var = mean[i], var[i]
                if collect is not None:
                    collect[k].append((mean, var))
                scale = torch.rsqrt(var + self.eps)
                gamma = p.get(f"{bn}.weight")
                if gamma is not None:
                    scale = gamma * scale
                shift = p[f"{bn}.bias"] - mean * scale
                h = F.relu(_film(torch.addcmul(shift.view(1, -1, 1, 1), h, scale.view(1, -1, 1, 1)), film, k, i))
                if self.downsample == "maxpool":
                    h = F.max_pool2d(h, 2)
            feats.append(self._head_input(h))
        return torch.stack(feats)

    def per_task_strategy(self, device: torch.device | str) -> str:
        """How per-task parameters run: a loop of per-task convolutions on CPU, one grouped convolution elsewhere."""
        if self.batched != "auto":
            return self.batched
        return "loop" if torch.device(device).type == "cpu" else "grouped"

    def shared_params(self, params, views: bool = True) -> "OrderedDict[str, torch.Tensor] | None":
        """The shared tensors when every parameter is shared: no task dimension, or (if `views`) a stride-0
        per-task view of one tensor (what `expand_params` makes). None when some parameter has per-task values."""
        shapes = self.param_shapes()
        out = OrderedDict()
        for k, v in params.items():
            if v.dim() == len(shapes[k]):
                out[k] = v
            elif views and v.dim() == len(shapes[k]) + 1 and v.stride(0) == 0:
                out[k] = v.select(0, 0)
            else:
                return None
        return out

    # -- shared parameters: tasks folded into one channels-last batch ------------------------------------------

    def _block_shared(self, k: int, params, h: torch.Tensor, b: int, keep: bool):
        """Block k on a folded batch h [B*N, C, H, W] (channels-last): returns the next h and, if keep, what
        the explicit backward needs (centred pre-activations zc [B, M, F], rstd [B, 1, F], gamma * rstd,
        relu output [B, M, F]). Few full-size ops: each one is recorded, and differentiated again by MAML."""
        conv, bn = self._names(k)
        weight = params[f"{conv}.weight"]
        f = weight.shape[0]
        cols = None
        if k == 0 and self.downsample == "stride":
            # the images (few channels): one matmul of im2col patches, whose result is already [B*N*Ho*Wo, F]
            # (a convolution would return NCHW for one input channel, and every later op would transpose it)
            cols = self._im2col(h)
            ho, wo = cols.shape[1:3]
            zt = torch.addmm(params[f"{conv}.bias"], cols.reshape(-1, cols.shape[-1]),
                             weight.permute(2, 3, 1, 0).reshape(-1, f)).view(b, -1, f)
        else:
            z = F.conv2d(h, weight, params[f"{conv}.bias"], stride=self._stride, padding=1)
            ho, wo = z.shape[2:]
            zt = z.permute(0, 2, 3, 1).reshape(b, -1, f)  # [B, M = N*Ho*Wo, F], a view in channels-last
        zc = zt - zt.mean(1, keepdim=True)
        rstd = torch.rsqrt((zc * zc).mean(1, keepdim=True) + self.eps)
        gamma = params.get(f"{bn}.weight")
        scale = rstd if gamma is None else gamma * rstd  # [B, 1, F]
        a = torch.relu(torch.addcmul(params[f"{bn}.bias"], zc, scale))
        cache = (zc, rstd, scale, a, cols) if keep else None
        h = a.view(-1, ho, wo, f).permute(0, 3, 1, 2)  # logical NCHW, channels-last in memory
        if self.downsample == "maxpool":
            h = F.max_pool2d(h, 2)
        return h, cache

    def _features_shared(self, params, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        h = x.reshape(b * n, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
        for k in range(self.blocks):
            h, _ = self._block_shared(k, params, h, b, keep=False)
        return self._head_input(h).reshape(b, n, -1)

    def batched_loss_grad(self, params, x: torch.Tensor, y: torch.Tensor, loss_fn):
        """Per-task cross-entropy losses [B] and gradients [B, ...] at *shared* parameters, by explicit
        backpropagation in differentiable ops (so MAML's second-order term is plain autograd of them).

        None (the caller then uses autograd) unless: the parameters are shared, the loss is cross-entropy,
        downsampling is strided, and x is on the CPU (the case this path was measured faster on).
        """
        from ..tasks.losses import cross_entropy_per_task

        if (loss_fn is not cross_entropy_per_task or self.downsample != "stride" or x.device.type != "cpu"
                or self.convention != "lab" or ctx.has_context(params)):
            return None
        shared = self.shared_params(params)
        if shared is None:
            return None
        losses, grads = self._shared_loss_grad(shared, x, y)
        return losses, [grads[k] for k in params]

    def _explicit_supported(self, params, loss_fn, x: torch.Tensor, steps: int) -> bool:
        """Whether conv4_meta's autograd-free passes apply: the lab convention, `conv4_meta.supports` (one inner
        step, cross-entropy, strided downsampling, CPU) and shared theta (no task dimension)."""
        from . import conv4_meta

        return (self.convention == "lab" and not ctx.has_context(params)
                and conv4_meta.supports(self, loss_fn, x, steps)
                and all(v.dim() == len(s) for v, s in zip(params.values(), self.param_shapes().values())))

    def explicit_meta_gradient(self, params, batch, loss_fn, steps: int, lr: float, first_order: bool,
                               names=None):
        """MAML/FOMAML meta-gradient without autograd (`conv4_meta`), or None where unsupported (the
        algorithms then differentiate through `adapt`). Supported: one inner step, cross-entropy, strided
        downsampling, CPU, shared theta. names: the inner step adapts only these (ANIL, BOIL; None: all)."""
        from . import conv4_meta

        if not self._explicit_supported(params, loss_fn, batch.x_support, steps):
            return None
        return conv4_meta.meta_gradient(self, params, batch.x_support, batch.y_support, batch.x_query,
                                        batch.y_query, lr, first_order,
                                        None if names is None else frozenset(names))

    def mean_loss_grad(self, params, x: torch.Tensor, y: torch.Tensor, loss_fn):
        """The mean over tasks of the per-task losses and its gradient (a list in params' order) at shared
        parameters, without autograd (`conv4_meta.mean_loss_grad`): the pretrained baseline's step on all tasks'
        data. None where unsupported (the caller then uses autograd): as `explicit_meta_gradient`."""
        from . import conv4_meta

        if not self._explicit_supported(params, loss_fn, x, 1):
            return None
        return conv4_meta.mean_loss_grad(self, params, x, y)

    def adapted_logits(self, params, batch, loss_fn, steps: int, lr: float):
        """Support logits at params, support losses and query logits after `steps` inner SGD steps of size lr,
        without autograd (`conv4_meta.adapted_logits`), or None where unsupported (as `explicit_meta_gradient`)."""
        from . import conv4_meta

        if not self._explicit_supported(params, loss_fn, batch.x_support, steps):
            return None
        return conv4_meta.adapted_logits(self, params, batch.x_support, batch.y_support, batch.x_query, lr)

    def _shared_loss_grad(self, params, x: torch.Tensor, y: torch.Tensor):
        b, n = x.shape[:2]
        s = self._stride
        h = x.reshape(b * n, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
        inputs, caches = [], []
        for k in range(self.blocks):
            inputs.append(h)
            h, cache = self._block_shared(k, params, h, b, keep=True)
            caches.append(cache)
        head = self._head
        w_head = params[f"{head}.weight"]
        feats = h.reshape(b, n, -1)  # NCHW flattening order, as nn.Flatten
        logits = F.linear(feats, w_head, params[f"{head}.bias"])
        logp = torch.log_softmax(logits, -1)
        losses = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        dlogits = (logp.exp() - F.one_hot(y, logits.shape[-1]).to(logp.dtype)) * (1.0 / n)
        grads = {f"{head}.weight": torch.bmm(dlogits.transpose(1, 2), feats), f"{head}.bias": dlogits.sum(1)}
        da = torch.matmul(dlogits, w_head)  # [B, N, F*h*w] in NCHW order
        for k in reversed(range(self.blocks)):
            conv, bn = self._names(k)
            zc, rstd, scale, a, cols = caches[k]
            f = a.shape[-1]
            h_in = inputs[k]
            ho, wo = self._out_size(h_in.shape[2:])
            m = a.shape[1]
            if k == self.blocks - 1:
                da = da.reshape(b * n, f, ho, wo)
            dat = da.permute(0, 2, 3, 1).reshape(b, m, f)  # [B, M, F]
            dy = torch.ops.aten.threshold_backward(dat, a, 0.0)  # relu
            dbeta = dy.sum(1, keepdim=True)
            dgamma = (dy * zc).sum(1, keepdim=True) * rstd  # sum(dy * xhat), xhat = zc * rstd
            # batch-norm backward per task: dz = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), in two ops
            dz = torch.addcmul(torch.addcmul(scale * dbeta * (-1.0 / m), zc, scale * rstd * dgamma * (-1.0 / m)),
                               dy, scale)
            grads[f"{bn}.weight"] = dgamma.squeeze(1)
            grads[f"{bn}.bias"] = dbeta.squeeze(1)
            grads[f"{conv}.bias"] = dz.new_zeros(b, f)  # exactly zero: batch norm removes a per-channel shift
            dz4 = dz.view(b * n, ho, wo, f).permute(0, 3, 1, 2)
            weight = params[f"{conv}.weight"]
            grads[f"{conv}.weight"] = self._per_task_weight_grad(h_in, dz4, weight, b, cols)
            if k > 0:
                out_pad = tuple(int(i) - ((o - 1) * s + 1) for i, o in zip(h_in.shape[2:], (ho, wo)))
                da = F.conv_transpose2d(dz4, weight, None, stride=s, padding=1, output_padding=out_pad)
        return losses, grads

    def _out_size(self, size) -> tuple[int, int]:
        s = self._stride
        return tuple((int(i) - 1) // s + 1 for i in size)

    def _per_task_weight_grad(self, h_in: torch.Tensor, dz: torch.Tensor, weight: torch.Tensor, b: int,
                              cols: torch.Tensor | None = None) -> torch.Tensor:
        """d loss_i / d weight for every task i: [B, F, C, 3, 3]. h_in [B*N, C, H, W], dz [B*N, F, Ho, Wo];
        cols: h_in's im2col patches when the forward pass made them (the first layer)."""
        s = self._stride
        f, c = weight.shape[:2]
        if cols is not None:  # one batched matmul of the patches
            g = torch.bmm(dz.permute(0, 2, 3, 1).reshape(b, -1, f).transpose(1, 2), cols.reshape(b, -1, 9 * c))
            return g.view(b, f, 3, 3, c).permute(0, 1, 4, 2, 3)  # [B, F, (kh, kw, C)] -> [B, F, C, kh, kw]
        w = weight.detach()  # only its shape matters; keeps autograd from linking the result to it
        n = h_in.shape[0] // b
        grads = [torch.ops.aten.convolution_backward(d, i, w, None, [s, s], [1, 1], [1, 1], False, [0, 0], 1,
                                                     [False, True, False])[1]
                 for d, i in zip(dz.view(b, n, *dz.shape[1:]).unbind(0), h_in.view(b, n, *h_in.shape[1:]).unbind(0))]
        if grads[0].is_contiguous():
            return torch.stack(grads)
        # channels-last weight gradients (mkldnn): stack them in that layout, no transposing copies
        return torch.stack([g.permute(0, 2, 3, 1) for g in grads]).permute(0, 1, 4, 2, 3)

    # -- per-task parameters ------------------------------------------------------------------------------------

    def _im2col(self, h: torch.Tensor) -> torch.Tensor:
        """[B*N, C, H, W] -> patches [B*N, Ho, Wo, 9*C] in (kh, kw, C) order: 9 strided slices, channels last."""
        s = self._stride
        ho, wo = self._out_size(h.shape[2:])
        padded = F.pad(h.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
        return torch.cat([padded[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                          for i in range(3) for j in range(3)], dim=-1)

    def _features_loop(self, params, x: torch.Tensor, film=None) -> torch.Tensor:
        """Per-task parameters, one task at a time (channels-last on CPU); one autograd graph for all.

        The first convolution (few input channels, the images need no gradient) is one batched matmul of
        every task's image patches with its weights, which makes its weight gradient one matmul too."""
        # Split tensors into tasks along their physical (channels-last) layout and permute each part, so that
        # the gradients autograd stacks back together are contiguous blocks, not transposed copies.
        conv0 = self._names(0)[0]
        first_matmul = self.downsample == "stride"  # strided: the patches are ~2x the images, not 9x
        per = {k: (_channels_last_parts(v) if v.dim() == 5 else v.unbind(0)) for k, v in params.items()
               if not (first_matmul and k.startswith(f"{conv0}."))}
        b, n = x.shape[:2]
        if first_matmul:
            w0 = params[f"{conv0}.weight"]  # [B, F, C, 3, 3]
            f0 = w0.shape[1]
            cols = self._im2col(x.reshape(b * n, *x.shape[2:]))  # constant: the images need no gradient
            ho, wo = cols.shape[1:3]
            cols = cols.reshape(b, n * ho * wo, -1)
            w0 = w0.permute(0, 3, 4, 2, 1).reshape(b, -1, f0)  # [B, 9C, F], (kh, kw, C) order
            bias0 = params[f"{conv0}.bias"].unsqueeze(1)
            # batched matmuls over groups of tasks whose outputs stay under ~16 MB: larger blocks come from
            # mmap, and page faults on every fresh block cost more than the matmul
            group = max(1, (16 << 20) // max(1, n * ho * wo * f0 * x.element_size()))
            inputs = [part.permute(0, 3, 1, 2) for lo in range(0, b, group)  # [N, F, Ho, Wo], channels-last
                      for part in torch.baddbmm(bias0[lo:lo + group], cols[lo:lo + group], w0[lo:lo + group])
                      .view(-1, n, ho, wo, f0).unbind(0)]
        else:
            inputs = [h.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else h
                      for h in x.unbind(0)]
        feats = []
        for i in range(b):
            h = inputs[i]
            for k in range(self.blocks):
                conv, bn = self._names(k)
                if k > 0 or not first_matmul:
                    h = F.conv2d(h, per[f"{conv}.weight"][i], per[f"{conv}.bias"][i], stride=self._stride,
                                 padding=1)
                gamma = per.get(f"{bn}.weight")
                beta = per[f"{bn}.bias"][i]
                h = F.batch_norm(h, None, None, _ones_like(beta) if gamma is None else gamma[i], beta,
                                 training=True, eps=self.eps)
                h = F.relu(_film(h, film, k, i))
                if self.downsample == "maxpool":
                    h = F.max_pool2d(h, 2)
            feats.append(self._head_input(h))
        return torch.stack(feats)

    def _forward_folded(self, params, x: torch.Tensor) -> torch.Tensor:
        """Shared parameters, tasks folded into the batch; batch-norm statistics per task (reference path)."""
        return self.apply_head(params, self._features_folded(params, x))

    def _features_folded(self, params, x: torch.Tensor, film=None) -> torch.Tensor:
        b, n = x.shape[:2]
        h = x.reshape(b * n, *x.shape[2:])
        for k in range(self.blocks):
            conv, bn = self._names(k)
            h = F.conv2d(h, params[f"{conv}.weight"], params[f"{conv}.bias"], stride=self._stride, padding=1)
            h5 = h.view(b, n, *h.shape[1:])
            var, mean = torch.var_mean(h5, dim=(1, 3, 4), correction=0, keepdim=True)
            scale = torch.rsqrt(var + self.eps)
            if f"{bn}.weight" in params:
                scale = params[f"{bn}.weight"].view(1, 1, -1, 1, 1) * scale
            h5 = torch.addcmul(params[f"{bn}.bias"].view(1, 1, -1, 1, 1) - mean * scale, h5, scale)
            if film is not None and film[0] == k + 1:
                h5 = torch.addcmul(film[2].view(b, 1, -1, 1, 1), h5, film[1].view(b, 1, -1, 1, 1))
            h = F.relu(h5.view_as(h))
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        return self._head_input(h).reshape(b, n, -1)

    def _features_grouped(self, params, x: torch.Tensor, film=None) -> torch.Tensor:
        """Per-task parameters: tasks are channel groups of one [N, B*C, H, W] batch."""
        b, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, b * x.shape[2], *x.shape[3:])
        for k in range(self.blocks):
            conv, bn = self._names(k)
            w = params[f"{conv}.weight"]
            h = F.conv2d(h, w.reshape(b * w.shape[1], *w.shape[2:]), params[f"{conv}.bias"].reshape(-1),
                         stride=self._stride, padding=1, groups=b)
            gamma = params.get(f"{bn}.weight")
            h = F.batch_norm(h, None, None, _ones_like(params[f"{bn}.bias"].reshape(-1)) if gamma is None
                             else gamma.reshape(-1),
                             params[f"{bn}.bias"].reshape(-1), training=True, eps=self.eps)
            h = F.relu(_film(h, film, k))
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        return self._head_input(h).reshape(n, b, -1).transpose(0, 1)  # [B, N, F*h*w] (or [B, N, F])

    def _features_vmap(self, params, x: torch.Tensor) -> torch.Tensor:
        """Per-task parameters with torch.func.vmap over the task dimension (kept for comparison)."""

        def one(p, xi):
            return self._features_folded(p, xi.unsqueeze(0)).squeeze(0)

        return torch.func.vmap(one)(dict(params), x)
