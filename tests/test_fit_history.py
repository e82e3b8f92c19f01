"""Trainer.fit: NaN epoch loss when no step was applied (never the best), per-step history, plotted curves."""

import math
import sys

import numpy as np
import pytest

import graphc as gc
from graphc import nn

RNG = np.random.default_rng(0)
X = RNG.normal(size=(12, 3)).astype(np.float32)
Y = (X @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.1).astype(np.float32)


def make_trainer(lr=0.05, nan_policy="raise", **kwargs):
    gc.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = gc.input("x", ("batch", 3)), gc.input("y", ("batch", 1))
    pred = model(x)
    loss = nn.MSELoss()(pred, y)
    metrics = {"mae": nn.L1Loss()(pred, y)}
    opt = gc.optim.SGD(model.parameters(), lr=lr)
    return gc.Trainer(loss, opt, inputs=[x, y], nan_policy=nan_policy, metrics=metrics, **kwargs)


def batches():
    return [(X[i:i + 4], Y[i:i + 4]) for i in range(0, 12, 4)]


# ---- item 6: an epoch without an applied step ----------------------------------------
def test_an_empty_loader_gives_nan_not_zero_with_a_warning():
    trainer = make_trainer()
    with pytest.warns(RuntimeWarning, match=r"epoch 1 applied no training step \(the loader yielded no batches\); "
                                            r"its loss is NaN"):
        history = trainer.fit([], epochs=1, progress=False)
    assert math.isnan(history[0]["loss"])


def test_an_exhausted_generator_gives_nan_and_says_why():
    trainer = make_trainer()
    with pytest.warns(RuntimeWarning, match="epoch 2 applied no training step .*an iterator .*exhausted after one "
                                            "pass; pass a DataLoader or a list"):
        history = trainer.fit((b for b in batches()), epochs=2, progress=False)
    assert np.isfinite(history[0]["loss"]) and math.isnan(history[1]["loss"])


def test_all_steps_skipped_gives_nan():
    trainer = make_trainer(nan_policy="skip")
    bad = [(np.full((4, 3), np.nan, np.float32), Y[:4])] * 2
    with pytest.warns(RuntimeWarning, match=r"all 2 steps had a non-finite loss and were skipped"):
        history = trainer.fit(bad, epochs=1, progress=False)
    assert math.isnan(history[0]["loss"]) and trainer.skipped_steps == 2
    assert [s["skipped"] for s in trainer.history.steps] == [True, True]


def test_a_nan_epoch_never_wins_early_stopping():
    """Before: the exhausted generator's epoch reported 0.0, a new best, so training went on."""
    trainer = make_trainer()
    with pytest.warns(RuntimeWarning):
        history = trainer.fit((b for b in batches()), epochs=5, monitor="loss", patience=1, progress=False)
    assert len(history) == 2  # epoch 2 (NaN) did not improve on epoch 1: stop


def test_a_nan_first_value_does_not_become_the_best():
    values = iter([math.nan, 1.0, 2.0, 3.0, 4.0])
    history = make_trainer().fit(batches(), epochs=5, validate=lambda: {"val_loss": next(values)}, patience=2,
                                 progress=False)
    # epoch 2 (1.0) is the first best; epochs 3 and 4 do not improve on it -> stop after 4
    assert [r["val_loss"] for r in history][1:] == [1.0, 2.0, 3.0] and len(history) == 4


# ---- item 17: per-step history ------------------------------------------------------------
def test_step_history_equals_a_manual_run_and_the_epoch_means():
    trainer = make_trainer()
    sched = gc.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    history = trainer.fit(batches(), epochs=3, validate=lambda: sched.step() or {}, progress=False)
    steps = trainer.history.steps
    assert trainer.history.epochs is not None and history == trainer.history.epochs
    assert [s["step"] for s in steps] == list(range(1, 10))
    assert [s["epoch"] for s in steps] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [s["lr"] for s in steps] == [0.05] * 3 + [0.025] * 3 + [0.0125] * 3

    reference = make_trainer()  # the same model, seed and batches, stepped by hand
    expected_loss, expected_mae = [], []
    for lr in (0.05, 0.025, 0.0125):
        reference.optimizer.lr = lr
        for b in batches():
            expected_loss.append(reference.step(b))
            expected_mae.append(float(reference.last_metrics["mae"]))
    assert [s["loss"] for s in steps] == expected_loss
    assert [s["mae"] for s in steps] == pytest.approx(expected_mae, rel=1e-6)
    for e in range(3):
        assert history[e]["loss"] == pytest.approx(np.mean(expected_loss[3 * e:3 * e + 3]), rel=1e-12)


def test_history_holds_the_latest_fit_and_grad_norm_when_clipping():
    trainer = make_trainer(max_grad_norm=1.0)
    assert trainer.history.steps == [] and trainer.history.epochs == []
    trainer.fit(batches(), epochs=2, progress=False)
    trainer.fit(batches()[:1], epochs=1, progress=False)
    assert len(trainer.history.steps) == 1 and len(trainer.history.epochs) == 1
    assert trainer.history.steps[0]["grad_norm"] > 0


# ---- item 17: plots --------------------------------------------------------------------------
def _lines(ax):
    return {line.get_label(): line.get_xydata() for line in ax.get_lines()}


def test_fit_writes_a_png_of_exactly_the_history(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    trainer = make_trainer()
    values = iter([0.9, 0.7, 0.8])
    trainer.fit(batches(), epochs=3, validate=lambda: {"val_loss": next(values), "val_acc": 0.5}, progress=False,
                plot=tmp_path / "curves.png")
    written = (tmp_path / "curves.png").read_bytes()
    assert written[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(tmp_path / "curves.png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100

    history = trainer.history
    fig = gc.plot_history(history, tmp_path / "again.png")
    np.testing.assert_array_equal(image.imread(tmp_path / "again.png"), pixels)  # the fit's PNG is this plot
    step_ax, epoch_ax, lr_ax = fig.axes
    lines = _lines(step_ax)
    np.testing.assert_array_equal(lines["loss (step)"], [[s["step"], s["loss"]] for s in history.steps])
    np.testing.assert_array_equal(lines["val_loss (epoch)"], [[3, 0.9], [6, 0.7], [9, 0.8]])
    np.testing.assert_allclose(lines["loss (epoch)"][:, 1], [r["loss"] for r in history.epochs])
    lines = _lines(epoch_ax)
    assert list(lines) == ["loss", "val_loss", "val_acc"]
    np.testing.assert_array_equal(lines["val_acc"], [[1, 0.5], [2, 0.5], [3, 0.5]])
    np.testing.assert_array_equal(_lines(lr_ax)["lr"], [[s["step"], 0.05] for s in history.steps])


def test_plot_history_takes_fits_return_value_and_shows_nan_as_gaps(tmp_path):
    pytest.importorskip("matplotlib")
    fig = gc.plot_history([{"epoch": 1, "loss": math.nan}, {"epoch": 2, "loss": 0.5}], tmp_path / "h.png")
    data = _lines(fig.axes[1])["loss"]
    assert math.isnan(data[0, 1]) and data[1, 1] == 0.5
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(TypeError, match="plot_history expects trainer.history or the list fit returns, got dict"):
        gc.plot_history({"loss": 1})


def test_plot_without_matplotlib_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import matplotlib.figure now raises
    trainer = make_trainer()
    with pytest.raises(ImportError, match=r'needs matplotlib.*pip install "graphc\[plot\]"'):
        trainer.fit(batches(), epochs=1, progress=False, plot=tmp_path / "c.png")
    assert trainer.steps_done == 0 and not (tmp_path / "c.png").exists()
