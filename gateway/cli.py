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
