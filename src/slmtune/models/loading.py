"""Load a resolved base model and its tokenizer for training or inference."""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def quiet_transformers() -> None:
    """Our own progress display replaces transformers' per-file bars and advisory warnings."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def fast_bf16() -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16 support, or a CPU with AMX / AVX512-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, supported: tuple[str, ...] = ("fp32", "bf16")) -> str:
    if precision != "auto":
        return precision
    return "bf16" if "bf16" in supported and fast_bf16() else "fp32"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ValueError(
            f"{model_dir}: the tokenizer has no chat template; add one (tokenizer_config.json 'chat_template' "
            "or chat_template.jinja) so training and serving format conversations the same way"
        )
    return tok


def load_base_model(model_dir: str | Path, precision: str = "fp32", device: torch.device | str | None = None):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    dtype = DTYPES[precision]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if device is not None:
        model.to(device)
    return model
