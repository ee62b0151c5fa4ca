"""slmtune: fine-tune small language models on CPU or GPU.

    import slmtune
    result = slmtune.train("examples/demo/lora.yaml")           # or a dict / TrainConfig
    model = slmtune.load(result.run_dir)                        # run dir, adapter, checkpoint, model id or folder
    print(model.chat([{"role": "user", "content": "Hi!"}]))
"""

import os as _os

if "DS_ACCELERATOR" not in _os.environ and not _os.path.exists("/dev/nvidia0"):
    _os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed then skips its accelerator probe and its warning on CPU

from slmtune import noise as _noise

_noise.install()  # before anything imports peft (and through it bitsandbytes)

from slmtune.config import ConfigError, TrainConfig, load_config  # noqa: E402
from slmtune.data.formats import DataError  # noqa: E402
from slmtune.events import Event  # noqa: E402
from slmtune.models.registry import ModelNotAvailable  # noqa: E402

__version__ = "0.1.0"


def train(config, *, resume: bool = False, sinks=None, progress: bool = False):
    """Fine-tune as ``config`` says (TrainConfig, dict of sections, or YAML path). See :func:`slmtune.training.train`;
    with a scenario in the config, the scenario run around it (:func:`slmtune.scenarios.run.fine_tune`)."""
    from slmtune.scenarios.run import fine_tune

    return fine_tune(config, resume=resume, sinks=sinks, progress=progress)


def load(path_or_id, precision: str = "fp32", device: str | None = None):
    """Load a model id, model folder, run directory, adapter or checkpoint; returns a ChatModel."""
    from slmtune.inference.generate import load as _load

    return _load(path_or_id, precision=precision, device=device)


def evaluate(path_or_model, data, max_seq_length: int = 1024, batch_size: int = 8) -> dict:
    """Eval loss, perplexity and mean token accuracy of a model (or anything :func:`load` takes) on a JSONL file."""
    from slmtune.evaluation.loss import evaluate_file
    from slmtune.inference.generate import ChatModel

    model = path_or_model if isinstance(path_or_model, ChatModel) else load(path_or_model)
    return evaluate_file(model, data, max_seq_length=max_seq_length, batch_size=batch_size)


def plan(config, **kw):
    """Predict peak memory, tokens/s, wall time and cost of a run. See :func:`slmtune.planner.plan`."""
    from slmtune.planner import plan as _plan

    return _plan(config, **kw)


__all__ = ["ConfigError", "DataError", "Event", "ModelNotAvailable", "TrainConfig", "evaluate", "load",
           "load_config", "plan", "train"]
