"""Reinforcement learning for the meta-learning engine: tasks whose data are sampled from the parameters being
adapted (objective.py), a Gaussian MLP policy (policy.py) and the REINFORCE estimator with rllab's linear feature
baseline (pg.py). The first such family is 2-D navigation (core/tasks/navigation.py)."""
