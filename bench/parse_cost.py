"""Cost of `protocol.parse` on ordinary frames (the depth rule sits on this hot path).

    python bench/parse_cost.py [OTHER_PROTOCOL_PY]

Measures the checkout's chat/protocol.py, and with an argument another version of it
too (for example `git show BASE:chat/protocol.py > /tmp/old.py`), interleaving the runs
so that a busy machine slows both alike. Prints the best of 15 runs per frame.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import timeit
from pathlib import Path
from types import ModuleType

FRAMES = {
    "say": json.dumps({"type": "say", "room": "lobby", "text": "hello there, how are you?",
                       "cid": "c-1732672000123"}),
    "ping": json.dumps({"type": "ping", "t": 1732672000123}),
    "say, 40 brackets in text": json.dumps({"type": "say", "room": "lobby", "text": "[" * 40}),
}
RUNS = 100_000


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    modules = {"this": load(Path(__file__).parent.parent / "chat" / "protocol.py", "p_this")}
    if len(sys.argv) > 1:
        modules["other"] = load(Path(sys.argv[1]), "p_other")
    for frame, text in FRAMES.items():
        best = dict.fromkeys(modules, float("inf"))
        for _ in range(15):
            for name, module in modules.items():
                took = timeit.timeit(lambda m=module, t=text: m.parse(t), number=RUNS)
                best[name] = min(best[name], took / RUNS * 1e9)
        print(f"{frame:26}" + "".join(f"{name}: {ns:6.0f} ns  " for name, ns in best.items()))


if __name__ == "__main__":
    main()
