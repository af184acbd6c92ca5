"""A `gymnasium.Env` for one 2-D navigation goal, on the engine's own step function, so the environment can be
checked with the tools users know (`gymnasium.utils.env_checker.check_env`, any gymnasium agent).

gymnasium is optional (the package's extra: `pip install 'maml-lab[gym]'`, or `pip install gymnasium`); without it,
creating the environment raises ImportError saying so. The action is the policy's normalized action (velocity =
clip(0.1 * a, -0.1, 0.1) per coordinate), the observation the position, the reward minus the distance to the goal;
`terminated` when within the goal tolerance in both coordinates, `truncated` at the horizon.
"""

from __future__ import annotations

import numpy as np
import torch

from .navigation import NavigationFamily

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError:  # optional dependency
    gym = None
    spaces = None


class NavigationEnv(gym.Env if gym is not None else object):
    """One goal of 2-D navigation as a gymnasium environment (float64 observations)."""

    metadata = {"render_modes": []}

    def __init__(self, goal=(0.25, -0.25), family: NavigationFamily | None = None):
        if gym is None:
            raise ImportError("the gymnasium adapter needs gymnasium >= 0.29: pip install 'maml-lab[gym]' "
                              "(or pip install gymnasium)")
        self.family = family or NavigationFamily()
        goal = np.asarray(goal, dtype=np.float64).reshape(-1)
        if goal.shape != (2,) or not np.isfinite(goal).all():
            raise ValueError(f"a goal is two finite numbers, got {goal.tolist()}")
        self.goal = goal
        self.observation_space = spaces.Box(low=-np.inf, high=np.inf, shape=(2,), dtype=np.float64)
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float64)
        self._pos = np.zeros(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "goal" in options:
            self.goal = np.asarray(options["goal"], dtype=np.float64).reshape(2)
        self._pos = np.zeros(2)
        self._t = 0
        return self._pos.copy(), {"goal": self.goal.copy()}

    def step(self, action):
        action = torch.as_tensor(np.asarray(action, dtype=np.float64).reshape(2))
        new, reward, done = self.family.step(torch.as_tensor(self._pos), action, torch.as_tensor(self.goal))
        self._pos = new.numpy().copy()
        self._t += 1
        truncated = self._t >= self.family.horizon and not bool(done)
        return self._pos.copy(), float(reward), bool(done), truncated, {"goal": self.goal.copy()}
