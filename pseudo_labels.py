"""Sequence-level distillation: the teacher's generated outputs become training pairs.

Kim & Rush (2016) train the student on the teacher's beam-search outputs instead of (or beside)
the references; DistilBART's "pseudo-labels" are the same idea. Here they are *data*: the
teacher decodes every distinct training source and every source of ``data.unlabeled_file`` (a
transfer set without references) once, and the resulting (source, output) pairs replace or join
the reference pairs before the trainer starts. The trainer does not know: with logit losses
configured, the teacher's distributions are then compared on the pseudo-label targets.

Decoding is batched and sorted by length (:func:`generation.generate_texts`) and cached::

    <cache_dir>/<fingerprint>/manifest.json     what the fingerprint covers, in readable form
    <cache_dir>/<fingerprint>/shard_00000.json  {"fingerprint": ..., "sources": [...], "outputs": [...]}

The fingerprint hashes the teacher's weights, its tokenizer, the sources (in order), the prefix,
``data.max_source_length`` and every decoding setting, so a changed input never reuses stale
labels and an unchanged one is never decoded twice. Shards are written atomically, in order of
source length; an interrupted run finds the shards already written and decodes only the rest.
A shard that is not exactly what this run would write (damaged, cut, another shard_size) is
decoded again with a warning; the manifest is written, never read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from data_loader import Example, training_pairs
from generation import generate_texts, generation_config
from utils.errors import UserError, one_line
from utils.files import atomic_write_text, write_json
from utils.logs import log


def pseudo_label_pairs(run, teacher, tokenizer) -> list[tuple[str, str]]:
    """The student's training pairs under ``distill.pseudo_labels`` (see the module docstring)."""
    cfg, pl = run.cfg, run.cfg.distill.pseudo_labels
    train: list[Example] = run.splits.train
    unlabeled = run.unlabeled
    sources = list(dict.fromkeys([e.source for e in train] + unlabeled))
    decoding = dataclasses.replace(cfg.benchmark, num_beams=pl.num_beams,
                                   max_new_tokens=pl.max_new_tokens or cfg.data.max_target_length)
    gen = generation_config(decoding, teacher, tokenizer)
    cache = Path(pl.cache_dir) if pl.cache_dir else run.output_dir / "pseudo_labels"
    key = fingerprint(teacher, tokenizer, sources, gen, cfg.data.prefix, cfg.data.max_source_length)
    outputs = label_sources(teacher, tokenizer, sources, cache / key, gen_config=gen, prefix=cfg.data.prefix,
                            max_source_length=cfg.data.max_source_length, batch_size=pl.batch_size,
                            shard_size=pl.shard_size, device=run.device, precision=run.precision)
    empty = sum(not outputs[s] for s in sources)
    if empty == len(sources):
        raise UserError(f"distill.pseudo_labels: the teacher generated only empty outputs for {len(sources):,} "
                        f"sources; check the teacher (--teacher_path) and distill.pseudo_labels.max_new_tokens")
    if empty:
        log.warning("pseudo-labels: %d of %d teacher outputs are empty; those sources are left out", empty,
                    len(sources))
    teacher_pairs = [(s, outputs[s]) for s in sources if outputs[s]]
    pairs = teacher_pairs
    if pl.targets == "both":
        pairs = list(dict.fromkeys(training_pairs(train, cfg.data.train_on_all_references) + teacher_pairs))
    log.info("pseudo-labels: training on %d pairs (%s; %d training and %d unlabeled sources)", len(pairs),
             "teacher outputs instead of references" if pl.targets == "teacher" else "references and teacher outputs",
             len(train), len(unlabeled))
    return pairs


def fingerprint(teacher, tokenizer, sources: list[str], gen_config, prefix: str, max_source_length: int) -> str:
    """A short hex digest of everything the generated labels depend on."""
    h = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # minus the padding/truncation state that every call of the tokenizer changes
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
    else:
        spec = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps(spec, sort_keys=True).encode())
    h.update(json.dumps([gen_config.to_dict(), prefix, max_source_length], sort_keys=True, default=str).encode())
    h.update(json.dumps(sources).encode())
    return h.hexdigest()[:20]


