"""Checkpoint files: atomic writes with a disk-space check, safe loads, RNG state, config diffs.

A checkpoint is one ``step_<N>.pt`` file written by ``torch.save`` to a temporary name, flushed,
fsynced and renamed, so a kill at any moment (even ``kill -9`` mid-write) leaves the previous
checkpoints intact. It is read with ``torch.load(weights_only=True)``: tensors, numbers, strings
and containers only, so a checkpoint cannot execute code. A CRC-32 of its contents, written inside
it, catches damage that still unpickles (torch checks no checksum: a flipped byte in a tensor loads).
"""
from __future__ import annotations

import random
import shutil
from dataclasses import asdict
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from settings import Config
from utils.errors import UserError
from utils.files import atomic_write
from utils.logs import log

DISK_MARGIN = 1.2  # free space wanted, as a multiple of the checkpoint's size
KEYS = ("weights", "optimizer", "scheduler", "scaler", "rng", "state", "role", "total_steps", "config")
# What a resume may change, from the next step on: the peak learning rate and the weight decay
# (written into the restored optimizer and schedule), clipping and the eval/log/save cadence (read at
# every step). Everything else that shapes the run must match the checkpoint (see resume_changes).
RESUME_MAY_CHANGE = ("learning_rate", "weight_decay", "max_grad_norm", "eval_every", "eval_batch_size",
                     "eval_generate_samples", "log_every", "save_total_limit")


def save_checkpoint_file(payload: dict, path: Path) -> None:
    """Write ``payload`` atomically, after checking the disk can hold it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    need = int(tensor_bytes(payload) * DISK_MARGIN) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise UserError(f"not enough disk space for a checkpoint in {path.parent}: about {need / 2**20:,.0f} MB "
                        f"needed, {free / 2**20:,.0f} MB free; free some space (older runs) or set "
                        f"training.checkpoint_dir to another disk, then resume with --resume_from_checkpoint auto")
    payload = {**payload, DIGEST: contents_crc(payload)}
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


DIGEST = "crc32"  # the key of the checksum inside a checkpoint (absent in those of older versions)


def contents_crc(obj, crc: int = 0) -> int:
    """CRC-32 of a nested payload: every tensor's dtype, shape and bytes, every other value's repr,
    in order (about 2 GB/s: ~1 s for a t5-base checkpoint with its optimizer state)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        crc = zlib.crc32(f"{t.dtype}{tuple(obj.shape)}".encode(), crc)
        return zlib.crc32(t.view(torch.uint8).numpy(), crc) if t.numel() else crc
    if isinstance(obj, dict):
        for key, value in obj.items():
            crc = contents_crc(value, zlib.crc32(repr(key).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for value in obj:
            crc = contents_crc(value, crc)
        return zlib.crc32(str(len(obj)).encode(), crc)
    return zlib.crc32(repr(obj).encode(), crc)


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nested structure (what dominates a checkpoint's size)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint_file(path: Path) -> dict:
    """Load a checkpoint without executing code from it (weights_only)."""
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle before it refuses it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist; check --resume_from_checkpoint") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a directory; pass a step_*.pt file from it or 'auto'") from None
    except Exception as e:  # corrupt, truncated or not a checkpoint of ours
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}); it may be truncated or "
                        f"corrupt: resume from an older checkpoint or 'auto'") from None
    if not isinstance(ckpt, dict) or "weights" not in ckpt:
        raise UserError(f"{path} is not a checkpoint written by this tool; pass a step_*.pt file or 'auto'")
    if DIGEST in ckpt and ckpt.pop(DIGEST) != contents_crc(ckpt):
        raise UserError(f"checkpoint {path} is damaged (its contents do not match the checksum written with it); "
                        f"resume from an older checkpoint or 'auto'")
    return ckpt


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint that loads; newer unreadable ones are reported and passed over."""
    for path in sorted(checkpoint_dir.glob("step_*.pt"), reverse=True):
        try:
            load_checkpoint_file(path)
            return path
        except UserError as e:
            log.warning("skipping %s: %s", path.name, e)
    return None


def check_format(ckpt: dict, path: Path) -> None:
    """A resumable checkpoint of this format version holds every one of :data:`KEYS`."""
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} was written by another version of this tool (no {', '.join(missing)}); "
                        f"resume it with that version, or start the stage over with --overwrite")


def resume_changes(saved: dict, current: dict, role: str) -> tuple[list[str], list[str]]:
    """(refused, allowed) differences between a checkpoint's config and this run's, as 'key: a -> b'.
    Compared: the role's optimisation, seed and precision, the model's architecture, the data
    (file paths aside: files may move) and, for the student, the objective."""
    def shaping(cfg: dict) -> dict:
        t, m = cfg.get("training", {}), cfg.get(role, {})
        out = {"training": {role: t.get(role, {}), "seed": t.get("seed"), "precision": t.get("precision")},
               role: {"init": m.get("init"), "arch": m.get("arch"), "narrow": m.get("narrow"),
                      "tokenizer": {"train": (m.get("tokenizer") or {}).get("train")}},
               "data": {k: v for k, v in cfg.get("data", {}).items() if not k.endswith("_file")}}
        if role == "student":
            out["distill"] = cfg.get("distill", {})
        return out
    diffs = config_differences(shaping(with_defaults(saved)), shaping(with_defaults(current)))
    allowed = tuple(f"training.{role}.{k}:" for k in RESUME_MAY_CHANGE)
    return [d for d in diffs if not d.startswith(allowed)], [d for d in diffs if d.startswith(allowed)]


def with_defaults(saved: dict) -> dict:
    """A config saved by an earlier version, with the keys added since at their defaults (a key that
    did not exist then cannot have been set otherwise)."""
    def fill(have: dict, defaults: dict) -> dict:
        out = dict(have)
        for key, value in defaults.items():
            if key not in out:
                out[key] = value
            elif isinstance(out[key], dict) and isinstance(value, dict):
                out[key] = fill(out[key], value)
        return out
    return fill(saved, asdict(Config()))


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested config dicts, as 'key: saved -> current'."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b, name = saved.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
