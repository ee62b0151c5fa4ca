"""Load a resolved base model and its tokenizer for training or inference."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Storage dtype of the base weights per precision ("bf16-mixed" keeps fp32 weights and autocasts).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-mixed": torch.float32}


def quiet_transformers() -> None:
    """Our own progress display replaces transformers' per-file bars and advisory warnings."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cpu_has(flag: str) -> bool:
    """Whether the CPU has an instruction set, as torch's CPU capability check names it (``amx_tile``,
    ``avx512_bf16``, ``avx512``, ``avx2``, …); False where this torch cannot tell."""
    try:
        return bool(getattr(torch.cpu, f"_is_{flag}_supported", lambda: False)())
    except RuntimeError:
        return False


def cpu_bf16() -> bool:
    """True where this torch has oneDNN and the CPU has bf16 matmul instructions (AMX or AVX512-BF16).

    oneDNN also takes bf16 on AVX512 without them, by emulation, and there it is ~5x slower than fp32 (a 1024x576x1536
    matmul at 0.06 TFLOP/s against 0.32 in fp32 on a Xeon whose hypervisor hides AMX and AVX512-BF16): oneDNN's own
    answer (``_is_mkldnn_bf16_supported``) says yes there, so the instructions are asked for instead.
    """
    return torch.backends.mkldnn.is_available() and (cpu_has("avx512_bf16") or cpu_has("amx_tile"))


def fast_bf16() -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16 support, or a CPU with AMX / AVX512-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_bf16()


def available_memory_mb() -> float:
    """Memory the kernel could hand out now (MemAvailable), in MiB; the machine's total where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / (1024 * 1024)


# `auto` on a CPU without bf16 instructions keeps the base in fp32 (fastest there) only while its fp32 weights take at
# most this share of the memory available: past it, bf16 (emulated, slower) halves them rather than run out of memory
FP32_WEIGHTS_SHARE = 0.5


def weights_mb(model_dir: str | Path, bytes_per_param: int = 4) -> float | None:
    """The model's weights at ``bytes_per_param``, in MiB, from its safetensors headers (nothing is loaded); None
    for a folder without safetensors files."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    params = 0
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for name in fh.keys():
                params += int(torch.Size(fh.get_slice(name).get_shape()).numel())
    return params * bytes_per_param / 2**20


def resolve_precision(precision: str, supported: tuple[str, ...] = ("fp32", "bf16"),
                      model_dir: str | Path | None = None) -> str:
    """What ``auto`` means here: bf16 where bf16 matmuls are fast, fp32 elsewhere — unless ``model_dir``'s fp32 weights
    would take more than FP32_WEIGHTS_SHARE of the memory available on a CPU, where bf16 is what fits."""
    if precision != "auto":
        return precision
    if "bf16" not in supported:
        return "fp32"
    if fast_bf16():
        return "bf16"
    if model_dir is not None and not torch.cuda.is_available():
        fp32 = weights_mb(model_dir)
        if fp32 is not None and fp32 > FP32_WEIGHTS_SHARE * available_memory_mb():
            return "bf16"
    return "fp32"


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


def bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def load_base_model(model_dir: str | Path, precision: str = "fp32", device: torch.device | str | None = None,
                    quantize_bits: int | None = None):
    """Load a causal LM; ``quantize_bits`` (4: NF4 with double quantization, 8: LLM.int8) goes through bitsandbytes."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    dtype = DTYPES[precision]
    kw: dict = {"dtype": dtype}
    if quantize_bits:
        from transformers import BitsAndBytesConfig

        if quantize_bits == 4:
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype)
        else:
            kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        if device is not None and torch.device(device).type == "cuda":
            kw["device_map"] = {"": torch.device(device).index or 0}
        device = None  # bitsandbytes places quantized weights itself
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw)
    if device is not None:
        model.to(device)
    return model


def linear_names(model) -> list[str]:
    """Leaf names of the linear layers (bitsandbytes ones included), the output head excluded."""
    names = set()
    for full, module in model.named_modules():
        leaf = full.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf not in ("lm_head", "score", "classifier"):
            names.add(leaf)
    return sorted(names)
