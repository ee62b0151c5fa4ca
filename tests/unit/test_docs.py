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
    fetched = str(Path("~/.slmtune/data").expanduser())  # scenario recipes read what `slmtune data fetch` writes
    assert cfg.data.train and ((ROOT / cfg.data.train).exists() or cfg.data.train.startswith(fetched))


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:6]
    assert any(line.startswith("make demo") for line in head) and any(line.startswith("make test") for line in head)


def _documented_invocations():
    """(file, line number, command words, flags) for every `slmtune …` command line in README.md and docs/."""
    import re
    import shlex

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for no, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"(?:^|[`$]\s*|\|\s*)slmtune ([^`|]*)", line):
                try:
                    words = shlex.split(m.group(1), comments=True)
                except ValueError:
                    words = m.group(1).split()
                yield f"{path.name}:{no}", words


def test_every_documented_command_and_flag_exists():
    """A command or flag the docs show that `slmtune` does not take is a doc that lies: each is checked against the
    CLI's own parser."""
    import typer

    from slmtune.cli import app

    root = typer.main.get_command(app)
    wrong = []
    for where, words in _documented_invocations():
        cmd, i = root, 0
        while hasattr(cmd, "commands") and i < len(words) and words[i] in cmd.commands:
            cmd, i = cmd.commands[words[i]], i + 1
        if cmd is root:
            continue  # prose such as "slmtune is …"
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for w in words[i:]:
            flag = w.split("=", 1)[0]
            if flag.startswith("--") and flag not in known and flag != "--":
                wrong.append(f"{where}: slmtune {' '.join(words[:i])}: no option {flag}")
    assert not wrong, "\n".join(wrong)
