"""Play a slider forward from a checkable button: the Play / Pause control of the playground, the
paths view and the landscape's live adaptation, written once."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QAbstractButton, QAbstractSlider


class SliderPlayer(QObject):
    """While `button` is checked, advance `slider` by `step()` every `interval_ms`; stop at its maximum.

    Pressing play at the end starts again from the minimum.
    """

    def __init__(self, button: QAbstractButton, slider: QAbstractSlider, interval_ms: int,
                 step: Callable[[], int] = lambda: 1, parent: QObject | None = None):
        super().__init__(parent or button)
        self.button, self.slider, self.step = button, slider, step
        self.play_text = button.text()
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._advance)
        button.setCheckable(True)
        button.toggled.connect(self._toggled)

    def stop(self) -> None:
        self.button.setChecked(False)
        self.timer.stop()

    def _toggled(self, on: bool) -> None:
        if on:
            if self.slider.value() >= self.slider.maximum():
                self.slider.setValue(self.slider.minimum())
            self.button.setText("❚❚ Pause")
            self.timer.start()
        else:
            self.button.setText(self.play_text)
            self.timer.stop()

    def _advance(self) -> None:
        if self.slider.value() >= self.slider.maximum():
            self.button.setChecked(False)
            return
        self.slider.setValue(min(self.slider.value() + max(1, self.step()), self.slider.maximum()))
