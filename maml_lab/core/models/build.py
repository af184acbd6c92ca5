"""Every model kind from the spec an export records (`model` in its metadata): the one place that knows them all,
so the models themselves need not import one another (the navigation policy's mean network is an MLP)."""

from __future__ import annotations


def build_model(spec: dict):
    """A model from its metadata spec (what export writes)."""
    kind = spec.get("kind")
    if kind == "mlp":
        from .mlp import MLP

        return MLP(spec.get("sizes", (1, 40, 40, 1)), spec.get("activation", "relu"))
    if kind == "conv4":
        from .conv4 import Conv4  # image tasks; imported lazily

        return Conv4.from_spec(spec)
    if kind == "gaussian_mlp_policy":
        from ..rl.policy import GaussianMLPPolicy  # reinforcement-learning families (2-D navigation)

        return GaussianMLPPolicy.from_spec(spec)
    raise ValueError(f"unknown model kind {kind!r}")
