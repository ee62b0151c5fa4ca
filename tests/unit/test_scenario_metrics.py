"""Scenario metrics against hand-checked cases, edge cases included."""

import pytest

from slmtune.scenarios import metrics as M


def test_label_parsing_is_strict():
    labels = ["negative", "positive"]
    assert M.parse_label(" Positive.", labels) == "positive"
    assert M.parse_label('"negative"', labels) == "negative"
    assert M.parse_label("positive, mostly", labels) is None  # more than the label
    assert M.parse_label("", labels) is None  # empty prediction
    assert M.parse_label("neutral", labels) is None
    assert M.parse_label_lenient("I think it is Positive overall.", labels) == "positive"
    assert M.parse_label_lenient("positive and negative", labels) is None  # two labels named
    assert M.parse_label_lenient("nonpositive", labels) is None  # whole words only


def test_accuracy_macro_f1_and_confusion_by_hand():
    labels = ["a", "b"]
    # gold a a a b ; pred a b None b
    # -> class a: tp1 pred1 gold3 -> p1 r1/3 f1 .5 ; class b: tp1 pred2 gold1 -> p.5 r1 f1 2/3
    s = M.classification_scores(["a", "b", None, "b"], ["a", "a", "a", "b"], labels)
    assert s["accuracy"] == 0.5
    assert s["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["unparseable"] == 1
    assert s["confusion"]["a"] == {"a": 1, "b": 1, "(unparseable)": 1}


def test_bio_spans_and_entity_f1():
    toks = ["Anna", "Schmidt", "visited", "New", "York", "and", "IBM"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "I-ORG"]  # an I- without B- starts an entity
    assert M.bio_spans(toks, tags) == [("PER", "Anna Schmidt"), ("LOC", "New York"), ("ORG", "IBM")]
    gold = [[("PER", "Anna Schmidt"), ("LOC", "New York")], [("ORG", "IBM")]]
    pred = [[("PER", "Anna Schmidt"), ("LOC", "York")], []]  # wrong span, and an empty prediction
    s = M.entity_scores(pred, gold)
    assert (s["precision"], s["recall"]) == (0.5, pytest.approx(1 / 3))
    assert s["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # overlapping gold spans are separate entities; a duplicate prediction only matches once per gold entity
    s2 = M.entity_scores([[("LOC", "New York"), ("LOC", "New York")]], [[("LOC", "New York"), ("LOC", "York")]])
    assert (s2["true_positives"], s2["predicted"], s2["gold"]) == (1, 2, 2)
    assert M.entity_scores([[]], [[]])["f1"] == 0.0


def test_entity_answer_parsing():
    out = "PER: Anna Schmidt\n- loc: Berlin\nnone\nMISC: thing\nORG:"
    assert M.parse_entities(out, ["PER", "LOC", "ORG"]) == [("PER", "Anna Schmidt"), ("LOC", "Berlin")]


def test_squad_normalisation_em_and_f1():
    assert M.normalize_answer("The  Cat, sat!") == "cat sat"
    assert M.exact_match("the cat sat", "Cat sat.") == 1.0
    # pred tokens: big cat ; gold: cat sat -> common 1, p .5 r .5
    assert M.token_f1("a big cat", "the cat sat") == 0.5
    assert M.token_f1("", "") == 1.0 and M.token_f1("", "cat") == 0.0 and M.token_f1("the", "cat") == 0.0


def test_bleu_and_chrf_from_sacrebleu():
    perfect = M.translation_scores(["the cat is on the mat"], ["the cat is on the mat"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    worse = M.translation_scores(["a dog sat on a rug"], ["the cat is on the mat"])
    assert worse["chrf"] < 40 and worse["bleu"] < 10
    assert M.translation_scores([""], ["the cat"])["chrf"] == 0.0


def test_distinct_n_and_form():
    assert M.distinct_n(["a b a b"], 1) == 0.5
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert M.distinct_n(["", "x"], 2) == 0.0
    f = M.form_scores(["one line only", "l1\nl2\nl3"], ["r1\nr2\nr3\nr4 five six", "a\nb\nc"])
    assert f["line_format_match"] == 0.5
