"""The `graphc` command line: run any .onnx model on files, or describe it.

    graphc run model.onnx --input x=batch.npy --output-dir out/ [--provider cpu|cuda|auto] [--json] [--cast]
    graphc info model.onnx [--json]

Exit codes: 0 success; 2 bad usage or bad input; 1 model or runtime failure.
Errors are one line on stderr starting with "graphc: error:", never a
traceback (set GRAPHC_DEBUG=1 to see one for an unexpected internal error).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from runtime.input_files import InputError, check_feeds, dtype_name, format_shape, input_specs, read_input_file
from runtime.model_loading import ModelLoadError, load_model, make_session
from runtime.providers import ProviderError, capture_native_stderr, clean_ort_message

JSON_VALUES_LIMIT = 100  # outputs with at most this many (finite) elements get "values" in --json


class UsageError(Exception):
    """Bad command-line usage or a bad output location: exit code 2."""


class RunFailure(Exception):
    """The model failed while running or its outputs could not be written: exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors use the one-line "graphc: error:" form (exit 2)."""

    def error(self, message):
        self.exit(2, f"graphc: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphc", description="Run or describe any ONNX model with ONNX Runtime.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,info}")

    run = commands.add_parser(
        "run",
        help="run a model on input files, write one NAME.npy per output",
        description="Run MODEL on input files and write one NAME.npy per output into --output-dir. "
        "Output names are made into safe file names: characters other than letters, digits, '.', '_' "
        "and '-' become '_', a leading '.' becomes '_', and clashes get a numeric suffix.",
        epilog=f"--json prints {{name: {{shape, dtype, file[, values]}}}}; 'values' (nested lists) is included "
        f"only for outputs with at most {JSON_VALUES_LIMIT} elements, all finite.",
    )
    run.add_argument("model", metavar="MODEL.onnx")
    run.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE",
                     help="one model input from a .npy, .npz (array NAME, or its only array) or .json "
                          "(nested lists of numbers) file; repeat for each input")
    run.add_argument("--output-dir", "-o", default=".", metavar="DIR",
                     help="folder for the NAME.npy output files (created if missing; default: current folder)")
    run.add_argument("--provider", choices=("cpu", "cuda", "auto"), default="cpu",
                     help="cpu (default); cuda: fail if CUDA cannot load, never fall back; auto: CUDA if it loads, else CPU")
    run.add_argument("--json", action="store_true", help="print a JSON summary of the outputs")
    run.add_argument("--cast", action="store_true",
                     help="convert inputs to the model's dtypes (refused when an integer value would change "
                          "or a float would overflow)")
    run.set_defaults(handler=cmd_run)

    info = commands.add_parser(
        "info",
        help="show a model's inputs, outputs, opsets, operator counts and parameter count",
        description="Show IR version, opsets, producer, inputs and outputs (symbolic dims by name, '?' for "
        "unknown), operator counts (nodes in subgraphs included), number of initializers and the parameter "
        "count (elements of floating-point initializers, subgraphs included). ONNX Runtime is not needed.",
    )
    info.add_argument("model", metavar="MODEL.onnx")
    info.add_argument("--json", action="store_true", help="print the information as JSON")
    info.set_defaults(handler=cmd_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.handler(args)
    except (UsageError, InputError) as exc:
        return _fail(exc, 2)
    except (ModelLoadError, ProviderError, RunFailure) as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # a bug of ours: still one line, unless debugging
        if os.environ.get("GRAPHC_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (set GRAPHC_DEBUG=1 for a traceback)", 1)


def _fail(message, code: int) -> int:
    text = " ".join(str(message).split())
    print(f"graphc: error: {text}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- run

def cmd_run(args) -> int:
    pairs = _parse_input_args(args.input)
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output-dir {out_dir} exists and is not a folder")

    model = load_model(args.model)  # its declared shapes are more precise than the session's
    session = make_session(args.model, args.provider)
    specs = {spec.name: spec for spec in input_specs(model)}
    feeds = {}
    for name, file in pairs:
        if name not in specs:
            valid = ", ".join(repr(n) for n in specs) or "none"
            raise InputError(f"unknown input {name!r}; the model's inputs are: {valid}")
        feeds[name] = read_input_file(file, name, specs[name].dtype)
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
    _print_run_summary(arrays, written, args.json)
    return 0


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
    """Write each array to out_dir/<safe name>.npy; never follows a symlink at the file itself."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --output-dir {out_dir}: {exc.strerror or exc}") from None
    written = {}
    for name, file_name in safe_file_names(arrays).items():
        path = out_dir / file_name
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags, 0o644)
            with os.fdopen(fd, "wb") as stream:
                np.save(stream, arrays[name], allow_pickle=False)
        except OSError as exc:
            raise RunFailure(f"cannot write output {name!r} to {path}: {exc.strerror or exc}") from None
        written[name] = path
    return written


def _json_values(array: np.ndarray):
    """Nested lists; float16/32 values as their shortest decimal (2.8, not 2.799999952316284)."""
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        shortest = [float(str(v)) for v in array.flat]
        return np.array(shortest, dtype=np.float64).reshape(array.shape).tolist()
    return array.tolist()


def _print_run_summary(arrays: dict, written: dict, as_json: bool) -> None:
    if as_json:
        summary = {}
        for name, array in arrays.items():
            entry = {"shape": list(array.shape), "dtype": dtype_name(array.dtype), "file": str(written[name])}
            if array.size <= JSON_VALUES_LIMIT and (array.dtype.kind not in "fc" or np.isfinite(array).all()):
                entry["values"] = _json_values(array)
            summary[name] = entry
        print(json.dumps(summary, indent=2))
        return
    for name, array in arrays.items():
        print(f"{name}: shape {format_shape(array.shape)} {dtype_name(array.dtype)} -> {written[name]}")


# ---------------------------------------------------------------- info

def cmd_info(args) -> int:
    model = load_model(args.model)
    info = model_info(model)
    info = {"file": str(args.model), **info}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_format_info(info))
    return 0


def model_info(model: onnx.ModelProto) -> dict:
    """What `graphc info` shows, as plain JSON-ready data."""
    graph = model.graph
    initialized = {init.name for init in graph.initializer}
    specs = input_specs(model)
    operators = Counter()
    initializers = parameters = 0
    for sub in _all_graphs(graph):
        for node in sub.node:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            operators[op] += 1
        for init in sub.initializer:
            initializers += 1
            if _is_float(init.data_type):
                parameters += int(np.prod(init.dims, dtype=np.int64))
        for sparse in sub.sparse_initializer:
            initializers += 1
            if _is_float(sparse.values.data_type):
                parameters += int(np.prod(sparse.dims, dtype=np.int64))
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


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_graphs(attr.g)
            for sub in attr.graphs:
                yield from _all_graphs(sub)


def _is_float(data_type: int) -> bool:
    name = onnx.TensorProto.DataType.Name(data_type) if data_type in onnx.TensorProto.DataType.values() else ""
    return name.startswith(("FLOAT", "DOUBLE", "BFLOAT"))


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


if __name__ == "__main__":
    sys.exit(main())
