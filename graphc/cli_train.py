"""``graphc train``: fine-tune an existing ``.onnx`` model on arrays from a ``.npz`` file, no Python to write.

    graphc train MODEL.onnx --data train.npz --input x --target y --loss cross_entropy|mse
                 --optim adam|sgd --lr 1e-3 --epochs N --batch-size B [--freeze PREFIX ...]
                 [--val val.npz] [--seed S] [--checkpoint DIR [--resume]] --out tuned.onnx

The model is read by ``gc.load_onnx`` (its float initializers are the parameters, named as in the file);
``--input`` names the model input fed from the ``.npz`` array of that name, ``--target`` the array of
targets (class indices for cross_entropy, values shaped like the output for mse). Training runs
``gc.Trainer`` over a shuffled ``DataLoader`` (seeded by ``--seed``) with a progress bar on stderr;
after each epoch the checkpoint ``DIR/train.ckpt`` (parameters, optimizer state, step, data position)
is written atomically, and ``--resume`` continues from it exactly as an uninterrupted run would.
``--out`` gets the original model's graph with the tuned weights.

Errors follow ``graphc run``: bad arguments, data or checkpoint exit 2 (``UsageError``/``InputError``);
a model that cannot be loaded, differentiated or run exits 1 (``ModelLoadError``/``RunFailure``). This
module is reached from ``runtime.cli`` by name only (the CLI's one way into graphc).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from runtime.checkpoint import CheckpointError
from runtime.cli import RunFailure, UsageError
from runtime.input_files import InputError

CHECKPOINT_FILE = "train.ckpt"


def cmd_train(args) -> str:
    """Run ``graphc train``; returns the summary printed on stdout (JSON with ``--json``)."""
    import graphc as gc  # here, not at import: the CLI stays quick for --help and bad usage
    import graphc.nn.functional as F

    _check_arguments(args)
    try:
        module = gc.load_onnx(args.model)  # ModelLoadError (1) / InvalidModelError (2) as graphc run
    except (ValueError, TypeError, NotImplementedError) as exc:  # normalisation (opset, shapes) refused it
        raise RunFailure(f"{args.model}: cannot be imported for training: {exc}") from None
    input_name, output_index = _model_io(module, args)
    data = _read_arrays(args.data, "--data", [args.input, args.target])
    val = _read_arrays(args.val, "--val", [args.input, args.target]) if args.val else None
    _freeze(module, args.freeze)
    try:
        module.check_differentiable()
    except (ValueError, TypeError, NotImplementedError) as exc:  # an op on the path without a VJP rule
        raise RunFailure(f"{args.model}: cannot be trained: {exc}") from None

    shape, dtype = module.input_shapes()[input_name], _input_dtype(module, input_name)
    x_data = _check_input(data[args.input], args.input, shape, dtype, "--data")
    x = gc.input(input_name, shape=("batch", *x_data.shape[1:]), dtype=dtype)
    try:
        outputs = module(x)
    except (ValueError, TypeError) as exc:
        raise RunFailure(f"{args.model}: cannot be built on input {input_name!r} of shape "
                         f"{('batch', *x_data.shape[1:])}: {exc}") from None
    prediction = outputs[output_index] if isinstance(outputs, tuple) else outputs
    y_data = _check_target(data[args.target], args.target, args.loss, prediction, "--data")
    if val is not None:
        val = {args.input: _check_input(val[args.input], args.input, shape, dtype, "--val"),
               args.target: _check_target(val[args.target], args.target, args.loss, prediction, "--val")}
    y = gc.input("graphc_train_target", shape=("batch", *y_data.shape[1:]), dtype=str(y_data.dtype))
    loss = F.cross_entropy(prediction, y) if args.loss == "cross_entropy" else F.mse_loss(prediction, y)
    metrics = {}
    if args.loss == "cross_entropy":
        metrics["accuracy"] = (prediction.argmax(1) == y).astype("float32").mean()

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = gc.optim.Adam(params, lr=args.lr) if args.optim == "adam" else \
        gc.optim.SGD(params, lr=args.lr, momentum=args.momentum)
    try:
        trainer = gc.Trainer(loss, optimizer, inputs=[x, y], provider=args.provider, seed=args.seed,
                             metrics=metrics)
    except (ValueError, TypeError, gc.GraphcError) as exc:
        raise RunFailure(f"{args.model}: cannot build the training step: {exc}") from None
    loader = gc.data.DataLoader(x_data, y_data, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    checkpoint = Path(args.checkpoint) / CHECKPOINT_FILE if args.checkpoint else None
    if args.resume:
        _resume(trainer, loader, checkpoint)
    evaluate = _evaluator(gc, x, y, loss, metrics, val, args) if val is not None else None

    records = _train(trainer, loader, args, checkpoint, evaluate)
    module.export(args.out)
    return _summary(records, trainer, args)


# ---- arguments, model and data -------------------------------------------------------------------
def _check_arguments(args) -> None:
    if args.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.momentum and args.optim != "sgd":
        raise UsageError(f"--momentum applies to --optim sgd, not {args.optim}")
    if not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint DIR (the folder the interrupted run wrote)")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the tuned model's file path")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    if args.checkpoint and Path(args.checkpoint).exists() and not Path(args.checkpoint).is_dir():
        raise UsageError(f"--checkpoint {args.checkpoint} exists and is not a folder")


def _model_io(module, args) -> tuple[str, int]:
    inputs, outputs = module.input_names, module.output_names
    if args.input not in inputs:
        raise UsageError(f"--input {args.input!r}: the model has no such input; its inputs are {inputs}")
    if len(inputs) != 1:
        raise UsageError(f"the model has {len(inputs)} inputs {inputs}; graphc train feeds exactly one "
                         f"(--input), so it trains single-input models only")
    name = args.output or outputs[0]
    if name not in outputs:
        raise UsageError(f"--output {name!r}: the model has no such output; its outputs are {outputs}")
    return args.input, outputs.index(name)


def _input_dtype(module, name: str) -> str:
    dtype = next(d for n, _, d in module._inputs if n == name)
    return np.dtype(dtype.numpy()).name


def _read_arrays(path, flag: str, names: list[str]) -> dict[str, np.ndarray]:
    """The named arrays of a .npz file (never unpickled), each checked to exist."""
    if Path(path).suffix.lower() != ".npz":
        raise InputError(f"{flag} {path}: expected a .npz file holding arrays {names}")
    from runtime.input_files import read_input_file

    arrays = {}
    for name in names:
        arrays[name] = read_input_file(path, name)  # one-line InputError: missing array, bad file, pickle
    lengths = {n: len(a) if a.ndim else None for n, a in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise InputError(f"{flag} {path}: arrays {names} must have the same first dimension (one row per "
                         f"sample), got lengths {lengths}")
    if not next(iter(lengths.values())):
        raise InputError(f"{flag} {path}: the arrays hold no samples")
    return arrays


def _check_input(array: np.ndarray, name: str, shape, dtype: str, flag: str) -> np.ndarray:
    if array.dtype != np.dtype(dtype):
        raise InputError(f"{flag} array {name!r}: expected dtype {dtype} (the model input's), got {array.dtype}")
    if shape is not None:
        expected = tuple(shape)
        if array.ndim != len(expected) or any(isinstance(d, int) and d != g
                                              for d, g in zip(expected[1:], array.shape[1:])):
            shown = ("N", *(d if isinstance(d, int) else "?" for d in expected[1:]))
            raise InputError(f"{flag} array {name!r}: expected shape {shown} for model input {name!r}, "
                             f"got {array.shape}")
    return np.ascontiguousarray(array)


def _check_target(array: np.ndarray, name: str, loss: str, prediction, flag: str) -> np.ndarray:
    if loss == "cross_entropy":
        if not np.issubdtype(array.dtype, np.integer) or array.ndim != 1:
            raise InputError(f"{flag} array {name!r}: cross_entropy expects class indices, an integer array of "
                             f"shape (N,), got dtype {array.dtype} shape {array.shape}")
        classes = prediction.shape[1] if prediction.ndim == 2 else None
        if prediction.ndim != 2:
            raise UsageError(f"cross_entropy needs a model output of shape (N, classes), the output has shape "
                             f"{prediction.shape}")
        if isinstance(classes, int) and (array.min() < 0 or array.max() >= classes):
            raise InputError(f"{flag} array {name!r}: class indices must be in [0, {classes}), got "
                             f"[{array.min()}, {array.max()}]")
        return array.astype(np.int64)
    want = np.dtype(prediction.dtype)
    if array.dtype != want:
        raise InputError(f"{flag} array {name!r}: mse expects dtype {want} (the output's), got {array.dtype}")
    expected = prediction.shape
    if array.ndim != len(expected) or any(isinstance(d, int) and d != g for d, g in zip(expected[1:], array.shape[1:])):
        shown = ("N", *(d if isinstance(d, int) else "?" for d in expected[1:]))
        raise InputError(f"{flag} array {name!r}: mse expects targets shaped like the output {shown}, got "
                         f"{array.shape}")
    return np.ascontiguousarray(array)


def _freeze(module, prefixes: list[str]) -> None:
    names = [n for n, _ in module.named_parameters()]
    for prefix in prefixes:
        matched = [n for n in names if n.startswith(prefix)]
        if not matched:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise UsageError(f"--freeze {prefix!r} matches no parameter; the parameters are: {shown or 'none'}")
        for name, param in module.named_parameters():
            if name in matched:
                param.requires_grad = False
    if names and all(not p.requires_grad for p in module.parameters()):
        raise UsageError(f"--freeze {' '.join(prefixes)} freezes all {len(names)} parameters: nothing to train")
    if not names:
        raise UsageError("the model has no floating-point initializers: nothing to train")


# ---- training ---------------------------------------------------------------------------------------
def _resume(trainer, loader, checkpoint: Path) -> None:
    if not checkpoint.is_file():
        raise UsageError(f"--resume: no checkpoint {checkpoint} (written after each epoch by --checkpoint)")
    try:
        trainer.load_checkpoint(checkpoint, loader=loader)
    except CheckpointError as exc:
        raise InputError(f"--resume: {exc}") from None


def _evaluator(gc, x, y, loss, metrics, val, args):
    program = gc.compile(inputs=[x, y], outputs={"loss": loss, **metrics}, provider=args.provider)
    xv, yv = val[args.input], val[args.target]

    def evaluate() -> dict:
        totals, count = {}, 0
        for start in range(0, len(xv), args.batch_size):
            xb, yb = xv[start:start + args.batch_size], yv[start:start + args.batch_size]
            out = program.run({x.name: xb, y.name: yb})
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(xb)
            count += len(xb)
        return {f"val_{k}": v / count for k, v in totals.items()}

    return evaluate


def _train(trainer, loader, args, checkpoint: Path | None, evaluate) -> list[dict]:
    from graphc.errors import GraphcError
    from runtime.run_errors import RunError
    from runtime.training_session import NonFiniteLossError

    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    records = []
    show = not args.no_progress
    for epoch in range(loader.epoch + 1, args.epochs + 1):
        total, count, correct = 0.0, 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", disable=not show, leave=False, file=sys.stderr,
                   dynamic_ncols=True)
        for xb, yb in bar:
            try:
                loss = trainer.step((xb, yb))
            except (NonFiniteLossError, RunError, GraphcError) as exc:
                raise RunFailure(f"training failed at epoch {epoch}, step {trainer.steps_done + 1}: {exc}") from None
            total += loss * len(xb)
            count += len(xb)
            if "accuracy" in trainer.last_metrics:
                correct += float(trainer.last_metrics["accuracy"]) * len(xb)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        record = {"epoch": epoch, "loss": total / count if count else math.nan}
        if "accuracy" in trainer.last_metrics and count:
            record["accuracy"] = correct / count
        if evaluate is not None:
            record.update(evaluate())
        records.append(record)
        if checkpoint is not None:
            trainer.save_checkpoint(checkpoint, loader=loader)
        if show:
            tqdm.write("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
                       file=sys.stderr)
    return records


def _summary(records: list[dict], trainer, args) -> str:
    summary = {"out": os.fspath(args.out), "epochs": records, "steps": trainer.steps_done}
    if args.checkpoint:
        summary["checkpoint"] = os.fspath(Path(args.checkpoint) / CHECKPOINT_FILE)
    if args.json:
        return json.dumps(summary)
    if not records:
        return f"nothing to train (already {trainer.steps_done} steps, {args.epochs} epochs); wrote {args.out}"
    last = records[-1]
    parts = [f"{k} {v:.4f}" for k, v in last.items() if k != "epoch"]
    return f"trained to epoch {last['epoch']} ({trainer.steps_done} steps): {', '.join(parts)}; wrote {args.out}"
