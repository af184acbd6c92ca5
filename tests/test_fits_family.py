"""Which initializations the comparison views (Adaptation, Per layer) keep for a family's held-out tasks."""

from types import SimpleNamespace

from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.tasks.navigation import NavigationFamily
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.lab.initializations import fits_family, heldout_family


def test_each_model_kind_fits_its_own_families_only():
    mlp, conv, policy = MLP((1, 8, 1)), Conv4(in_channels=1, image_size=28, ways=5), GaussianMLPPolicy((2, 8, 2))
    images = SimpleNamespace(loss="cross_entropy")
    sinusoid, navigation = SinusoidFamily(), NavigationFamily()
    assert [fits_family(m, sinusoid) for m in (mlp, conv, policy)] == [True, False, False]
    assert [fits_family(m, images) for m in (mlp, conv)] == [False, True]
    assert [fits_family(m, navigation) for m in (mlp, conv, policy)] == [False, False, True]


def test_heldout_family_is_the_run_s_or_sinusoids():
    family, queries = heldout_family(None, 50)
    assert isinstance(family, SinusoidFamily) and queries == 50
    run = SimpleNamespace(eval_family="held-out images", loss="cross_entropy", queries=15)
    assert heldout_family(run, 50) == ("held-out images", 15)
    assert heldout_family(SimpleNamespace(eval_family="nav", loss="policy_gradient", queries=None), 100) == ("nav", 100)
