"""Run a training-step model step after step, keeping parameters and optimizer state on the device.

The step model's ``graphc.state_pairs`` say which output becomes which input
at the next step. Between steps the state never leaves the execution device:

- CPU: plain ``session.run`` with numpy feeds, each step's state outputs fed
  straight back. Measured on this project's 2-core machine for the MLP step
  (DESIGN.md): faster than pre-built IOBindings or ``run_with_ort_values``.
- CUDA: state lives in ``OrtValue``s on the GPU, bound with IOBinding; the
  outputs go to a second, pre-allocated set (double buffering) and the sets
  swap after a good step. Only the loss (and metrics) come back to the host.

ONNX Runtime sessions are created lazily, at the first step of each batch
shape, from a copy of the step model whose symbolic batch dims are written in
as the fed values (``pinned_model``): session creation of an unrolled
recurrent step under a symbolic batch grows steeply with the length
(docs/performance.md: 100 steps 15 s symbolic, 2.9 s with ORT's
``add_free_dimension_override_by_name``, 1.5 s with the dims fixed in the
model). A step graph of more than ``LEAN_SESSION_NODES`` nodes gets a lean
session (``lean_options``: no graph optimisations, no memory-reuse planning):
at 22.5k nodes creation took 2.5 s lean against 11.5 s with them, and the
step was no faster (docs/performance.md). Up to ``MAX_PINNED_SESSIONS`` shapes get a pinned
session each (a last, smaller batch builds a second one); any further shape
runs on one shared session with the dims left symbolic, so varying shapes
(sequence lengths) never rebuild a session per step. All sessions share the
one carried state; on the IOBinding path each session has its own two
bindings over the same two buffer sets. Which provider loads is settled at
construction (a tiny probe session when CUDA is among the providers), so
"CUDA requested but it cannot load" is still raised when the Trainer is built.

A non-finite loss or gradient leaves the state as it was before the step
(the new values are simply not adopted) and raises
:class:`NonFiniteLossError`, or, with ``nan_policy="skip"``, is counted and
skipped. A step that fails in ONNX Runtime raises ``runtime.run_errors.RunError``
(naming the graphc operation and the user's line) and changes nothing either.

Adoption is one reference swap: the current state and the step count live
together in one immutable record (:class:`_Adopted`), replaced by a single
assignment after a good step, so an interrupt (Ctrl-C) anywhere leaves either
the old state or the new one, never a mix.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort

from passes.names import BATCH_INPUTS_KEY, GRAD_CHECK, STATE_PAIRS_KEY, STEP  # runtime's one import of passes
from runtime.input_files import check_feeds, input_specs
from runtime.providers import (
    CPU,
    CUDA,
    announce_auto_choice,
    capture_native_stderr,
    check_session_providers,
    resolve_providers,
)
from runtime.device_branches import then_branches_inlined
from runtime.run_errors import class_index_check, quiet_run_options, run_session, translate


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step was NaN or infinite; the step was not applied."""


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


MAX_PINNED_SESSIONS = 4  # batch shapes that get a session of their own; further shapes share a symbolic one

# Above this many nodes a training step gets lean_options. Chosen by measurement (docs/performance.md,
# "Trainer build of long unrolled steps"): the unrolled LSTM step at 2.4k / 7.7k / 22.5k nodes took 0.18 /
# 1.5 / 11.5 s to create with every optimisation and 0.10 / 0.42 / 2.5 s lean, its step time the same within
# the noise; the small CNN steps (~300 nodes) keep ORT_ENABLE_ALL (lean, the padded CNN's step was ~4% slower).
LEAN_SESSION_NODES = 5000


def lean_options(options: ort.SessionOptions) -> ort.SessionOptions:
    """``options`` for a very large step graph: no graph optimisations, no memory-reuse planning.

    Both grow faster than linearly with the node count in ONNX Runtime's session creation (the
    transformers each walk and re-resolve the whole graph; the reuse planner took 3 of 5.3 s at 22.5k
    nodes), and neither made the unrolled recurrent steps faster; peak memory did not grow either.
    """
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_mem_reuse = False
    return options


