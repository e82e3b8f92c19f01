"""``gc.compile``: symbolic outputs -> a standard ONNX model and a session that runs it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from graphc import random as _random
from graphc.errors import GraphcError
from graphc.nn.parameter import parameter_of, values_version
from graphc.state import updates_computed_with
from graphc.tensor import Tensor
from passes.extract import extract_model, free_inputs
from passes.names import RNG_KEY, SOURCE_KEY
from passes.batch_norm_primitives import BatchNormTrainingToPrimitivesPass
from passes.pipelines import inference_pipeline
from runtime.atomic import atomic_save_external, atomic_write
from runtime.input_files import check_feeds, input_specs
from runtime.run_errors import run_session
from runtime.training_session import create_session


def refresh_parameter(value: ir.Value) -> None:
    """Put a Parameter's current value (possibly being trained) into its graph value."""
    param = parameter_of(value)
    if param is not None:
        value.const_value = ir.Tensor(np.array(param.data, copy=True))


def build_model(inputs: Sequence[Tensor], outputs: Mapping[str, Tensor], doc_string: str = "",
                allow_random: bool = False, allow_batch_statistics: bool = True) -> ir.Model:
    """The ``onnx_ir`` model computing ``outputs`` from ``inputs`` with current parameter values.

    Outputs that draw random numbers (training-mode dropout) need the implicit
    ``rng_key`` input: with ``allow_random`` it is appended to the inputs,
    otherwise that is an error that says how to build an inference graph.
    Outputs that normalise with batch statistics (training-mode BatchNorm) are
    refused the same way unless ``allow_batch_statistics``: a sample alone and
    inside a batch would give different answers.
    """
    if isinstance(outputs, Tensor):
        outputs = {"output": outputs}
    for name, out in outputs.items():
        if not isinstance(out, Tensor):
            raise TypeError(f"output {name!r} must be a Tensor, got {type(out).__name__}")
    for t in inputs:
        if not isinstance(t, Tensor) or t.value.producer() is not None or t.value.const_value is not None:
            raise TypeError(f"inputs must be tensors made by gc.input(), got {t!r}")
    values = [t.value for t in inputs]
    if not allow_batch_statistics and updates_computed_with(list(outputs.values())):
        raise GraphcError("these outputs normalise with batch statistics (BatchNorm modules were in train mode "
                          "when they were called), so a sample's output would depend on the rest of its batch; "
                          "call model.eval() and call the model again to build an inference graph, or pass "
                          "allow_batch_statistics=True to compile the train-mode graph anyway")
    key = _random.rng_key().value
    if key not in values and key in free_inputs([t.value for t in outputs.values()]):
        if not allow_random:
            raise GraphcError("these outputs apply dropout in training mode (the modules were in train mode "
                              "when they were called); call model.eval() and call the model again to build an "
                              "inference graph, or pass allow_random=True to feed 'rng_key' yourself")
        values.append(key)
    return extract_model(values, {k: v.value for k, v in outputs.items()},
                         doc_string=doc_string, refresh=refresh_parameter)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize ``model``; ``value_info`` is written for computed values only, never for initializers.

    onnx_ir writes an entry per initializer too: redundant with the initializer's own dims, and stale
    as soon as a tool rewrites a weight (ONNX Runtime's ``quantize_dynamic`` transposes Gemm weights,
    then ONNX's shape inference fails on the old entry: issue 10).
    """
    proto = ir.serde.serialize_model(model)
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        initializers = {tensor.name for tensor in graph.initializer}
        kept = [info for info in graph.value_info if info.name not in initializers]
        if len(kept) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(kept)
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    return proto


def for_export(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the user's ``file:line`` node metadata.

    Source locations serve run-time error messages in this process; written files carry no local paths
    (a shipped model would otherwise reveal the author's folders).
    """
    exported = onnx.ModelProto()
    exported.CopyFrom(model)
    graphs = [exported.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key != SOURCE_KEY]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    return exported


class Program:
    """A compiled inference program: ``run`` feeds numpy arrays, ``save`` writes standard ONNX.

    A Program built by ``gc.compile`` always uses the parameters' current values: when any parameter
    changed since it was built (training steps, ``load_state_dict``, a checkpoint), the next ``run``,
    ``save`` or ``model`` rebuilds it with the new values (a version counter, compared per call).
    """

    def __init__(self, model: ir.Model, provider: str = "cpu", rebuild=None, optimize: bool = True):
        self.provider = provider
        self._rebuild = rebuild
        self._optimize = optimize
        self._set_model(model)

    def _set_model(self, model: ir.Model) -> None:
        RemoveUnusedNodesPass()(model)  # also drops optional outputs nobody reads (MaxPool's Indices)
        if self.provider != "cpu":  # GPU kernels' training-mode BatchNorm: see the pass
            BatchNormTrainingToPrimitivesPass()(model)
        # the export pipeline (passes/export): what runs here is what save writes
        self.export_report = []
        if self._optimize:
            pipeline = inference_pipeline()
            pipeline(model)
            self.export_report = pipeline.reports
        self._model: onnx.ModelProto = to_proto(model)
        self._built_at = values_version()
        self._session = None
        self._specs = None

    def _follow_parameters(self) -> None:
        if self._rebuild is not None and self._built_at != values_version():
            self._set_model(self._rebuild())

    @property
    def model(self) -> onnx.ModelProto:
        """The standard ONNX model, with the parameters' current values."""
        self._follow_parameters()
        return self._model

    def refresh(self) -> "Program":
        """Kept for compatibility: a Program follows the parameters' values by itself."""
        if self._rebuild is None:
            raise GraphcError("this Program was not built by gc.compile and cannot be refreshed")
        self._set_model(self._rebuild())
        return self

    @property
    def session(self):
        self._follow_parameters()
        if self._session is None:
            self._session = create_session(self.model, self.provider)
            self._specs = input_specs(self._model)
            self._random = RNG_KEY in {s.name for s in self._specs}
            self._output_names = [o.name for o in self._session.get_outputs()]
        return self._session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.model.graph.input]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on numpy feeds; names, dtypes and shapes are checked first (clear errors).

        A train-mode dropout program (``allow_random=True``) draws a fresh ``rng_key`` per run from
        ``gc.manual_seed``'s stream when none is fed (Monte-Carlo dropout); a fed key reproduces masks.
        """
        session = self.session
        feeds = dict(feeds)
        if self._random and RNG_KEY not in feeds:
            feeds[RNG_KEY] = _random.draw_key()
        checked = check_feeds(self._specs, feeds)
        # run_session: class-index targets checked, ONNX Runtime failures as RunError naming the user's line
        return dict(zip(self._output_names, run_session(session, self._output_names, checked, self.model, "program")))

    def __call__(self, **feeds) -> dict[str, np.ndarray]:
        return self.run(feeds)

    def save(self, path, external_data: bool = False) -> None:
        """Write the model as a standard ``.onnx`` file (checked first).

        ``external_data`` puts the weights in ``<file name>.data`` next to the model (needed above
        2 GB); the location is a bare file name, so nothing is written outside the model's folder.
        Both files are rewritten from scratch and atomically (the data file first, then the model).
        An existing target that is not a regular file (device, FIFO, symlink) is refused.
        """
        model = for_export(self.model)
        onnx.checker.check_model(model, full_check=True)
        if not external_data:
            atomic_write(path, lambda handle: handle.write(model.SerializeToString()))
            return
        atomic_save_external(model, path, size_threshold=1024)


def compile(inputs: Sequence[Tensor], outputs, provider: str = "cpu", doc_string: str = "",  # noqa: A001
            allow_random: bool = False, allow_batch_statistics: bool = False,
            optimize: bool = True) -> Program:
    """Compile symbolic ``outputs`` (a dict name -> Tensor, or one Tensor) of ``inputs`` into a Program.

    Parameters are stored in the model as initializers; the Program follows their values (it is
    rebuilt on its next use after they change). Train-mode dropout and BatchNorm are refused (call
    ``model.eval()`` first) unless ``allow_random`` / ``allow_batch_statistics``. ``optimize`` runs
    the export pipeline (``passes/export``: constant folding, BatchNorm folding, Gemm/LayerNorm/GELU
    fusion, no-op removal); ``program.export_report`` says what each pass changed.

    >>> import graphc as gc, numpy as np
    >>> x = gc.input("x", ("batch", 2))
    >>> gc.compile([x], {"y": x * 2}).run({"x": np.ones((1, 2), np.float32)})["y"].tolist()
    [[2.0, 2.0]]
    """
    inputs = list(inputs)

    def rebuild() -> ir.Model:
        return build_model(inputs, outputs, doc_string or "graphc inference program", allow_random,
                           allow_batch_statistics)

    return Program(rebuild(), provider, rebuild, optimize=optimize)
