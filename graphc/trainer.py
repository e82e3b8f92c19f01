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
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from tqdm.auto import tqdm

from graphc.nn.parameter import Parameter
from graphc.optim import Optimizer
from graphc.program import build_model, to_proto
from graphc.random import RNG_KEY, key_for_step
from graphc.state import updates_computed_with
from graphc.tensor import Tensor
from passes.training_step import build_training_step
from runtime.atomic import atomic_write
from runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from runtime.training_session import NonFiniteLossError, TrainingSession

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
    """

    def __init__(self, loss: Tensor, optimizer: Optimizer, inputs: Sequence[Tensor], provider: str = "cpu",
                 seed: int = 0, metrics: Mapping[str, Tensor] | None = None, max_grad_norm: float | None = None,
                 nan_policy: str = "raise", threads: int | None = None, fuse_update: bool = False,
                 io_binding: bool | None = None):
        if not isinstance(loss, Tensor) or loss.shape != ():
            raise ValueError(f"the loss must be a scalar Tensor, got {loss!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a gc.optim optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.seed = seed
        self.input_names = [t.name for t in inputs]
        outputs = {"loss": loss, **dict(metrics or {})}
        updates = updates_computed_with(list(outputs.values()))
        update_outputs = {f"graphc.state_update.{i}": u.value for i, u in enumerate(updates)}
        forward = build_model(list(inputs), {**outputs, **update_outputs}, doc_string="graphc training step",
                              allow_random=True)
        self._random = RNG_KEY in [v.name for v in forward.graph.inputs]
        names = self._graph_names(forward, optimizer.params)
        state_names = self._graph_names(forward, [u.buffer for u in updates])
        state_updates = {state_names[id(u.buffer)]: key for u, key in zip(updates, update_outputs)}
        step = build_training_step(forward, list(names.values()), optimizer.config, max_grad_norm=max_grad_norm,
                                   fuse_update=fuse_update, state_updates=state_updates)
        step.model.doc_string = ("graphc training step: forward, backward and optimizer update in standard "
                                 "ai.onnx ops. Inputs: batch, parameters, optimizer state, step, lr; "
                                 "outputs: loss, metrics, then '<input>.updated' for every carried input.")
        self.step_model: onnx.ModelProto = to_proto(step.model)
        self.session = TrainingSession(self.step_model, step.initial_values, provider, nan_policy, threads,
                                       io_binding)
        self.metric_names = step.extra_outputs + (["grad_norm"] if max_grad_norm is not None else [])
        self.last_metrics: dict[str, np.ndarray] = {}
        self._loader = None
        live = _LiveParameters(self.session, {**names, **state_names})
        for param in [*optimizer.params, *(u.buffer for u in updates)]:
            if id(param) in live.names:
                param._live = live
        optimizer._lr_listeners.append(lambda lr: self.session.set_input("lr", lr))

    @staticmethod
    def _graph_names(forward: ir.Model, params: Sequence[Parameter]) -> dict[int, str]:
        """Initializer names of those ``params`` the model uses (unused ones get no gradient, as in torch)."""
        by_param = {}
        for value in forward.graph.initializers.values():
            param = value.meta.get("graphc.parameter")
            if param is not None:
                by_param[id(param)] = value.name
        return {id(p): by_param[id(p)] for p in params if id(p) in by_param}

    # ---- stepping -------------------------------------------------------
    def step(self, feeds: Mapping[str, np.ndarray]) -> float:
        """One training step (forward, backward, update) on a batch; returns the loss."""
        feeds = dict(feeds)
        if self._random:
            feeds[RNG_KEY] = key_for_step(self.seed, self.steps_done)
        results = self.session.run(feeds)
        loss = results.pop("loss")
        results.pop("grad_sum", None)  # the runtime's finiteness check, not a user metric
        self.last_metrics = results
        return float(loss)

    @property
    def steps_done(self) -> int:
        return self.session.steps

    @property
    def skipped_steps(self) -> int:
        return self.session.skipped_steps

    def fit(self, loader, epochs: int = 1, *, validate: Callable[[], dict] | None = None,
            monitor: str = "val_loss", mode: str = "min", patience: int | None = None,
            progress: bool = True) -> list[dict]:
        """Train for ``epochs`` over ``loader`` with a progress bar; returns one record per epoch.

        ``loader`` yields tuples in the order of ``inputs`` (or dicts by input
        name). ``validate()`` returns metrics merged into each epoch's record;
        with ``patience``, training stops early when ``monitor`` has not
        improved (``mode`` "min" or "max") for that many epochs.
        """
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self._loader = loader
        history: list[dict] = []
        best, waited = None, 0
        for epoch in range(1, epochs + 1):
            total, count = 0.0, 0
            bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False,
                       dynamic_ncols=True)
            for batch in bar:
                feeds = batch if isinstance(batch, dict) else dict(zip(self.input_names, batch))
                loss = self.step(feeds)
                if math.isfinite(loss):  # a skipped non-finite step (nan_policy="skip") is not averaged in
                    total += loss
                    count += 1
                    if count % 10 == 0:
                        bar.set_postfix(loss=f"{total / count:.4f}")
            record = {"epoch": epoch, "loss": total / max(count, 1)}
            if validate is not None:
                record.update(validate())
            history.append(record)
            if progress:
                tqdm.write("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in record.items()))
            if patience is not None:
                if monitor not in record:
                    raise KeyError(f"early stopping monitors {monitor!r}, but the epoch record has {sorted(record)}")
                value = record[monitor]
                if best is None or (value < best if mode == "min" else value > best):
                    best, waited = value, 0
                else:
                    waited += 1
                    if waited >= patience:
                        if progress:
                            tqdm.write(f"early stopping: {monitor} did not improve for {patience} epochs")
                        break
        return history

    # ---- checkpoints ------------------------------------------------------
    def save_checkpoint(self, path, loader=None) -> None:
        """Atomically save parameters, optimizer state, step, lr, seed and (if any) the data position.

        ``loader`` defaults to the DataLoader last driven by ``fit``.
        """
        loader = loader if loader is not None else self._loader
        arrays = {name: self.session.read(name) for name in self.session.state_names()}
        metadata = {
            "steps_done": self.steps_done,
            "lr": float(self.optimizer.lr),
            "seed": self.seed,
            "optimizer": {"kind": self.optimizer.config.kind,
                          "hparams": {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in self.optimizer.hparams.items() if k != "lr"}},
            "skipped_steps": self.skipped_steps,
            "data": loader.state_dict() if loader is not None else None,
        }
        save_checkpoint(path, arrays, metadata)

    def load_checkpoint(self, path, loader=None) -> None:
        """Restore a checkpoint; everything is verified before anything changes.

        Names, shapes, dtypes, checksums and the optimizer must match this
        Trainer; otherwise ``CheckpointError`` says what differs and the
        trainer, the model and ``loader`` keep their state.
        """
        loader = loader if loader is not None else self._loader
        arrays, metadata = load_checkpoint(path)
        expected = {name: self.session.read(name) for name in self.session.state_names()}
        missing = sorted(set(expected) - set(arrays))
        unexpected = sorted(set(arrays) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path!r} does not fit this trainer: missing {missing}, "
                                  f"unexpected {unexpected}")
        for name, current in expected.items():
            if arrays[name].shape != current.shape or arrays[name].dtype != current.dtype:
                raise CheckpointError(f"checkpoint {path!r}: {name!r} is {arrays[name].dtype} "
                                      f"{arrays[name].shape}, this trainer has {current.dtype} {current.shape}")
        kind = metadata.get("optimizer", {}).get("kind")
        if kind != self.optimizer.config.kind:
            raise CheckpointError(f"checkpoint {path!r} was saved with optimizer {kind!r}, this trainer uses "
                                  f"{self.optimizer.config.kind!r}")
        if loader is not None and metadata.get("data") is not None:
            loader.load_state_dict(metadata["data"])  # validates before changing the loader
        for name, array in arrays.items():
            self.session.write(name, array)
        self.optimizer.lr = metadata.get("lr", self.optimizer.lr)
        self.seed = int(metadata.get("seed", self.seed))  # dropout masks continue the saved stream
        self.session.skipped_steps = int(metadata.get("skipped_steps", 0))

    # ---- export -----------------------------------------------------------
    def training_model(self) -> onnx.ModelProto:
        """The training step with the current parameters, state, step and lr as initializers."""
        model = copy.deepcopy(self.step_model)
        graph = model.graph
        values = {name: self.session.read(name) for name in self.session.state_names()}
        values["lr"] = np.asarray(self.optimizer.lr, dtype=self.session._extra_inputs["lr"].dtype)
        if self._random:  # the key of the next step, so the file draws the masks trainer.step would
            values[RNG_KEY] = key_for_step(self.seed, self.steps_done)
        for name, array in values.items():
            graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return model

    def save(self, path) -> None:
        """Write the training step as standard ONNX; ``InferenceSession(path).run(None, batch)`` trains one step."""
        model = self.training_model()
        onnx.checker.check_model(model, full_check=True)
        atomic_write(path, lambda handle: handle.write(model.SerializeToString()))
