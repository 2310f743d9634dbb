"""Small shared helpers: user-facing errors, devices and precision, seeding, logging, files."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("kd")


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, path).

    ``main.py`` prints the message as one line and exits with code 2, no traceback.
    The message names the problem and the fix."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message as one bounded line (library messages span lines), or its type name."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the current step finished and a checkpoint was saved."""

    def __init__(self, signum: int, step: int, checkpoint):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved: {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class GracefulStop:
    """Within ``with GracefulStop() as stop:``, SIGINT and SIGTERM only set ``stop.signum``, so the
    loop can finish its optimizer step and save before leaving. A second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # impatient second Ctrl-C
        self.signum = signum
        log.warning("%s received: finishing the current step, then saving a checkpoint",
                    signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


# --------------------------------------------------------------------------- devices
def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu or --device auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """The mixed-precision mode, chosen once per run (nanoGPT style)."""

    name: str  # fp32 | bf16 | fp16
    device_type: str

    @property
    def dtype(self):
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self):
        """Autocast context for forward passes; a no-op in fp32."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("training.precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return Precision(name, device.type)


# --------------------------------------------------------------------------- model/dataset hub
def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline(datasets: bool = False) -> bool:
    """Whether the user switched the hub off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE)."""
    flags = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if datasets else [])
    return any(env_flag(v) for v in flags)


def hub_host() -> str:
    from urllib.parse import urlparse
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A 3-second TCP probe of the hub. Without it huggingface_hub and datasets retry for
    ~25 s before failing on a machine without network. Behind a proxy a direct connection
    may fail while the hub works, so then the libraries are left to try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- seeding
def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# --------------------------------------------------------------------------- logging
class _ConsoleHandler(logging.StreamHandler):
    """Progress lines go to stdout (whatever sys.stdout is at the time: it may be replaced after
    setup, e.g. by tests), so stderr carries only the one-line error of a failed run."""

    def emit(self, record):
        self.stream = sys.stdout
        super().emit(record)


_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(level=logging.INFO) -> None:
    """Timestamped lines on stdout; a log file is added with :func:`attach_log_file`."""
    log.setLevel(level)
    log.propagate = False
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)
    console = _ConsoleHandler()
    console.setFormatter(_FORMAT)
    log.addHandler(console)


def attach_log_file(path: Path) -> None:
    """Also append the log to ``path`` (once a stage may write into its run directory)."""
    path = Path(path).resolve()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in log.handlers):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(_FORMAT)
    log.addHandler(fh)


# --------------------------------------------------------------------------- files
def ensure_writable_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{what} {path} is not writable ({e.strerror}); choose another directory") from None
    return path


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """``write(f)`` into a temporary file, flush, fsync, then rename over ``path``: a kill at any
    moment leaves either the previous file or the complete new one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters; tied weights are counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable
