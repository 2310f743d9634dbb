"""What a GPT-2-tokenized causal teacher can tell a T5 student on ParaDetox: the shared
vocabulary and the share of student target positions that receive a teacher signal.

    python bench/cross_tokenizer_alignment.py [../shared]   # tokenizers only, no model; ~1 minute

Pairs are (toxic, neutral_k) for every non-empty reference, as training sees them with
data.train_on_all_references, prefix "detoxify: ", max lengths 96.
"""
from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loader.batching import Seq2SeqCollator  # noqa: E402
from data_loader.cross import CrossTokenizerCollator  # noqa: E402
from distiller_zoo.vocab_map import vocab_map  # noqa: E402


def main(shared: Path) -> None:
    from transformers import GPT2TokenizerFast, T5TokenizerFast
    gpt2 = GPT2TokenizerFast.from_pretrained(str(shared / "tokenizers" / "gpt2"))
    gpt2.pad_token = gpt2.eos_token
    t5 = T5TokenizerFast.from_pretrained(str(shared / "tokenizers" / "t5"))
    with open(shared / "data" / "paradetox" / "paradetox.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    pairs = list(dict.fromkeys((r["toxic"], r[k]) for r in rows for k in ("neutral1", "neutral2", "neutral3")
                               if r.get(k, "").strip()))
    vmap = vocab_map(gpt2, t5)
    cross = CrossTokenizerCollator(Seq2SeqCollator(t5, "detoxify: ", 96, 96), gpt2, True, "{prefix}{source}\n")
    index = [cross.teacher_row(p)[2] for p in pairs]
    labels = [cross.encode([p])[0][1] for p in pairs]
    flat, ids = np.concatenate(index), np.concatenate(labels)
    shared_ids = set(vmap.student_ids.tolist())
    unaligned = Counter(t5.convert_ids_to_tokens(int(i)) for i, j in zip(ids, flat) if j < 0)
    print(f"pairs {len(pairs):,}, student target positions {flat.size:,}")
    print(f"vocabulary: {vmap.describe()}")
    print(f"aligned fraction: {100 * (flat >= 0).mean():.1f}% of the student target positions receive a teacher signal")
    print(f"  without the end-of-sequence positions: {100 * (flat[ids != t5.eos_token_id] >= 0).mean():.1f}%")
    print(f"student target tokens inside the shared sub-vocabulary: {100 * np.isin(ids, list(shared_ids)).mean():.1f}%")
    print(f"pairs with every position aligned: {100 * np.mean([(i >= 0).all() for i in index]):.1f}%")
    print("most frequent unaligned student tokens:", ", ".join(f"{t!r} {n:,}" for t, n in unaligned.most_common(8)))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared")
