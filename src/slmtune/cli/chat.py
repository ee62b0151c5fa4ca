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
    tools: Annotated[str | None, typer.Option(help="JSON file of tools the model may call (OpenAI's list of "
                                              "{type: function, function: {name, description, parameters}}).")
                     ] = None,
    tool_choice: Annotated[str, typer.Option(help="auto, none, required, or a function's name (forced).")] = "auto",
) -> None:
    """Chat with a tuned or base model. Interactive unless --prompt is given (empty line or Ctrl-D quits).

    With --tools, calls are printed as JSON lines ({"name", "arguments"}); in a session you are asked for each
    call's result, which goes back to the model as the tool's answer (--tool-choice holds for the reply to your
    message; the model then goes on with auto, so a forced choice does not loop)."""
    from slmtune.artifacts import is_onnx_dir
    from slmtune.inference.generate import ChatModel, load, locate

    if runtime == "onnx" and not is_onnx_dir(target):
        fail(f"{target}: not an exported ONNX model (make one with `slmtune export onnx {target} --out DIR`)", 2)
    with err.status(f"loading {target}"):
        model = ChatModel(locate(target)) if runtime == "torch" else load(target)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    tool_list = _read_tools(tools) if tools else None
    choice = tool_choice if tool_choice in ("auto", "none", "required") else {
        "type": "function", "function": {"name": tool_choice}}
    if tool_list and isinstance(choice, dict) and tool_choice not in {t["function"]["name"] for t in tool_list}:
        fail(f"--tool-choice {tool_choice}: no such function in {tools}", 2)
    kw = {"tools": tool_list, "tool_choice": choice} if tool_list else {}
    if prompt is not None:
        history.append({"role": "user", "content": prompt})
        reply = model.chat(history, max_new_tokens=max_new_tokens, temperature=temperature, **kw)
        if str(reply):
            print(reply)
        _print_calls(reply)
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
        if tool_list:  # whole replies: calls are read from them, each result asked for
            if not _tool_turns(model, history, kw, max_new_tokens, temperature):
                break
            continue
        print("assistant> ", end="", flush=True)
        reply = ""
        for piece in model.chat_stream(history, max_new_tokens=max_new_tokens, temperature=temperature):
            reply += piece
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": reply.strip()})


def _read_tools(path: str) -> list[dict]:
    """The --tools file, checked as a request's tools are (each problem named)."""
    import json
    from pathlib import Path

    from slmtune.data.tools import check_tools

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: {e}", 2)
    problems: list[str] = []
    checked = check_tools(raw, lambda field, msg: problems.append(f"{path}: {field}: {msg}"))
    if checked is None:
        fail("\n".join(problems), 2)
    return checked


def _print_calls(reply) -> None:
    import json

    for call in getattr(reply, "tool_calls", []):
        print(json.dumps({"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])},
                         ensure_ascii=False))


def _tool_turns(model, history: list[dict], kw: dict, max_new_tokens: int, temperature: float) -> bool:
    """Replies to the user's message until one makes no call, asking for each call's result; False at end of
    input. The first reply follows --tool-choice, the rest auto."""
    choice = kw["tool_choice"]
    while True:
        reply = model.chat(history, max_new_tokens=max_new_tokens, temperature=temperature, tools=kw["tools"],
                           tool_choice=choice)
        print(f"assistant> {reply}" if str(reply) else "assistant>", flush=True)
        _print_calls(reply)
        history.append(reply.message())
        if not reply.tool_calls:
            return True
        for call in reply.tool_calls:
            try:
                result = input(f"result of {call['function']['name']}> ")
            except EOFError:
                return False
            history.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        choice = "auto"
