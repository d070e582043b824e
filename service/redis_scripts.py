"""The shared state's Lua scripts, read once at import from `service/lua/`.

Each script runs atomically in Redis, so a decision on the fleet's counts (a
trip, a trial's lease, a seed after a lost record) cannot interleave with
another instance's write. Every script starts with `snapshot.lua`, the
functions they share: the record's snapshot, a transition, a publish. The
files' first lines say what their KEYS and ARGV are.
"""

from __future__ import annotations

from pathlib import Path

_FOLDER = Path(__file__).with_name("lua")
_SHARED = (_FOLDER / "snapshot.lua").read_text()


def _script(name: str) -> str:
    return _SHARED + (_FOLDER / f"{name}.lua").read_text()


APPLY = _script("apply")
ACQUIRE_TRIAL = _script("acquire_trial")
RELEASE_TRIAL = _script("release_trial")
INIT = _script("init")
SEED = _script("seed")
READ = _script("read")
