"""PyTorch habits meet graphc: each gets a message that says what to do instead (issue 7, item 10)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


def build_trainer():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Linear(4, 3)
    return model, gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=0.1), [x, y])


def batch():
    rng = np.random.default_rng(1)
    return rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32)


@pytest.mark.parametrize("as_sequence", [tuple, list])
def test_step_takes_a_tuple_in_the_order_of_inputs_like_fit(as_sequence):
    xb, yb = batch()
    model_a, by_name = build_trainer()
    model_b, by_order = build_trainer()
    losses_a = [by_name.step({"x": xb, "y": yb}) for _ in range(3)]
    losses_b = [by_order.step(as_sequence([xb, yb])) for _ in range(3)]
    assert losses_a == losses_b
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_step_with_the_wrong_number_or_kind_of_feeds_says_what_it_expects():
    xb, yb = batch()
    _, trainer = build_trainer()
    with pytest.raises(ValueError, match=r"^trainer.step got a tuple of 1 arrays; expected 2, in the order of "
                                         r"inputs \['x', 'y'\] \(or a dict by input name\)$"):
        trainer.step((xb,))
    with pytest.raises(TypeError, match=r"expects a dict \{input name: array\} or a tuple in the order of inputs "
                                        r"\['x', 'y'\], got ndarray$"):
        trainer.step(xb)
    assert trainer.steps_done == 0


@pytest.mark.parametrize("call, what, advice", [
    (lambda t: t.backward(), "backward()", "gc.Trainer(loss, optimizer, inputs=[...]).step(batch) runs forward, "
                                           "backward and the update in one call; for symbolic gradients use "
                                           "gc.grad(loss, params)"),
    (lambda t: t.item(), "item()", "read values with gc.compile(inputs, {'out': tensor}).run(feeds)"),
    (lambda t: float(t), "float()", "read values with gc.compile(inputs, {'out': tensor}).run(feeds)"),
    (lambda t: int(t), "int()", "read values with gc.compile"),
    (lambda t: t.numpy(), "numpy()", "train with gc.Trainer(loss, optimizer, inputs=[...]).step(batch)"),
    (lambda t: t.tolist(), "tolist()", "graphc tensors are symbolic"),
])
def test_asking_a_symbolic_tensor_for_values_says_where_values_come_from(call, what, advice):
    x = gc.input("x", ("batch", 4))
    loss = F.mse_loss(nn.Linear(4, 1)(x), gc.zeros((2, 1)))
    with pytest.raises(gc.SymbolicValueError) as info:
        call(loss)
    message = str(info.value)
    assert message.startswith(f"{what} on Tensor(name=None, shape=(), dtype=float32): ")
    assert advice in message
    assert isinstance(info.value, TypeError) and isinstance(info.value, gc.GraphcError)


def test_a_parameter_holds_values_so_item_float_and_numpy_work_as_in_torch():
    scale = nn.Parameter(np.array([2.5], np.float32))
    assert scale.item() == 2.5 and float(scale) == 2.5 and int(scale) == 2
    assert scale.tolist() == [2.5]
    np.testing.assert_array_equal(scale.numpy(), [2.5])
    with pytest.raises(ValueError, match="size 1"):
        nn.Linear(2, 2).weight.item()  # numpy's message for more than one element, as torch refuses too


@pytest.mark.parametrize("module, label, name, suggestion, member", [
    (gc, "gc.", "foo", None, "gc.concat"),
    (gc, "gc.", "concatt", "gc.concat", "gc.compile"),
    (nn, "nn.", "Conv3d", "nn.Conv2d", "nn.Linear"),
    (F, "F.", "unfold", None, "F.relu"),
    (F, "F.", "rellu", "F.relu", "F.cross_entropy"),
])
def test_a_missing_name_says_graphc_lacks_it_and_lists_what_it_has(module, label, name, suggestion, member):
    with pytest.raises(AttributeError) as info:
        getattr(module, name)
    message = str(info.value)
    assert message.startswith(f"graphc has no {label}{name}; ")
    if suggestion:
        assert f"did you mean {suggestion}" in message
    else:
        assert "did you mean" not in message
    listed = message.split(" has: ", 1)[1].split(", ")
    assert member.removeprefix(label) in listed
    assert sorted(listed) == sorted(n for n in module.__all__ if not n.startswith("_"))
    assert not hasattr(module, name)  # still an AttributeError: hasattr, getattr defaults keep working
    assert getattr(module, name, "default") == "default"


def test_from_import_of_a_missing_name_still_raises_import_error():
    with pytest.raises(ImportError, match="foo"):
        from graphc import foo  # noqa: F401
    with pytest.raises(AttributeError, match="__wrapped__"):
        gc.__wrapped__  # noqa: B018 (protocol probes get the plain error)
