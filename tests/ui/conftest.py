"""UI tests run offscreen, with settings in a temporary folder: they never touch the user's settings."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

import maml_lab.ui  # noqa: E402,F401  - installs the PySide6 6.12 / Python 3.11 refcount guard first


@pytest.fixture(scope="session", autouse=True)
def _isolated_app(qapp, tmp_path_factory):
    import torch
    from PySide6.QtCore import QSettings

    from maml_lab.ui.theme import apply_theme

    folder = tmp_path_factory.mktemp("qsettings")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
        QSettings.setPath(QSettings.Format.IniFormat, scope, str(folder))
    qapp.setOrganizationName("MAMLLabTests")
    qapp.setApplicationName("MAMLLabTests")
    apply_theme(qapp)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and leaves a core to the GUI thread
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def settings(tmp_path):
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def small_config():
    """A run that takes well under a second."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    def make(iterations=40, algorithms=("maml", "pretrained"), **algo_overrides):
        return ExperimentConfig(algorithms=[AlgorithmConfig.defaults(a, **algo_overrides) for a in algorithms],
                                iterations=iterations, meta_batch_size=5, val_every=10, val_tasks=10,
                                hidden=[16, 16])

    return make


@pytest.fixture(scope="module")
def trained(qapp, tmp_path_factory, trained_config):
    """One main window that trained the module's `trained_config` fixture (an ExperimentConfig) to the end, shared
    by the module's tests."""
    import numpy as np
    from PySide6.QtCore import QSettings

    from maml_lab.ui.main_window import MainWindow

    settings = QSettings(str(tmp_path_factory.mktemp("trained") / "s.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings, persist=False, rng=np.random.default_rng(0))
    w.resize(1280, 800)
    w.show()
    w.panel.set_config(trained_config)
    assert w.start()
    assert w.wait_for_training(60) == "finished"
    qapp.processEvents()
    yield w
    w.close()


@pytest.fixture
def window(qtbot, settings):
    import numpy as np

    from maml_lab.ui.main_window import MainWindow

    w = MainWindow(settings=settings, persist=False, rng=np.random.default_rng(0))
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _collect_qt_garbage(qapp):
    """After each test (and after qtbot closed its widgets): delete what was scheduled for deletion and collect the
    reference cycles (windows held by the closures they connect) now. Left to the cyclic garbage collector, a
    window's Qt objects would be deleted at a random moment of a later test, which segfaults."""
    yield
    import gc

    from PySide6.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QCoreApplication.processEvents()
    gc.collect()
