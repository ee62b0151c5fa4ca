"""The method table: every method trains both tiny architectures, saves, reloads with plain PEFT, and merges."""

import csv

import pytest
import torch

import slmtune
from slmtune.config import ConfigError
from slmtune.methods import METHODS

CASES = [  # (method, extra options)
    ("lora", {}),
    ("lora", {"rslora": True, "init": "pissa", "r": 4}),
    ("dora", {}),
    ("qlora", {}),
    ("qlora", {"bits": 8}),
    ("ia3", {}),
    ("prompt_tuning", {"num_virtual_tokens": 8}),
    ("prefix_tuning", {"num_virtual_tokens": 8}),
    ("p_tuning", {"num_virtual_tokens": 8}),
    ("adalora", {"r": 4, "init_r": 8}),
    ("loha", {"r": 4}),
    ("lokr", {"r": 4}),
    ("vera", {"r": 32}),
    ("full", {}),
]
LR = {"ia3": 0.1, "prompt_tuning": 0.1, "prefix_tuning": 0.05, "p_tuning": 0.05, "vera": 0.1, "full": 2e-3}


def test_every_registered_method_has_a_case():
    assert {m for m, _ in CASES} == set(METHODS)


def losses(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [float(r["train_loss"]) for r in csv.DictReader(fh) if r["train_loss"]]


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-phi3"])
@pytest.mark.parametrize("method,opts", CASES, ids=[f"{m}{'-' + '-'.join(map(str, o)) if o else ''}" for m, o in CASES])
def test_method_trains_saves_reloads_and_merges(method, opts, arch, tiny_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmtune.export.merge import MergeError, merge

    cfg = tiny_config(model={"name": arch}, method={"name": method, **opts},
                      train={"learning_rate": LR.get(method, 2e-2)})
    if "r" not in opts and method not in ("ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "full", "vera"):
        cfg["method"]["r"] = 8
    else:
        cfg["method"].pop("alpha", None) if method in ("ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "full",
                                                       "vera") else None
    cfg["method"] = {k: v for k, v in cfg["method"].items()
                     if k == "name" or k in METHODS[method].options}
    result = slmtune.train(cfg)
    run = tmp_path / "run"
    ls = losses(run)
    assert ls[-1] < ls[0], f"{method} on {arch}: loss did not fall ({ls[0]:.3f} → {ls[-1]:.3f})"

    ours = slmtune.load(run)
    ids = torch.tensor([[1, 5, 9, 30, 2, 7, 11]])
    with torch.no_grad():
        expected = ours.model(input_ids=ids).logits
    if method == "full":
        plain = AutoModelForCausalLM.from_pretrained(str(run / "model"))
    else:
        base = AutoModelForCausalLM.from_pretrained(str(ours.source.base_dir),
                                                    **({"quantization_config": ours.model.base_model.model.config
                                                        .quantization_config} if method == "qlora" else {}))
        plain = PeftModel.from_pretrained(base, str(run / "adapter"))
    with torch.no_grad():
        got = plain.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert result.artifact and ours.chat([{"role": "user", "content": "What is your favorite color?"}],
                                         max_new_tokens=4) is not None

    out = tmp_path / "merged"
    if METHODS[method].mergeable:
        merge(run, out)
        merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        reference = expected
        if method == "qlora":  # merged into the full-precision base: compare with the adapter on that base
            fp_base = AutoModelForCausalLM.from_pretrained(str(ours.source.base_dir))
            reference = PeftModel.from_pretrained(fp_base, str(run / "adapter")).eval()(input_ids=ids).logits
        with torch.no_grad():
            m_logits = merged(input_ids=ids).logits
        torch.testing.assert_close(m_logits, reference, rtol=1e-3, atol=1e-3)
        assert (out / "tokenizer_config.json").exists()
    else:
        with pytest.raises(MergeError, match="cannot be merged"):
            merge(run, out)


def test_unknown_option_for_a_method_names_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        slmtune.config.build_config({"method": {"name": "ia3", "r": 8}})
    assert e.value.problems == ["method.r: not an option of method 'ia3'; its options: target_modules, "
                                "feedforward_modules"]
    with pytest.raises(ConfigError, match="method.bits: not an option of method 'lora'"):
        slmtune.config.build_config({"method": {"name": "lora", "bits": 4}})


def test_target_modules_that_match_nothing_fail_before_training(tiny_config):
    with pytest.raises(ConfigError) as e:
        slmtune.train(tiny_config(method={"target_modules": ["q_proj", "attn_c"]}))
    assert "method.target_modules: attn_c match no linear layer of this model" in str(e.value)
    assert "q_proj" in str(e.value) and "all-linear" in str(e.value)


def test_resolved_config_round_trips_for_every_method(tmp_path):
    from slmtune.config import TrainConfig, load_config

    for name in METHODS:
        cfg = slmtune.config.build_config({"method": {"name": name}})
        path = tmp_path / f"{name}.yaml"
        path.write_text(cfg.to_yaml())
        assert load_config(path).method == cfg.method
        assert isinstance(cfg, TrainConfig)
