"""The ``brainsynth`` command line: a typer app assembled from kernel commands and plugins.

Only the kernel, typer and pluggy are imported here; commands import what they need inside
their bodies, so ``brainsynth --help`` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
import traceback
from typing import Sequence

import typer

from brainsynth_cli import __version__
from brainsynth_cli.errors import UserError, caused_by_interrupt
from brainsynth_cli.plugin_manager import get_manager

log = logging.getLogger("brainsynth_cli.main")  # not __name__: "__main__" under python -m

#: Kernel commands, one module each under ``brainsynth_cli.commands``.
KERNEL_COMMANDS: tuple[str, ...] = ("plugins", "blend", "train", "edit", "segment")

HELP = (
    "Text-editable brain MRI: segment longitudinal scans, make prior/target training pairs with "
    "prompts, train an InstructPix2Pix-style latent diffusion model, edit new scans and "
    "evaluate the edits. Every algorithm is a plugin: see `brainsynth plugins`."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brainsynth {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """The root app: kernel commands, then the commands plugins add via ``register_commands``."""
    app = typer.Typer(
        name="brainsynth",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
        verbose: int = typer.Option(0, "-v", "--verbose", count=True,
                                    help="More diagnostics on stderr: -v debug lines, -vv also the libraries'."),
        quiet: int = typer.Option(0, "-q", "--quiet", count=True,
                                  help="Less on stderr: -q no progress and no info lines (warnings and errors only), -qq errors only."),
    ) -> None:
        """Text-editable brain MRI."""
        from brainsynth_cli import logs

        # a command run inside another (the demo's steps) keeps the caller's -v/-q unless it gives its own
        if logs.depth() <= 1 or verbose or quiet:
            ctx.call_on_close(logs.configure(verbose, quiet))  # as it was once the command ends
        log.debug("brainsynth %s, Python %s; plugins: %s", __version__, sys.version.split()[0],
                  ", ".join(f"{r.name} ({r.status})" for r in get_manager().records.values()))

    for name in KERNEL_COMMANDS:
        importlib.import_module(f"brainsynth_cli.commands.{name.replace('-', '_')}").register(app)
    get_manager().register_commands(app)
    return app


def _debug(args: Sequence[str]) -> bool:
    return "--debug" in args or os.environ.get("BRAINSYNTH_DEBUG", "") not in ("", "0")


#: Errors of the machine or the file system, not of brainsynth: reported in one line (exit 2).
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
                       errno.EISDIR, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE}

_depth = 0


def run(args: Sequence[str]) -> int:
    """Run the CLI on ``args`` and return the exit status (no ``sys.exit``).

    Ctrl-C prints one line saying what the command kept and how to resume (exit status 130).
    A ``run`` inside a running command (the demo's steps) lets an interruption through to it.
    """
    from brainsynth_cli import logs, outputs

    global _depth
    _depth += 1
    saved = list(outputs._interrupt_note)  # a nested run's note is its own, not its caller's
    try:
        with logs.command():
            return _run(args, nested=_depth > 1)
    finally:
        _depth -= 1
        if _depth:
            outputs._interrupt_note[:] = saved


def _run(args: Sequence[str], *, nested: bool) -> int:
    from brainsynth_cli.outputs import clear_interrupt_note, interrupt_note

    debug = _debug(args)
    if not nested:
        clear_interrupt_note()
    try:
        app = build_app()
    except KeyboardInterrupt:
        if nested:
            raise
        print("brainsynth: interrupted while loading plugins; nothing was written", file=sys.stderr)
        return 130
    get_manager().flush_messages()
    command = typer.main.get_command(app)
    try:
        # standalone mode: typer/click handle their own usage errors (exit 2) and --help; typer
        # turns Ctrl-C into a silent exit 130, which gets its line here.
        command.main(args=list(args), prog_name="brainsynth", standalone_mode=True)
        return 0
    except SystemExit as exc:
        code = exc.code
        if code == 130 and caused_by_interrupt(exc):
            if nested:
                raise KeyboardInterrupt from None
            print(f"brainsynth: interrupted; {interrupt_note()}", file=sys.stderr)
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        if nested:
            raise
        print(f"brainsynth: interrupted; {interrupt_note()}", file=sys.stderr)
        return 130
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"brainsynth: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError:
        if debug:
            traceback.print_exc()
        print("brainsynth: error: out of memory; use smaller images, fewer --jobs or a smaller --batch-size", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS or not exc.filename:
            return _internal(exc, debug)
        if debug:
            traceback.print_exc()
        print(f"brainsynth: error: {exc.filename}: {exc.strerror}; check the path, its permissions and the free space",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if caused_by_interrupt(exc):
            if nested:
                raise KeyboardInterrupt from None
            print(f"brainsynth: interrupted; {interrupt_note()}", file=sys.stderr)
            return 130
        return _internal(exc, debug)


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    else:
        first = str(exc).strip().splitlines()
        print(
            f"brainsynth: internal error: {type(exc).__name__}: {first[0] if first else ''} "
            "(run with --debug for the traceback; please report it)",
            file=sys.stderr,
        )
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    main()
