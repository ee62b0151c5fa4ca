"""``slmtune export gguf``: a tuned (merged) or base model as one GGUF file for llama.cpp and Ollama, with an Ollama
``Modelfile`` beside it, checked by reading the file back.

Written with the ``gguf`` package's writer (gguf-py, from llama.cpp), which llama.cpp's own ``convert_hf_to_gguf.py``
uses; that script is not on PyPI, so the few things it does for Llama-architecture models are done here the same
way: tensor names through ``gguf.get_tensor_name_map``, the q/k rotary permutation llama.cpp expects, the
hyperparameters under ``llama.*``, and the byte-level BPE tokenizer under ``tokenizer.ggml.*`` as the converter
writes it (:func:`write_tokenizer`) — with the pre-tokenizer's name chosen by how llama.cpp would then tokenize
(``models.gguf_tokenizer``), never a silent ``"default"``. Llama-architecture models with byte-level BPE tokenizers
only (SmolLM2, Llama 3, Mistral-style configs with ``model_type: llama``); others are refused with the reason.

Types: ``f16`` (matrices in float16, norms in float32 — llama.cpp's own f16 layout) and ``q8_0`` (matrices quantized
by ``gguf.quants``; rows that are not a multiple of its block stay f16).

The checks: llama.cpp's tokenization rules for the chosen name (``gguf_tokenizer.LlamaCppBPE``) must give the
model's own token ids on ``CHECK_TEXTS`` and the chat-templated check prompts; then the file is loaded back with
transformers' GGUF reader (``gguf_file=``) and greedy decoding from it is compared token for token with the
PyTorch model on those prompts; for f16 they must be identical. ``benchmarks/gguf_tokenizer.py`` repeats the
tokenizer check and the greedy answers in a real ``llama-server``.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from slmtune.artifacts import locate
from slmtune.data.tools import CALL_CLOSE, CALL_OPEN, FALLBACK_PROMPT, RESULT_CLOSE, RESULT_OPEN
from slmtune.export.merge import merge
from slmtune.export.onnx import ExportError
from slmtune.models.gguf_tokenizer import (
    CHECK_TEXTS,
    PRE_TOKENIZERS,
    LlamaCppBPE,
    Unidentified,
    compare,
    identify,
    vocab_entries,
)
from slmtune.models.loading import load_tokenizer

TYPES = ("f16", "q8_0")
CHECK_PROMPTS = ["What is your favorite color?", "Write one sentence about the sea.", "2 + 2 ="]


def export_gguf(target: str | Path, out_file: str | Path, *, type: str = "f16", check: bool = True,
                check_tokens: int = 12, pre_tokenizer: str | None = None, log=lambda s: None) -> dict:
    """Write ``out_file`` (and ``Modelfile`` beside it); returns what was written and the check's result."""
    import gguf

    if type not in TYPES:
        raise ExportError(f"--type {type}: choose one of {', '.join(TYPES)}")
    out_file = Path(out_file)
    if out_file.suffix != ".gguf":
        raise ExportError(f"{out_file}: the output file should end in .gguf")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slmtune-gguf-") as tmp:
        src = locate(target)
        if src.adapter_dir is None and src.model_dir is None:
            model_dir = Path(src.base_dir)  # a base model: exported as it is
        else:
            log("merging the adapter into the base weights")
            model_dir = merge(target, Path(tmp) / "merged")
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(model_dir))
        if config.model_type != "llama":
            raise ExportError(f"{target}: GGUF export supports Llama-architecture models (model_type llama: SmolLM2, "
                              f"TinyLlama, Llama); this one is {config.model_type!r}. Export ONNX instead "
                              "(`slmtune export onnx`), or convert the merged folder (`slmtune export merge`) with "
                              "llama.cpp's convert_hf_to_gguf.py")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        tokenizer = load_tokenizer(model_dir)
        log(f"writing {out_file} ({type})")
        writer = gguf.GGUFWriter(str(out_file), "llama")
        _add_hparams(writer, config, type, gguf)
        prompts = tuple(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                      tokenize=False) for p in CHECK_PROMPTS)
        tok_report = write_tokenizer(writer, tokenizer, model_dir, pre_tokenizer, prompts)
        n = _add_tensors(writer, model, config, type, gguf)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        modelfile = write_modelfile(out_file, tokenizer, model_dir)
        report = {"file": str(out_file), "type": type, "tensors": n, "bytes": out_file.stat().st_size,
                  "modelfile": str(modelfile)} | tok_report
        if check:
            log("checking: reading the file back with transformers and comparing greedy tokens")
            report |= parity(out_file, model, tokenizer, check_tokens, type)
            if type == "f16" and report["token_agreement"] < 1.0:
                raise ExportError(f"{out_file}: greedy tokens from the GGUF file differ from PyTorch's "
                                  f"({report['token_agreement']:.0%} agree); the file is left for inspection")
    return report


def _add_hparams(writer, config, type: str, gguf) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name("slmtune export")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)


