"""Training state per parameter: split flat optimizer slots apart and regroup them for another step.

A training step may update several parameters as one flat vector (``optimizer.small.<slot>``,
``optimizer.<slot>``; ``TrainingStep.flat_layouts`` lists what each holds). When the set of trained
parameters changes (a parameter is frozen or unfrozen), the step is rebuilt with another layout; these
helpers carry every parameter's optimizer state across, so nothing is reset or mixed up.
"""

from __future__ import annotations

import numpy as np

Layouts = dict[str, list[tuple[str, int]]]


def _flat_slot(name: str, layouts: Layouts) -> tuple[str, str] | tuple[None, None]:
    """``(prefix, slot)`` when ``name`` is a flat state input ``<prefix>.<slot>``, else ``(None, None)``."""
    for prefix in sorted(layouts, key=len, reverse=True):  # "optimizer.small" before "optimizer"
        if name.startswith(prefix + "."):
            return prefix, name[len(prefix) + 1:]
    return None, None


def per_parameter_state(state: dict[str, np.ndarray], layouts: Layouts) -> dict[str, np.ndarray]:
    """``state`` with each flat slot split into ``<param>.<slot>`` arrays shaped like their parameter."""
    out = {}
    for name, array in state.items():
        prefix, slot = _flat_slot(name, layouts)
        if prefix is None:
            out[name] = array
            continue
        offset = 0
        for param, size in layouts[prefix]:
            out[f"{param}.{slot}"] = array[offset:offset + size].reshape(state[param].shape)
            offset += size
    return out


def regroup_state(per_parameter: dict[str, np.ndarray], initial: dict[str, np.ndarray],
                  layouts: Layouts) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Values for the state inputs of a step (the keys of ``initial``, laid out as ``layouts`` says).

    Each value comes from ``per_parameter`` where it has a same-shaped entry, else from ``initial``.
    Returns ``(values, unused)``: ``unused`` are the entries of ``per_parameter`` the step has no
    input for (the slots of a parameter just frozen), to keep for when it is trained again.
    """
    used: set[str] = set()
    values = {}
    for name, start in initial.items():
        prefix, slot = _flat_slot(name, layouts)
        if prefix is None:
            known = per_parameter.get(name)
            if known is not None and known.shape == start.shape and known.dtype == start.dtype:
                values[name] = known
                used.add(name)
            else:
                values[name] = start
            continue
        pieces, offset = [], 0
        for param, size in layouts[prefix]:
            key = f"{param}.{slot}"
            known = per_parameter.get(key)
            if known is not None and known.size == size and known.dtype == start.dtype:
                pieces.append(known.reshape(-1))
                used.add(key)
            else:
                pieces.append(start[offset:offset + size])
            offset += size
        values[name] = np.concatenate(pieces)
    return values, {k: v for k, v in per_parameter.items() if k not in used}
