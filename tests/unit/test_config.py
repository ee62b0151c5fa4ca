import pytest

from slmtune.config import ConfigError, TrainConfig, build_config, load_config


def test_defaults_are_complete_and_round_trip_through_yaml(tmp_path):
    cfg = TrainConfig()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.method.name == "lora"


def test_unknown_key_in_yaml_is_rejected_by_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: lora\n  rank: 8\ntrainer:\n  epochs: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "method.rank: unknown key" in e.value.problems
    assert "trainer: unknown key" in e.value.problems
    assert str(path) in str(e.value)


def test_every_problem_is_reported_at_once_with_its_path():
    with pytest.raises(ConfigError) as e:
        build_config({"method": {"r": 0}, "train": {"epochs": "many", "batch_size": -1}})
    paths = sorted(p.split(":")[0] for p in e.value.problems)
    assert paths == ["method.r", "train.batch_size", "train.epochs"]


def test_set_overrides_parse_values_like_yaml():
    cfg = build_config({}, ["train.epochs=2", "method.target_modules=[q_proj, v_proj]", "train.group_by_length=false",
                            "train.learning_rate=1e-3"])
    assert cfg.train.epochs == 2.0
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.group_by_length is False
    assert cfg.train.learning_rate == pytest.approx(1e-3)


def test_set_with_unknown_key_or_bad_syntax():
    with pytest.raises(ConfigError) as e:
        build_config({}, ["train.epoch=2"])
    assert e.value.problems == ["train.epoch: unknown key"]
    with pytest.raises(ConfigError) as e:
        build_config({}, ["train.epochs"])
    assert "expected section.key=value" in e.value.problems[0]


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        build_config({"method": {"name": "magic"}})
    assert e.value.problems[0].startswith("method.name: unknown method 'magic'")
    assert "lora" in e.value.problems[0]


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 1\n  lr: [1,\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "line" in e.value.problems[0] and "invalid YAML" in e.value.problems[0]


def test_unsupported_precision_for_method_is_an_error_before_loading(tmp_path, tiny_data):
    from slmtune.training.run import check_config

    cfg = build_config({"method": {"name": "full"}, "model": {"precision": "bf16"},
                        "data": {"train": str(tiny_data["train"])}})
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert "model.precision: 'bf16' is not supported by method 'full'; allowed: fp32" in e.value.problems[0]


def test_missing_data_files_are_named(tmp_path):
    from slmtune.training.run import check_config

    cfg = build_config({"data": {"train": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert e.value.problems == [f"data.train: no such file: {tmp_path / 'nope.jsonl'}"]
