"""``tensorflow_model_server``: the executable. Parses flags, runs the server, exits like upstream.

Exit codes: 0 after SIGTERM/SIGINT (graceful), 255 when the server fails to start (upstream
returns -1), 1 for a config file that does not parse.

After a server has run, the process ends with ``os._exit`` once the drain is over (logs and stdio
flushed first): requests cut at the end of ``--shutdown_grace_seconds`` may still occupy worker
threads (a session run cannot be interrupted), and Python's normal exit would join them, so the
process would outlive the grace by as long as the slowest request. Nothing else is pending then:
metrics live in memory, sessions were closed by the drain, logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import uvloop

from modelserver import __version__
from modelserver.flags import (
    FlagError,
    Flags,
    ignored_flags,
    image_argv,
    parse_flags,
    refused_flags,
    usage,
    warn_unknown,
)

FAILED_START = 255


class _TfLogFormatter(logging.Formatter):
    """``2025-01-01 12:00:00.123456: I modelserver/server.py:123] message`` like TF's logging."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname[:1]
        stamp = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        where = f"{record.module}.py:{record.lineno}"
        text = f"{stamp}.{int(record.msecs * 1000):06d}: {level} modelserver/{where}] "
        text += record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TfLogFormatter())
    root = logging.getLogger("modelserver")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = image_argv(sys.argv[1:] if argv is None else argv, os.environ)
    if any(arg in ("--help", "-help", "-h", "--helpfull") for arg in args):
        # Like upstream: the flag list, and no attempt to start a server.
        print(usage())
        return 0
    try:
        flags = parse_flags(args)
    except FlagError as exc:
        print(f"{exc}\n{usage()}", file=sys.stderr)
        return FAILED_START
    if flags.version:
        # TensorFlow takes seconds to import: only --version and the server itself need it.
        import tensorflow as tf  # noqa: PLC0415

        print(f"TensorFlow ModelServer: {__version__}+modelserver")
        print(f"TensorFlow Library: {tf.__version__}")
        return 0
    warn_unknown(flags)
    refused = refused_flags(flags)
    if refused:
        # A flag that would silently do nothing is refused before anything loads.
        print(f"Failed to start server. Error: INVALID_ARGUMENT: {' '.join(refused)}", flush=True)
        return FAILED_START
    configure_logging()
    for name in ignored_flags(flags):
        logging.getLogger("modelserver.server").warning(
            "--%s is accepted for compatibility and has no effect in this server", name
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    code, served = uvloop.run(_serve(flags))
    if served:
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """End the process at once, without joining worker threads still running cut requests."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed or broken pipe: nothing more can be written anyway.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


async def _serve(flags: Flags) -> tuple[int, bool]:
    """(exit code, whether the server started and then drained)."""
    # The server imports TensorFlow (seconds): --help, --version and flag errors answer without
    # it, and TF_CPP_MIN_LOG_LEVEL must be set before it loads.
    from modelserver import config as config_module  # noqa: PLC0415
    from modelserver.errors import ServingError  # noqa: PLC0415
    from modelserver.server import ModelServer, StartupError  # noqa: PLC0415

    try:
        server = ModelServer(flags)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        await server.start()
    except config_module.ConfigParseError as error:
        print(error.parser_line, file=sys.stderr, flush=True)
        print(f"Failed to start server. Error: {error}", flush=True)
        return 1, False
    except (StartupError, ServingError) as error:
        cause = error.__cause__
        if isinstance(cause, config_module.ConfigParseError):
            print(cause.parser_line, file=sys.stderr, flush=True)
            print(f"Failed to start server. Error: {cause}", flush=True)
            return 1, False
        print(f"Failed to start server. Error: {error}", flush=True)
        return FAILED_START, False
    await server.wait()
    logging.getLogger("modelserver.server").info("Received a stop signal: shutting down")
    await server.stop()
    logging.getLogger("modelserver.server").info("Drained: exiting")
    return 0, True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
