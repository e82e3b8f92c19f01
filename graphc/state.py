"""Non-gradient state updates recorded by layers (BatchNorm's running statistics).

A layer in training mode computes the next value of a buffer as part of its
forward pass and records ``(buffer, next_value, layer_output)`` here. A Trainer
whose loss graph uses that layer output carries the buffer as training state: the buffer becomes a
step input and ``next_value`` the output that feeds it at the next step.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphc.nn.parameter import Parameter
from graphc.tensor import Tensor
from passes.extract import reachable_nodes

_pending: dict[int, list["StateUpdate"]] = {}  # per buffer, the newest few (bounded memory)
_KEEP = 4  # graphs built from the same layer that a Trainer may still be created for


@dataclass
class StateUpdate:
    buffer: Parameter
    value: Tensor
    anchor: Tensor  # the layer output computed with the update: it applies to graphs that use this output


def record_state_update(buffer: Parameter, value: Tensor, anchor: Tensor) -> None:
    if value.shape != buffer.shape or value.dtype != buffer.dtype:
        raise ValueError(f"state update of {buffer.name!r}: expected {buffer.shape} {buffer.dtype}, "
                         f"got {value.shape} {value.dtype}")
    updates = _pending.setdefault(id(buffer), [])
    updates.append(StateUpdate(buffer, value, anchor))
    del updates[:-_KEEP]


def updates_computed_with(outputs: list[Tensor]) -> list[StateUpdate]:
    """The recorded updates whose layer output the graph of ``outputs`` uses (latest per buffer)."""
    graph_nodes = reachable_nodes([t.value for t in outputs])
    chosen: dict[int, StateUpdate] = {}
    for updates in _pending.values():
        for update in updates:
            if update.anchor.value.producer() in graph_nodes:
                chosen[id(update.buffer)] = update
    return list(chosen.values())
