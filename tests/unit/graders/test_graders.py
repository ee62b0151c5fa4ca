"""Each grader type against answers worked out by hand; the multi grader's formula; what a check refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slmtune.graders.formula import FormulaError, evaluate, parse
from slmtune.graders.grade import check_grader, check_item, grade_batch, sample_of
from slmtune.graders.spec import parse_grader

OUT = "{{ sample.output_text }}"


def grade(spec: dict, text: str, item: dict | None = None):
    return grade_batch(parse_grader(spec), [sample_of(text)], [item or {}])[0]


def check(op: str, reference: str = "{{ item.answer }}") -> dict:
    return {"type": "string_check", "name": "s", "input": OUT, "reference": reference, "operation": op}


@pytest.mark.parametrize("op,text,reward", [
    ("eq", "Paris", 1), ("eq", "paris", 0), ("ne", "Rome", 1), ("ne", "Paris", 0),
    ("like", "It is Paris.", 1), ("like", "It is paris.", 0), ("ilike", "It is PARIS.", 1), ("ilike", "Rome", 0)])
def test_string_check_operations(op, text, reward):
    assert grade(check(op), text, {"answer": "Paris"}).reward == reward


@pytest.mark.parametrize("metric,expected", [
    ("fuzzy_match", 38 / 42),  # rapidfuzz ratio: 2 × 19 matching characters of 21 + 21
    ("rouge_1", 5 / 6),  # 5 of 6 unigrams shared each way
    ("rouge_2", 3 / 5),  # "the cat", "cat sat", "sat on" of 5 bigrams each
    ("rouge_l", 5 / 6),
])
def test_text_similarity_metrics(metric, expected):
    spec = {"type": "text_similarity", "name": "t", "input": OUT, "reference": "the cat sat on a mat",
            "evaluation_metric": metric}
    assert grade(spec, "the cat sat on the mat").reward == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_3", "rouge_5",
                                    "rouge_l"])
def test_every_metric_gives_one_for_the_reference_and_zero_for_nothing_shared(metric):
    spec = {"type": "text_similarity", "name": "t", "input": OUT, "reference": "{{ item.ref }}",
            "evaluation_metric": metric}
    ref = "the quick brown fox jumps over the lazy dog"
    assert grade(spec, ref, {"ref": ref}).reward == pytest.approx(1.0, abs=1e-3)
    assert grade(spec, "999", {"ref": ref}).reward == pytest.approx(0.0, abs=1e-6)
    spec["pass_threshold"] = 0.5
    assert grade(spec, ref, {"ref": ref}).reward == 1.0


def test_multi_grader_combines_by_its_formula_with_power_binding_tightest():
    spec = {"type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * near ^ 2",
            "graders": {"exact": check("eq") | {"name": "exact"},
                        "near": check("ilike") | {"name": "near"}}}
    g = grade(spec, "paris!", {"answer": "Paris"})
    assert g.sub_rewards == {"exact": 0.0, "near": 1.0} and g.reward == 0.5
    assert evaluate(parse("min(a, 1) + sqrt(b) - log(exp(2)) + abs(-1) + floor(1.5) + ceil(0.2)", {"a", "b"}),
                    {"a": 3, "b": 4}) == 4.0


@pytest.mark.parametrize("formula,why", [
    ("a + __import__('os')", "not allowed"), ("a.real", "not allowed"), ("b + 1", "'b' is not one of"),
    ("a +", "not a formula"), ("[a]", "not allowed"), ("max(a, key=a)", "not allowed")])
def test_formulas_outside_the_grammar_are_refused_by_name(formula, why):
    with pytest.raises(FormulaError, match=why):
        parse(formula, {"a"})


def test_a_formula_error_while_grading_scores_zero_and_says_so():
    spec = {"type": "multi", "name": "m", "calculate_output": "1 / exact",
            "graders": {"exact": check("eq") | {"name": "exact"}}}
    g = grade(spec, "Rome", {"answer": "Paris"})
    assert g.reward == 0 and "ZeroDivisionError" in g.errors["formula_parse_error"]


def test_samples_as_json_and_as_tool_calls():
    spec = {"type": "string_check", "name": "j", "input": "{{ sample.output_json.city }}", "reference": "Oslo",
            "operation": "eq"}
    assert grade(spec, '{"city": "Oslo"}').reward == 1
    missing = grade(spec, "Oslo")
    assert missing.reward == 0 and "city" in missing.errors["invalid_variable_error"]
    calls = sample_of('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert calls["output_tools"][0]["function"]["name"] == "get_weather"
    spec["input"] = "{{ sample.output_tools[0].function.arguments }}"
    spec["reference"] = '{"city": "Oslo"}'
    assert grade_batch(parse_grader(spec), [calls], [{}])[0].reward == 1


def test_templates_hold_references_only():
    spec = check("eq", "{% for i in range(99999) %}x{% endfor %}")
    spec["input"] = "{{ item.answer | upper }}"
    problems = check_grader(parse_grader(spec))
    assert any(p.startswith("input:") and "Filter" in p for p in problems)
    assert any(p.startswith("reference:") and "For" in p for p in problems)


def test_check_item_names_the_field_a_line_lacks():
    g = parse_grader(check("eq", "{{ item.answer }}"))
    assert check_item(g, {"answer": "x"}) == []
    assert "answer" in check_item(g, {"messages": []})[0]


def test_grader_definitions_are_typed():
    with pytest.raises(ValidationError):
        parse_grader({"type": "string_check", "name": "s", "input": OUT, "reference": "x", "operation": "regex"})
    with pytest.raises(ValidationError):
        parse_grader({"type": "text_similarity", "name": "t", "input": OUT, "reference": "x",
                      "evaluation_metric": "cosine"})
    label = {"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user", "content": OUT}],
             "labels": ["good", "bad"], "passing_labels": ["great"]}
    assert "passing_labels: not among labels: great" in check_grader(parse_grader(label))[0]


def test_a_model_grader_without_a_judge_scores_zero_with_a_server_error():
    spec = {"type": "score_model", "name": "judge", "model": "tiny-llama",
            "input": [{"role": "user", "content": "Rate: " + OUT}]}
    g = grade(spec, "hello")
    assert g.reward == 0 and "no judge" in g.errors["model_grader_server_error"]
