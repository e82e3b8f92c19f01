"""Training history (``trainer.history``) and its plot (``gc.plot_history``, ``fit(..., plot="curves.png")``).

``History.steps`` has one record per training step of the latest ``fit``:
``{"step", "epoch", "loss", "lr", "skipped", <scalar metrics>}`` (``step``
counts from 1 within that fit; ``lr`` is the rate the step used; a step
skipped by ``nan_policy="skip"`` keeps its non-finite loss and
``skipped=True``). ``History.epochs`` is what ``fit`` returns: one record per
epoch, ``{"epoch", "loss", <validate() metrics>}``, ``loss`` being the mean
over the applied steps, NaN when none was applied.

Plotting needs matplotlib, an optional extra (``pip install "graphc[plot]"``).
It draws with the Agg canvas, never ``pyplot``: no GUI backend, no global figure state.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["History", "plot_history"]


@dataclass
class History:
    """Per-step and per-epoch records of a ``fit`` (see the module docstring for the keys)."""

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)

    def step_values(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key`` over the step records; non-finite or missing values become NaN."""
        return [r["step"] for r in self.steps], [_number(r.get(key)) for r in self.steps]

    def epoch_values(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of ``key`` over the epoch records; missing or non-numeric values become NaN."""
        return [r["epoch"] for r in self.epochs], [_number(r.get(key)) for r in self.epochs]

    def epoch_keys(self) -> list[str]:
        """The numeric keys of the epoch records other than ``epoch``, in first-seen order."""
        keys: list[str] = []
        for record in self.epochs:
            for key, value in record.items():
                if key != "epoch" and key not in keys and isinstance(value, numbers.Real):
                    keys.append(key)
        return keys


def _number(value) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


def require_matplotlib():
    """matplotlib's Figure class, or an ImportError that says how to install the optional extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError('plotting training curves needs matplotlib, an optional dependency of graphc: '
                          'pip install "graphc[plot]" (or pip install matplotlib)') from error
    return Figure


def plot_history(history, path=None):
    """Draw the training and validation curves; write them to ``path`` (PNG unless the suffix says
    otherwise, written atomically) if given; return the matplotlib Figure.

    ``history`` is ``trainer.history`` or the list of epoch records ``fit`` returns. Panels: the
    training loss per step with each epoch's mean training loss and every ``*loss*`` key of the epoch
    records at the step that ended the epoch; every numeric epoch key per epoch; the lr per step.
    Non-finite values (skipped steps, epochs without a step) are gaps.

    >>> import graphc as gc
    >>> fig = gc.plot_history([{"epoch": 1, "loss": 0.9, "val_loss": 1.0}, {"epoch": 2, "loss": 0.5, "val_loss": 0.7}])
    >>> [line.get_label() for line in fig.axes[1].get_lines()]
    ['loss', 'val_loss']
    """
    Figure = require_matplotlib()
    if isinstance(history, (list, tuple)):
        history = History(epochs=list(history))
    if not isinstance(history, History):
        raise TypeError(f"plot_history expects trainer.history or the list fit returns, got {type(history).__name__}")
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    ax_steps, ax_epochs, ax_lr = fig.subplots(1, 3)

    steps, losses = history.step_values("loss")
    ax_steps.plot(steps, losses, lw=0.8, alpha=0.6, label="loss (step)")
    end_step = {}  # epoch -> the step that ended it, to place epoch values on the step axis
    for record in history.steps:
        end_step[record["epoch"]] = record["step"]
    if end_step:
        for key in [k for k in history.epoch_keys() if "loss" in k]:
            epochs, values = history.epoch_values(key)
            pairs = [(end_step[e], v) for e, v in zip(epochs, values) if e in end_step]
            ax_steps.plot([p[0] for p in pairs], [p[1] for p in pairs], "o-", label=f"{key} (epoch)")
    ax_steps.set(title="loss per step", xlabel="step", ylabel="loss")

    for key in history.epoch_keys():
        epochs, values = history.epoch_values(key)
        ax_epochs.plot(epochs, values, "o-", label=key)
    ax_epochs.set(title="per epoch", xlabel="epoch")

    ax_lr.plot(*history.step_values("lr"), label="lr")
    ax_lr.set(title="learning rate", xlabel="step", ylabel="lr")
    for ax in (ax_steps, ax_epochs, ax_lr):
        if ax.get_lines():
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if path is not None:
        from runtime.atomic import atomic_write
        fmt = Path(path).suffix.lstrip(".").lower() or "png"
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=100))
    return fig
