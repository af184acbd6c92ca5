"""The cost meter in the app's status area: each algorithm's time and memory per meta-step while it trains, the
expected cost of more inner steps in the tooltip, cleared when a new run starts."""


def test_the_status_area_shows_the_cost_meter(window, qtbot, small_config):
    window.panel.set_config(small_config(iterations=1_000_000, algorithms=("maml", "fomaml")))
    window.act_start.trigger()
    # measured between steps within the meter's budget: "estimating…" until every algorithm's numbers are in
    qtbot.waitUntil(lambda: "expected with more inner steps" in window.cost_label.toolTip()
                    and "estimating" not in window.cost_label.toolTip() + window.cost_label.text(), timeout=90000)
    text = window.cost_label.text()
    assert text.startswith("MAML ") and " · FOMAML " in text and "B" in text  # "MAML 1.2 ms, 931 KB · FOMAML ..."
    tip = window.cost_label.toolTip()
    assert "per meta-step at 1 inner step" in tip and "CPU tensors" in tip and "5: " in tip
    assert window.last_progress.cost["maml"]["step_bytes"] > 0 and window.last_progress.cost["fomaml"]["step_s"] > 0
    with qtbot.waitSignal(window.controller.finished, timeout=10000):
        window.act_stop.trigger()
    window.panel.set_config(small_config(iterations=1_000_000))
    window.act_start.trigger()
    assert window.cost_label.text() == "" and window.cost_label.toolTip() == ""
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.act_stop.trigger()


def test_what_runs_before_the_first_iteration_is_named_in_the_progress_area(window, qtbot, small_config):
    from maml_lab.lab.messages import Preparing

    named = []  # (what the worker said, the toolbar's progress text once the window handled it)
    window.controller.loading.connect(lambda info: named.append((info, window.progress_label.text())))
    window.panel.set_config(small_config(iterations=5))
    with qtbot.waitSignal(window.controller.finished, timeout=30000):
        window.act_start.trigger()
    stages = [(info.what, text) for info, text in named if isinstance(info, Preparing)]
    assert stages == [("building the model", "Building the model…"),
                      ("first meta-iteration", "First meta-iteration…")]
    assert window.progress_label.text().startswith("5 / 5 iterations")
