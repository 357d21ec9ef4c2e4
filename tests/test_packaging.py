"""The environment is pinned once: pyproject's direct dependencies agree with requirements.lock,
which the Makefile, CI and both images install."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_direct_dependencies_are_pinned_to_the_lock():
    lock = _lock()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name, sep, version = dep.partition("==")
        assert sep, f"{dep} is not pinned"
        assert lock.get(name.lower()) == version, f"{dep} disagrees with requirements.lock"


def test_lock_pins_everything_exactly():
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        assert "==" in line and " @ " not in line, f"unpinned or local requirement: {line}"
