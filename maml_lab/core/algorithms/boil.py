"""BOIL, "body only update in inner loop" (Oh, Yoo, Kim, Yun 2021): MAML whose inner loop adapts everything but
the head.

    theta'_i = (body - alpha * grad_body L_support_i(body, head), head)
    (body, head) <- Adam step on mean_i L_query_i(theta'_i)

Following the reference code (jhoon-oh/BOIL main.py): the head's inner step size is 0 (`--classifier-step-size`
0, the body's `--extractor-step-size` as MAML's), the meta-gradient is second order (`--first-order` off), and the
head is still meta-learned by the outer Adam step (freezing it there too is the appendix's `--outer-fix`, off by
default). The step size and number of steps are MAML's for each task family (the reference script's 0.5 and one
step are MAML's there too). At test time it fine-tunes the body only, as it was trained to. The rule itself
(`adapts = "body"`) is the algorithm interface's, so the views, evaluation and exports need nothing of their own.
"""

from __future__ import annotations

from .maml import MAML


class BOIL(MAML):
    """Oh et al. 2021: the inner loop adapts the body (all but the model's `head_names`), the head is held fixed."""

    name = "boil"
    label = "BOIL"
    color = "#999933"  # Tol's olive: apart from the Okabe-Ito hues of the other built-ins
    description = "BOIL: MAML whose inner loop adapts the body only, head fixed there, second order (Oh et al. 2021)"
    adapts = "body"

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        return f"SGD on the body only, head fixed (BOIL), inner lr {config.inner_lr:g}"
