"""The teacher-output cache: the teacher's top-K distribution per target token, memory-mapped.

Built once by running the teacher over the training pairs; later epochs and later runs read
it instead of running the teacher. Layout of one entry ``<root>/<fingerprint>/``:

- ``ids.bin``  ``[M, K]`` uint16 (int32 for vocabularies over 65,535): the top-K token ids,
- ``logp.bin`` ``[M, K]`` float32: their log-probabilities at T = 1,
- ``tail.bin`` ``[M, len(temperatures)]`` float32: log of the mass outside the K ids of
  ``softmax(z / T)``, one column per temperature the objective uses,
- ``meta.json``: shapes, dtypes, temperatures, and the row range of every example, keyed by a
  hash of its tokens (source ids and labels), so any batching finds its rows.

M counts the target tokens of the distinct examples. The fingerprint covers the teacher's
weights, the tokenizer's vocabulary, the training pairs' content, prefix, lengths, K, the
temperatures and the vocabulary size; anything else gets another entry. An entry is written
under a temporary name and renamed when complete, so an interrupted build leaves nothing
that could be mistaken for a cache.

Every open validates the entry (meta.json's structure and fingerprint, each file's size against
meta's shapes, each file's sha256); a damaged entry is logged, removed and built again.
Checksums: each .bin's sha256 is recorded while writing and verified at every open: 0.11 s per
120 MB (1e6 rows x K=20, one core; blake2b 0.22 s), small beside the teacher passes an entry
saves, and it catches the damage that keeps a file's size.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distiller_zoo.base import IGNORE_INDEX
from distiller_zoo.teacher import LiveTeacher, SparseChunk, TeacherTargets
from utils.errors import UserError, one_line
from utils.logs import log as kd_log

BINS = ("ids.bin", "logp.bin", "tail.bin")


def example_keys(batch: dict) -> list[str]:
    """One key per example of a collated batch: a hash of its unpadded source ids and its labels."""
    keys = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        h = hashlib.blake2b(digest_size=16)
        h.update(ids[mask.bool()].to(torch.int64).cpu().numpy().tobytes())
        h.update(b"|")
        h.update(labels[labels != IGNORE_INDEX].to(torch.int64).cpu().numpy().tobytes())
        keys.append(h.hexdigest())
    return keys


def fingerprint(teacher, tokenizer, pairs, collator, top_k: int, temperatures, vocab_size: int) -> str:
    """Identity of a cache entry: everything the stored numbers depend on."""
    h = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for source, target in pairs:
        h.update(f"{len(source)}:{source}{len(target)}:{target}".encode())
    h.update(json.dumps([collator.prefix, collator.max_source_length, collator.max_target_length, top_k,
                         list(temperatures), vocab_size]).encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def top_k_rows(logits: torch.Tensor, k: int, temperatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[n, V]`` teacher logits -> ids ``[n, K]``, log-probs ``[n, K]`` (T = 1), tail ``[n, len(temps)]``."""
    z = logits.float()
    logp, ids = F.log_softmax(z, dim=-1).topk(min(k, z.shape[-1]), dim=-1)
    tails = []
    for t in temperatures:
        lp = F.log_softmax(z / t, dim=-1)
        tails.append(lp.scatter(-1, ids, float("-inf")).logsumexp(-1) if ids.shape[-1] < z.shape[-1]
                     else torch.full_like(lp[:, 0], float("-inf")))
    return ids, logp, torch.stack(tails, dim=-1)


