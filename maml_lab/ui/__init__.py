"""The MAML Lab desktop app (PySide6 + pyqtgraph). `maml_lab.core` never imports from here."""

from .compat import guard_none_refcount

guard_none_refcount()
