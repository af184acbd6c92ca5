"""MAML (Finn, Abbeel, Levine 2017) and its first-order variant FOMAML."""

from __future__ import annotations

import torch

from .base import MetaAlgorithm


class MAML(MetaAlgorithm):
    """Finn et al. 2017: differentiate the query loss through the inner SGD steps (exact second order)."""

    name = "maml"
    label = "MAML"
    color = "#0072B2"  # Okabe-Ito blue: MAML and the pretrained baseline get the two most distinct hues
    description = "MAML, exact second-order meta-gradient through the inner SGD steps (Finn et al. 2017)"
    multi_step_loss = True
    sampled_tasks = True  # meta_gradient handles sampled (RL) batches
    first_order = False
    # image tasks: Adam 3e-3 annealed to 0 over the run (cosine) instead of the paper's constant 1e-3 reaches 95%
    # held-out 5-way 1-shot on small1 in ~550 iterations instead of ~800 (benchmarks/time_to_accuracy.py,
    # docs/image_tasks.md "Time to accuracy"); `--preset paper` restores the paper's. FOMAML, ANIL, BOIL inherit it.
    task_defaults = {"images": {"meta_lr": 3e-3, "meta_lr_schedule": "cosine"}}

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        if self.config.outer_optimizer == "trpo":  # cbfinn/maml_rl's MAMLTRPO (FOMAML: its stop_grad policy)
            if not getattr(batch, "sampled", False):
                raise ValueError("outer-optimizer trpo applies to tasks sampled from the policy (RL), e.g. navigation")
            from ..rl.objective import objective_trpo_step

            return objective_trpo_step(self, params, batch, self.first_order)
        grads, meta_loss, res, query_logits = self.meta_gradient(params, batch, self.first_order)
        pre_loss = res.support_losses[0].mean()
        pre_logits = res.support_pred
        if self.classification and pre_logits is None:
            with torch.no_grad():
                pre_logits = self.model.forward(params, batch.x_support)
        self._apply(params, grads, iteration)
        query = query_logits.detach() if query_logits is not None else None  # None: sampled (RL) tasks
        return self._metrics(pre_loss, meta_loss, pre_logits, batch, query)


class FOMAML(MAML):
    """First-order MAML: the inner gradients are treated as constants (no Hessian-vector products)."""

    name = "fomaml"
    label = "FOMAML"
    color = "#56B4E9"  # Okabe-Ito sky blue
    description = "first-order MAML: the query gradient at the adapted parameters (Finn et al. 2017)"
    first_order = True
