"""The README's examples, run exactly as a reader would copy them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Final

from tests.serverproc import server_env

README: Final = Path(__file__).parents[1] / "README.md"
PYTHON_BLOCK: Final = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TIMEOUT: Final = 60.0  # s for a pytest run of one test in a child process


def readme_bot_test() -> str:
    """The README's one Python block: the bot test."""
    blocks = PYTHON_BLOCK.findall(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, f"expected one ```python block in README.md, found {len(blocks)}"
    code: str = blocks[0]
    assert "async def test_" in code
    return code


def test_readme_bot_test_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    """The README's bot test passes verbatim in a fresh project with no pytest settings."""
    (tmp_path / "test_bot.py").write_text(readme_bot_test(), encoding="utf-8")
    # An empty pytest.ini makes tmp_path the rootdir: nothing of this repository's
    # configuration (asyncio_mode = "auto" above all) reaches the run.
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bot.py"],
        cwd=tmp_path, env=server_env(), capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout, done.stdout
    assert not list(tmp_path.glob("chat.db*")), "the example created a chat.db"