def label_sources(model, tokenizer, sources: list[str], directory: Path, *, gen_config, prefix: str,
                  max_source_length: int, batch_size: int, shard_size: int, device, precision) -> dict[str, str]:
    """{source: generated text}, decoding only the shards that ``directory`` does not hold yet."""
    order = sorted(sources, key=len)  # length-homogeneous shards: little padding inside generate
    shards = [order[i:i + shard_size] for i in range(0, len(order), shard_size)]
    _writable_dir(directory)
    with _user_paths(directory):
        write_json(_file_slot(directory / "manifest.json"), {
            "sources": len(sources), "prefix": prefix, "max_source_length": max_source_length,
            "generation": gen_config.to_dict(), "shard_size": shard_size})
    outputs, reused, t0 = {}, 0, time.perf_counter()
    for n, shard in enumerate(shards):
        path = directory / f"shard_{n:05d}.json"
        done = _read_shard(path, shard)
        if done is None:
            texts, _ = generate_texts(model, tokenizer, shard, prefix=prefix, max_source_length=max_source_length,
                                      gen_config=gen_config, batch_size=batch_size, device=device,
                                      precision=precision)
            with _user_paths(directory):
                atomic_write_text(path, json.dumps({"fingerprint": directory.name, "sources": shard, "outputs": texts},
                                                   ensure_ascii=False))
            log.info("pseudo-labels: shard %d/%d (%d sources) written, %.0f s so far", n + 1, len(shards),
                     len(shard), time.perf_counter() - t0)
            done = texts
        else:
            reused += 1
        outputs.update(zip(shard, done))
    log.info("pseudo-labels: %d sources in %d shards under %s (%d reused from the cache, %d generated)",
             len(sources), len(shards), directory, reused, len(shards) - reused)
    return outputs


def _read_shard(path: Path, shard: list[str]) -> list[str] | None:
    """The shard's outputs when ``path`` holds exactly these sources; None when it must be decoded."""
    if not _file_slot(path).exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        log.warning("pseudo-labels: %s is unreadable (%s); decoding that shard again", path, one_line(e, 80))
        return None
    if not isinstance(data, dict) or not _strings(data.get("sources")) or not _strings(data.get("outputs")):
        log.warning("pseudo-labels: %s is not an object of 'sources' and 'outputs' lists of strings (damaged); "
                    "decoding that shard again", path)
        return None
    if data.get("fingerprint", path.parent.name) != path.parent.name:  # absent: written before it was recorded
        log.warning("pseudo-labels: %s was written for another fingerprint (copied?); decoding that shard again",
                    path)
        return None
    if data["sources"] != shard or len(data["outputs"]) != len(shard):
        log.warning("pseudo-labels: %s holds other sources (another shard_size?); decoding that shard again", path)
        return None
    return data["outputs"]


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _file_slot(path: Path) -> Path:
    """``path`` unless a directory stands where our file belongs (the user's, not our damage): refused."""
    if path.is_dir():
        raise UserError(f"pseudo-labels: {path} is a directory where the cache keeps a file; remove it or set "
                        f"distill.pseudo_labels.cache_dir to another directory")
    return path


def _writable_dir(directory: Path) -> None:
    """The shard directory, created; a file anywhere on its path is refused in one line."""
    with _user_paths(directory):
        for path in (*reversed(directory.parents), directory):
            if path.exists() and not path.is_dir():
                raise UserError(f"pseudo-labels: {path} is a file where the cache needs a directory; move it or "
                                f"set distill.pseudo_labels.cache_dir to a directory")
        directory.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _user_paths(directory: Path):
    """An OSError writing the cache (permissions, a full disk) as one line naming the directory."""
    try:
        yield
    except OSError as e:
        raise UserError(f"pseudo-labels: cannot write under {directory} ({e.strerror or one_line(e)}); free space "
                        f"or set distill.pseudo_labels.cache_dir to a writable directory") from None
