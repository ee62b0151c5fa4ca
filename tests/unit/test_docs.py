"""Docs and shipped configs stay true to the code."""

from pathlib import Path

import pytest

from slmtune.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_key_is_documented_with_its_default():
    doc = (ROOT / "docs" / "usage.md").read_text()
    for section, field in TrainConfig.model_fields.items():
        for key, f in field.annotation.model_fields.items():
            default = f.get_default(call_default_factory=True)
            assert f"| `{section}.{key}` | `{default}` |" in doc, f"{section}.{key} missing from docs/usage.md"


@pytest.mark.parametrize("path", sorted(ROOT.glob("examples/**/*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.train and (ROOT / cfg.data.train).exists()


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:6]
    assert any(line.startswith("make demo") for line in head) and any(line.startswith("make test") for line in head)
