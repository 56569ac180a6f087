"""The settings of a command that acts on one Mandant: loaded, and the Mandant one of CASAVI_MANDANTEN."""

from __future__ import annotations

import sys

from casavi_pipeline.settings import Settings, SettingsError, load_settings


def settings_for(command: str, mandant: str) -> Settings | None:
    """The settings, or None after one line on stderr saying why the command cannot start (exit code 2)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
    if mandant not in settings.mandanten:
        print(f"{command}: Mandant {mandant} is not in CASAVI_MANDANTEN ({', '.join(settings.mandanten)})",
              file=sys.stderr)  # fmt: skip
        return None
    return settings
