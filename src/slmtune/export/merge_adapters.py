"""``slmtune export merge-adapters A B ... --out DIR``: several LoRA adapters of one base model combined into one
ordinary adapter, through PEFT's ``add_weighted_adapter`` (its linear, cat, SVD, TIES, DARE and magnitude-prune
combinations; nothing here re-implements them).

The inputs are runs, adapter folders or checkpoints, all of the same base model; the output is a PEFT adapter folder
(``adapter_config.json``, weights, the first input's tokenizer and chat template) that ``slmtune chat``, ``evaluate``,
``serve`` and the exports take like any trained adapter, and ``merge.json`` saying what went in.

The default is ``cat`` with weights ``1/n``: the adapters' ranks side by side, so the result is exactly the
average of their updates (no approximation; its rank is the sum of theirs). Measured on two tiny-model tasks
(tests/integration/test_merge_adapters.py; docs/usage.md) it kept 70% and 78% of each task's loss improvement,
against 52-53%/70-71% for ``ties_svd`` and 46%/54% for ``ties`` (density 0.5). Weights: by default ``1/n`` for
``linear``, ``cat`` and ``svd`` and ``1`` for the TIES/DARE family (task arithmetic's convention: each task vector
at full strength, the method resolving their conflicts). ``density`` is the share of each update TIES, DARE and
magnitude pruning keep.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from slmtune.artifacts import locate
from slmtune.export.merge import MergeError
from slmtune.models.loading import load_base_model, load_tokenizer

COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
AVERAGED = ("linear", "cat", "svd")  # default weight 1/n; the rest 1 each, and they take a density
NEEDS_DENSITY = tuple(c for c in COMBINATIONS if c not in AVERAGED)


def merge_adapters(targets: list[str | Path], out: str | Path, *, method: str = "cat",
                   weights: list[float] | None = None, density: float = 0.5, log=lambda s: None) -> dict:
    """Combine the adapters of ``targets`` into one adapter folder ``out``; returns what was written."""
    from peft import PeftModel

    if method not in COMBINATIONS:
        raise MergeError(f"--method {method}: choose one of {', '.join(COMBINATIONS)}")
    if len(targets) < 2:
        raise MergeError("merge-adapters needs at least two adapters")
    if weights is None:
        weights = [1.0 / len(targets) if method in AVERAGED else 1.0] * len(targets)
    if len(weights) != len(targets):
        raise MergeError(f"--weights: {len(weights)} given for {len(targets)} adapters")
    if not 0.0 < density <= 1.0:
        raise MergeError(f"--density {density}: must be in (0, 1]")
    sources = [locate(t) for t in targets]
    configs = []
    for t, s in zip(targets, sources):
        if s.adapter_dir is None:
            raise MergeError(f"{t}: no adapter here (a base model or a fully fine-tuned model cannot be merged as an "
                             "adapter)")
        config = json.loads((s.adapter_dir / "adapter_config.json").read_text())
        configs.append(config)
        if config.get("peft_type") != "LORA" or config.get("use_dora"):
            kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
            raise MergeError(f"{t}: a {kind} adapter; merge-adapters combines LoRA adapters (PEFT's "
                             "add_weighted_adapter)")
    bases = {Path(s.base_dir).resolve() for s in sources}
    if len(bases) > 1:
        raise MergeError("the adapters were trained on different base models: "
                         + ", ".join(f"{t} on {s.base}" for t, s in zip(targets, sources)))
    ranks = {c["r"] for c in configs}
    if method == "linear" and len(ranks) > 1:
        raise MergeError(f"--method linear needs adapters of one rank (these have {sorted(ranks)}): use cat, svd or "
                         "ties")
    log(f"loading the base model and {len(sources)} adapters")
    model = PeftModel.from_pretrained(load_base_model(sources[0].base_dir, "fp32"), str(sources[0].adapter_dir),
                                      adapter_name="a0")
    for i, s in enumerate(sources[1:], start=1):
        model.load_adapter(str(s.adapter_dir), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(sources))]
    log(f"combining them ({method})")
    kw = {"density": density} if method in NEEDS_DENSITY else {}
    try:
        model.add_weighted_adapter(names, weights, "merged", combination_type=method, **kw)
    except ValueError as e:  # PEFT's own checks (target modules, ranks) in its words
        raise MergeError(f"PEFT could not combine these adapters with {method}: {e}") from None
    model.set_adapter("merged")
    for n in names:
        model.delete_adapter(n)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slmtune-merge-") as tmp:
        model.save_pretrained(tmp, selected_adapters=["merged"])
        saved = Path(tmp) / "merged" if (Path(tmp) / "merged").is_dir() else Path(tmp)
        for f in saved.iterdir():
            shutil.copy2(f, out / f.name)
    load_tokenizer(sources[0].tokenizer_dir).save_pretrained(str(out))
    report = {"adapters": [str(t) for t in targets], "method": method, "weights": weights,
              "density": density if method in NEEDS_DENSITY else None, "base": sources[0].base, "out": str(out)}
    (out / "merge.json").write_text(json.dumps(report, indent=2))
    return report
