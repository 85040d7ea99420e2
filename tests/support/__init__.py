"""What the tests share: real clusters (``cluster``) and in-process fakes (``fakes``)."""

from __future__ import annotations

from pathlib import Path

#: The root of the repository, and the tests folder.
ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
