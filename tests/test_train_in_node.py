"""samples/train_in_node: onnxruntime-node 1.30 trains graphc's saved step; its losses are the Trainer's.

The model has dropout, so the losses match only if the step derives each step's masks from its ``seed`` and
``step`` state exactly as ``Trainer.step`` does. Needs Node.js (on the machine image); when the sample's
``node_modules`` is missing, the fixture runs ``npm install --ignore-scripts`` there (the install script of
onnxruntime-node only downloads GPU binaries; the CPU ones are inside the package).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "train_in_node"


def load_export():
    spec = importlib.util.spec_from_file_location("sample_train_in_node_export", SAMPLE / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def node_sample():
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed (they are on the machine image)"
    if not (SAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        done = subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=SAMPLE,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm install failed: {done.stderr[-2000:]}"
    return node


def run_node(node, folder: Path) -> list[float]:
    losses_file = folder / "losses.json"
    done = subprocess.run([node, "train.js", str(folder), str(losses_file)], cwd=SAMPLE, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(losses_file.read_text())


def test_node_loop_losses_equal_the_trainers(node_sample, tmp_path):
    sample = load_export()
    trainer = sample.build_trainer(seed=7)
    warmup = sample.digit_batches(3, 16, seed=1)
    for batch in warmup:  # a saved state mid-training: Adam slots, step 3, the dropout stream moved on
        trainer.step(batch)
    trainer.save(tmp_path / "step.onnx")
    batches = sample.digit_batches(12, 32, seed=2)
    sample.write_batches(tmp_path, batches)

    node_losses = run_node(node_sample, tmp_path)
    expected = [trainer.step(batch) for batch in batches]
    assert len(node_losses) == len(expected)
    np.testing.assert_allclose(node_losses, expected, rtol=1e-5)
    assert len(set(node_losses)) == len(node_losses), "the state must be fed back (onnxruntime-node ignored it once)"


def test_node_loop_depends_on_the_dropout_masks(node_sample, tmp_path):
    """Guard for the test above: another seed draws other masks, hence other losses."""
    sample = load_export()
    trainer = sample.build_trainer(seed=7)
    trainer.seed = 8  # same weights, other dropout stream
    trainer.save(tmp_path / "step.onnx")
    batches = sample.digit_batches(3, 32, seed=2)
    sample.write_batches(tmp_path, batches)
    node_losses = run_node(node_sample, tmp_path)
    same_weights = sample.build_trainer(seed=7)
    expected_seed_7 = [same_weights.step(batch) for batch in batches]
    assert abs(node_losses[0] - expected_seed_7[0]) > 1e-4
