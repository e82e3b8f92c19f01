"""The `graphc` command line: run any .onnx model on files, or describe it.

    graphc run model.onnx --input x=batch.npy --output-dir out/ [--provider cpu|cuda|auto] [--json] [--cast]
    graphc info model.onnx [--json]
    graphc train model.onnx --data train.npz --input x --target y --out tuned.onnx [--loss ...] [--optim ...] ...
    graphc quantize model.onnx --out model.int8.onnx [--calibrate x=calib.npy ...] [--dynamic] [--per-channel]

Exit codes: 0 success; 2 bad usage or bad input (including a model file that
breaks the ONNX format: names that are not UTF-8, undefined element types,
bad dims); 1 model or runtime failure (also: standard output cannot be
written); 130 interrupted (Ctrl-C). A closed pipe on standard output
(`graphc run ... --json | head -1`) ends quietly with 141 (128 + SIGPIPE), as
Unix tools killed by SIGPIPE report. Errors are one line on stderr starting
with "graphc: error:", never a traceback (set GRAPHC_DEBUG=1 to see one for an
unexpected internal error); with --json the error is also printed on stdout as
{"error": MESSAGE, "exit_code": CODE}.

This module imports only the standard library: numpy, onnx and onnxruntime
load inside main() (runtime.cli_commands), so --help is quick and a Ctrl-C
during those imports still ends with one line and exit code 130. ONNX Runtime
telemetry is off (see runtime/__init__.py).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys

JSON_VALUES_LIMIT = 100  # outputs with at most this many (finite) elements get "values" in --json
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """Bad command-line usage or a bad output location: exit code 2."""


class RunFailure(Exception):
    """The model failed while running or its outputs could not be written: exit code 1."""


class StdoutError(Exception):
    """Standard output could not be written (full disk, closed pipe): carries the OSError."""

    def __init__(self, error: OSError):
        super().__init__(f"cannot write to standard output: {error.strerror or error}")
        self.error = error


class _Parser(argparse.ArgumentParser):
    """argparse, but errors use the one-line "graphc: error:" form (exit 2)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_train_parser(commands) -> None:
    """``graphc train``. Its handler lives in ``graphc.cli_train``, named by string and imported only when
    the command runs: the CLI is the one place in ``runtime`` allowed to reach into ``graphc`` (training an
    imported model needs the front end: ``gc.load_onnx``, autodiff, ``gc.Trainer``)."""
    train = commands.add_parser(
        "train",
        help="fine-tune a model on arrays from a .npz file and write the tuned model",
        description="Fine-tune MODEL (its floating-point initializers are the parameters) on the --data arrays "
        "--input (the model input of that name) and --target, with a progress bar on stderr; write the original "
        "graph with the tuned weights to --out. With --checkpoint DIR, DIR/train.ckpt is written after every "
        "epoch; --resume continues from it exactly as an uninterrupted run would.",
    )
    train.add_argument("model", metavar="MODEL.onnx")
    train.add_argument("--data", required=True, metavar="TRAIN.npz",
                       help="arrays --input and --target, one row per sample")
    train.add_argument("--input", required=True, metavar="NAME", help="the model input, and its array in --data")
    train.add_argument("--target", default="y", metavar="NAME",
                       help="the targets' array in --data: class indices (cross_entropy) or values shaped like the "
                            "output (mse); default: y")
    train.add_argument("--output", metavar="NAME", help="the model output the loss reads (default: the first)")
    train.add_argument("--loss", choices=("cross_entropy", "mse"), default="cross_entropy")
    train.add_argument("--optim", choices=("adam", "sgd"), default="adam")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    train.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--freeze", action="append", default=[], metavar="PREFIX",
                       help="keep parameters whose name starts with PREFIX unchanged; repeat for several")
    train.add_argument("--val", metavar="VAL.npz", help="arrays --input and --target to evaluate after each epoch")
    train.add_argument("--seed", type=int, default=0, help="data order and dropout masks (default: 0)")
    train.add_argument("--checkpoint", metavar="DIR", help="write DIR/train.ckpt after every epoch")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint DIR")
    train.add_argument("--out", required=True, metavar="TUNED.onnx", help="the tuned model file to write")
    train.add_argument("--provider", choices=("cpu", "cuda", "auto"), default="cpu")
    train.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines on stderr")
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.set_defaults(handler="graphc.cli_train:cmd_train")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphc", description="Run or describe any ONNX model with ONNX Runtime.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,info,train,optimize,quantize}")

    run = commands.add_parser(
        "run",
        help="run a model on input files, write one NAME.npy per output",
        description="Run MODEL on input files and write one NAME.npy per output into --output-dir. "
        "Output names are made into safe file names: characters other than letters, digits, '.', '_' "
        "and '-' become '_', a leading '.' becomes '_', and clashes get a numeric suffix. Each file is "
        "written to a temporary file and renamed into place: a failed write leaves the previous file.",
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
    run.set_defaults(handler="cmd_run")

    info = commands.add_parser(
        "info",
        help="show a model's inputs, outputs, opsets, operator counts and parameter count",
        description="Show IR version, opsets, producer, inputs and outputs (symbolic dims by name, '?' for "
        "unknown), operator counts (nodes in subgraphs included), number of initializers and the parameter "
        "count: elements of weight initializers (floating point, and integer ones that a quantization op "
        "dequantizes or multiplies), subgraphs included; quantization scales and zero points, shapes and "
        "indices are not parameters. ONNX Runtime is not needed.",
    )
    info.add_argument("model", metavar="MODEL.onnx")
    info.add_argument("--json", action="store_true", help="print the information as JSON")
    info.set_defaults(handler="cmd_info")
    _add_train_parser(commands)

    quantize = commands.add_parser(
        "quantize",
        help="quantize a model to int8 with ONNX Runtime's quantization tools",
        description="Write an int8 copy of MODEL with ONNX Runtime's quantizer. Static (default): a QDQ model "
        "calibrated (MinMax) on --calibrate arrays, one per model input, cut into batches along dim 0; "
        "ONNX Runtime's pre-processing runs first. --dynamic: int8 weights, activations quantized at run time.",
    )
    quantize.add_argument("model", metavar="MODEL.onnx")
    quantize.add_argument("--out", required=True, metavar="OUT.onnx", help="the quantized model file to write")
    quantize.add_argument("--calibrate", action="append", default=[], metavar="NAME=FILE",
                          help="calibration rows for input NAME (.npy, .npz or .json); repeat for each input")
    quantize.add_argument("--dynamic", action="store_true", help="dynamic quantization (no calibration)")
    quantize.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    quantize.add_argument("--json", action="store_true", help="print the summary as JSON")
    quantize.set_defaults(handler="runtime.cli_quantize:cmd_quantize")

    optimize = commands.add_parser(
        "optimize",
        help="simplify and fuse a model with graphc's export pipeline",
        description="Write an optimized copy of MODEL: constant folding, eval BatchNorm folded into Conv/Gemm, "
        "MatMul+Add -> Gemm, LayerNorm and GELU patterns -> LayerNormalization/Gelu, no-op and dead nodes "
        "removed. Prints each pass that changed the model (name: nodes before -> after).",
    )
    optimize.add_argument("model", metavar="MODEL.onnx")
    optimize.add_argument("--out", required=True, metavar="OUT.onnx", help="the optimized model file to write")
    optimize.add_argument("--json", action="store_true", help="print the summary as JSON")
    optimize.set_defaults(handler="runtime.cli_optimize:cmd_optimize")
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code (the console script passes it to sys.exit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    try:
        _repair_standard_streams()
        return _main(argv, as_json)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, as_json)
    except StdoutError as exc:
        _silence_stdout()
        if exc.error.errno == errno.EPIPE:
            return EXIT_BROKEN_PIPE  # the reader has gone (| head): nothing to say, nobody to say it to
        return _fail(exc, 1, False)


def _main(argv: list, as_json: bool) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), already printed
        _flush_stdout()
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as exc:
        return _fail(exc, 2, as_json)
    # Heavy imports here, not at module level: see the module docstring.
    try:
        from runtime import cli_commands
        from runtime.input_files import InputError
        from runtime.model_loading import InvalidModelError, ModelLoadError
        from runtime.providers import ProviderError
    except ImportError as exc:
        return _fail(f"cannot load the runtime: {exc} (is the graphc package installed with its dependencies?)",
                     1, as_json)
    try:
        # handler "cmd_x" lives in runtime.cli_commands; "module:cmd_x" in a module of its own
        module_name, _, handler = args.handler.rpartition(":")
        commands = __import__(module_name, fromlist=[handler]) if module_name else cli_commands
        text = getattr(commands, handler)(args)
    except (UsageError, InputError, InvalidModelError) as exc:
        return _fail(exc, 2, as_json)
    except (ModelLoadError, ProviderError, RunFailure) as exc:
        return _fail(exc, 1, as_json)
    except (KeyboardInterrupt, StdoutError):
        raise
    except Exception as exc:  # a bug of ours: still one line, unless debugging
        if os.environ.get("GRAPHC_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (set GRAPHC_DEBUG=1 for a traceback)", 1, as_json)
    _write_stdout(text + "\n")
    return 0


