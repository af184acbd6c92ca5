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


def test_without_a_run_the_heldout_tasks_are_those_the_initializations_were_trained_on():
    narrow = SimpleNamespace(metadata={"task": {"name": "sinusoid", "amplitude": [1.0, 2.0]}})
    unknown = SimpleNamespace(metadata={"task": {"name": "custom"}})
    images = SimpleNamespace(metadata={"task": {"name": "images"}})  # loads data: not built for a fallback
    family, queries = heldout_family(None, 20, [unknown, images, SimpleNamespace(metadata={}), narrow])
    assert isinstance(family, SinusoidFamily) and family.amplitude == (1.0, 2.0) and queries == 20
    family, _ = heldout_family(None, 20, [unknown, images])
    assert family == SinusoidFamily()


def _init(key, source="trained", model=None):
    from maml_lab.lab.initializations import Initialization

    return Initialization(key, key, key.upper(), model or MLP((1, 8, 1)), {}, 0.01, source)


def test_comparison_views_keep_trained_models_and_imported_mlps():
    from maml_lab.lab.initializations import compared

    conv = Conv4(in_channels=1, image_size=28, ways=5)
    assert compared(_init("maml")) and compared(_init("maml", model=conv))  # trained: whatever the model
    assert compared(_init("file:a", "imported")) and not compared(_init("file:b", "imported", conv))
    assert not compared(_init("checkpoint", "checkpoint"))  # the Paths view's preview is the playground's


def test_follow_store_puts_what_the_view_keeps_and_drops_the_rest():
    from maml_lab.lab.initializations import follow_store

    inits = {}
    conv = Conv4(in_channels=1, image_size=28, ways=5)
    assert follow_store(inits, [_init("maml"), _init("checkpoint", "checkpoint")], [])
    assert list(inits) == ["maml"]
    newer = _init("maml")
    assert follow_store(inits, [newer, _init("file:x", "imported")], [])
    assert inits["maml"] is newer and list(inits) == ["maml", "file:x"]
    assert follow_store(inits, [_init("file:x", "imported", conv)], [])  # the key became a conv-4: it leaves
    assert list(inits) == ["maml"]
    assert not follow_store(inits, [_init("checkpoint", "checkpoint")], ["gone"])  # nothing of the view's
    assert follow_store(inits, [], ["maml"]) and inits == {}
    keep_all = {}
    assert follow_store(keep_all, [_init("checkpoint", "checkpoint")], [], keep=lambda init: True)
    assert list(keep_all) == ["checkpoint"]


def test_errors_note_names_each_failed_initialization():
    from maml_lab.lab.jobs import errors_note

    out = SimpleNamespace(errors={}, labels={"maml": "MAML"})
    assert errors_note(out) == ""
    out.errors = {"maml": "NaN loss", "file:x": "shape mismatch"}
    assert errors_note(out) == " · MAML: NaN loss; file:x: shape mismatch"