def pinned_model(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose symbolic dims named in ``dims`` are fixed values (inputs, outputs, value_info).

    Fixed in the model rather than by ``SessionOptions.add_free_dimension_override_by_name``: measured
    ~2x faster to create (300 unrolled LSTM steps: 11.5 vs 21.6 s), the step the same
    (docs/performance.md). The value_info entries are fixed too, not dropped: without them creation was
    slower (1.95 vs 1.60 s at 100 steps).
    """
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    graph = pinned.graph
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = int(dims[dim.dim_param])  # setting the value clears the name (a oneof)
    return pinned


def create_session(model: onnx.ModelProto | bytes, provider: str, threads: int | None = None,
                   dims: dict[str, int] | None = None, lean: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime session on ``provider``; "cuda" that cannot load raises instead of falling back.

    ``dims`` pins symbolic dims by name (``{"batch": 64}``) for the session's life (``pinned_model``);
    ``lean`` creates it with ``lean_options`` (what a training step above ``LEAN_SESSION_NODES`` nodes gets).
    """
    providers = resolve_providers(provider)
    if dims:
        model = pinned_model(model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model), dims)
    if provider != "cpu":  # a device (or "auto", which may take one): no host-read If conditions
        model = then_branches_inlined(model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model))
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = session_options(threads)
    if lean:
        lean_options(options)
    with capture_native_stderr() as log:
        session = ort.InferenceSession(data, options, providers=providers)
    check_session_providers(session, provider, log.text)
    announce_auto_choice(session, provider, log.text)
    return session


class _FastFeedCheck:
    """Per-step check of batch feeds: a few comparisons; the full message comes from ``check_feeds``."""

    def __init__(self, specs):
        self.specs = specs
        self.expected = [(s.name, s.dtype, s.shape) for s in specs]

    def __call__(self, feeds: dict) -> dict:
        """The feeds to run with: as given when they fit exactly, else converted by ``check_feeds``."""
        ok = len(feeds) == len(self.expected)
        dims: dict[str, int] = {}
        if ok:
            for name, dtype, shape in self.expected:
                array = feeds.get(name)
                if type(array) is not np.ndarray or array.dtype != dtype or array.ndim != len(shape):
                    ok = False
                    break
                for want, got in zip(shape, array.shape):
                    if isinstance(want, int):
                        if want != got:
                            ok = False
                    elif want is not None and dims.setdefault(want, got) != got:
                        ok = False
        if ok:
            return feeds
        # Lists, memmaps and other array-likes land here too: check_feeds converts them, or raises with
        # the precise message (name, expected and given).
        checked = check_feeds(self.specs, dict(feeds))
        return {k: np.require(v, requirements="C") for k, v in checked.items()}  # keeps 0-d arrays 0-d


def _probe_device(provider: str, threads: int | None) -> str:
    """The device ``provider`` gives a session here: "cpu" or "cuda" (raises if "cuda" cannot load).

    A one-node session, so that a provider that cannot load is reported at construction, before the
    (lazily built) step sessions exist.
    """
    if resolve_providers(provider) == [CPU]:
        return "cpu"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "probe", [value("x", onnx.TensorProto.FLOAT, [1])],
                                   [value("y", onnx.TensorProto.FLOAT, [1])])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    session = create_session(probe, provider, threads)
    return "cuda" if CUDA in session.get_providers() else "cpu"


class _Compiled(NamedTuple):
    """One ONNX Runtime session of the step, and its two IOBindings (A -> B, B -> A) on the bound path."""

    session: ort.InferenceSession
    bindings: list | None
    dims: dict | None  # the pinned dims; None: the symbolic dims left free


class _Adopted(NamedTuple):
    """The adopted state, replaced whole: never mutated, so one assignment switches old -> new."""

    arrays: dict | None  # plain-feeds path: state input name -> array
    buffer: int  # IOBinding path: index of the buffer set holding the current state
    steps: int  # host mirror of the "step" input: no device read per step


