"""The unrolled LSTM lowering activates the contiguous i, o, f gate block with one Sigmoid per step.

Values against ONNX Runtime's own LSTM op, and the ops the lowering emits. Gradients through this form
against PyTorch's autograd: tests/test_recurrent.py (every LSTM case goes through it).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from test_pass_lower_recurrent import H, T, feeds_for, lowered, recurrent_model, run, to_layout0


def _ops(model, op_type):
    return [n for n in model.graph.node if n.op_type == op_type]


def _widths(model, nodes):
    info = {v.name: v.type.tensor_type.shape.dim[-1].dim_value for v in model.graph.value_info}
    return sorted(info[n.output[0]] for n in nodes)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_one_sigmoid_per_step_over_the_contiguous_i_o_f_block(direction, initial, layout):
    model, inputs = recurrent_model("LSTM", direction=direction, initial=initial, layout=layout)
    feeds = feeds_for(inputs)
    new, _ = lowered(model)
    dirs = 2 if direction == "bidirectional" else 1
    sigmoids = _ops(new, "Sigmoid")
    assert len(sigmoids) == T * dirs  # one per step, not one per gate
    # i, o, f (3H) at every step; at a zero initial state the first step's f is never read: i, o only (2H)
    first = [3 * H if initial else 2 * H] * dirs
    assert _widths(new, sigmoids) == sorted(first + [3 * H] * (T - 1) * dirs)
    if layout == 0:
        expected = run(model, feeds)
    else:  # ONNX Runtime runs layout 0 only: its op on the transposed data, outputs transposed back
        reference = run(recurrent_model("LSTM", direction=direction, initial=initial)[0], to_layout0(feeds))
        expected = {"Y": np.transpose(reference["Y"], (2, 0, 1, 3)),
                    "Y_h": np.swapaxes(reference["Y_h"], 0, 1), "Y_c": np.swapaxes(reference["Y_c"], 0, 1)}
    got = run(new, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_peepholes_keep_one_activation_per_gate():
    """i and f get their peephole terms before the activation, o after the cell update: no common block."""
    model, inputs = recurrent_model("LSTM", initial=True)
    model.graph.node[0].input.extend(["P"])
    model.graph.input.append(helper.make_tensor_value_info("P", TensorProto.FLOAT, [1, 3 * H]))
    inputs["P"] = [1, 3 * H]
    feeds = feeds_for(inputs)
    new, _ = lowered(model)
    assert len(_ops(new, "Sigmoid")) == 3 * T
    assert _widths(new, _ops(new, "Sigmoid")) == [H] * 3 * T
    got, expected = run(new, feeds), run(model, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
