"""Context inputs of a functional model (CAVIA, Zintgraf et al. 2019): the entries of a parameter dict, besides
theta, that the MLP and the conv-4 read when present.

- `context` ([k] or per task [B, k]): the task's context vector, zero at the start of every task and the only thing
  CAVIA's inner loop adapts.
- the *context network*, shared by all tasks and meta-trained with theta (CAVIA exports it beside theta):
  `context.0.weight` [hidden, k] for the MLP, the columns of its first layer that see the context (the reference
  concatenates the context to the input, so layer 0 is `Linear(inputs + k, hidden)`: these are its last k
  columns); `context.film<b>.weight` [2F, k] and `context.film<b>.bias` [2F] for the conv-4, a linear FiLM
  generator on block b (1-based): that block's batch-normalized map h becomes gamma * h + beta before its ReLU,
  (gamma, beta) = the generator's output split in two halves (the reference's classification model).

A parameter dict without these entries is theta alone, and the models compute what they always did.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch

CONTEXT = "context"
PREFIX = "context."  # every name of the context network starts with it (and CONTEXT is no theta name)
MLP_WEIGHT = "context.0.weight"
_FILM = re.compile(r"^context\.film(\d+)\.(weight|bias)$")


def is_context(name: str) -> bool:
    """Whether `name` is a context entry (the context vector or the context network), not part of theta."""
    return name == CONTEXT or name.startswith(PREFIX)


def has_context(params) -> bool:
    return CONTEXT in params


def split(params) -> "tuple[OrderedDict[str, torch.Tensor], OrderedDict[str, torch.Tensor]]":
    """(theta, context entries) of a parameter dict."""
    theta, context = OrderedDict(), OrderedDict()
    for k, v in params.items():
        (context if is_context(k) else theta)[k] = v
    return theta, context


def film_names(block: int) -> tuple[str, str]:
    return f"{PREFIX}film{int(block)}.weight", f"{PREFIX}film{int(block)}.bias"


def film_block(context) -> int | None:
    """The conv-4 block (1-based) a FiLM generator in `context` modulates, None without one."""
    for k in context:
        m = _FILM.match(k)
        if m:
            return int(m.group(1))
    return None


def per_task(context_vector: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """The context as [B, k] (a shared [k] context broadcast to every task)."""
    return context_vector if context_vector.dim() == 2 else context_vector.unsqueeze(0).expand(num_tasks, -1)


def linear(c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """c [B, k] through weights [out, k] (shared) or [B, out, k] (per task), plus a bias [out] / [B, out]: [B, out]."""
    if weight.dim() == 3:
        out = torch.bmm(weight, c.unsqueeze(-1)).squeeze(-1)
    else:
        out = c @ weight.t()
    return out if bias is None else out + bias


def film(context, num_tasks: int) -> "tuple[int, torch.Tensor, torch.Tensor] | None":
    """(block, gamma [B, F], beta [B, F]) of a conv-4's FiLM layer, None when `context` has none."""
    block = film_block(context)
    if block is None or CONTEXT not in context:
        return None
    w, b = (context[n] for n in film_names(block))
    out = linear(per_task(context[CONTEXT], num_tasks), w, b)
    gamma, beta = out.chunk(2, dim=-1)
    return block, gamma, beta


def uniform(shape, bound: float, generator: torch.Generator, dtype) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound


def mlp_init(sizes, num_context: int, generator: torch.Generator, dtype) -> "OrderedDict[str, torch.Tensor]":
    """The context columns of layer 0, as the reference's `nn.Linear(inputs + k, hidden)` draws them:
    U(+-1/sqrt(inputs + k))."""
    return OrderedDict([(MLP_WEIGHT, uniform((sizes[1], num_context), 1.0 / math.sqrt(sizes[0] + num_context),
                                             generator, dtype))])


def film_init(filters: int, num_context: int, block: int, generator: torch.Generator, dtype
              ) -> "OrderedDict[str, torch.Tensor]":
    """A FiLM generator `Linear(k, 2F)` as the reference's classification model initializes it (its default
    'kaiming': weights kaiming_uniform_ with the linear gain, U(+-sqrt(3 / k)); the bias nn.Linear's default,
    U(+-1/sqrt(k)))."""
    w, b = film_names(block)
    return OrderedDict([(w, uniform((2 * filters, num_context), math.sqrt(3.0 / num_context), generator, dtype)),
                        (b, uniform((2 * filters,), 1.0 / math.sqrt(num_context), generator, dtype))])
