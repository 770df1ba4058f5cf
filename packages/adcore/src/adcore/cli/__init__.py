"""The ``ad`` command. Errors users can fix print one paragraph and exit non-zero;
``AD_DEBUG=1`` shows the traceback as well."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from adcore.cli import bench_cmd, config_cmd, data_cmd, eval_cmd, plugins_cmd, sweep_cmd, train_cmd
from adcore.cli.calibrate_cmd import calibrate_command
from adcore.cli.export_cmd import export_command
from adcore.cli.predict_cmd import predict_command
from adcore.cli.report_cmd import report_command
from adcore.cli.serve_cmd import serve_command
from adcore.infra.errors import AdError

app = typer.Typer(
    name="ad",
    help="Zero-, few- and full-shot industrial visual anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("list-plugins")(plugins_cmd.list_plugins)
app.command("eval")(eval_cmd.eval_command)
app.command("report")(report_command)
app.command("predict")(predict_command)
app.command("export")(export_command)
app.command("serve")(serve_command)
app.command("calibrate")(calibrate_command)
app.command("sweep")(sweep_cmd.sweep_command)
app.command("bench")(bench_cmd.bench_command)
app.command("train")(train_cmd.train_command)
app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")


def _fail(message: str, code: int) -> None:
    # soft_wrap: lines are not broken at 80 columns when stderr is a log file
    Console(stderr=True).print(
        f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    sys.exit(code)


def main() -> None:
    """Entry point of the ``ad`` script."""
    debug = os.environ.get("AD_DEBUG") == "1"
    try:
        # standalone: usage errors print the usage and exit 2; typer.Exit codes are kept
        app()
    except AdError as error:
        if debug:
            raise
        source = _plugin_source(error)
        _fail(f"{error} (Raised by {source}.)" if source else str(error), error.exit_code)
    except OSError as error:  # e.g. a full disk or a permission problem while writing
        if debug:
            raise
        where = f" ({error.filename})" if error.filename else ""
        _fail(f"{error.strerror or error}{where}. Check the path and free space.", 1)
    except KeyboardInterrupt:
        if debug:
            raise
        _fail(
            "Interrupted. Files already written are kept: rerun the same command to resume "
            "(ad eval and ad sweep skip finished categories, ad train continues after the last "
            "finished epoch).",
            130,
        )
    except Exception as error:
        failure = None if debug else _plugin_failure(error)
        if failure is None:
            raise
        _fail(str(failure), failure.exit_code)


def _plugin_failure(error: Exception) -> AdError | None:
    """An exception from a plugin's code as one paragraph naming the plugin, else None."""
    from adcore.plugins.failures import plugin_failure
    from adcore.plugins.registry import get_registry

    return plugin_failure(error, get_registry())


def _plugin_source(error: AdError) -> str:
    """The component and distribution whose code raised ``error``; empty for the host's own
    errors, and when no plugin was loaded (so none of their code ran)."""
    if "adcore.plugins.registry" not in sys.modules:
        return ""
    from adcore.plugins.failures import plugin_source
    from adcore.plugins.registry import get_registry

    return plugin_source(error, get_registry())
