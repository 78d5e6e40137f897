"""/readyz follows what the history store can do: commits, not only reads."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.app import create_app
from tests.helpers import Peer, make_config


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs mounted under tmp_path for the test, unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill_disk(path: Path) -> None:
    """Write `path` until the file system has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 512, b"\0"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC, err
                    break
    finally:
        os.close(fd)


async def readiness(client: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    body: dict[str, Any] = await response.json()
    return response.status, body


async def test_full_disk_is_unready_until_commits_work(
    small_disk: Path, aiohttp_client: Any
) -> None:
    """A commit that fails (disk full) makes /readyz 503; freeing space makes it 200 again."""
    config = make_config({"history": {"backend": "sqlite", "path": str(small_disk / "chat.db")}})
    client = await aiohttp_client(create_app(config))
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    await peer.join("lobby")
    await peer.say("lobby", "before")
    assert (await readiness(client))[0] == 200

    filler = small_disk / "filler"
    fill_disk(filler)
    await peer.send({"type": "say", "room": "lobby", "text": "x" * 2000, "cid": "full"})
    assert await peer.closed() == 1011  # not stored, not acknowledged: the client re-sends
    status, body = await readiness(client)
    assert (status, body["status"]) == (503, "unavailable"), body
    assert "full" in body["backends"]["history"], body
    assert (await readiness(client))[0] == 503  # the probe fails too while the disk is full

    filler.unlink()
    status, body = await readiness(client)
    assert (status, body) == (200, {"status": "ok", "backends": {"history": "ok"}})
    again = Peer(await client.ws_connect("/ws"))
    await again.hello("alice")
    await again.join("lobby")
    assert (await again.say("lobby", "x" * 2000, cid="full"))["id"] == 2
