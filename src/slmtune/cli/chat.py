"""`slmtune chat`: talk to a base or tuned model (PyTorch or an exported ONNX folder), one prompt or a session."""

from __future__ import annotations

from typing import Annotated

import typer

from slmtune.cli.common import err, fail, handle_errors


@handle_errors
def chat(
    target: Annotated[str, typer.Argument(help="Run directory, adapter or checkpoint folder, model id or folder.")],
    prompt: Annotated[str | None, typer.Option(help="Answer this one message and exit.")] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    runtime: Annotated[str, typer.Option(help="'torch', or 'onnx' for a folder from `slmtune export onnx` "
                                         "(chosen by the folder when not given).")] = "auto",
) -> None:
    """Chat with a tuned or base model. Interactive unless --prompt is given (empty line or Ctrl-D quits)."""
    from slmtune.artifacts import is_onnx_dir
    from slmtune.inference.generate import ChatModel, load, locate

    if runtime == "onnx" and not is_onnx_dir(target):
        fail(f"{target}: not an exported ONNX model (make one with `slmtune export onnx {target} --out DIR`)", 2)
    with err.status(f"loading {target}"):
        model = ChatModel(locate(target)) if runtime == "torch" else load(target)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        history.append({"role": "user", "content": prompt})
        print(model.chat(history, max_new_tokens=max_new_tokens, temperature=temperature))
        return
    err.print("[dim]Type a message; an empty line or Ctrl-D quits.[/]")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        reply = ""
        for piece in model.chat_stream(history, max_new_tokens=max_new_tokens, temperature=temperature):
            reply += piece
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": reply.strip()})
