"""``text_similarity`` metrics, each from its reference library (none written here): rapidfuzz (fuzzy_match),
sacrebleu (bleu), nltk (gleu, meteor), Google's rouge-score (rouge_1 … rouge_5, rouge_l). Every score lies in [0, 1].

METEOR runs with exact and Porter-stem matches only: nltk's synonym stage needs the WordNet corpus, which no package
on PyPI ships and nothing here downloads (docs/rft.md).
"""

from __future__ import annotations

from functools import cache


def score(metric: str, text: str, reference: str) -> float:
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    if metric == "bleu":
        import sacrebleu

        return sacrebleu.sentence_bleu(text, [reference]).score / 100.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([reference.split()], text.split()))
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score([reference.split()], text.split(), wordnet=_NoSynonyms()))
    if metric.startswith("rouge_"):
        key = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
        return float(_rouge(key).score(reference, text)[key].fmeasure)
    raise ValueError(f"unknown evaluation_metric {metric!r}")


@cache
def _rouge(key: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key], use_stemmer=True)


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no synsets, so METEOR matches exact words and stems only."""

    @staticmethod
    def synsets(*args, **kwargs):
        return []
