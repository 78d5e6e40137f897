"""Server memory held by clients that ask for a big recovery and never read it.

    python bench/recovery_rss.py [--src DIR] [--attackers N] [--stored N] [--recover N]

Starts `python -m chat` (from DIR, default this checkout) with the memory backend,
stores N large messages (8 KB each) in a room, then opens attackers that send
hello, two joins (--joins) with since 0, and protocol pongs, and never read. Prints the
server's RSS growth per attacker once it stops growing, and after they disconnect;
then a second wave of attackers, which shows whether that memory is reused or grows.
Run it against an older checkout (`git archive BASE | tar -x -C /tmp/base`) to compare.
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

from tests.helpers import Peer  # noqa: E402
from tests.rawws import RawWebSocket  # noqa: E402
from tests.serverproc import ServerProcess, server_env, write_config  # noqa: E402
from tests.test_recovery_abuse import fill, keep_alive, rss  # noqa: E402


async def settle(pid: int, quiet: float = 1.0, limit: float = 10.0) -> int:
    """RSS once it has not grown for `quiet` seconds (or after `limit`)."""
    best, since = rss(pid), time.monotonic()
    end = time.monotonic() + limit
    while time.monotonic() < end and time.monotonic() - since < quiet:
        await asyncio.sleep(0.1)
        if (now := rss(pid)) > best:
            best, since = now, time.monotonic()
    return best


async def attack(
    server: ServerProcess, attackers: int, stored: int, joins: int, waves: int
) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    async with aiohttp.ClientSession() as http:
        observer = Peer(await http.ws_connect(server.ws_url, autoping=True))
        await observer.hello("observer")
        epoch = await fill(observer, stored)
        reading = asyncio.create_task(observer.quiet(3600))  # keep taking its frames
        baseline = await settle(pid)
        for wave in range(1, waves + 1):
            socks = [await RawWebSocket.open(server.host, server.port, rcvbuf=4096)
                     for _ in range(attackers)]
            pongs = asyncio.create_task(keep_alive(socks, 0.1))
            for n, sock in enumerate(socks):
                sock.send({"type": "hello", "nick": f"attacker{n}"})
            await asyncio.sleep(0.5)  # their welcomes are sent: the joins find empty queues
            for sock in socks:
                for _ in range(joins):
                    sock.send({"type": "join", "room": "big", "since": 0, "epoch": epoch})
                # Staggered, so no attacker's presence reaches another's queue while that
                # still holds its `joined`: a slow-consumer drop would end the attack early.
                await asyncio.sleep(0.2)
            held = await settle(pid) - baseline
            print(f"wave {wave}: baseline RSS {baseline / 1e6:.1f} MB; {attackers} attackers "
                  f"hold {held / 1e6:.1f} MB over it, {held / attackers / 1e6:.2f} MB each")
            pongs.cancel()
            for sock in socks:
                sock.abort()
            await asyncio.sleep(2)
            metrics = await (await http.get(server.url + "/metrics")).text()
            left = next(line for line in metrics.splitlines()
                        if line.startswith("chat_connections "))
            print(f"wave {wave}: after they go, {(rss(pid) - baseline) / 1e6:+.1f} MB over the "
                  f"baseline; {left}")
        reading.cancel()
        await observer.ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT), help="checkout whose chat/ to run")
    parser.add_argument("--attackers", type=int, default=20)
    parser.add_argument("--stored", type=int, default=1000)
    parser.add_argument("--recover", type=int, default=500)
    parser.add_argument("--joins", type=int, default=2, help="joins each attacker sends")
    parser.add_argument("--waves", type=int, default=2,
                        help="attacks one after the other (memory reused, or grown?)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server (e.g. glibc malloc tuning)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), {
            "history": {"backend": "memory", "recover": args.recover},
            "heartbeat": {"interval": 0.3, "timeout": 1.0},
            "cleanup": {"interval": 0.1},
            "limits": {"rate": {"messages": 100000, "per": 1, "burst": 100000},
                       "max_connections_per_ip": 1000},
        })
        env = server_env(PYTHONPATH=args.src, **dict(e.split("=", 1) for e in args.env))
        with ServerProcess("--config", str(config), cwd=tmp, env=env) as server:
            asyncio.run(attack(server, args.attackers, args.stored, args.joins, args.waves))
            ends = server.stderr_text().count("code=4001")
            print(f"connections dropped as slow consumers (4001): {ends}")


if __name__ == "__main__":
    main()
