"""``gc.Trainer``: compiles loss + optimizer into one training-step graph and runs it on ONNX Runtime.

Build: the forward graph of ``loss`` (and metrics) -> ``passes.training_step``
(autodiff + optimizer update) -> ``runtime.TrainingSession``, which keeps
parameters and optimizer state on the device. The trained Parameters read
their values from the session on demand, so ``model.state_dict()`` is
current without a per-step copy.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from tqdm.auto import tqdm

from graphc.errors import GraphcError
from graphc.history import History, plot_history, require_matplotlib
from graphc.nn.parameter import Parameter, mark_values_changed, requires_grad_version
from graphc.optim import Optimizer
from graphc.program import build_model, for_export, to_proto
from graphc.random import key_for_step
from graphc.state import updates_computed_with
from graphc import distributed
from graphc.tensor import Tensor
from passes.batch_norm_primitives import BatchNormTrainingToPrimitivesPass
from passes.names import GRAD_CHECK, GRAD_NORM, LOSS, LR, PARAMETER_KEY, RNG_KEY, SEED, STEP
from passes.portable_step import PortableStepPass, seed_value, state_model
from passes.state_layout import per_parameter_state, regroup_state
from passes.training_step import build_training_step
from runtime.atomic import atomic_write
from runtime.checkpoint import (
    CheckpointError,
    check_optimizer,
    check_training_metadata,
    load_checkpoint,
    plain_hparams,
    save_checkpoint,
)
from runtime.training_session import NonFiniteLossError, TrainingSession

# Checkpoint arrays named so hold the optimizer slots of a parameter frozen after it trained (kept aside
# until it trains again, as torch.optim keeps them): without them a resumed run would restart them at zero.
PARKED_PREFIX = "parked:"

__all__ = ["Trainer", "NonFiniteLossError", "CheckpointError"]


class _LiveParameters:
    """The bridge a Parameter uses to read/write its value inside a running TrainingSession."""

    def __init__(self, session: TrainingSession, names: dict[int, str]):
        self.session = session
        self.names = names

    def read(self, param: Parameter) -> np.ndarray:
        return self.session.read(self.names[id(param)])

    def write(self, param: Parameter, array: np.ndarray) -> None:
        self.session.write(self.names[id(param)], array)


class Trainer:
    """Runs training steps of ``loss`` with ``optimizer`` as single ONNX Runtime calls.

    Args:
        loss: a scalar Tensor built from ``inputs`` and parameters.
        optimizer: a ``gc.optim`` optimizer over the parameters to train.
        inputs: the batch inputs (``gc.input`` tensors), fed by name to ``step``.
        provider: "cpu", "cuda" or "auto".
        seed: fixes every random draw of the step (dropout masks).
        metrics: extra scalar or batch outputs computed with the loss, returned by ``last_metrics``.
        max_grad_norm: clip gradients by global norm (``clip_grad_norm_``); the norm is in ``last_metrics``.
        nan_policy: "raise" (default) or "skip" for steps whose loss is not finite.
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
        fuse_update: update all parameters as one concatenated vector (state inputs are then
            ``optimizer.<slot>`` instead of ``<param>.<slot>``). Off by default: on the MLP benchmark it
            measured no faster for Adam (the Concat/Split copies cost what the fewer launches save)
            and slower for SGD.
        io_binding: keep the state in device OrtValues bound with IOBinding (default: on CUDA only;
            on CPU plain numpy feeds measured faster).
        distributed: data-parallel over the MPI world of ``gc.distributed`` (initialised if needed):
            rank 0's parameters at build, gradients averaged every step, writes from rank 0 only
            (``graphc.distributed``, ``docs/distributed.md``).
    """

    def __init__(self, loss: Tensor, optimizer: Optimizer, inputs: Sequence[Tensor], provider: str = "cpu",
                 seed: int = 0, metrics: Mapping[str, Tensor] | None = None, max_grad_norm: float | None = None,
                 nan_policy: str = "raise", threads: int | None = None, fuse_update: bool = False,
                 io_binding: bool | None = None, distributed: bool = False):
        if not isinstance(loss, Tensor) or loss.shape != ():
            raise ValueError(f"the loss must be a scalar Tensor, got {loss!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a gc.optim optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.seed = seed
        self.input_names = [t.name for t in inputs]
        self._build_args = dict(loss=loss, inputs=list(inputs), metrics=dict(metrics or {}),
                                max_grad_norm=max_grad_norm, fuse_update=fuse_update)
        self._session_args = dict(provider=provider, nan_policy=nan_policy, threads=threads,
                                  io_binding=io_binding)
        self._parked: dict[str, np.ndarray] = {}  # optimizer state of parameters frozen since the build
        self._distributed = bool(distributed)
        self._build()
        self.last_metrics: dict[str, np.ndarray] = {}
        self._loader = None
        optimizer._lr_listeners.append(lambda lr: self.session.set_input(LR, lr))

    def _build(self) -> None:
        """Build the step for the parameters that require grad now, and its session.

        On a rebuild (a parameter was frozen or unfrozen since), every piece of state carries over:
        parameters, BatchNorm statistics, step, and each parameter's optimizer slots (a frozen
        parameter's slots are kept aside until it trains again, as torch.optim keeps them).
        """
        args, optimizer = self._build_args, self.optimizer
        outputs = {LOSS: args["loss"], **args["metrics"]}
        updates = updates_computed_with(list(outputs.values()))
        update_outputs = {f"graphc.state_update.{i}": u.value for i, u in enumerate(updates)}
        forward = build_model(args["inputs"], {**outputs, **update_outputs}, doc_string="graphc training step",
                              allow_random=True)
        self._random = RNG_KEY in [v.name for v in forward.graph.inputs]
        if self._session_args["provider"] != "cpu":  # GPU kernels' training-mode BatchNorm: see the pass
            BatchNormTrainingToPrimitivesPass()(forward)
        names = self._graph_names(forward, optimizer.params)
        if not names:
            raise GraphcError(f"none of the {len(optimizer.params)} parameters of the optimizer reach the loss: "
                              f"it was built over another model's parameters (pass model.parameters() of the "
                              f"model that computes the loss)")
        trained = {k: v for k, v in names.items() if self._by_id(k).requires_grad}
        if not trained:
            raise GraphcError("every parameter of the optimizer that reaches the loss is frozen "
                              "(requires_grad=False): there is nothing to train")
        frozen = [v for k, v in names.items() if k not in trained]
        state_names = self._graph_names(forward, [u.buffer for u in updates])
        state_updates = {state_names[id(u.buffer)]: key for u, key in zip(updates, update_outputs)}
        split_source = forward.clone() if self._distributed else None  # the data-parallel step's source
        step = build_training_step(forward, list(trained.values()), optimizer.config,
                                   max_grad_norm=args["max_grad_norm"], fuse_update=args["fuse_update"],
                                   state_updates=state_updates, frozen=frozen)
        step.model.doc_string = ("graphc training step: forward, backward and optimizer update in standard "
                                 "ai.onnx ops. Inputs: batch, parameters, optimizer state, step, lr; "
                                 "outputs: loss, metrics, then '<input>.updated' for every carried input.")
        initial = dict(step.initial_values)
        old = getattr(self, "session", None)
        if old is not None:
            current = per_parameter_state({n: old.read(n) for n in old.state_names()}, self._flat_layouts)
            carried = {n: v for n, v in initial.items() if n in dict(step.state_pairs)}
            values, unused = regroup_state({**self._parked, **current}, carried, step.flat_layouts)
            initial.update(values)
        step_model: onnx.ModelProto = to_proto(step.model)
        session = TrainingSession(step_model, initial, **self._session_args) if split_source is None else \
            distributed.build_session(split_source, list(trained.values()), frozen, state_updates, optimizer.config,
                                      initial, args, self._session_args, RNG_KEY if self._random else None)
        if old is not None:
            session.skipped_steps = old.skipped_steps
            self._parked = unused
        self.step_model, self.session, self._flat_layouts = step_model, session, step.flat_layouts
        self._frozen_names = list(frozen)
        self._built_for = requires_grad_version()
        self.metric_names = step.extra_outputs + ([GRAD_NORM] if args["max_grad_norm"] is not None else [])
        live = _LiveParameters(self.session, {**names, **state_names})
        for param in [*optimizer.params, *(u.buffer for u in updates)]:
            if id(param) in live.names:
                param._live = live

    def _by_id(self, key: int) -> Parameter:
        return next(p for p in self.optimizer.params if id(p) == key)

    def _follow_requires_grad(self) -> None:
        """Rebuild the step when a parameter was frozen or unfrozen since the last build."""
        if self._built_for != requires_grad_version():
            self._build()

    @staticmethod
    def _graph_names(forward: ir.Model, params: Sequence[Parameter]) -> dict[int, str]:
        """Initializer names of those ``params`` the model uses (unused ones get no gradient, as in torch)."""
        by_param = {}
        for value in forward.graph.initializers.values():
            param = value.meta.get(PARAMETER_KEY)
            if param is not None:
                by_param[id(param)] = value.name
        return {id(p): by_param[id(p)] for p in params if id(p) in by_param}

    # ---- stepping -------------------------------------------------------
    def step(self, feeds: Mapping[str, np.ndarray]) -> float:
        """One training step (forward, backward, update) on a batch; returns the loss.

        ``feeds`` is a dict by input name, or a tuple/list in the order of ``inputs`` (as ``fit`` takes
        batches). A step that fails (bad feeds, a RunError, a non-finite loss) changes nothing.
        """
        self._follow_requires_grad()
        if isinstance(feeds, (tuple, list)):
            if len(feeds) != len(self.input_names):
                raise ValueError(f"trainer.step got a {type(feeds).__name__} of {len(feeds)} arrays; expected "
                                 f"{len(self.input_names)}, in the order of inputs {self.input_names} (or a dict "
                                 f"by input name)")
            feeds = dict(zip(self.input_names, feeds))
        elif isinstance(feeds, Mapping):
            feeds = dict(feeds)
        else:
            raise TypeError(f"trainer.step expects a dict {{input name: array}} or a tuple in the order of "
                            f"inputs {self.input_names}, got {type(feeds).__name__}")
        if self._random:
            feeds[RNG_KEY] = key_for_step(self.seed, self.steps_done)
        results = self.session.run(feeds)
        mark_values_changed()  # compiled Programs take the new parameter values at their next run
        loss = results.pop(LOSS)
        results.pop(GRAD_CHECK, None)  # the runtime's finiteness check, not a user metric
        self.last_metrics = results
        return float(loss)

    @property
    def steps_done(self) -> int:
        return self.session.steps

    @property
    def skipped_steps(self) -> int:
        return self.session.skipped_steps

    @property
    def history(self) -> History:
        """Per-step and per-epoch records of the latest ``fit`` (empty before any); see ``graphc.history``."""
        return self.__dict__.setdefault("_history", History())

    def fit(self, loader, epochs: int = 1, *, validate: Callable[[], dict] | None = None,
            monitor: str = "val_loss", mode: str = "min", patience: int | None = None,
            progress: bool = True, plot=None) -> list[dict]:
        """Train for ``epochs`` over ``loader`` with a progress bar; returns one record per epoch.

        ``loader`` yields tuples in the order of ``inputs``, dicts by input name, or (one input) arrays.
        ``validate()`` returns metrics merged into each epoch's record; with ``patience``, training stops
        early when ``monitor`` has not improved (``mode`` "min" or "max") for that many epochs. An epoch
        that applied no step (an empty or exhausted loader, every step skipped by ``nan_policy="skip"``)
        has loss NaN, with a warning, and a NaN ``monitor`` value never counts as an improvement.
        ``trainer.history`` keeps this fit's per-step and per-epoch records; ``plot="curves.png"`` writes
        them as a figure when ``fit`` ends (needs matplotlib: ``pip install "graphc[plot]"``).
        """
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if plot is not None:
            require_matplotlib()  # before training, not after an hour of it
        progress = progress and distributed.is_rank_zero(self)  # one progress bar: rank 0's
        self._loader = loader
        history = self.__dict__["_history"] = History()
        best, waited = None, 0
        for epoch in range(1, epochs + 1):
            total, count, batches = 0.0, 0, 0
            bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False,
                       dynamic_ncols=True)
            for batch in bar:
                batches += 1
                lr = float(self.optimizer.lr)
                loss = self.step(batch if isinstance(batch, (dict, tuple, list)) else (batch,))
                step_record = {"step": len(history.steps) + 1, "epoch": epoch, "loss": loss, "lr": lr,
                               "skipped": not math.isfinite(loss)}
                step_record.update({k: float(np.asarray(v).reshape(())) for k, v in self.last_metrics.items()
                                    if np.size(v) == 1})
                history.steps.append(step_record)
                if math.isfinite(loss):  # a skipped non-finite step (nan_policy="skip") is not averaged in
                    total += loss
                    count += 1
                    if count % 10 == 0:
                        bar.set_postfix(loss=f"{total / count:.4f}")
            if count == 0:
                self._warn_no_step(epoch, loader, batches)
            record = {"epoch": epoch, "loss": total / count if count else math.nan}
            if validate is not None:
                record.update(validate())
            history.epochs.append(record)
            if progress:
                tqdm.write("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in record.items()))
            if patience is not None:
                if monitor not in record:
                    raise KeyError(f"early stopping monitors {monitor!r}, but the epoch record has {sorted(record)}")
                value = distributed.rank_zero_value(self, record[monitor])  # every rank stops alike
                improved = not (isinstance(value, float) and math.isnan(value)) and (
                    best is None or (value < best if mode == "min" else value > best))
                if improved:
                    best, waited = value, 0
                else:
                    waited += 1
                    if waited >= patience:
                        if progress:
                            tqdm.write(f"early stopping: {monitor} did not improve for {patience} epochs")
                        break
        if plot is not None:
            plot_history(history, plot)
        return history.epochs

    @staticmethod
    def _warn_no_step(epoch: int, loader, batches: int) -> None:
        if batches:
            why = f"all {batches} steps had a non-finite loss and were skipped (nan_policy='skip')"
        elif isinstance(loader, Iterator):  # not iter(loader): that would start a DataLoader epoch
            why = ("the loader yielded no batches: it is an iterator (a generator?), exhausted after one pass; "
                   "pass a DataLoader or a list to train several epochs")
        else:
            why = "the loader yielded no batches"
        warnings.warn(f"fit: epoch {epoch} applied no training step ({why}); its loss is NaN", RuntimeWarning,
                      stacklevel=3)

    # ---- checkpoints ------------------------------------------------------
    @distributed.rank_zero_writes("save_checkpoint")
    def save_checkpoint(self, path, loader=None) -> None:
        """Atomically save parameters, optimizer state and hyperparameters, step, lr, seed, the lr
        schedulers' states and (if any) the data position.

        ``loader`` defaults to the one last driven by ``fit``; its position is saved when it has
        ``state_dict``/``load_state_dict`` (a DataLoader), not for a plain list of batches.
        """
        self._follow_requires_grad()
        loader = loader if loader is not None else self._loader
        resumable = hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")
        arrays = {name: self.session.read(name) for name in self.session.state_names()}
        arrays.update({PARKED_PREFIX + name: array for name, array in self._parked.items()})
        metadata = {
            "steps_done": self.steps_done,
            "lr": float(self.optimizer.lr),
            "seed": self.seed,
            "optimizer": {"kind": self.optimizer.config.kind, "hparams": plain_hparams(self.optimizer.hparams)},
            "skipped_steps": self.skipped_steps,
            "data": loader.state_dict() if resumable else None,
            "schedulers": [s.state_dict() for s in self.optimizer._schedulers],
        }
        check_training_metadata(path, metadata)  # never write a checkpoint that load_checkpoint would refuse
        save_checkpoint(path, arrays, metadata)

    def load_checkpoint(self, path, loader=None) -> None:
        """Restore a checkpoint; everything is verified before anything changes.

        Names, shapes, dtypes, checksums, every metadata field, the optimizer and its
        hyperparameters, the schedulers' states and the data position must fit this Trainer;
        otherwise ``CheckpointError`` says what differs and the trainer, the model, the
        schedulers and ``loader`` keep their state.
        """
        self._follow_requires_grad()  # the state inputs depend on which parameters are frozen
        loader = loader if loader is not None else self._loader
        expected = {}
        for name in self.session.state_names():
            current = self.session.read(name)
            expected[name] = (current.dtype, current.shape)
        try:  # names/shapes checked before decompressing
            arrays, metadata = load_checkpoint(path, expected=expected, optional=self._parkable_slots())
        except CheckpointError as exc:
            message = str(exc)
            unexpected = message.partition("unexpected [")[2]
            if "missing []" not in message or f"'{PARKED_PREFIX}" not in unexpected:
                raise
            raise CheckpointError(f"{exc} ('{PARKED_PREFIX}' arrays are the optimizer slots of parameters that "
                                  f"were frozen when it was saved: freeze the same parameters before loading "
                                  f"it)") from None
        meta = check_training_metadata(path, metadata)
        check_optimizer(path, meta["optimizer"], self.optimizer.config.kind, self.optimizer.hparams)
        if STEP in arrays and int(arrays[STEP]) != meta["steps_done"]:
            raise CheckpointError(f"checkpoint {str(path)!r}: the step array says {int(arrays[STEP])}, the "
                                  f"metadata says steps_done={meta['steps_done']} (inconsistent)")
        schedulers = self.optimizer._schedulers
        if len(meta["schedulers"]) != len(schedulers):
            raise CheckpointError(f"checkpoint {str(path)!r} holds {len(meta['schedulers'])} lr scheduler state(s), "
                                  f"this optimizer has {len(schedulers)} scheduler(s) attached")
        for index, (scheduler, state) in enumerate(zip(schedulers, meta["schedulers"])):
            try:
                scheduler.check_state_dict(state)
            except (ValueError, TypeError, KeyError) as exc:
                raise CheckpointError(f"checkpoint {str(path)!r}: scheduler {index} "
                                      f"({type(scheduler).__name__}): {exc}") from None
        if meta["data"] is not None and hasattr(loader, "load_state_dict"):
            try:  # the first change, and DataLoader validates before changing: a refusal leaves all as it was
                loader.load_state_dict(meta["data"])
            except (ValueError, TypeError, KeyError) as exc:
                raise CheckpointError(f"checkpoint {str(path)!r}: the data position does not fit this loader: "
                                      f"{exc}") from None
        parked = {name[len(PARKED_PREFIX):]: array for name, array in arrays.items() if name.startswith(PARKED_PREFIX)}
        for name, array in arrays.items():
            if not name.startswith(PARKED_PREFIX):
                self.session.write(name, array)
        self._parked = parked  # exactly the file's: slots it does not hold start from zero again, as torch's
        if STEP not in arrays:  # no optimizer slot counts steps (plain SGD): the host count is the step
            self.session.steps = meta["steps_done"]
        self.optimizer.lr = meta["lr"]
        self.seed = meta["seed"]  # dropout masks continue the saved stream
        self.session.skipped_steps = meta["skipped_steps"]
        for scheduler, state in zip(schedulers, meta["schedulers"]):
            scheduler.load_state_dict(state)
        mark_values_changed()  # compiled Programs take the restored parameters at their next run

    def _parkable_slots(self) -> dict[str, tuple]:
        """``{checkpoint name: (dtype, shape)}`` of every optimizer slot a frozen parameter may hold aside."""
        config = self.optimizer.config
        slots = config.spec.slots(config.hparams)
        out = {}
        for name in self._frozen_names:
            value = self.session.read(name)
            out.update({f"{PARKED_PREFIX}{name}.{slot}": (value.dtype, value.shape) for slot in slots})
        return out

    # ---- export -----------------------------------------------------------
    def training_model(self) -> onnx.ModelProto:
        """The training step as a portable model: the batch and every piece of state are plain inputs.

        State inputs (no initializers): parameters, optimizer slots, ``step``, ``lr`` and, for a step
        that draws random numbers, ``seed``, from which the graph derives each step's dropout key as
        ``trainer.step`` does (``passes.portable_step``). Outputs: ``loss``, the metrics (and
        ``grad_check``: 0 when every gradient is finite, else NaN), then ``<name>.updated`` for each
        state input that changes. ``state_model()`` holds the current values of the state inputs.
        """
        self._follow_requires_grad()
        model = ir.from_proto(copy.deepcopy(self.step_model))  # the IR may share the proto's buffers
        PortableStepPass(key_name=RNG_KEY)(model)
        BatchNormTrainingToPrimitivesPass()(model)  # no read-back of statistics that only the CPU kernel gives
        return to_proto(model)

    def state_model(self) -> onnx.ModelProto:
        """A model with no inputs whose outputs are the current values of ``training_model()``'s state inputs."""
        self._follow_requires_grad()
        values = {name: self.session.read(name) for name in self.session.state_names()}
        values[LR] = np.asarray(self.optimizer.lr, dtype=self.session._extra_inputs[LR].dtype)
        if self._random:  # the graph derives the key of step s from (seed, s), as trainer.step does
            values[SEED] = seed_value(self.seed)
        return to_proto(state_model(values, doc_string="graphc training state: the current value of every "
                                                       "state input of the training step, named as that input"))

    @distributed.rank_zero_writes("trainer.save")
    def save(self, path) -> None:
        """Write the training step ``path`` and its state ``<stem>.state.onnx`` beside it, as standard ONNX.

        Any ONNX Runtime binding trains with ``state = state_model.run({})``, then repeatedly
        ``out = step.run({**batch, **state})`` and ``state[name] = out[name + ".updated"]`` for every
        ``.updated`` output. Both files pass ``onnx.checker`` (full check) and are written atomically.
        """
        path = os.fspath(path)
        models = {path: self.training_model(), state_path(path): self.state_model()}
        for target, model in models.items():
            model = for_export(model)
            onnx.checker.check_model(model, full_check=True)
            atomic_write(target, lambda handle, model=model: handle.write(model.SerializeToString()))


def state_path(step_path) -> str:
    """Where ``Trainer.save(step_path)`` writes the state model: ``step.onnx`` -> ``step.state.onnx``."""
    step_path = os.fspath(step_path)
    stem = step_path[:-len(".onnx")] if step_path.endswith(".onnx") else step_path
    return stem + ".state.onnx"
