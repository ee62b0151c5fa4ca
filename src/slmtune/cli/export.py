"""`slmtune export`: a merged transformers folder, or an ONNX Runtime model checked for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slmtune.cli.common import err, fail, handle_errors

app = typer.Typer(help="Export tuned models: merged transformers folders, ONNX Runtime models, GGUF for llama.cpp "
                  "and Ollama.", no_args_is_help=True)


@app.command("merge")
@handle_errors
def export_merge(
    target: Annotated[str, typer.Argument(help="Run directory, adapter or checkpoint folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged model (created).")],
) -> None:
    """Fold the adapter into the base weights and write a plain transformers model (+ tokenizer, chat template)."""
    from slmtune.export.merge import MergeError, merge

    try:
        with err.status(f"merging {target}"):
            path = merge(target, out)
    except MergeError as e:
        fail(str(e), 1)
    out_console = Console(soft_wrap=True)
    out_console.print(f"merged model written to {path} (load it with AutoModelForCausalLM.from_pretrained)")


@app.command("merge-adapters")
@handle_errors
def export_merge_adapters(
    targets: Annotated[list[str], typer.Argument(help="Two or more runs, adapter or checkpoint folders (LoRA, one "
                                                 "base model).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the combined adapter (created).")],
    method: Annotated[str, typer.Option("--method", help="PEFT's combination: linear, cat, svd, ties, ties_svd, "
                                        "dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, magnitude_prune, "
                                        "magnitude_prune_svd. cat (the default) averages the adapters' updates "
                                        "exactly.")] = "cat",
    weights: Annotated[str | None, typer.Option("--weights", help="Comma-separated, one per adapter. Default: 1/n "
                                                "each for linear, cat and svd; 1 each for the rest.")] = None,
    density: Annotated[float, typer.Option("--density", help="ties, dare_* and magnitude_prune: the share of each "
                                           "update kept.")] = 0.5,
) -> None:
    """Combine LoRA adapters of one base model into one adapter (PEFT's add_weighted_adapter): TIES, DARE, linear
    and the rest. The result is an ordinary adapter folder: chat with it, evaluate, serve or export it."""
    from slmtune.export.merge import MergeError
    from slmtune.export.merge_adapters import merge_adapters

    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError:
        fail(f"--weights {weights}: expected numbers separated by commas", 2)
    try:
        with err.status(f"merging {len(targets)} adapters") as status:
            rep = merge_adapters(targets, out, method=method, weights=w, density=density,
                                 log=lambda s: status.update(s))
    except MergeError as e:
        fail(str(e), 1)
    Console(soft_wrap=True).print(
        f"combined adapter ({rep['method']}, weights {', '.join(f'{x:g}' for x in rep['weights'])}"
        + (f", density {rep['density']:g}" if rep["density"] is not None else "")
        + f") written to {out}\nchat with it: slmtune chat {out}")


@app.command("onnx")
@handle_errors
def export_onnx_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, adapter or checkpoint folder, model id or folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the ONNX model (replaced).")],
    precision: Annotated[str, typer.Option(help="fp32, int8 or int4 (weight-only quantization).")] = "fp32",
    provider: Annotated[str, typer.Option(help="ONNX Runtime execution provider (see `slmtune export providers`).")
                        ] = "cpu",
    validation: Annotated[Path | None, typer.Option(help="Chat JSONL: also report the eval-loss change against "
                                                    "PyTorch (a run's validation file, say).")] = None,
) -> None:
    """Merge, export a decoder with KV cache (onnxruntime-genai builder), write the tokenizer and chat template
    beside it, and run the parity gate against PyTorch (fp32 must match; int8/int4 report agreement)."""
    from slmtune.export.merge import MergeError
    from slmtune.export.onnx import ExportError, export_onnx

    try:
        with err.status(f"exporting {target} to ONNX ({precision})") as status:
            rep = export_onnx(target, out, precision=precision, provider=provider,
                              validation=str(validation) if validation else None,
                              log=lambda s: status.update(f"{target}: {s}"))
    except (ExportError, MergeError) as e:
        fail(str(e), 1)
    line = (f"ONNX model ({precision}) written to {out}; parity: max abs logit diff {rep['max_abs_logit_diff']:.2e}, "
            f"min cosine {rep['min_cosine']:.6f}, greedy token agreement {rep['token_agreement']:.0%}")
    if "eval_loss_change" in rep:
        line += (f", eval loss {rep['eval_loss_pytorch']:.4f} → {rep['eval_loss_onnx']:.4f} "
                 f"({rep['eval_loss_change']:+.1%})")
    out.mkdir(exist_ok=True)
    Console(soft_wrap=True).print(line + f"\nchat with it: slmtune chat {out}")


@app.command("gguf")
@handle_errors
def export_gguf_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, adapter or checkpoint folder, model id or folder.")],
    out_file: Annotated[Path, typer.Option("--out", help="The .gguf file to write (an Ollama Modelfile is written "
                                           "beside it).")],
    type_: Annotated[str, typer.Option("--type", help="f16 (checked identical to PyTorch) or q8_0.")] = "f16",
    pre_tokenizer: Annotated[str | None, typer.Option(
        "--pre-tokenizer", help="llama.cpp's tokenizer.ggml.pre name to write. Default: the one under which "
        "llama.cpp tokenizes as the model does (smollm, gpt-2, llama-bpe, qwen2); a model none fits is refused. "
        "A name given here is checked where its rules are known, else written unchecked.")] = None,
) -> None:
    """Merge, write one GGUF file for llama.cpp / Ollama (Llama-architecture models) with a Modelfile beside it,
    and check it: read back with transformers' GGUF reader, tokenizer and greedy tokens compared with PyTorch."""
    from slmtune.export.gguf import export_gguf
    from slmtune.export.merge import MergeError
    from slmtune.export.onnx import ExportError

    try:
        with err.status(f"exporting {target} to GGUF ({type_})") as status:
            rep = export_gguf(target, out_file, type=type_, pre_tokenizer=pre_tokenizer,
                              log=lambda s: status.update(f"{target}: {s}"))
    except (ExportError, MergeError) as e:
        fail(str(e), 1)
    same = rep["llama_cpp_tokens_identical"]
    llama = ("llama.cpp's tokenization not checked (rules of this name unknown here)" if same is None else
             f"llama.cpp tokenizes {rep['llama_cpp_texts']} check texts as the model does" if same else
             "llama.cpp tokenizes differently: " + "; ".join(rep["llama_cpp_mismatches"][:3]))
    Console(soft_wrap=True).print(
        f"GGUF ({type_}) written to {rep['file']} ({rep['bytes'] / 1e6:.1f} MB) and {rep['modelfile']}; "
        f"pre-tokenizer {rep['pre_tokenizer']!r}: {llama}; check: "
        f"tokenizer identical, greedy token agreement {rep['token_agreement']:.0%}"
        + (f" (against full precision {rep['token_agreement_fp32']:.0%})" if type_ != "f16" else "")
        + f"\nrun it: llama-cli -m {rep['file']} -cnv   or   ollama create mymodel -f {rep['modelfile']}")


@app.command("providers")
def export_providers() -> None:
    """List the ONNX Runtime execution providers available here (CPU always; GPU/NPU ones with their packages)."""
    from slmtune.export.onnx import providers

    for p in providers():
        print(p)
