"""ANIL, "almost no inner loop" (Raghu, Raghu, Bengio, Vinyals 2020): MAML whose inner loop adapts the head only.

    theta'_i = (body, head - alpha * grad_head L_support_i(body, head))
    (body, head) <- Adam step on mean_i L_query_i(theta'_i)           (the body still learns, in the outer loop)

Following the reference code (learn2learn's examples/vision/anil_fc100.py, which wraps only the head in
`l2l.algorithms.MAML` with its default `first_order=False`; the paper's text says ANIL keeps MAML's other
settings): the meta-gradient is exact second order through the head's inner steps, with MAML's step size and
number of steps for each task family (the FC100 example's 0.1 and 5 steps are that data set's, not ANIL's). At test
time it fine-tunes the head only, as it was trained to. The rule itself (`adapts = "head"`) is the algorithm
interface's, so the views, evaluation and exports need nothing of their own.
"""

from __future__ import annotations

from .maml import MAML


class ANIL(MAML):
    """Raghu et al. 2020: the inner loop adapts the head (the model's `head_names`), the body is reused."""

    name = "anil"
    label = "ANIL"
    color = "#882255"  # Tol's wine: apart from the Okabe-Ito hues of the other built-ins
    description = "ANIL: MAML whose inner loop adapts the head only, second order (Raghu et al. 2020)"
    adapts = "head"

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        return f"SGD on the head only (ANIL), inner lr {config.inner_lr:g}"
