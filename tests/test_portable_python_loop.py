"""The saved training step trains in a plain-Python onnxruntime loop (no graphc imported) as the Trainer does.

The loop (``LOOP``, the README's snippet) runs in a fresh interpreter that never imports graphc; its losses and
final parameters must equal those of ``trainer.step`` on the same batches (rtol 1e-5), for models with
dropout (masks derived in the graph from ``seed`` and ``step``), BatchNorm statistics carried as state,
fused optimizer state, a frozen parameter and an lr changed before saving.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

# The README's loop, verbatim, between the markers; the test adds reading batches and writing results.
LOOP = """\
import onnxruntime as ort
state_model = ort.InferenceSession("step.state.onnx")
step = ort.InferenceSession("step.onnx")
state = dict(zip([o.name for o in state_model.get_outputs()], state_model.run(None, {})))
names = [o.name for o in step.get_outputs()]
for x, y in batches:
    out = dict(zip(names, step.run(None, {"x": x, "y": y, **state})))
    state.update({k: out[k + ".updated"] for k in state if k + ".updated" in out})
    print(float(out["loss"]))
"""

HARNESS = """\
import json, sys
import numpy as np
with np.load("batches.npz", allow_pickle=False) as f:
    batches = [(f[f"x{i}"], f[f"y{i}"]) for i in range(len(f.files) // 2)]
{loop}
assert not any(m == "graphc" or m.startswith(("graphc.", "passes", "runtime")) for m in sys.modules), "graphc imported"
np.savez("final.npz", **state)
"""


def mlp_dropout():
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Dropout(0.4), nn.Linear(24, 4))
    return model, lambda x: model(x)


def cnn_batchnorm():
    # No conv bias before the BatchNorm: its gradient is 0 in exact arithmetic, rounding noise in floats, and
    # Adam turns noise into whole lr-sized steps, so two correct float orders (the portable step computes the
    # batch statistics with primitive ops, the CPU Trainer reads them from ONNX Runtime's node) part there.
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.2), nn.Linear(4 * 5 * 2, 4))
    return model, lambda x: model(x.reshape(-1, 1, 5, 2))


CASES = {
    "adam_dropout": (mlp_dropout, gc.optim.Adam, {"lr": 1e-2}, {}),
    "sgd_momentum_fused": (mlp_dropout, gc.optim.SGD, {"lr": 0.05, "momentum": 0.9}, {"fuse_update": True}),
    "adamw_batchnorm_clip": (cnn_batchnorm, gc.optim.AdamW, {"lr": 5e-3}, {"max_grad_norm": 0.5}),
}


def make_trainer(case: str, seed: int):
    build, optimizer, hparams, options = CASES[case]
    gc.manual_seed(3)
    model, forward = build()
    x = gc.input("x", shape=("batch", 10))
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(forward(x), y), optimizer(model.parameters(), **hparams), inputs=[x, y],
                         seed=seed, **options)
    return trainer, model


def batches(count: int, seed: int):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 10)).astype(np.float32), rng.integers(0, 4, 8).astype(np.int64))
            for _ in range(count)]


def run_loop(folder, data) -> tuple[list[float], dict]:
    np.savez(folder / "batches.npz", **{f"{k}{i}": a for i, b in enumerate(data) for k, a in zip("xy", b)})
    done = subprocess.run([sys.executable, "-c", HARNESS.replace("{loop}", LOOP)], cwd=folder, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with np.load(folder / "final.npz", allow_pickle=False) as final:
        state = {k: final[k] for k in final.files}
    return [float(line) for line in done.stdout.split()], state


@pytest.mark.parametrize("case", list(CASES))
def test_plain_onnxruntime_loop_equals_the_trainer(case, tmp_path):
    trainer, model = make_trainer(case, seed=2 ** 32 + 11)
    for xb, yb in batches(2, seed=0):  # save mid-training: non-trivial slots, step 2
        trainer.step({"x": xb, "y": yb})
    trainer.optimizer.lr = trainer.optimizer.lr * 0.5  # the saved state carries the current lr
    if case == "sgd_momentum_fused":
        model[0].bias.requires_grad = False  # frozen: carried unchanged, never updated
    trainer.save(tmp_path / "step.onnx")
    data = batches(6, seed=1)
    losses, state = run_loop(tmp_path, data)
    expected = [trainer.step({"x": xb, "y": yb}) for xb, yb in data]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert len(set(losses)) == len(losses)
    for name, value in model.state_dict().items():  # parameters and BatchNorm statistics
        np.testing.assert_allclose(state[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert int(state["step"]) == trainer.steps_done == 8
    if case == "sgd_momentum_fused":
        np.testing.assert_array_equal(state["0.bias"], model[0].bias.numpy())


def test_readme_loop_is_ten_lines_or_fewer():
    assert len(LOOP.splitlines()) <= 10
    json.dumps(LOOP)  # plain text, pasteable
