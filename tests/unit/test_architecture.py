"""The house rules in pyproject.toml hold (`make lint` runs the same two checks): the architecture
([tool.importlinter]: layers in one direction, the engine independent of scenarios/inference/export/service, no
import cycles; `lint-imports` names the offending import) and the lint rule set ([tool.ruff.lint])."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    exe = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(exe), "--no-cache", str(ROOT / "pyproject.toml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in r.stdout


def test_ruff_rule_set_is_clean():
    exe = Path(sys.executable).parent / "ruff"
    r = subprocess.run([str(exe), "check", "--no-cache", "--output-format", "concise",
                        "src", "tests", "benchmarks", "examples"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "ruff found problems (make lint):\n" + r.stdout[-6000:] + r.stderr[-2000:]