def write_tokenizer(writer, tokenizer, model_dir: Path, pre_tokenizer: str | None = None,
                    texts: tuple[str, ...] = ()) -> dict:
    """The byte-level BPE tokenizer as llama.cpp's "gpt2" tokenizer model, written as llama.cpp's converter writes
    it: token texts and types (``gguf_tokenizer.vocab_entries``), the pre-tokenizer's name, and merges, special token
    ids, add-BOS/EOS flags and chat template through gguf-py's ``SpecialVocab`` (the converter's own code for them).

    The name is :func:`gguf_tokenizer.identify`'s (llama.cpp must cut and merge the check texts as the model's
    tokenizer does), or ``pre_tokenizer`` as given — then checked the same way where its rules are known, and
    written unchecked where not. Returns the name and how llama.cpp's tokenization compared on the check texts plus
    ``texts``."""
    import gguf

    model = tokenizer.backend_tokenizer.model
    fallback = getattr(model, "byte_fallback", False)
    if type(model).__name__ != "BPE" or fallback:
        raise ExportError(f"{model_dir}: tokenizer model {type(model).__name__!r}"
                          f"{' with byte fallback (SentencePiece-style)' if fallback else ''}"
                          ": GGUF export supports byte-level BPE tokenizers (SmolLM2, Llama 3, GPT-2 style)")
    vocab = tokenizer.get_vocab()
    size = max(len(vocab), max(vocab.values()) + 1)
    tokens, types = vocab_entries(tokenizer, size)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size)
    all_texts = CHECK_TEXTS + tuple(texts)
    if pre_tokenizer is None:
        try:
            pre = identify(tokenizer, tokens, types, special.merges, all_texts)
        except Unidentified as e:
            raise ExportError(f"{model_dir}: {e}. Name the pre-tokenizer yourself with --pre-tokenizer NAME (one of "
                              "llama.cpp's tokenizer.ggml.pre names, e.g. from the base model's own GGUF file); it is "
                              "then written unchecked") from None
        name, mismatches = pre.name, []
    else:
        name, pre = pre_tokenizer, PRE_TOKENIZERS.get(pre_tokenizer)
        mismatches = compare(tokenizer, LlamaCppBPE(tokens, types, special.merges, pre), all_texts) if pre else None
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)  # byte-level BPE never prefixes a space (llama.cpp's default, said outright)
    special.add_to_gguf(writer, quiet=True)
    if "bos" not in special.add_special_token:  # llama.cpp's default differs by pre-tokenizer: say what HF does
        ids, bare = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
        writer.add_add_bos_token(len(ids) > len(bare) and ids[0] == tokenizer.bos_token_id)
    return {"pre_tokenizer": name, "llama_cpp_texts": len(all_texts),
            "llama_cpp_tokens_identical": None if mismatches is None else not mismatches,
            "llama_cpp_mismatches": [str(m) for m in mismatches or []]}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k (``convert_hf_to_gguf.LlamaModel.permute``); transformers' GGUF reader
    undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_tensors(writer, model, config, type: str, gguf) -> int:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    n = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses the token embedding as the output head when there is no output.weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            raise ExportError(f"no GGUF name for tensor {hf_name}")
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        if data.ndim == 1:
            writer.add_tensor(name, data.astype(np.float32))
        elif type == "q8_0" and data.shape[-1] % block == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data.astype(np.float16))
        n += 1
    return n


