"""What `graphc run` and `graphc info` do (runtime.cli parses the command line and reports errors).

Each command returns the text to print; runtime.cli writes it, so that a
failing standard output is reported in one place.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from runtime.atomic import atomic_write
from runtime.cli import JSON_VALUES_LIMIT, RunFailure, UsageError
from runtime.input_files import InputError, check_feeds, dtype_name, format_shape, input_specs, read_input_file
from runtime.model_loading import load_model, make_session
from runtime.providers import capture_native_stderr, clean_ort_message


# ---------------------------------------------------------------- run

def cmd_run(args) -> str:
    pairs = _parse_input_args(args.input)
    out_dir = Path(args.output_dir)
    _check_output_dir(out_dir)

    model = load_model(args.model)  # its declared shapes are more precise than the session's
    session = make_session(args.model, args.provider)
    specs = {spec.name: spec for spec in input_specs(model)}
    feeds = {}
    for name, file in pairs:
        if name not in specs:
            valid = ", ".join(repr(n) for n in specs) or "none"
            raise InputError(f"unknown input {name!r}; the model's inputs are: {valid}")
        feeds[name] = read_input_file(file, name, spec=specs[name])
    feeds = check_feeds(model, feeds, cast=args.cast)

    output_names = [o.name for o in session.get_outputs()]
    with capture_native_stderr():  # ORT also logs run failures; its exception says it all
        try:
            values = session.run(output_names, feeds)
        except Exception as exc:
            error = clean_ort_message(exc)
        else:
            error = None
    if error is not None:
        raise RunFailure(f"running {args.model} failed: {error}")

    arrays = {name: _as_saveable(name, value) for name, value in zip(output_names, values)}
    written = write_outputs(arrays, out_dir)
    return _run_summary(arrays, written, args.json)


def _check_output_dir(out_dir: Path) -> None:
    try:
        if not out_dir.is_dir() and out_dir.exists():
            raise UsageError(f"--output-dir {out_dir} exists and is not a folder")
    except OSError as exc:  # a component too long, a loop of links, no permission
        raise UsageError(f"--output-dir {out_dir} cannot be used: {exc.strerror or exc}") from None


def _parse_input_args(items) -> list[tuple[str, str]]:
    pairs, seen = [], set()
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--input expects NAME=FILE, got {item!r}")
        if name in seen:
            raise UsageError(f"input {name!r} given more than once")
        seen.add(name)
        pairs.append((name, file))
    return pairs


def _as_saveable(name: str, value) -> np.ndarray:
    """ORT outputs as arrays np.save can write without pickle (string tensors become str arrays)."""
    if not isinstance(value, np.ndarray):
        kind = "sequence" if isinstance(value, list) else "map" if isinstance(value, dict) else type(value).__name__
        raise RunFailure(f"output {name!r} is a {kind}; the runner writes tensor outputs only")
    if value.dtype.hasobject:
        if all(isinstance(v, str) for v in value.flat):
            return value.astype(np.str_)
        raise RunFailure(f"output {name!r} holds Python objects and cannot be written as .npy")
    return value


def safe_file_names(names) -> dict[str, str]:
    """Output name -> a file name that cannot leave the output folder, unique even case-insensitively."""
    result, taken = {}, set()
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]
        stem = re.sub(r"^\.", "_", stem) or "output"
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        result[name] = candidate + ".npy"
    return result


def write_outputs(arrays: dict, out_dir: Path) -> dict[str, Path]:
    """Write each array to out_dir/<safe name>.npy through atomic_write: a full disk or a crash leaves the
    previous file, and a link planted at the name (symbolic or hard) is replaced, never written through."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --output-dir {out_dir}: {exc.strerror or exc}") from None
    written = {}
    for name, file_name in safe_file_names(arrays).items():
        path = out_dir / file_name
        array = arrays[name]
        try:
            atomic_write(path, lambda stream, array=array: np.save(stream, array, allow_pickle=False),
                         prefix=f".{file_name}.")
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RunFailure(f"cannot write output {name!r} to {path}: {reason}") from None
        written[name] = path
    return written


def _json_values(array: np.ndarray):
    """Nested lists; float16/32 values as their shortest decimal (2.8, not 2.799999952316284)."""
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        shortest = [float(str(v)) for v in array.flat]
        return np.array(shortest, dtype=np.float64).reshape(array.shape).tolist()
    return array.tolist()


def _run_summary(arrays: dict, written: dict, as_json: bool) -> str:
    if as_json:
        summary = {}
        for name, array in arrays.items():
            entry = {"shape": list(array.shape), "dtype": dtype_name(array.dtype), "file": str(written[name])}
            if array.size <= JSON_VALUES_LIMIT and (array.dtype.kind not in "fc" or np.isfinite(array).all()):
                entry["values"] = _json_values(array)
            summary[name] = entry
        return json.dumps(summary, indent=2)
    return "\n".join(
        f"{name}: shape {format_shape(array.shape)} {dtype_name(array.dtype)} -> {written[name]}"
        for name, array in arrays.items()
    )


