"""Detecting a complete new ERP delivery in a Mandant's export folder (for the delivery sensor).

A delivery is complete when all seven files are present, and settled when none of them changed for a
while: an ERP copying files over a network share must not trigger a run on half-written files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from casavi_pipeline.erp.contract import ENTITIES


@dataclass(frozen=True)
class Delivery:
    mandant: str
    folder: Path
    missing_files: tuple[str, ...]
    newest_mtime: float | None  # of the files present; None when there are none

    @property
    def complete(self) -> bool:
        return not self.missing_files

    def settled(self, settle_seconds: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.newest_mtime is not None and now - self.newest_mtime >= settle_seconds


def scan_delivery(export_dir: Path, mandant: str) -> Delivery:
    """Which of the seven files are there, and when the newest of them was written."""
    folder = Path(export_dir) / mandant
    missing, mtimes = [], []
    for entity in ENTITIES:
        path = folder / entity.file_name
        try:
            mtimes.append(path.stat().st_mtime)
        except FileNotFoundError:
            missing.append(entity.file_name)
    return Delivery(mandant, folder, tuple(missing), max(mtimes) if mtimes else None)
