"""The test-time rule of Chen et al. 2019's baselines: the body frozen, a new head fit on the support set's features.

As the reference code does it (wyharveychen/CloserLookFewShot, methods/baselinefinetune.py): a fresh head, a linear
layer (`nn.Linear`, Baseline and the linear probe) or a cosine one (`backbone.distLinear`, Baseline++), trained for
100 epochs over the support set's features in shuffled mini-batches of 4 with cross-entropy and
`torch.optim.SGD(lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)`; the queries are then classified by it.

Here every task of a batch is fit at once, with the gradients written out (a linear layer's and a weight-normalized
cosine layer's are short), and the fit yields the head after each epoch: a "step" of this rule is one epoch over the
support set, so 100 steps are the reference's fit and step 0 is the fresh head. The random numbers (the fresh head,
each epoch's order of the support examples) come from a generator seeded with HEAD_FIT_SEED, so a fit repeats
exactly; tests/core/test_baseline.py checks it against `nn.Linear` / weight-normed `distLinear` with `optim.SGD`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator

import torch

HEAD_FIT_SEED = 0  # the generator of the fresh head and of the epochs' orders (the tasks have their own seed)
BATCH_SIZE = 4  # the reference's mini-batch over the support set
MOMENTUM, DAMPENING, WEIGHT_DECAY = 0.9, 0.9, 1e-3  # its SGD, besides the step size (the config's inner_lr, 0.01)
COSINE_EPS = 1e-5  # distLinear: x / (|x| + 1e-5)
HEADS = ("linear", "cosine")


def cosine_scale(classes: int) -> float:
    """distLinear's fixed scale of the cosine: 2 for heads of up to 200 classes, 10 above (Omniglot's >1000)."""
    return 2.0 if classes <= 200 else 10.0


def rule_text(kind: str, lr: float) -> str:
    """The rule in words, for cards and tables ('SGD' first: the card reads the optimizer from it)."""
    return (f"SGD (lr {lr:g}, momentum {MOMENTUM:g}, dampening {DAMPENING:g}, weight decay {WEIGHT_DECAY:g}, batches "
            f"of {BATCH_SIZE}) fitting a new {kind} head on the frozen body's support features; a step is one epoch")


def normalized(feats: torch.Tensor) -> torch.Tensor:
    """Each feature vector over its norm, as distLinear does it (the norm plus 1e-5)."""
    return feats / (feats.norm(dim=-1, keepdim=True) + COSINE_EPS)


def weight_normed(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """WeightNorm(dim=0)'s weight: each row of v scaled to the length g."""
    return g * v / v.norm(dim=-1, keepdim=True)


def head_logits(kind: str, weight: torch.Tensor, bias: torch.Tensor | None, feats: torch.Tensor) -> torch.Tensor:
    """Logits [B, M, n] of a head on features [B, M, F]: weight [n, F] or per task [B, n, F] (a cosine head's is
    the weight-normed weight, and it has no bias)."""
    if kind == "cosine":
        scale = cosine_scale(weight.shape[-2])
        return scale * torch.matmul(normalized(feats), weight.transpose(-1, -2))
    out = torch.matmul(feats, weight.transpose(-1, -2))
    return out if bias is None else out + bias.unsqueeze(-2)


def _draw_head(kind: str, tasks: int, ways: int, dim: int, generator: torch.Generator, like: torch.Tensor):
    """A fresh head per task as nn.Linear initializes one (kaiming_uniform with a = sqrt(5): U(+-1/sqrt(F)) for the
    weight and the bias); a cosine head is distLinear's bias-free layer under WeightNorm, whose g starts at |v|."""
    bound = 1.0 / math.sqrt(dim)
    w = ((torch.rand(tasks, ways, dim, generator=generator) * 2 - 1) * bound).to(like)
    if kind == "cosine":
        return [w.norm(dim=-1, keepdim=True), w]  # g [B, n, 1], v [B, n, F]
    return [w, ((torch.rand(tasks, ways, generator=generator) * 2 - 1) * bound).to(like)]


def _gradients(kind: str, params: list[torch.Tensor], x: torch.Tensor, onehot: torch.Tensor):
    """The mean cross-entropy's gradients over one mini-batch per task (x [B, m, F], one-hot labels [B, m, n])."""
    m = x.shape[1]
    if kind == "cosine":
        g, v = params
        vnorm = v.norm(dim=-1, keepdim=True)
        unit = v / vnorm
        scale = cosine_scale(onehot.shape[-1])
        xn = normalized(x)
        logits = torch.matmul(xn, (g * unit).transpose(1, 2)).mul_(scale)
        d = torch.softmax(logits, -1).sub_(onehot).div_(m)
        grad_w = torch.matmul(d.transpose(1, 2), xn).mul_(scale)  # dL/dW, W = g v / |v|
        grad_g = (grad_w * unit).sum(-1, keepdim=True)
        return [grad_g, grad_w.sub_(grad_g * unit).mul_(g / vnorm)]
    w, b = params
    d = torch.softmax(torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)), -1).sub_(onehot).div_(m)
    return [torch.matmul(d.transpose(1, 2), x), d.sum(1)]


