"""The MaxPool mask gradient (``_max_pool_mask_vjp``) on windows with NaN, ties and +-inf, exactly.

The rule's contract: dx = g at each window's first position (row-major) where x equals the pooled y,
and nothing in a window where no element equals y (a NaN maximum). Checked against a numpy loop over the
windows, given the y that ONNX Runtime's MaxPool returned, for windows whose first element, a later one,
or every element is NaN, all-tie windows, and infinities.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import graphc as gc
from graphc import nn
from graphc.program import build_model
from passes.pipelines import gradient_pipeline


def run(model: ir.Model, feeds: dict) -> dict:
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def first_max_gradient(xb, y, cot, k):
    """numpy: g to the first position of each k x k window equal to its pooled value, else 0."""
    dx = np.zeros_like(xb)
    n, c, h, w = xb.shape
    for i in np.ndindex(n, c, h // k, w // k):
        window = xb[i[0], i[1], i[2] * k:(i[2] + 1) * k, i[3] * k:(i[3] + 1) * k].ravel()
        hits = np.flatnonzero(window == y[i])
        if hits.size:
            r, q = divmod(int(hits[0]), k)
            dx[i[0], i[1], i[2] * k + r, i[3] * k + q] = cot[i]
    return dx


def test_mask_gradient_on_nan_tie_and_inf_windows():
    rng = np.random.default_rng(5)
    xb = np.round(rng.standard_normal((2, 3, 8, 8)) * 0.8).astype(np.float32)  # many ties
    xb[0, 0, 0, 0] = np.nan                      # NaN first in its window
    xb[0, 0, 2:4, 2:4] = [[1, 1], [np.nan, 1]]   # NaN after a tie
    xb[0, 1, 4:6, 4:6] = np.nan                  # every element NaN
    xb[1, 2, 0:2, 6:8] = np.inf                  # an all-inf tie
    xb[1, 2, 6:8, 0:2] = [[-np.inf, -np.inf], [-np.inf, -np.inf]]
    xb[1, 0] = 2.0                               # every window a tie of all its elements
    cot = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)

    x = gc.input("x", shape=("batch", 3, 8, 8))
    out = nn.MaxPool2d(2)(x)
    model = build_model([x], {"loss": (out * gc.constant(cot)).sum(), "out": out})
    trained = gradient_pipeline("loss", ["x"])(model).model
    assert "ScatterElements" not in [n.op_type for n in trained.graph]  # the mask lowering took it
    result = run(trained, {"x": xb})
    expected = first_max_gradient(xb, result["out"], cot, 2)
    np.testing.assert_array_equal(result["x.grad"], expected)
    assert result["x.grad"][0, 1, 4:6, 4:6].tolist() == [[0, 0], [0, 0]]  # no maximum equal to y: no gradient