# ---------------------------------------------------------------- info

def cmd_info(args) -> str:
    model = load_model(args.model)
    info = {"file": str(args.model), **model_info(model)}
    return json.dumps(info, indent=2) if args.json else _format_info(info)


# Inputs of quantization ops that hold quantization parameters (scales, zero points), not weights:
# op_type -> input positions. Integer weights are the other integer inputs of these ops.
_QUANT_PARAMETER_INPUTS = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "DynamicQuantizeLinear": (),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7), "QLinearConv": (1, 2, 4, 5, 6, 7),
    "MatMulInteger": (2, 3), "ConvInteger": (2, 3),
}


def model_info(model: onnx.ModelProto) -> dict:
    """What `graphc info` shows, as plain JSON-ready data.

    Parameters are the elements of weight initializers: floating-point ones, and integer ones
    that a quantization op (DequantizeLinear, QLinearMatMul, QLinearConv, MatMulInteger,
    ConvInteger) takes as data; scales and zero points of those ops are not counted. Dims are
    multiplied exactly (load_model refuses negative or overflowing ones).
    """
    graph = model.graph
    initialized = {init.name for init in graph.initializer}
    specs = input_specs(model)
    operators = Counter()
    initializers = parameters = 0
    for sub in _all_graphs(graph):
        quant_params, quant_data = _quantization_roles(sub)
        for node in sub.node:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            operators[op] += 1
        tensors = [(init.name, init.data_type, init.dims) for init in sub.initializer]
        tensors += [(s.values.name, s.values.data_type, s.dims) for s in sub.sparse_initializer]
        for name, data_type, dims in tensors:
            initializers += 1
            if name in quant_params:
                continue
            if _is_float(data_type) or (name in quant_data and _is_integer(data_type)):
                parameters += math.prod(dims)
    return {
        "ir_version": model.ir_version,
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [_value_entry(s, s.name in initialized) for s in specs],
        "outputs": [_value_entry(s) for s in input_specs(list(graph.output))],
        "operators": dict(operators.most_common()),
        "nodes": sum(operators.values()),
        "initializers": initializers,
        "parameters": parameters,
    }


def _quantization_roles(graph: onnx.GraphProto) -> tuple[set, set]:
    """(names used as scales/zero points, names used as quantized data) by the quantization ops of graph."""
    params, data = set(), set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _QUANT_PARAMETER_INPUTS:
            continue
        positions = _QUANT_PARAMETER_INPUTS[node.op_type]
        for i, name in enumerate(node.input):
            (params if i in positions else data).add(name)
    # Dynamic quantization (ORT's quantize_dynamic) multiplies the run-time activation scale (output 1
    # of DynamicQuantizeLinear) by the weight's scale, a float initializer: a scale, not a weight.
    dynamic_scales = {n.output[1] for n in graph.node if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    for node in graph.node:
        if node.op_type == "Mul" and dynamic_scales & set(node.input):
            params.update(name for name in node.input if name not in dynamic_scales)
    return params - data, data


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_graphs(attr.g)
            for sub in attr.graphs:
                yield from _all_graphs(sub)


def _type_name(data_type: int) -> str:
    return onnx.TensorProto.DataType.Name(data_type) if data_type in onnx.TensorProto.DataType.values() else ""


def _is_float(data_type: int) -> bool:
    return _type_name(data_type).startswith(("FLOAT", "DOUBLE", "BFLOAT"))


def _is_integer(data_type: int) -> bool:
    return _type_name(data_type).startswith(("INT", "UINT"))


def _value_entry(spec, has_default: bool = False) -> dict:
    match = re.fullmatch(r"tensor\((\w+)\)", spec.type_name)
    dtype = dtype_name(spec.dtype) if spec.dtype is not None else (match.group(1) if match else spec.type_name)
    entry = {"name": spec.name, "dtype": dtype, "shape": list(spec.shape) if spec.shape is not None else None}
    if has_default:
        entry["has_default"] = True
    return entry


def _format_info(info: dict) -> str:
    lines = [
        f"model: {info['file']}",
        f"ir_version: {info['ir_version']}",
        f"producer: {info['producer'] or '(none)'}",
        "opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()),
    ]
    for title in ("inputs", "outputs"):
        lines.append(f"{title}:")
        for entry in info[title]:
            default = "  (has a default value)" if entry.get("has_default") else ""
            lines.append(f"  {entry['name']}: {entry['dtype']} {format_shape(entry['shape'])}{default}")
    lines.append(f"operators ({info['nodes']} nodes):")
    lines.extend(f"  {op}: {count}" for op, count in info["operators"].items())
    lines.append(f"initializers: {info['initializers']}")
    lines.append(f"parameters: {info['parameters']:,}")
    return "\n".join(lines)
