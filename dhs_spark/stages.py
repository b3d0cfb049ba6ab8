"""A tiny stage runner for multi-step local runs (the demo): progress, timing, reuse.

Each stage writes a marker ``<out>/.stages/<name>.json`` holding its result summary, its
duration and a fingerprint of its inputs when it finishes. A rerun with the same fingerprint
reuses the stage (prints "reused") instead of redoing it; a changed fingerprint, ``force=True``
(every stage) or the stage's name in ``redo`` redoes it. A stage that raises leaves no marker
(and a stale marker of an earlier run is removed before the stage starts). With ``cascade``
(the default) stages form a chain: once one is redone, every later one is redone too, since
later stages read what earlier ones wrote.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class StageRunner:
    """Runs named stages in order under ``out_dir`` and remembers what finished."""

    out_dir: Path
    force: bool = False
    redo: frozenset = frozenset()
    cascade: bool = True
    log: Callable[[str], None] = print
    timings_s: dict[str, float] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)

    def _marker(self, name: str) -> Path:
        return Path(self.out_dir) / ".stages" / f"{name}.json"

    def run(self, index: int, total: int, name: str, fn: Callable[[], dict], fingerprint: str = "") -> dict:
        """Run ``fn`` (returning a JSON-able summary dict: plain types, no numpy scalars) unless a
        matching marker exists; returns the summary as JSON would give it back."""
        marker = self._marker(name)
        upstream_redone = self.cascade and not all(self.reused.values())
        if not self.force and not upstream_redone and name not in self.redo and marker.exists():
            saved = json.loads(marker.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.log(f"[{index}/{total}] {name}: reused (finished earlier in {saved['seconds']:.1f} s)")
                self.timings_s[name] = saved["seconds"]
                self.reused[name] = True
                self.results[name] = saved["result"]
                return saved["result"]
        self.log(f"[{index}/{total}] {name} ...")
        marker.unlink(missing_ok=True)
        start = time.perf_counter()
        # The JSON round trip gives a fresh run the very values a reuse would read back.
        result = json.loads(json.dumps(fn() or {}))
        seconds = time.perf_counter() - start
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "seconds": seconds, "result": result}, indent=1))
        tmp.replace(marker)
        self.log(f"[{index}/{total}] {name}: done in {seconds:.1f} s")
        self.timings_s[name] = seconds
        self.reused[name] = False
        self.results[name] = result
        return result
