"""Slow-header clients against a server with few file descriptors: is /healthz answered?

    python bench/slow_headers.py [--src DIR] [--nofile N] [--slow N] [--header-timeout S]

Starts `python -m chat` (from DIR, default this checkout) under `prlimit --nofile=N:N`,
opens --slow connections that send part of a request's headers and then hold it
forever (reopening only when the server closes them), and times /healthz and a
WebSocket hello while they do. Run it against an older checkout to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverproc import ServerProcess, server_env, write_config  # noqa: E402

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


async def hold(host: str, port: int, lifetimes: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (TimeoutError, OSError):
            continue
        started = time.monotonic()
        writer.write(PARTIAL)
        try:
            read = asyncio.ensure_future(reader.read())
            done, _ = await asyncio.wait({read, asyncio.ensure_future(stop.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if read in done:
                lifetimes.append(time.monotonic() - started)
            read.cancel()
        except OSError:
            pass
        finally:
            writer.close()


async def attack(server: ServerProcess, slow: int, rounds: int) -> None:
    lifetimes: list[float] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(hold(server.host, server.port, lifetimes, stop))
             for _ in range(slow)]
    await asyncio.sleep(2)  # let the slow clients take every descriptor
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for n in range(rounds):
            started = time.monotonic()
            try:
                async with http.get(server.url + "/healthz") as response:
                    await response.read()
                healthz = f"{response.status} after {time.monotonic() - started:.2f} s"
            except TimeoutError:
                healthz = "no answer within 10 s"
            started = time.monotonic()
            try:
                ws = await http.ws_connect(server.ws_url)
                await ws.send_json({"type": "hello", "nick": f"probe{n}"})
                await ws.receive_json(timeout=10)
                await ws.close()
                hello = f"welcome after {time.monotonic() - started:.2f} s"
            except (TimeoutError, aiohttp.ClientError) as err:
                hello = f"failed: {type(err).__name__}"
            print(f"round {n}: /healthz {healthz}; WebSocket {hello}")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if lifetimes:
        lifetimes.sort()
        print(f"slow connections closed by the server: {len(lifetimes)}, median lifetime "
              f"{lifetimes[len(lifetimes) // 2]:.2f} s, longest {lifetimes[-1]:.2f} s")
    else:
        print("slow connections closed by the server: none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT), help="checkout whose chat/ to run")
    parser.add_argument("--nofile", type=int, default=64)
    parser.add_argument("--slow", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--header-timeout", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), {
            "server": {"header_timeout": args.header_timeout},
            "history": {"backend": "memory"},
        })
        server = ServerProcess("--config", str(config), cwd=tmp,
                               env=server_env(PYTHONPATH=args.src))
        server.argv = ["prlimit", f"--nofile={args.nofile}:{args.nofile}", *server.argv]
        with server:
            asyncio.run(attack(server, args.slow, args.rounds))
            errors = server.stderr_text()
            print(f"stderr: {errors.count('Traceback')} tracebacks, "
                  f"{errors.count('out of system resource')} asyncio accept errors, "
                  f"{errors.count('cannot accept connections')} throttled accept lines")


if __name__ == "__main__":
    main()
