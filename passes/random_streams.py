"""``NumberRandomStreamsPass``: give each in-graph random draw a stream id by its place in the graph.

The builder marks the constant that identifies a random draw (dropout mask)
with the ``graphc.rng_stream`` metadata key. Numbering those constants in
graph order makes the draws a function of the graph alone, so two models
built alike draw the same numbers from the same ``rng_key`` (a build-time
counter would differ between them).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.names import RNG_STREAM_KEY as STREAM_KEY
_GOLDEN = 0x9E3779B97F4A7C15


class NumberRandomStreamsPass(ir.passes.InPlacePass):
    """Rewrites the value of every marked Constant to ``(i * golden) mod 2**64``, i = 1, 2, ... in node order."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        index = 0
        for node in model.graph:
            if node.op_type == "Constant" and node.metadata_props.get(STREAM_KEY) == "1":
                index += 1
                tensor = ir.Tensor(np.asarray((index * _GOLDEN) % 2 ** 64, dtype=np.uint64))
                node.attributes["value"] = ir.AttrTensor("value", tensor)
                node.outputs[0].const_value = tensor
        return ir.passes.PassResult(model, modified=index > 0)
