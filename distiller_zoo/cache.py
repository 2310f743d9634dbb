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
"""
from __future__ import annotations

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


def build_cache(entry: Path, teacher, pairs, collator, top_k: int, temperatures, vocab_size: int,
                batch_size: int = 32, device="cpu", log=None) -> Path:
    """Run ``teacher`` over ``pairs`` once and write the entry atomically; returns ``entry``."""
    live = LiveTeacher(teacher, vocab_size).to(device)
    id_dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index, rows = {}, 0
    with open(tmp / "ids.bin", "wb") as f_ids, open(tmp / "logp.bin", "wb") as f_lp, open(tmp / "tail.bin", "wb") as f_tail:
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in collator(pairs[i:i + batch_size]).items()}
            targets = live.targets(batch)
            ids, logp, tail = top_k_rows(targets.chunk(0, targets.n), top_k, temperatures)
            offset = 0
            for key, length in zip(example_keys(batch), (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()):
                if key not in index:   # a repeated pair is stored once
                    sl = slice(offset, offset + length)
                    f_ids.write(ids[sl].cpu().numpy().astype(id_dtype).tobytes())
                    f_lp.write(logp[sl].cpu().numpy().astype(np.float32).tobytes())
                    f_tail.write(tail[sl].cpu().numpy().astype(np.float32).tobytes())
                    index[key] = (rows, length)
                    rows += length
                offset += length
            if log and (i // batch_size) % 50 == 0:
                log.info("teacher cache: %d/%d pairs", min(i + batch_size, len(pairs)), len(pairs))
    meta = {"rows": rows, "top_k": int(ids.shape[-1]), "id_dtype": np.dtype(id_dtype).name,
            "temperatures": list(temperatures), "vocab_size": vocab_size, "index": index}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, entry)   # complete or absent, never half-written
    except OSError:              # another process finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


class SparseTargets(TeacherTargets):
    """The cached teacher's rows for the N positions of one micro-batch."""

    def __init__(self, ids, logp, tail, temperatures):
        self.ids, self.logp, self.tail, self.temperatures, self.n = ids, logp, tail, temperatures, ids.shape[0]

    def chunk(self, start: int, end: int) -> SparseChunk:
        tail = {t: self.tail[start:end, j] for j, t in enumerate(self.temperatures)}
        return SparseChunk(self.ids[start:end], self.logp[start:end], tail)


class CachedTeacher:
    """A teacher source answering from a cache entry (memory-mapped; the teacher model is not needed)."""

    def __init__(self, entry: Path):
        meta = json.loads((entry / "meta.json").read_text())
        self.entry, self.index, self.temperatures = entry, meta["index"], meta["temperatures"]
        rows, k = meta["rows"], meta["top_k"]
        shape = lambda cols: (rows, cols)  # noqa: E731
        self.ids = np.memmap(entry / "ids.bin", dtype=meta["id_dtype"], mode="r", shape=shape(k))
        self.logp = np.memmap(entry / "logp.bin", dtype=np.float32, mode="r", shape=shape(k))
        self.tail = np.memmap(entry / "tail.bin", dtype=np.float32, mode="r", shape=shape(len(self.temperatures)))
        self.device = torch.device("cpu")

    def to(self, device) -> "CachedTeacher":
        self.device = torch.device(device)
        return self

    def targets(self, batch: dict, need: frozenset = frozenset()) -> SparseTargets:
        lengths = (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()
        spans = []
        for key, length in zip(example_keys(batch), lengths):
            if key not in self.index or self.index[key][1] != length:
                raise KeyError(f"teacher cache {self.entry} has no entry for a training example; delete the "
                               f"directory to rebuild it")
            spans.append(slice(self.index[key][0], self.index[key][0] + length))
        grab = lambda arr: torch.from_numpy(np.concatenate([arr[s] for s in spans]))  # noqa: E731
        ids = grab(self.ids).to(torch.int64)
        return SparseTargets(ids.to(self.device), grab(self.logp).to(self.device), grab(self.tail).to(self.device),
                             self.temperatures)


def open_cache(root: Path, teacher, tokenizer, pairs, collator, top_k: int, temperatures, vocab_size: int,
               device="cpu", log=None) -> CachedTeacher:
    """The cache entry for this teacher and data, built first if it does not exist."""
    temperatures = sorted(set(float(t) for t in temperatures))
    entry = Path(root) / fingerprint(teacher, tokenizer, pairs, collator, top_k, temperatures, vocab_size)
    if (entry / "meta.json").is_file():
        if log:
            log.info("teacher cache: using %s", entry)
    else:
        if log:
            log.info("teacher cache: building %s (top-%d, %d pairs)", entry, top_k, len(pairs))
        build_cache(entry, teacher, pairs, collator, top_k, temperatures, vocab_size, device=device, log=log)
    return CachedTeacher(entry)
