"""Execution-provider selection for ONNX Runtime sessions.

Why this module exists: ONNX Runtime silently falls back to the CPU when the
CUDA provider is requested but cannot load (missing cuBLAS/cuDNN, no GPU, a
CPU-only wheel). A user who asked for CUDA must get an error that says why,
never a quiet CPU run. Both the inference runner and the training runtime
build their sessions through these helpers.

    providers = resolve_providers("cuda")
    with capture_native_stderr() as log:
        session = ort.InferenceSession(path, providers=providers)
    check_session_providers(session, "cuda", log.text)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile

import onnxruntime as ort

# Telemetry off unless the user opted in: runtime/__init__.py sets ORT_DISABLE_TELEMETRY=1 before
# onnxruntime is imported (that stops the queue file ONNX Runtime writes under ~/.cache at import);
# this call also stops the events of a process that imported onnxruntime before graphc.
if os.environ.get("ORT_DISABLE_TELEMETRY", "1").strip().lower() not in ("0", "false", "no", "off"):
    ort.disable_telemetry_events()

PROVIDER_CHOICES = ("cpu", "cuda", "auto")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderError(Exception):
    """The requested execution provider cannot be used; the message says why."""


_preloaded: list[bool] = []


def _preload_nvidia_libraries() -> None:
    """Load CUDA/cuDNN from NVIDIA's pip wheels (``pip install -e ".[cuda]"``) once per process.

    Those libraries live under site-packages, not on the loader's path, so without this the CUDA
    provider fails to load on a machine with no system CUDA. What is missing is reported later, by
    the session itself (check_session_providers), so this stays quiet.
    """
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded.append(True)
    with contextlib.redirect_stdout(io.StringIO()), capture_native_stderr():
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - a best effort; the session creation says what is missing
            pass


def resolve_providers(provider: str) -> list[str]:
    """The ONNX Runtime provider list for "cpu", "cuda" or "auto".

    "cuda" fails early when this ONNX Runtime build has no CUDA provider at
    all; whether it actually loads is only known after the session exists,
    see check_session_providers.
    """
    choice = str(provider).lower()
    if choice not in PROVIDER_CHOICES:
        raise ProviderError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    if CUDA in available:
        _preload_nvidia_libraries()
        return [CUDA, CPU]
    if choice == "cuda":
        raise ProviderError(
            "CUDA was requested but this ONNX Runtime build has no CUDAExecutionProvider "
            f"(available providers: {', '.join(available)}); install onnxruntime-gpu"
        )
    return [CPU]


def check_session_providers(session, provider: str, native_log: str = "") -> None:
    """Raise ProviderError if "cuda" was requested but the session fell back to CPU.

    native_log is what ONNX Runtime printed while creating the session (see
    capture_native_stderr); it usually names the missing library.
    """
    if str(provider).lower() != "cuda" or CUDA in session.get_providers():
        return
    reason = _cuda_failure_reason(native_log)
    raise ProviderError(
        "CUDA was requested but ONNX Runtime could not load the CUDA execution provider "
        f"(available providers: {', '.join(ort.get_available_providers())}; "
        f"session got: {', '.join(session.get_providers())})"
        + (f": {reason}" if reason else "; ONNX Runtime gave no reason")
    )


_announced: set[str] = set()  # providers "auto" already announced in this process


def announce_auto_choice(session, provider: str, native_log: str = "") -> str | None:
    """For provider "auto", say on stderr which provider the session got (and why not CUDA); returns the line.

    Said once per process and provider picked: a Trainer or Program builds several sessions, and the
    user needs to read the choice once, not once per session (the line is still returned every time).
    """
    if str(provider).lower() != "auto":
        return None
    picked = "cuda" if CUDA in session.get_providers() else "cpu"
    if picked == "cuda":
        line = "graphc: provider auto -> cuda (CUDAExecutionProvider)"
    else:
        reason = _cuda_failure_reason(native_log) if CUDA in ort.get_available_providers() else \
            "this ONNX Runtime build has no CUDA provider"
        line = f"graphc: provider auto -> cpu (CPUExecutionProvider){'; CUDA not used: ' + reason if reason else ''}"
    if picked not in _announced and sys.stderr is not None:
        _announced.add(picked)
        print(line, file=sys.stderr)
    return line


def _cuda_failure_reason(native_log: str) -> str:
    """The most telling lines of ONNX Runtime's log, on one line, without colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", native_log or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if re.search(r"error|fail|require|cannot", line, re.I)]
    picked = []
    for line in telling or lines:
        # Drop the "[E:onnxruntime:Default, file.cc:123 function]" logger prefix.
        picked.append(re.sub(r"^.*?\[[EWIV]:onnxruntime:[^\]]*\]\s*", "", line))
    return clean_ort_message(" | ".join(picked))


def clean_ort_message(message) -> str:
    """ORT's message on one line, without error-code prefixes and C++ source locations."""
    text = " ".join(str(message).split())
    text = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\) (?=\S)", "", text)
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return text[:1000]


class _CapturedText:
    text = ""


@contextlib.contextmanager
def capture_native_stderr():
    """Capture what native code writes to file descriptor 2 inside the block.

    ONNX Runtime reports provider load failures only through its C++ logger on
    stderr, not in a Python exception; capturing the descriptor is the one way
    to put that reason into our error message (and to keep an "auto" fallback
    quiet). Not thread-safe: it swaps the process-wide descriptor briefly.
    """
    captured = _CapturedText()
    try:
        if sys.stderr is not None:  # None when the process started with fd 2 closed
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield captured  # no usable fd 2 (embedded interpreter): capture nothing
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read(1 << 20).decode("utf-8", "replace")