def _fail(message, code: int, as_json: bool) -> int:
    text = " ".join(str(message).split())
    if as_json:
        try:
            _write_stdout(json.dumps({"error": text, "exit_code": code}) + "\n")
        except StdoutError:
            _silence_stdout()  # the line on stderr still says it
    if sys.stderr is not None:
        try:
            print(f"graphc: error: {text}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # nowhere left to report to; the exit code still says it
    return code


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        raise StdoutError(exc) from None


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise StdoutError(exc) from None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's flush at exit cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (an in-process caller's stream): nothing will flush it at exit


def _repair_standard_streams() -> None:
    """Give closed standard descriptors /dev/null and make the text streams unable to fail on encoding.

    A closed fd 0/1/2 would be handed to the next file we open, and ONNX Runtime logs to fd 2: its
    messages would land in an output file. Python sets sys.stdout/sys.stderr to None in that case.
    With PYTHONIOENCODING=ascii a non-ASCII output name would fail the summary; escape it instead.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                opened = os.open(os.devnull, os.O_RDWR)
            except OSError:
                continue
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "") == "strict":
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


def __getattr__(name):
    """The command implementations (safe_file_names, write_outputs, model_info, ...) live in
    runtime.cli_commands, loaded on first use so that importing this module stays cheap."""
    if name.startswith("__"):  # the import system probes __path__ etc.: no reason to load anything
        raise AttributeError(f"module 'runtime.cli' has no attribute {name!r}")
    from runtime import cli_commands

    try:
        return getattr(cli_commands, name)
    except AttributeError:
        raise AttributeError(f"module 'runtime.cli' has no attribute {name!r}") from None


if __name__ == "__main__":
    # `python -m runtime.cli`: run the importable copy of this module, whose exception classes are
    # the ones runtime.cli_commands raises (this __main__ copy has classes of its own).
    from runtime.cli import main as _main_of_module

    sys.exit(_main_of_module())
