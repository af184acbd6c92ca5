"""The run's model without Qt (lab/run_state.py): events reach their subscribers in order, bound methods are held
weakly, and a new scope drops everything of the run before."""

from __future__ import annotations

import gc
from pathlib import Path

from maml_lab.lab.messages import RunProgress
from maml_lab.lab.run_state import EventEmitter, RunModel, RunState, Scope


class Listener:
    def __init__(self):
        self.events = []

    def on(self, event):
        self.events.append(event)


def test_an_emitter_calls_each_callback_once_and_forgets_a_dead_subscriber():
    emitter = EventEmitter("changed")
    seen = []
    fn = emitter.connect(lambda e: seen.append(("fn", e.value)))
    emitter.connect(fn)  # connected twice: called once
    listener = Listener()
    emitter.connect(listener.on)
    event = emitter(value=3)
    assert event.type == "changed" and event.value == 3
    assert seen == [("fn", 3)] and [e.value for e in listener.events] == [3]
    del listener
    gc.collect()
    assert emitter.callbacks == [fn]  # a bound method does not keep its object alive
    emitter.disconnect(fn)
    emitter(value=4)
    assert seen == [("fn", 3)] and emitter.callbacks == []


def test_a_new_scope_drops_the_earlier_run_and_says_so_first():
    model = RunModel()
    order = []
    for name in model.events.names:
        getattr(model.events, name).connect(lambda e: order.append(e.type))
    model.begin(Scope("sinusoid", ("maml",), "live", Path("runs/a")))
    model.set_state(RunState.RUNNING)
    chunk = {"train": {"maml": {"iteration": [1], "post_loss": [0.5]}}}
    model.add_progress(RunProgress("running", 1, 10, 5.0, 9.0, 1.0, chunk=chunk, cost={"maml": {"step_s": 0.1}}))
    model.set_snapshot(object())
    assert model.running and model.history.algorithms == ["maml"] and model.cost and model.folder == Path("runs/a")
    order.clear()
    model.begin(Scope("navigation"))
    assert order[:3] == ["scope", "folder", "progress"]
    assert model.task == "navigation" and model.algorithms == () and model.opened is None
    assert model.history.algorithms == [] and model.cost == {} and model.snapshot is None and model.progress is None
    assert model.folder is None and model.paths is None
    opened = Scope("sinusoid", ("maml",), "opened", Path("runs/b"))
    model.begin(opened)
    assert model.opened == Path("runs/b") and model.folder == Path("runs/b")


def test_messages_name_their_kind():
    model = RunModel()
    got = []
    model.events.message.connect(lambda e: got.append((e.kind, e.title, e.text, e.ms)))
    model.error("Cannot open run", "it is training")
    model.status("Saved", 5000)
    model.say("clear")
    assert got == [("dialog", "Cannot open run", "it is training", 0), ("status", "", "Saved", 5000),
                   ("clear", "", "", 0)]
    assert RunState.of("nonsense") is RunState.FAILED and RunState.STARTING.busy and not RunState.FINISHED.busy
