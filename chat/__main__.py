"""Command line (`chat` once installed, or `python -m chat`).

    chat [--config PATH] [--host HOST] [--port PORT] [--loop {uvloop,asyncio}]
         [--log-level LEVEL]
    chat token NICK [--config PATH] [--rooms a,b] [--ttl SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata

from aiohttp import web

from chat import auth, logs, protocol, reload, server
from chat.app import create_app
from chat.config import EVENT_LOOPS, Config, ConfigError, config_loader, load_config
from chat.history import HistoryOpenError

logger = logging.getLogger("chat")

EXIT_CONFIG = 2


class StartupError(Exception):
    """The server cannot start as configured (the store or the address is unusable)."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, got {port}")
    return port


def _prog() -> str:
    """The name the user typed: `chat` for the installed script, `python -m chat` for -m."""
    # argparse's default is the basename of sys.argv[0], which under -m is __main__.py.
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m chat" if name in ("", "__main__.py", "-c") else name


def _parser() -> argparse.ArgumentParser:
    prog = _prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the chat server.",
        epilog=f"commands:\n  {prog} token NICK [--config PATH] [--rooms a,b] [--ttl SECONDS]\n"
        f"      print a signed token for NICK (token mode; see `{prog} token --help`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML configuration file (default: $CHAT_CONFIG, "
                        "else ./config.yaml if present, else built-in defaults)")
    parser.add_argument("--host", help="address to listen on (overrides server.host)")
    parser.add_argument("--port", type=_port, help="port to listen on, 0 for a free one "
                        "(overrides server.port)")
    parser.add_argument("--loop", choices=EVENT_LOOPS,
                        help="event loop to run on (overrides server.loop; default uvloop)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="logging threshold (default INFO)")
    return parser


def _with_overrides(
    config: Config, host: str | None, port: int | None, loop: str | None = None
) -> Config:
    server = config.server
    if host is not None:
        server = dataclasses.replace(server, host=host)
    if port is not None:
        server = dataclasses.replace(server, port=port)
    if loop is not None:
        server = dataclasses.replace(server, loop=loop)
    return dataclasses.replace(config, server=server)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `asyncio.Runner` makes its loop with for `server.loop` (None: asyncio's own).

    Logs the loop in use; uvloop that cannot be imported (PyPy, Windows, a failed
    install) is a WARNING and asyncio's loop instead, not a failure to start.
    """
    if choice == "uvloop":
        try:
            import uvloop  # optional: not on PyPy nor Windows
        except ImportError as err:
            logger.warning("server.loop is uvloop, but it cannot be imported (%s); "
                           "running on asyncio", err)
        else:
            logger.info("event loop: uvloop %s", metadata.version("uvloop"))
            return uvloop.new_event_loop
    logger.info("event loop: asyncio")
    return None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(
    app: web.Application, config: Config, load: Callable[[], Config] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down within `server.shutdown_timeout`.

    SIGHUP applies `load()` (the configuration read again) to the running server.
    """
    budget = config.server.shutdown_timeout
    # Handlers go in before anything can announce readiness: a signal sent right
    # after the `listening on` line must still shut down cleanly (or reload).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if load is not None:
        loop.add_signal_handler(signal.SIGHUP, reload.reload, app, load)
    logger.debug("signal handlers installed: SIGINT, SIGTERM%s",
                 ", SIGHUP" if load is not None else "")
    server.prepare_process(loop)
    # Half the budget for closing WebSockets (on_shutdown), half for the rest.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=budget / 2,
                           **server.handler_options(config))
    try:
        await runner.setup()  # opens the history store
    except HistoryOpenError as err:
        await runner.cleanup()
        raise StartupError(str(err)) from None
    server.tune_gc()
    if not server.tune_malloc():
        logger.debug("malloc thresholds not set: no glibc")
    site: web.BaseSite
    if isinstance(loop, asyncio.BaseEventLoop):
        site = web.TCPSite(runner, config.server.host, config.server.port)
    else:  # uvloop: accept as asyncio does when out of file descriptors
        site = server.AcceptSite(runner, config.server.host, config.server.port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {config.server.host}:{config.server.port}: "
                           f"{err.strerror or err}") from None
    port = runner.addresses[0][1]
    print(f"listening on http://{_url_host(config.server.host)}:{port}", flush=True)
    await stop.wait()
    logger.info("signal received: shutting down")
    try:
        async with asyncio.timeout(budget):
            await runner.cleanup()
    except TimeoutError:
        logger.warning("shutdown took longer than %ss; exiting anyway", budget)


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} token", description="Print a token for NICK (token mode)."
    )
    parser.add_argument("nick")
    parser.add_argument("--config", help="YAML configuration file holding auth.secret")
    parser.add_argument("--rooms", help="comma-separated rooms the token allows (default: all)")
    parser.add_argument("--ttl", type=float, default=86400.0,
                        help="seconds the token stays valid (default 86400)")
    return parser


def token_main(argv: Sequence[str]) -> int:
    parser = _token_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    secret = config.auth.secret
    if secret is None:
        print(f"{config.source or 'defaults'}: auth.secret: not set (nor CHAT_AUTH_SECRET)",
              file=sys.stderr)
        return EXIT_CONFIG
    nick = protocol.normalize_nick(args.nick)
    if nick is None:
        parser.error(f"not a valid nick: {args.nick!r}")
    rooms = None
    if args.rooms is not None:
        rooms = [room.strip() for room in args.rooms.split(",") if room.strip()]
        bad = [room for room in rooms if room != "*" and not protocol.valid_room(room)]
        if bad:
            parser.error(f"not a valid room name: {bad[0]!r}")
    if not args.ttl > 0:
        parser.error("--ttl must be > 0")
    print(auth.issue(nick, secret, time.time(), args.ttl, rooms), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    args = _parser().parse_args(argv)
    # Text until the configuration names the format: a bad file is reported as one
    # plain line, as the contract asks.
    logs.setup(args.log_level)
    try:
        read = config_loader(args.config)

        # A reload reads the same file; the command line still wins over it.
        def load() -> Config:
            return _with_overrides(read(), args.host, args.port, args.loop)

        config = load()
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    logs.use_format(config.log.format)
    try:
        app = create_app(config)
    except ValueError as err:
        _fail(config, f"{config.source or 'defaults'}: {err}")
        return EXIT_CONFIG
    try:
        with asyncio.Runner(loop_factory=loop_factory(config.server.loop)) as runner:
            runner.run(serve(app, config, load))
    except StartupError as err:
        _fail(config, str(err))
        return EXIT_CONFIG
    return 0


def _fail(config: Config, line: str) -> None:
    """Report why the server cannot start: one line, a JSON object with `log.format: json`."""
    if config.log.format == "json":
        logger.error("%s", line)
    else:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
