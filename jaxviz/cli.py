"""The `jaxviz` command: arguments in, a job call out.

The jobs are listed in jaxviz/jobs/registry.py; each one's parser is built from its config
(jaxviz/jobs/config.py) and only the chosen job's module is imported. Exit codes: 0 done, 2 bad
usage or config (one line, no traceback), 1 a full disk (one line) or any other failure.
"""

from __future__ import annotations

import errno
import signal
import sys

from jaxviz import __version__
from jaxviz.errors import UsageError
from jaxviz.jobs.config import Parser
from jaxviz.jobs.registry import JOBS


def build_parser(command: str | None) -> Parser:
    parser = Parser(
        prog="jaxviz",
        description="Visualize and understand CNNs over whole datasets (JAX). "
        "Every job writes manifest.json, .npy arrays, .png pictures and index.html into --out.",
    )
    parser.add_argument("--version", action="version", version=f"jaxviz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in JOBS.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        if name == command:
            spec.add_arguments(p)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _disk_full(e: BaseException) -> bool:
    """An OSError ENOSPC/EDQUOT, or a store library's error carrying its text (tensorstore
    raises ValueError with the OS message)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, ValueError | RuntimeError) and "No space left on device" in str(e)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    command = command if command in JOBS else None
    try:
        args = build_parser(command).parse_args(argv)
    except UsageError as e:
        print(f"jaxviz{' ' + command if command else ''}: error: {e}", file=sys.stderr)
        return 2
    spec = JOBS[args.command]
    signal.signal(signal.SIGTERM, _interrupt)  # schedulers stop jobs with SIGTERM: checkpoint
    try:
        return spec.run(spec.from_namespace(args))
    except UsageError as e:
        print(f"jaxviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:
        if not _disk_full(e):
            raise
        where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
        print(
            f"jaxviz {args.command}: error: no space left on the device{where}; free some and "
            "rerun the same command (item jobs resume from their last checkpoint)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
