"""Post-training quantization of any ONNX model with ONNX Runtime's own tools, and `graphc quantize`.

    graphc quantize MODEL.onnx --out MODEL.int8.onnx --calibrate x=calib.npy [--per-channel]   # static, QDQ
    graphc quantize MODEL.onnx --out MODEL.int8.onnx --dynamic [--per-channel]                 # dynamic

Static mode runs ``onnxruntime.quantization.quant_pre_process`` (shape inference and ORT's graph
optimisations: Conv+BatchNorm folded, so more of the graph quantizes), then ``quantize_static`` with
MinMax calibration over the calibration batches, and writes a QDQ model: int8 weights (symmetric,
per output channel with ``per_channel``) and int8 activations (asymmetric, per tensor), S8S8, ORT's
recommended default. Dynamic mode runs ``quantize_dynamic`` (int8 weights; activations quantized at
run time): models with ``Conv`` get uint8 weights there, because ONNX Runtime's CPU ``ConvInteger``
has no int8-weight kernel.

``value_info`` entries are dropped before quantizing: they are hints, and ORT's shape inference
refuses a model whose hints disagree with its own inference. The result is checked to load in ONNX
Runtime and written atomically (temporary file, fsync, rename). This module uses only ONNX Runtime,
onnx and numpy (``gc.quantize`` adapts Programs and DataLoaders to it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx

from runtime.atomic import atomic_write, check_output_file
from runtime.input_files import InputError, check_feeds, input_specs, read_input_file
from runtime.model_loading import ModelLoadError, check_external_data, has_external_data, load_model, make_session
from runtime.providers import capture_native_stderr, clean_ort_message

MODES = ("static", "dynamic")
CALIBRATION_BATCH = 64  # rows per calibration batch cut from a --calibrate file (symbolic batch dim)


class QuantizeError(InputError):
    """Bad arguments or calibration data for quantization (exit code 2 in the CLI)."""


class QuantizationFailure(RuntimeError):
    """ONNX Runtime's quantizer failed on this model (exit code 1 in the CLI)."""


# ---------------------------------------------------------------- the library function

def quantize_model(model, out_path, calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
                   mode: str = "static", per_channel: bool = True) -> dict:
    """Quantize ``model`` (a ModelProto or a path) into ``out_path``; returns a summary dict.

    ``calibration``: an iterable of feed dicts ``{input name: array}`` (static mode only), each
    checked against the model's inputs (name, dtype, rank, fixed dims) before ORT sees it.
    """
    if mode not in MODES:
        raise QuantizeError(f"quantize: mode must be 'static' or 'dynamic', got {mode!r}")
    if not isinstance(per_channel, (bool, np.bool_)):
        raise QuantizeError(f"quantize: per_channel must be True or False, got {per_channel!r}")
    if mode == "static" and calibration is None:
        raise QuantizeError("quantize: static mode needs calibration data (an iterable of feed dicts such as "
                            "[{'x': batch}], or a DataLoader); use mode='dynamic' to quantize without it")
    if mode == "dynamic" and calibration is not None:
        raise QuantizeError("quantize: calibration data is used by static mode only; drop it or use mode='static'")
    if calibration is not None and (isinstance(calibration, (Mapping, np.ndarray, str, bytes))
                                    or not hasattr(calibration, "__iter__")):
        raise QuantizeError(f"quantize: calibration must be an iterable of feed dicts (one per batch), got "
                            f"{type(calibration).__name__}; wrap a single feed dict in a list")
    out_path = check_output_path(out_path)
    source = _load(model)
    fp32_bytes = source.ByteSize()
    prepared = _without_value_info(source)
    with tempfile.TemporaryDirectory(prefix="graphc-quantize-") as work:
        raw = os.path.join(work, "model.onnx")
        onnx.save(prepared, raw)
        staged = _pre_process(raw, os.path.join(work, "pre.onnx")) if mode == "static" else raw
        result = os.path.join(work, "quantized.onnx")
        reader = _Reader(prepared, calibration) if mode == "static" else None
        with _quiet():
            try:
                if mode == "static":
                    _static(staged, result, reader, per_channel)
                else:
                    _dynamic(staged, result, prepared, per_channel)
            except QuantizeError:
                raise
            except Exception as exc:  # ORT's quantizer raises plain exceptions of many kinds
                if reader is not None and reader.batches == 0:
                    raise QuantizeError("quantize: the calibration data holds no batches") from None
                raise QuantizationFailure(f"quantize: ONNX Runtime's {mode} quantizer failed on this model: "
                                          f"{clean_ort_message(exc)}") from None
        quantized = onnx.load(result)
    try:
        make_session(quantized)  # refuse to write what ONNX Runtime cannot load
    except ModelLoadError as exc:
        raise QuantizationFailure(f"quantize: the quantized model does not load: {exc}") from None
    data = quantized.SerializeToString()
    atomic_write(out_path, lambda handle: handle.write(data))
    return {"mode": mode, "per_channel": bool(per_channel), "out": str(out_path), "fp32_bytes": fp32_bytes,
            "int8_bytes": len(data), "operators": _op_counts(quantized)}


def check_output_path(out_path) -> Path:
    """The output path, refused early when it is a folder, has no parent folder, or is not a regular file."""
    if not isinstance(out_path, (str, os.PathLike)) or not os.fspath(out_path):
        raise QuantizeError(f"quantize: the output path must be a file path, got {out_path!r}")
    return check_output_file(out_path, QuantizeError, "quantize: the output path", "model.int8.onnx")


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if has_external_data(copy):
            raise QuantizeError("quantize: this ModelProto has external tensor data; pass its file path instead")
        return copy
    if not isinstance(model, (str, os.PathLike)):
        raise QuantizeError(f"quantize: expected a model path, an onnx.ModelProto or a gc.Program, "
                            f"got {type(model).__name__}")
    loaded = load_model(model)  # validated; external-data references vetted (no escapes, no links)
    if has_external_data(loaded):
        check_external_data(loaded, Path(model).parent, str(model))
        onnx.external_data_helper.load_external_data_for_model(loaded, str(Path(model).parent))
    return loaded


