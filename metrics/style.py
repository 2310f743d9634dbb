"""An offline style score for detoxification: a toxicity classifier trained on the task's own data.

The hub classifier of :func:`metrics.detox.style_accuracy` (``s-nlp/roberta_toxicity_classifier``)
needs the network. This one needs nothing but the training split: its toxic side (the sources)
against its neutral side (the references), TF-IDF word 1-2-grams and character 2-5-grams
(within word boundaries, so misspellings such as "f*cking" still share n-grams with "fucking"),
and a logistic regression from scikit-learn. It is trained on the TRAINING split only; its
accuracy on the test split's two sides (sources toxic, references neutral) says how far to trust
the score.

Example::

    clf = StyleClassifier.fit(["you are an idiot", ...], ["you are wrong", ...])
    clf.accuracy(test_sources, test_references)   # 0-100, held out
    clf.nontoxic(["you are wrong"])               # [True]
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class StyleClassifier:
    """A fitted TF-IDF + logistic-regression pipeline; label 1 = toxic."""

    pipeline: object

    @classmethod
    def fit(cls, toxic: Sequence[str], neutral: Sequence[str], seed: int = 0) -> "StyleClassifier":
        """Train on ``toxic`` (label 1) against ``neutral`` (label 0) texts."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union
        from sklearn.feature_extraction.text import TfidfVectorizer
        if not toxic or not neutral:
            raise ValueError(f"the style classifier needs both sides: {len(toxic)} toxic, {len(neutral)} neutral texts")
        features = make_union(
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), lowercase=True, sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=True, sublinear_tf=True, min_df=2))
        pipeline = make_pipeline(features, LogisticRegression(C=4.0, max_iter=2000, random_state=seed))
        pipeline.fit(list(toxic) + list(neutral), np.r_[np.ones(len(toxic)), np.zeros(len(neutral))])
        return cls(pipeline)

    def toxic(self, texts: Sequence[str]) -> np.ndarray:
        """Boolean per text: classified toxic (P(toxic) > 0.5)."""
        if not texts:
            return np.zeros(0, dtype=bool)
        return self.pipeline.predict_proba(list(texts))[:, 1] > 0.5

    def nontoxic(self, texts: Sequence[str]) -> np.ndarray:
        """Boolean per text: classified non-toxic."""
        return ~self.toxic(texts)

    def accuracy(self, toxic: Sequence[str], neutral: Sequence[str]) -> dict[str, float]:
        """Held-out accuracy (0-100) on texts of known style: overall and per side."""
        hits_toxic, hits_neutral = self.toxic(toxic), self.nontoxic(neutral)
        return {"accuracy": 100.0 * float(hits_toxic.sum() + hits_neutral.sum()) / (len(toxic) + len(neutral)),
                "toxic_recall": 100.0 * float(hits_toxic.mean()), "neutral_recall": 100.0 * float(hits_neutral.mean()),
                "n_toxic": len(toxic), "n_neutral": len(neutral)}


def nontoxic_pct(classifier: StyleClassifier, outputs: Sequence[str]) -> float:
    """The style score of a system: % of its outputs the classifier calls non-toxic."""
    return 100.0 * float(classifier.nontoxic(outputs).mean())
