"""/readyz follows what the history store can do: commits, not only reads.

The disk tests mount a file system (a tmpfs, an ext4 image on a loop device) and need
root, as in CI; elsewhere they skip with the reason.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.app import create_app
from chat.history.sqlite import PROBE_INTERVAL, probe_due
from tests.helpers import DEADLINE, Peer, make_config


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


async def readiness_becomes(client: Any, status: int) -> dict[str, Any]:
    """Poll /readyz (a load balancer would) until it answers `status`; its body."""
    async with asyncio.timeout(DEADLINE):
        while True:
            got, body = await readiness(client)
            if got == status:
                return body
            await asyncio.sleep(0.05)


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
    # Unready before any commit has failed: the free space says so (a probe alone could
    # still commit into WAL space allocated before the disk filled).
    status, body = await readiness(client)
    assert (status, body["status"]) == (503, "unavailable"), body
    assert body["backends"]["history"].startswith("disk full: 0 bytes free"), body
    await peer.send({"type": "say", "room": "lobby", "text": "x" * 2000, "cid": "full"})
    assert await peer.closed() == 1011  # not stored, not acknowledged: the client re-sends
    status, body = await readiness(client)
    assert (status, body["status"]) == (503, "unavailable"), body
    assert "full" in body["backends"]["history"], body

    filler.unlink()
    status, body = await readiness(client)
    assert (status, body) == (200, {"status": "ok", "backends": {"history": "ok"}})
    again = Peer(await client.ws_connect("/ws"))
    await again.hello("alice")
    await again.join("lobby")
    assert (await again.say("lobby", "x" * 2000, cid="full"))["id"] == 2


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB ext4 image on a loop device, mounted with errors=remount-ro, unmounted after.

    A read-only file system cannot be made with `mount -o remount,ro` while the server
    has its database open: Linux refuses (EBUSY) to remount read-only a file system with
    files open for writing. Disks turn read-only under a running server the way this does
    it: ext4 meets an error and remounts itself read-only (`errors=remount-ro`), which
    the kernel's trigger_fs_error file provokes on purpose.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting an ext4 image needs root (CI runs as root)")
    image, mount = tmp_path / "ext4.img", tmp_path / "ext4"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(8 * 1024 * 1024)
    steps = [
        ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)],
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
        except FileNotFoundError as err:
            pytest.skip(f"{step[0]} is not installed: {err}")
        if done.returncode != 0:
            pytest.skip(f"cannot {step[0]} an ext4 image here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def ext4_sysfs(mount: Path) -> Path:
    """/sys/fs/ext4/<device>: the loop device `mount` is on."""
    device = os.stat(mount).st_dev
    for entry in Path("/sys/fs/ext4").iterdir():
        dev = entry / "dev"  # not every kernel has it; fall back to the block device's
        block = Path("/sys/class/block") / entry.name / "dev"
        for source in (dev, block):
            if source.exists():
                major, minor = map(int, source.read_text().split(":"))
                if os.makedev(major, minor) == device:
                    return entry
    pytest.skip("no /sys/fs/ext4 entry for the image's loop device")


async def test_read_only_file_system_is_unready(failing_disk: Path, aiohttp_client: Any) -> None:
    """A file system that turns read-only under the server makes /readyz 503 before any
    say fails (the periodic probe finds it; statvfs shows no read-only flag), and a say
    then is not acknowledged: the connection closes with 1011 and the client re-sends."""
    config = make_config({
        "history": {"backend": "sqlite", "path": str(failing_disk / "chat.db")},
        # The peer sends no pings while the test waits for the periodic probe.
        "heartbeat": {"interval": 5, "timeout": 15},
    })
    client = await aiohttp_client(create_app(config))
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    await peer.join("lobby")
    assert (await peer.say("lobby", "before"))["id"] == 1
    assert (await readiness(client))[0] == 200

    trigger = ext4_sysfs(failing_disk) / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip(f"{trigger} is missing: this kernel cannot fail an ext4 on demand")
    trigger.write_text("test: the disk fails\n")
    body = await readiness_becomes(client, 503)
    assert body["backends"]["history"].startswith("cannot commit: "), body

    await peer.send({"type": "say", "room": "lobby", "text": "lost", "cid": "ro"})
    assert await peer.closed() == 1011
    assert (await readiness(client))[0] == 503  # still: every check probes while failing
    # Reads still work: the stored message is there for a joining client.
    reader = Peer(await client.ws_connect("/ws"))
    await reader.hello("bob")
    joined = await reader.join("lobby", since=0)
    assert [m["text"] for m in joined["messages"]] == ["before"], joined


def test_probe_due_once_per_interval_while_commits_work() -> None:
    """A committed probe (an fsync) at most once per PROBE_INTERVAL while healthy; on
    every check while commits fail, so recovery shows at the first check after it."""
    assert probe_due(10.0, None, failing=False)
    assert not probe_due(10.0 + PROBE_INTERVAL / 2, 10.0, failing=False)
    assert probe_due(10.0 + PROBE_INTERVAL, 10.0, failing=False)
    assert probe_due(10.0, 10.0, failing=True)