def _without_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    return copy


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer prints advice and logs warnings; the caller reports what matters."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), capture_native_stderr():
            yield
    finally:
        logger.setLevel(level)


def _pre_process(raw: str, out: str) -> str:
    """ORT's recommended pre-processing; the raw model when it fails (it is an optimisation only)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for symbolic in (True, False):  # symbolic shape inference fails on some graphs (Scan): retry without
        with _quiet():
            try:
                quant_pre_process(raw, out, skip_symbolic_shape=not symbolic)
                return out
            except Exception:  # noqa: BLE001 - fall back to the next, simpler form
                continue
    return raw


def _static(model_path: str, out: str, reader, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(model_path, out, reader, quant_format=QuantFormat.QDQ, per_channel=bool(per_channel),
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def _dynamic(model_path: str, out: str, model: onnx.ModelProto, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    has_conv = any(node.op_type == "Conv" for node in model.graph.node)
    quantize_dynamic(model_path, out, per_channel=bool(per_channel),
                     weight_type=QuantType.QUInt8 if has_conv else QuantType.QInt8)


class _Reader:
    """ORT's CalibrationDataReader protocol over an iterable of feed dicts, each one checked first."""

    def __init__(self, model: onnx.ModelProto, calibration: Iterable):
        self._model = model
        self._batches = iter(calibration)
        self.batches = 0

    def get_next(self):
        try:
            feeds = next(self._batches)
        except StopIteration:
            return None
        if not isinstance(feeds, Mapping):
            raise QuantizeError(f"quantize: calibration batch {self.batches} is a {type(feeds).__name__}; "
                                f"expected a dict {{input name: array}}")
        try:
            checked = check_feeds(self._model, dict(feeds))
        except InputError as exc:
            raise QuantizeError(f"quantize: calibration batch {self.batches}: {exc}") from None
        self.batches += 1
        return checked

    def __iter__(self):  # ORT >= 1.20 also iterates readers
        return iter(self.get_next, None)

    def rewind(self):  # not needed by MinMax calibration; kept for ORT's protocol
        pass


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------- the CLI command

def calibration_batches(model: onnx.ModelProto, pairs: list[tuple[str, str]]) -> list[dict]:
    """Feed dicts cut from ``--calibrate NAME=FILE`` arrays: rows split into batches along dim 0."""
    specs = {spec.name: spec for spec in input_specs(model)}
    arrays = {}
    for name, file in pairs:
        if name not in specs:
            valid = ", ".join(repr(n) for n in specs) or "none"
            raise QuantizeError(f"--calibrate: unknown input {name!r}; the model's inputs are: {valid}")
        arrays[name] = read_input_file(file, name, spec=specs[name])
    rows = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if any(r is None for r in rows.values()) or len(set(rows.values())) != 1:
        raise QuantizeError(f"--calibrate: the arrays must share their first (batch) dim; got rows {rows}")
    total = next(iter(rows.values()))
    if total == 0:
        raise QuantizeError("--calibrate: the calibration arrays hold no rows")
    first_dims = {specs[n].shape[0] for n in arrays if specs[n].shape}
    fixed = [d for d in first_dims if isinstance(d, int)]
    size = fixed[0] if fixed else CALIBRATION_BATCH
    stop = total - size + 1 if fixed else total  # a fixed batch dim takes whole batches only
    batches = [{n: a[start:start + size] for n, a in arrays.items()} for start in range(0, stop, size)]
    if not batches:
        raise QuantizeError(f"--calibrate: the model takes batches of {size} rows; the arrays hold only {total}")
    return batches


def cmd_quantize(args) -> str:
    """`graphc quantize`: bad usage or data -> UsageError/QuantizeError (exit 2); ORT failures -> exit 1."""
    from runtime.cli import RunFailure, UsageError
    from runtime.cli_commands import _parse_input_args

    if args.dynamic and args.calibrate:
        raise UsageError("--calibrate is for static quantization; drop it or drop --dynamic")
    if not args.dynamic and not args.calibrate:
        raise UsageError("static quantization needs --calibrate NAME=FILE for each model input "
                         "(or pass --dynamic)")
    try:
        check_output_path(args.out)
    except QuantizeError as exc:
        raise UsageError(str(exc).replace("quantize: ", "--out: ", 1)) from None
    model = load_model(args.model)
    calibration = calibration_batches(model, _parse_input_args(args.calibrate)) if args.calibrate else None
    try:
        summary = quantize_model(args.model, args.out, calibration, "dynamic" if args.dynamic else "static",
                                 args.per_channel)
    except QuantizationFailure as exc:
        raise RunFailure(str(exc)) from None
    if args.json:
        import json
        return json.dumps(summary, indent=2)
    ratio = summary["int8_bytes"] / max(summary["fp32_bytes"], 1)
    ops = ", ".join(f"{k}: {v}" for k, v in summary["operators"].items())
    return (f"wrote {summary['out']} ({summary['mode']}{', per channel' if summary['per_channel'] else ''}): "
            f"{summary['fp32_bytes']:,} -> {summary['int8_bytes']:,} bytes ({ratio:.2f}x)\noperators: {ops}")