def fit_trajectory(kind: str, feats: torch.Tensor, labels: torch.Tensor, ways: int, epochs: int, lr: float,
                   seed: int = HEAD_FIT_SEED) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fit a fresh head per task on support features [B, S, F] with labels [B, S] in 0..ways-1; yields the head
    (weight [B, ways, F], bias [B, ways]) after 0, 1, ..., `epochs` epochs. A cosine head yields its weight-normed
    weight and a zero bias (head_logits reads them as such)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r} (one of {', '.join(HEADS)})")
    if epochs < 0:
        raise ValueError(f"a head fit needs epochs >= 0, got {epochs}")
    feats = feats.detach()
    tasks, size, dim = feats.shape
    generator = torch.Generator().manual_seed(seed)
    params = _draw_head(kind, tasks, ways, dim, generator, feats)
    onehot = torch.nn.functional.one_hot(labels, ways).to(feats)
    buffers: list[torch.Tensor] | None = None

    def head():
        if kind == "cosine":
            return weight_normed(*params), feats.new_zeros(tasks, ways)
        return params[0].clone(), params[1].clone()

    yield head()
    with torch.no_grad():
        for _ in range(epochs):
            order = torch.rand(tasks, size, generator=generator).argsort(dim=1).to(feats.device)
            shuffled = feats.gather(1, order.unsqueeze(-1).expand(-1, -1, dim))
            targets = onehot.gather(1, order.unsqueeze(-1).expand(-1, -1, ways))
            for start in range(0, size, BATCH_SIZE):
                grads = _gradients(kind, params, shuffled[:, start:start + BATCH_SIZE],
                                   targets[:, start:start + BATCH_SIZE])
                # torch.optim.SGD: d = grad + wd p; buf = d the first time, else momentum buf + (1 - dampening) d
                torch._foreach_add_(grads, params, alpha=WEIGHT_DECAY)
                if buffers is None:
                    buffers = grads
                else:
                    torch._foreach_mul_(buffers, MOMENTUM)
                    torch._foreach_add_(buffers, grads, alpha=1 - DAMPENING)
                torch._foreach_add_(params, buffers, alpha=-lr)
            yield head()


# ---------------------------------------------------------------------------------------------------------------
# the rule on a model: its body's features, a head in its head's place

_frozen = threading.local()  # the body a trajectory in progress yields, and the last query features through it


def body_of(model, params) -> "OrderedDict[str, torch.Tensor]":
    head = set(model.head_names(params))
    return OrderedDict((k, v) for k, v in params.items() if k not in head)


def features(model, params, x: torch.Tensor) -> torch.Tensor:
    """The model's body on x [B, N, ...] -> [B, N, F] (no gradient)."""
    rule = getattr(model, "features", None)
    if rule is None:
        raise ValueError(f"a head fit needs the model's features (the body without its head); "
                         f"{type(model).__name__} has none")
    with torch.no_grad():
        return rule(body_of(model, params), x)


def model_trajectory(kind: str, model, params, x_support: torch.Tensor, y_support: torch.Tensor, epochs: int,
                     lr: float) -> Iterator["OrderedDict[str, torch.Tensor]"]:
    """The head fit on a model: each task's parameters [B, ...] after 0..epochs epochs, the body theta's (frozen,
    stride-0 views) and the head the fit's. Queries are then classified by `predict`."""
    weight_name, bias_name = model.head_names(params)
    ways = int(params[weight_name].shape[-2])
    tasks = x_support.shape[0]
    body = OrderedDict((k, v.detach().unsqueeze(0).expand(tasks, *v.shape)) for k, v in body_of(model, params).items()
                       ) if params[weight_name].dim() == 2 else OrderedDict(
        (k, v.detach()) for k, v in body_of(model, params).items())
    feats = features(model, body, x_support)
    previous = getattr(_frozen, "state", None)
    _frozen.state = [model, tuple(body.values()), None, None]
    try:
        for weight, bias in fit_trajectory(kind, feats, y_support, ways, epochs, lr):
            out = OrderedDict(body)
            out[weight_name], out[bias_name] = weight, bias
            yield OrderedDict((k, out[k]) for k in params)
    finally:
        _frozen.state = previous


def query_features(model, params, x: torch.Tensor) -> torch.Tensor:
    """features(model, params, x), computed once per trajectory in progress: its every epoch classifies the same
    queries through the same frozen body (the evaluation and the views predict after each step). Only for the
    model the trajectory runs on: a model wrapped for another batch-norm mode (models/batch_norm.py) computes anew."""
    state = getattr(_frozen, "state", None)
    body = tuple(body_of(model, params).values())
    mine = (state is not None and model is state[0] and len(body) == len(state[1])
            and all(a is b for a, b in zip(body, state[1])))
    if mine and state[2] is x:
        return state[3]
    feats = features(model, params, x)
    if mine:
        state[2], state[3] = x, feats
    return feats


def model_predict(kind: str, model, params, x_query: torch.Tensor) -> torch.Tensor:
    """Query logits [B, Q, n] of a model whose head is a fit head (linear, or a cosine head's weight-normed weight)."""
    weight_name, bias_name = model.head_names(params)
    feats = query_features(model, params, x_query)
    return head_logits(kind, params[weight_name], params[bias_name] if kind == "linear" else None, feats)
