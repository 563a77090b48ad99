"""The `routegate` command.

    routegate serve                                   # bundled models on 127.0.0.1:50051
    routegate serve --port 50052 --config routegate.toml
    routegate serve --host 0.0.0.0 --log-level debug

--host and --port win over the config file; the file wins over the defaults.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


app = typer.Typer(help="routegate: a gRPC gateway for local LLMs.", no_args_is_help=True, add_completion=False)


@app.callback()
def _main() -> None:
    """routegate: a gRPC gateway for local LLMs."""
    # NOTE: a callback keeps typer in multi-command mode, so `routegate serve` stays `serve`.


@app.command()
def serve(
    host: Annotated[
        Optional[str], typer.Option(help="Interface to listen on.", show_default="127.0.0.1 or the config's")
    ] = None,
    port: Annotated[
        Optional[int], typer.Option(help="Port to listen on; 0 = any free port.", show_default="50051 or the config's")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option(help="TOML or YAML config file; without it, the bundled models.")
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.info,
) -> None:
    """Serve the routegate.v1.Gateway gRPC API until SIGTERM or Ctrl-C."""
    from gateway.config import GatewayConfig, load_config

    logging.basicConfig(
        level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        gateway_config = (load_config(config) if config else GatewayConfig()).with_overrides(host, port)
    except ValueError as exc:
        typer.echo(f"routegate: invalid configuration: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    from gateway.server import serve as run_server  # imports torch: after the config is known good

    try:
        asyncio.run(run_server(gateway_config))
    except (ValueError, OSError) as exc:  # a model path or file that cannot be loaded
        typer.echo(f"routegate: could not start: {exc}", err=True)
        raise typer.Exit(code=1) from exc


QuantizeType = Enum("QuantizeType", {n: n for n in (  # backends/quantization/quant_mixture.py's MIXTURES
    "Q4_K_M", "Q4_K_S", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1")}, type=str)


@app.command()
def quantize(
    source: Annotated[Path, typer.Argument(
        help="GGUF file (F32, F16, BF16 or any block type), or a HF safetensors checkpoint directory "
             "(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).")],
    output: Annotated[Path, typer.Argument(help="GGUF file to write.")],
    type: Annotated[QuantizeType, typer.Option("--type", case_sensitive=False, help="Mixture or type.")],
    imatrix: Annotated[
        Optional[Path], typer.Option(help="Importance matrix from llama-imatrix (.gguf or legacy .dat).")
    ] = None,
) -> None:
    """Quantize a GGUF file or a HF checkpoint, choosing types and scales as llama.cpp's llama-quantize does.

        routegate quantize model-f32.gguf model-q4_k_m.gguf --type Q4_K_M [--imatrix imatrix.gguf]
        routegate quantize SmolLM2-135M-Instruct/ smollm2-q4_k_m.gguf --type Q4_K_M
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from backends.gguf_export import GGUFQuantizer
    from backends.quantization.quantizer_imatrix import load_imatrix

    try:
        job = GGUFQuantizer(source, type.value, load_imatrix(imatrix) if imatrix else None)
    except (ValueError, OSError) as exc:
        typer.echo(f"routegate: cannot quantize: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    columns = (TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns) as bar:
            task = bar.add_task(type.value, total=max(job.total_weights, 1))
            report = job.write(output, progress=lambda name, n: bar.update(task, advance=n, description=name))
            bar.update(task, description=f"{type.value}: done", completed=max(job.total_weights, 1))
    except (ValueError, OSError) as exc:  # e.g. an unwritable output folder
        typer.echo(f"routegate: cannot quantize: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"wrote {report.path}: {report.file_size / 2**20:.1f} MiB, {report.num_requantized} tensors "
               f"quantized, {report.num_copied} copied")


from router.cli import app as router_app  # noqa: E402 - the `routegate router ...` commands

app.add_typer(router_app, name="router")


@app.command()
def health(
    host: Annotated[str, typer.Option(help="Gateway host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 50051,
    service: Annotated[str, typer.Option(help="Health service name; empty = the whole gateway, or a backend name.")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 3.0,
) -> None:
    """Exit 0 if the gateway (or one backend) reports SERVING over grpc.health.v1, else 1."""
    from gateway.health_probe import check

    status = check(f"{host}:{port}", service, timeout)
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(code=1)


class EngineKind(str, Enum):
    full_precision = "full_precision"
    kquant = "kquant"


@app.command()
def perplexity(
    model: Annotated[str, typer.Argument(help="bundled:<name>, a .gguf file, or a HF safetensors folder.")],
    text: Annotated[Path, typer.Option(help="UTF-8 text file to score.")],
    engine: Annotated[EngineKind, typer.Option(help="Engine that runs the model.")] = EngineKind.full_precision,
    ctx: Annotated[int, typer.Option(help="Window length in tokens (second half of each scored).")] = 512,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
) -> None:
    """Print the perplexity of MODEL over a text, with llama.cpp's windows (backends/perplexity.py).

        routegate perplexity bundled:gemma3-270m --text book.txt --engine kquant --ctx 512
    """
    from backends.engine_config import EngineConfig
    from backends.loader import load_engine
    from backends.perplexity import perplexity as compute_perplexity

    try:
        loaded = load_engine(EngineConfig(name="perplexity", model=model, engine=engine.value, dtype=dtype,
                                          max_model_len=ctx, max_num_batched_tokens=min(ctx, 512)))
        result = compute_perplexity(loaded, loaded.tokenizer.encode(text.read_text(encoding="utf-8")), ctx)
    except (ValueError, OSError) as exc:
        typer.echo(f"routegate: cannot compute perplexity: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"perplexity {result.perplexity:.4f} over {result.num_scored} tokens "
               f"({result.num_windows} windows of {result.ctx}, {engine.value}, {dtype})")