def write_modelfile(gguf_file: Path, tokenizer, model_dir: Path) -> Path:
    """An Ollama Modelfile next to the GGUF file that follows the model's own chat template: FROM it, the template
    (ChatML for the SmolLM2 family, which Ollama's Go templates express directly), the system prompt the template
    inserts when a conversation has none (``SYSTEM``; SmolLM2's names the assistant), the stop tokens, and sampling
    defaults only where the model sets them (``generation_config.json``: temperature, top_p, top_k,
    repetition_penalty) — otherwise Ollama's own apply, as they would to the base model's GGUF."""
    vocab = tokenizer.get_vocab()
    stops = list(dict.fromkeys(t for t in ("<|im_end|>", "<|endoftext|>", tokenizer.eos_token) if t and t in vocab))
    chatml = "<|im_start|>" in vocab and "<|im_end|>" in vocab
    lines = [f"FROM ./{gguf_file.name}", ""]
    if chatml:
        lines += ['TEMPLATE """' + chatml_tools_template() + '"""', ""]
        if (system := template_system_default(tokenizer)) is not None:
            lines += ['SYSTEM """' + system + '"""', ""]
    else:
        lines += ["# this model's chat template is not ChatML: add a TEMPLATE matching tokenizer_config.json's", ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER {name} {value}" for name, value in sampling_defaults(model_dir).items()]
    path = gguf_file.parent / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def template_system_default(tokenizer) -> str | None:
    """The system prompt a ChatML template puts before a conversation that has none, or None where it adds none."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    if not text.startswith(head) or "<|im_end|>" not in text:
        return None
    return text[len(head):text.index("<|im_end|>")]


OLLAMA_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "repetition_penalty": "repeat_penalty"}


def sampling_defaults(model_dir: Path) -> dict:
    """Ollama ``PARAMETER``s for the sampling settings the model's ``generation_config.json`` sets."""
    path = Path(model_dir) / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {ollama: config[hf] for hf, ollama in OLLAMA_SAMPLING.items() if config.get(hf) is not None}


def chatml_tools_template() -> str:
    """ChatML as an Ollama Go template, with tools in the fallback's form (``data.tools``: definitions at the end
    of the system turn, calls as ``<tool_call>`` blocks, consecutive results merged in one user turn of
    ``<tool_response>`` blocks), so Ollama's ``tools=`` asks in the form training taught. The Modelfile's ``SYSTEM``
    default stands in only when there are no tools: with tools, slmtune's own rendering opens the conversation with
    a system turn of the definitions alone, so the model's template adds no default there either. Ollama writes the JSON
    inside (definitions, arguments) compactly and in its own key order; the prose and layout are the same."""
    head, tail = FALLBACK_PROMPT.split("{tools}")
    return (
        "{{- $system := \"\" }}{{- range .Messages }}{{- if eq .Role \"system\" }}{{ $system = .Content }}{{ end }}"
        "{{- end }}{{- if and (not $system) (not .Tools) }}{{ $system = .System }}{{ end }}\n"
        "{{- if or $system .Tools }}<|im_start|>system\n"
        "{{- if $system }}\n{{ $system }}{{ if .Tools }}\n\n{{ end }}{{ else }}\n{{ end }}"
        "{{- if .Tools }}" + head + "{{ range $i, $t := .Tools }}{{ if $i }}\n{{ end }}{{ json $t }}{{ end }}"
        + tail + "{{ end }}<|im_end|>\n{{ end }}"
        "{{- $prev := \"\" }}{{- range .Messages }}"
        "{{- if eq .Role \"tool\" }}"
        "{{- if eq $prev \"tool\" }}\n{{ else }}<|im_start|>user\n{{ end }}"
        f"{RESULT_OPEN}\n{{{{ .Content }}}}\n{RESULT_CLOSE}"
        "{{- else if ne .Role \"system\" }}"
        "{{- if eq $prev \"tool\" }}<|im_end|>\n{{ end }}<|im_start|>{{ .Role }}\n"
        "{{ if .Content }}{{ .Content }}{{ if .ToolCalls }}\n{{ end }}{{ end }}"
        "{{- range $i, $c := .ToolCalls }}{{ if $i }}\n{{ end }}"
        f"{CALL_OPEN}\n{{\"name\": \"{{{{ $c.Function.Name }}}}\", \"arguments\": "
        f"{{{{ json $c.Function.Arguments }}}}}}\n{CALL_CLOSE}{{{{ end }}}}<|im_end|>\n"
        "{{ end }}{{- $prev = .Role }}{{- end }}"
        "{{- if eq $prev \"tool\" }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    )


def parity(gguf_file: Path, model, tokenizer, max_new_tokens: int, type: str = "f16") -> dict:
    """Greedy tokens from the GGUF file (read back by transformers) against PyTorch on CHECK_PROMPTS: against the
    model with its matrices rounded to float16 as the file stores them (for f16 this must agree exactly: the same
    weights), and against the full-precision model (what rounding or quantization changed)."""
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                dtype=torch.float32)
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim >= 2:
                p.copy_(p.to(torch.float16).to(torch.float32))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    agree = {"rounded": [0, 0], "fp32": [0, 0]}
    max_diff = 0.0
    for prompt in CHECK_PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            got = back.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)[0, ids.shape[1]:]
            for name, ref_model in (("rounded", rounded), ("fp32", model)):
                ref = ref_model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=pad)[0, ids.shape[1]:]
                n = min(len(ref), len(got))
                agree[name][0] += int((ref[:n] == got[:n]).sum())
                agree[name][1] += max(len(ref), len(got))
            max_diff = max(max_diff, float((rounded(ids).logits[0, -1] - back(ids).logits[0, -1]).abs().max()))
    rate = {k: s / max(1, n) for k, (s, n) in agree.items()}
    from transformers import AutoTokenizer

    tok_back = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in CHECK_PROMPTS] + ["Grüße, naïve café — 12345 ✓"]
    same_tokens = all(tok_back(x)["input_ids"] == tokenizer(x)["input_ids"] for x in texts)
    if not same_tokens:
        raise ExportError(f"{gguf_file}: the tokenizer read back from the file encodes text differently")
    return {"tokenizer_identical": same_tokens, "token_agreement": rate["rounded" if type == "f16" else "fp32"],
            "token_agreement_fp32": rate["fp32"],
            "max_abs_logit_diff_f16": max_diff, "prompts": len(CHECK_PROMPTS)}