class TrainingSession:
    """Owns the ONNX Runtime session of a training step and the state carried between steps."""

    def __init__(self, model: onnx.ModelProto, initial_values: dict[str, np.ndarray], provider: str = "cpu",
                 nan_policy: str = "raise", threads: int | None = None, io_binding: bool | None = None):
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got {nan_policy!r}")
        meta = {p.key: p.value for p in model.metadata_props}
        self.state_pairs = [tuple(p) for p in json.loads(meta[STATE_PAIRS_KEY])]
        self.batch_inputs = json.loads(meta[BATCH_INPUTS_KEY])
        self.provider = provider
        self.nan_policy = nan_policy
        self.skipped_steps = 0
        self._model = model  # to name the failing operation when a step fails in ONNX Runtime
        self._threads = threads
        self.lean = len(model.graph.node) > LEAN_SESSION_NODES  # the step sessions' options: lean_options
        self.device = _probe_device(provider, threads)
        # "auto" that fell back to the CPU builds its step sessions for the CPU: no CUDA load tried again.
        self._provider = provider if self.device == "cuda" else "cpu"
        self._sessions: dict = {}  # dim values (tuple), or None for the symbolic session -> _Compiled
        self._last: _Compiled | None = None
        # IOBinding keeps state in OrtValues on the device (required on CUDA); on CPU plain feeds measured
        # faster, but the bound path can be chosen there too (the tests run it on CPU that way).
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self.output_names = [o.name for o in model.graph.output]  # a session lists its outputs in this order
        state_inputs = {i for i, _ in self.state_pairs}
        specs = [s for s in input_specs(model) if s.name in set(self.batch_inputs)]
        self._check = _FastFeedCheck(specs)
        # Where each symbolic dim of the batch inputs is read from a fed batch (first input that has it).
        self._dim_axes: dict[str, tuple[str, int]] = {}
        for spec in specs:
            for axis, dim in enumerate(spec.shape or ()):
                if isinstance(dim, str):
                    self._dim_axes.setdefault(dim, (spec.name, axis))
        self._source_of = {out: inp for inp, out in self.state_pairs}
        self._result_names = [n for n in self.output_names if n not in self._source_of]
        missing = state_inputs - set(initial_values)
        if missing:
            raise ValueError(f"no initial value for state inputs {sorted(missing)}")
        self._dtypes = {name: initial_values[name].dtype for name in state_inputs}
        self._extra_inputs = {k: np.asarray(v) for k, v in initial_values.items() if k not in state_inputs}
        steps = int(initial_values.get(STEP, 0))
        if self.io_binding:
            self._init_bound(initial_values)
            self._now = _Adopted(None, 0, steps)
        else:
            self._now = _Adopted({name: np.array(initial_values[name], copy=True) for name in state_inputs}, 0, steps)

    @property
    def steps(self) -> int:
        """Steps adopted so far."""
        return self._now.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self._now = self._now._replace(steps=int(value))  # one swap, as adoption

    @property
    def session(self) -> ort.InferenceSession | None:
        """The ONNX Runtime session of the latest step (None before the first step: sessions are lazy)."""
        return None if self._last is None else self._last.session

    def sessions(self) -> list:
        """The sessions built so far, as ``(pinned dims, session)``: ``({"batch": 64}, s)``; None: symbolic."""
        return [(c.dims, c.session) for c in self._sessions.values()]

    def _compiled(self, batch: dict) -> _Compiled:
        """The session for this batch's symbolic dims: cached, else built pinned to them (see the docstring)."""
        key = tuple(batch[name].shape[axis] for name, axis in self._dim_axes.values())
        compiled = self._sessions.get(key)
        if compiled is not None:
            return compiled
        # A zero dim stays symbolic: an empty batch is refused at its loss anyway (0/0), pinning it buys nothing.
        if 0 not in key and sum(c.dims is not None for c in self._sessions.values()) < MAX_PINNED_SESSIONS:
            try:
                compiled = self._build(dict(zip(self._dim_axes, key)))
            except Exception:  # noqa: BLE001 - ORT's pybind errors share no base but Exception
                # Shape inference refused these dims (a batch the graph cannot take, e.g. a reshape to a
                # fixed size): the symbolic session below raises the run-time error in graphc's terms.
                compiled = None
            if compiled is not None:
                self._sessions[key] = compiled  # one assignment: an interrupt before it only means a rebuild
                return compiled
        compiled = self._sessions.get(None)
        if compiled is None:
            compiled = self._sessions[None] = self._build(None)
        return compiled

    def _build(self, dims: dict | None) -> _Compiled:
        # Serialised per build (a few per Trainer), not kept: bytes beside the ModelProto would double its memory.
        session = create_session(self._model, self._provider, self._threads, dims, lean=self.lean)
        return _Compiled(session, self._bind(session) if self.io_binding else None, dims)

    @property
    def state(self) -> dict:
        """The current state arrays of the plain-feeds path (do not mutate: adoption swaps the whole dict)."""
        return self._now.arrays

    # ---- one step -----------------------------------------------------
    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One training step; returns the loss and other non-state outputs (host numpy arrays)."""
        batch = self._check(batch)
        compiled = self._last = self._compiled(batch)
        if self.io_binding:
            return self._run_bound(compiled, batch)
        now = self._now
        outputs = run_session(compiled.session, self.output_names, {**batch, **self._extra_inputs, **now.arrays},
                              self._model, "training step")
        results = dict(zip(self.output_names, outputs))
        if self._finite(results, now.steps):
            adopted = _Adopted({inp: results[out] for inp, out in self.state_pairs}, 0, now.steps + 1)
            self._now = adopted  # the one assignment that adopts the step (see the module docstring)
        return {n: results[n] for n in self._result_names}

    def _finite(self, results, steps: int) -> bool:
        """Whether the step may be adopted: a finite loss and finite gradients (``grad_check`` is 0)."""
        loss = float(results[self.output_names[0]])
        check = float(results[GRAD_CHECK]) if GRAD_CHECK in results else 0.0
        if math.isfinite(loss) and math.isfinite(check):
            return True
        if self.nan_policy == "skip":
            self.skipped_steps += 1
            return False
        what = f"the loss is {loss}" if not math.isfinite(loss) else \
            f"the loss is finite ({loss}) but a gradient or a carried statistic is not (NaN or infinite " \
            f"elements; a BatchNorm running variance is NaN for a batch with one value per channel)"
        raise NonFiniteLossError(
            f"{what} at step {steps + 1}; the update was not applied, parameters and optimizer "
            f"state keep their values from before this step (use nan_policy='skip' to skip such steps)")

    # ---- state access (parameters read back on demand) ------------------
    def read(self, name: str) -> np.ndarray:
        if self.io_binding:
            return self._current[name].numpy()
        return np.array(self.state[name], copy=True)

    def write(self, name: str, array: np.ndarray) -> None:
        array = np.require(np.asarray(array, dtype=self._dtypes[name]), requirements="C")  # keeps 0-d arrays 0-d
        now = self._now
        steps = int(array) if name == STEP else now.steps
        if self.io_binding:
            self._current[name].update_inplace(array)
            self._now = _Adopted(None, now.buffer, steps)
        else:
            self._now = _Adopted({**now.arrays, name: np.array(array, copy=True)}, 0, steps)  # one swap, as run

    def set_input(self, name: str, value) -> None:
        """Change a fed-every-step input that is not carried state (the learning rate ``lr``)."""
        if name not in self._extra_inputs:
            raise KeyError(f"{name!r} is not a settable input; settable: {sorted(self._extra_inputs)}")
        self._extra_inputs[name] = np.asarray(value, dtype=self._extra_inputs[name].dtype)

    def state_names(self) -> list[str]:
        return [inp for inp, _ in self.state_pairs]

    # ---- device-resident state with IOBinding, double-buffered (CUDA) ----
    def _init_bound(self, initial_values) -> None:
        """Two state buffers A and B on the device, shared by every session of the step."""

        def device_copy(array):
            # A fresh copy each: on CPU an OrtValue wraps the numpy memory, and the two buffers must not alias.
            return ort.OrtValue.ortvalue_from_numpy(np.array(array, order="C", copy=True), self.device, 0)

        self._buffers = [{inp: device_copy(initial_values[inp]) for inp, _ in self.state_pairs} for _ in range(2)]

    def _bind(self, session) -> list:
        """A session's two IOBindings over the shared buffers: A -> B and B -> A, bound once."""
        bindings = []
        for source, target in ((0, 1), (1, 0)):
            binding = session.io_binding()
            for name in self._result_names:  # bound first: get_outputs() lists them first
                binding.bind_output(name, "cpu")
            for inp, out in self.state_pairs:
                binding.bind_ortvalue_input(inp, self._buffers[source][inp])
                binding.bind_ortvalue_output(out, self._buffers[target][inp])
            bindings.append(binding)
        return bindings

    @property
    def _current(self) -> dict:
        return self._buffers[self._now.buffer]

    def _run_bound(self, compiled: _Compiled, batch):
        check = class_index_check(compiled.session, self._model)  # built once per session, kept on it
        if check is not None:
            check(batch)
        now = self._now
        binding = compiled.bindings[now.buffer]
        for name, array in {**batch, **self._extra_inputs}.items():
            binding.bind_cpu_input(name, np.require(array, requirements="C"))
        try:
            compiled.session.run_with_iobinding(binding, quiet_run_options())
        except Exception as exc:  # ORT's pybind errors; the outputs went to the other buffer, not adopted
            raise translate(exc, self._model, f"training step on {self.device}") from None
        outputs = binding.get_outputs()  # results were bound first, in order
        results = {name: outputs[i].numpy() for i, name in enumerate(self._result_names)}
        if self._finite(results, now.steps):
            # The step's outputs (the other buffer) become the state, with the count, in one assignment.
            self._now = _Adopted(None, now.buffer ^ 1, now.steps + 1)
        return results