def id_dtype(vocab_size: int) -> np.dtype:
    """The stored ids' dtype: uint16 while the vocabulary fits, int32 beyond."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32)


def build_cache(entry: Path, teacher, pairs, collator, top_k: int, temperatures, vocab_size: int,
                batch_size: int = 32, device="cpu", log=None, key: str | None = None) -> Path:
    """Run ``teacher`` over ``pairs`` once and write the entry atomically; returns ``entry``.
    ``key``: the fingerprint meta.json records (default: the entry's name)."""
    live = LiveTeacher(teacher, vocab_size).to(device)
    dtype = id_dtype(vocab_size)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"teacher cache: cannot create {tmp} ({e.strerror}); set distill.teacher_cache.dir to a "
                        f"writable directory") from None
    index, rows, k = {}, 0, min(top_k, vocab_size)
    sums = {name: hashlib.sha256() for name in BINS}   # hashed while written: no second pass over the files
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(open(tmp / name, "wb")) for name in BINS}

        def put(name, rows_, dtype_):
            data = rows_.cpu().numpy().astype(dtype_).tobytes()
            files[name].write(data)
            sums[name].update(data)
        for i in range(0, len(pairs), batch_size):
            batch = {n: v.to(device) for n, v in collator(pairs[i:i + batch_size]).items()}
            targets = live.targets(batch)
            ids, logp, tail = top_k_rows(targets.chunk(0, targets.n), top_k, temperatures)
            k, offset = int(ids.shape[-1]), 0
            for example, length in zip(example_keys(batch), (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()):
                if example not in index:   # a repeated pair is stored once
                    sl = slice(offset, offset + length)
                    put("ids.bin", ids[sl], dtype)
                    put("logp.bin", logp[sl], np.float32)
                    put("tail.bin", tail[sl], np.float32)
                    index[example] = (rows, length)
                    rows += length
                offset += length
            if log and (i // batch_size) % 50 == 0:
                log.info("teacher cache: %d/%d pairs", min(i + batch_size, len(pairs)), len(pairs))
    meta = {"fingerprint": key or entry.name, "rows": rows, "top_k": k, "id_dtype": dtype.name,
            "temperatures": list(temperatures), "vocab_size": vocab_size, "index": index,
            "sha256": {name: h.hexdigest() for name, h in sums.items()}}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, entry)   # complete or absent, never half-written
    except OSError:              # another process finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


# ------------------------------------------------------------------------------------ validation
class DamagedCache(UserError):
    """A file of an entry failed validation: open_cache rebuilds the entry; anywhere else, one line."""

    def __init__(self, entry: Path, file: str, why: str):
        self.entry, self.file, self.why = entry, file, why
        super().__init__(f"teacher cache: {entry / file} is damaged ({why}); delete {entry} to rebuild it")


def _is_int(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


_FIELDS = {  # meta.json key -> (test, what it must be)
    "fingerprint": (lambda v: isinstance(v, str), "a string"),
    "rows": (_is_int, "an integer >= 0"),
    "top_k": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "id_dtype": (lambda v: v in ("uint16", "int32"), "'uint16' or 'int32'"),
    "temperatures": (lambda v: isinstance(v, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                                           for t in v), "a list of numbers"),
    "vocab_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "index": (lambda v: isinstance(v, dict), "an object"),
    "sha256": (lambda v: isinstance(v, dict) and all(isinstance(v.get(n), str) for n in BINS),
               "a digest per .bin file"),
}


def read_meta(entry: Path, temperatures=None, vocab_size: int | None = None) -> dict:
    """``entry``'s meta.json once every file agrees with it (and with the requested temperatures and
    vocabulary size, when given); raises :class:`DamagedCache` naming the first disagreement."""
    meta = _load_meta(entry)
    bad = lambda why: DamagedCache(entry, "meta.json", why)  # noqa: E731
    if not isinstance(meta, dict):
        raise bad(f"a JSON {type(meta).__name__} where an object belongs")
    for key, (ok, what) in _FIELDS.items():
        if key not in meta:
            raise bad(f"no {key!r}: written by an older version, or cut")
        if not ok(meta[key]):
            raise bad(f"{key!r} is not {what}")
    if meta["fingerprint"] != entry.name:
        raise bad(f"fingerprint {meta['fingerprint'][:32]!r} is not the directory's name")
    if meta["id_dtype"] != id_dtype(meta["vocab_size"]).name:
        raise bad(f"id_dtype {meta['id_dtype']} does not fit vocab_size {meta['vocab_size']}")
    if temperatures is not None and [float(t) for t in meta["temperatures"]] != [float(t) for t in temperatures]:
        raise bad(f"temperatures {meta['temperatures'][:8]} are not the requested {list(temperatures)}")
    if vocab_size is not None and meta["vocab_size"] != vocab_size:
        raise bad(f"vocab_size {meta['vocab_size']} is not the requested {vocab_size}")
    rows = meta["rows"]
    for key, span in meta["index"].items():
        if not (isinstance(span, list) and len(span) == 2 and _is_int(span[0]) and _is_int(span[1])
                and span[0] + span[1] <= rows):
            raise bad(f"index entry {key[:32]!r} is not [start, length] inside its {rows:,} rows")
    _check_bins(entry, meta)
    return meta


def _load_meta(entry: Path):
    path = entry / "meta.json"
    try:
        if not path.is_file():
            raise DamagedCache(entry, "meta.json", "missing" if not path.exists() else "not a file")
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedCache(entry, "meta.json", "not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise DamagedCache(entry, "meta.json", f"not JSON: {one_line(e, 80)}") from None
    except OSError as e:
        raise DamagedCache(entry, "meta.json", f"unreadable: {e.strerror}") from None


def _check_bins(entry: Path, meta: dict) -> None:
    """Each .bin: a file of exactly rows x columns x itemsize bytes with the recorded sha256."""
    widths = {"ids.bin": (meta["top_k"], np.dtype(meta["id_dtype"]).itemsize), "logp.bin": (meta["top_k"], 4),
              "tail.bin": (len(meta["temperatures"]), 4)}
    for name, (width, itemsize) in widths.items():
        path, need = entry / name, meta["rows"] * width * itemsize
        try:
            if not path.is_file():
                raise DamagedCache(entry, name, "missing" if not path.exists() else "not a file")
            size = path.stat().st_size
            if size != need:
                raise DamagedCache(entry, name, f"{size:,} bytes where meta.json's {meta['rows']:,} rows x {width} "
                                                f"need {need:,}")
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise DamagedCache(entry, name, f"unreadable: {e.strerror}") from None
        if digest != meta["sha256"][name]:
            raise DamagedCache(entry, name, "its sha256 is not the one meta.json recorded")


def _map(path: Path, dtype, shape: tuple[int, int]) -> np.ndarray:
    """A read-only memory map (numpy cannot map an empty file: then an empty array)."""
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


# ---------------------------------------------------------------------------------- the reader
class SparseTargets(TeacherTargets):
    """The cached teacher's rows for the N positions of one micro-batch."""

    def __init__(self, ids, logp, tail, temperatures):
        self.ids, self.logp, self.tail, self.temperatures, self.n = ids, logp, tail, temperatures, ids.shape[0]

    def chunk(self, start: int, end: int) -> SparseChunk:
        tail = {t: self.tail[start:end, j] for j, t in enumerate(self.temperatures)}
        return SparseChunk(self.ids[start:end], self.logp[start:end], tail)


class CachedTeacher:
    """A teacher source answering from a validated cache entry (memory-mapped; no teacher model needed)."""

    def __init__(self, entry: Path, temperatures=None, vocab_size: int | None = None):
        meta = read_meta(entry, temperatures, vocab_size)
        self.entry, self.index, self.temperatures = entry, meta["index"], meta["temperatures"]
        self.vocab_size, rows, k = meta["vocab_size"], meta["rows"], meta["top_k"]
        self.ids = _map(entry / "ids.bin", meta["id_dtype"], (rows, k))
        self.logp = _map(entry / "logp.bin", np.float32, (rows, k))
        self.tail = _map(entry / "tail.bin", np.float32, (rows, len(self.temperatures)))
        self.device = torch.device("cpu")

    def to(self, device) -> "CachedTeacher":
        self.device = torch.device(device)
        return self

    def targets(self, batch: dict, need: frozenset = frozenset()) -> SparseTargets:
        lengths = (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()
        spans = []
        for key, length in zip(example_keys(batch), lengths):
            span = self.index.get(key)
            if span is None or span[1] != length:   # built for other pairs, or meta.json edited consistently
                raise UserError(f"teacher cache: {self.entry} holds no rows for a training example (built for "
                                f"other pairs, or its meta.json was altered); delete {self.entry} to rebuild it")
            spans.append(slice(span[0], span[0] + length))
        grab = lambda arr: torch.from_numpy(np.concatenate([arr[s] for s in spans]))  # noqa: E731
        ids = grab(self.ids).to(torch.int64)
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.vocab_size):  # changed since open
            raise UserError(f"teacher cache: {self.entry / 'ids.bin'} holds token ids outside [0, {self.vocab_size}) "
                            f"(changed after it was opened); delete {self.entry} to rebuild it")
        return SparseTargets(ids.to(self.device), grab(self.logp).to(self.device), grab(self.tail).to(self.device),
                             self.temperatures)


# ----------------------------------------------------------------------------------- the entry
def open_cache(root: Path, teacher, tokenizer, pairs, collator, top_k: int, temperatures, vocab_size: int,
               device="cpu", log=None) -> CachedTeacher:
    """The validated cache entry for this teacher and data, built first when absent or damaged."""
    log = log or kd_log
    temperatures = sorted(set(float(t) for t in temperatures))
    key = fingerprint(teacher, tokenizer, pairs, collator, top_k, temperatures, vocab_size)
    root = Path(root)
    entry = root / key
    _refuse_files(root, entry)
    if entry.is_dir():
        try:
            cached = CachedTeacher(entry, temperatures, vocab_size)
            log.info("teacher cache: using %s", entry)
            return cached
        except DamagedCache as e:
            log.warning("teacher cache: %s is damaged (%s); rebuilding %s", entry / e.file, e.why, entry)
            _discard(entry, e)
    log.info("teacher cache: building %s (top-%d, %d pairs)", entry, top_k, len(pairs))
    build_cache(entry, teacher, pairs, collator, top_k, temperatures, vocab_size, device=device, log=log, key=key)
    return CachedTeacher(entry, temperatures, vocab_size)


def _refuse_files(root: Path, entry: Path) -> None:
    """A file where the cache root or an entry belongs is the user's path, not our damage: refused."""
    try:
        if root.exists() and not root.is_dir():
            raise UserError(f"distill.teacher_cache.dir {root} is a file, not a directory; set "
                            f"distill.teacher_cache.dir to a directory (or move the file)")
        if entry.exists() and not entry.is_dir():
            raise UserError(f"teacher cache: {entry} is a file where a cache entry (a directory) belongs; remove "
                            f"it or set distill.teacher_cache.dir to another directory")
    except OSError as e:
        raise UserError(f"teacher cache: cannot read {e.filename} ({e.strerror}); set distill.teacher_cache.dir "
                        f"to a readable directory") from None


def _discard(entry: Path, damage: DamagedCache) -> None:
    """Move a damaged entry aside (a reader sees it whole or not at all), then delete it."""
    aside = entry.with_name(f"{entry.name}.damaged-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(entry, aside)
    except FileNotFoundError:   # another process discarded it first
        return
    except OSError as e:
        raise UserError(f"teacher cache: {entry / damage.file} is damaged ({damage.why}) and cannot be removed "
                        f"({e.strerror}); delete {entry} or set distill.teacher_cache.dir to another "
                        f"directory") from None
    shutil.rmtree(aside, ignore_errors=True)
