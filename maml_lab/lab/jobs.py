"""What background computations share, without Qt: a job that notices its cancel event raises Cancelled."""

from __future__ import annotations


class Cancelled(Exception):
    """A job stopped because its cancel event was set."""


def for_each_request(requests, compute, out, store: dict, progress=None, cancel=None):
    """What the views' comparisons share: `store[r.key] = compute(r)` for each initialization request in order,
    progress reported between them, stopping early when `cancel` is set; a request that fails with ValueError or
    RuntimeError gets its one-line message in `out.errors` instead of stopping the others. Fills `out.labels` and
    `out.algorithms`; returns `out`."""
    for i, r in enumerate(requests):
        if cancel is not None and cancel.is_set():
            break
        if progress is not None:
            progress(i, len(requests))
        try:
            store[r.key] = compute(r)
        except (ValueError, RuntimeError) as exc:
            out.errors[r.key] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        out.labels[r.key] = r.label
        out.algorithms[r.key] = r.algorithm
    if progress is not None:
        progress(len(requests), len(requests))
    return out


def errors_note(out) -> str:
    """The per-initialization errors `for_each_request` collected in `out`, for a status line: " · label: message;
    ..." (labels from `out.labels`), or "" when every request succeeded."""
    errors = "; ".join(f"{out.labels.get(k, k)}: {e}" for k, e in out.errors.items())
    return f" · {errors}" if errors else ""
