"""The package's command-line convention: absl flags (underscores; `--help` lists them and exits
0), and any error, a bad flag or a ValueError from the program, as one line on stderr with exit
status 2 (as argparse did).

Entry points define their flags in `define_flags()`, called only when the file runs as a program,
so that importing it (tests, other tools) registers nothing on absl's global FLAGS, where two
programs' `--out` or `--workdir` would collide.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging


def run(
    main: Callable[[list[str]], int | None],
    program: str,
    *,
    flag_errors: tuple[type[Exception], ...] = (flags.Error,),
    explain: Callable[[list[str], Exception], str] | None = None,
) -> None:
    """`app.run(main)` with one-line errors (`PROGRAM: error: ...`, exit 2); main's return is the exit code.

    `flag_errors` are the exceptions that parsing may raise for bad input (ml_collections' config
    overrides raise more than absl's flags.Error); `explain(argv, error)` words them.
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flag_errors as error:
            fail(program, explain(argv, error) if explain else "; ".join(str(error).splitlines()))
        except SystemExit as exit:  # absl exits 1 after printing --help or --helpfull: not an error
            sys.exit(0 if exit.code == 1 else exit.code)

    def guarded(argv: list[str]) -> int | None:
        if len(argv) > 1:
            fail(program, f"unexpected arguments {argv[1:]} (every option is a --flag; see --help)")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # no INFO lines from orbax and JAX unless asked for
        try:
            return main(argv)
        except ValueError as error:
            fail(program, error)

    app.run(guarded, flags_parser=parse)


def fail(program: str, error) -> None:
    print(f"{program}: error: {error}", file=sys.stderr)
    sys.exit(2)
