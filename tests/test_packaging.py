"""Every top-level package of the source tree is installed by setup.cfg (the installed
``opendmp`` command imports them; the test harness alone would not notice, since it runs
from the source tree)."""
from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_top_level_package_is_installed():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    included = {p.strip().rstrip("*") for p in
                cfg["options.packages.find"]["include"].split() if p.strip()}
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")
                if p.parent.name not in ("tests", "benchmarks")}
    assert packages - included == set()
