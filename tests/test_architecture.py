"""The layering the architecture doc promises, checked on the source: a rule that can break."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "appliance"
# Adapters may share these helpers (pure readings and file writes); none may drive another adapter.
ADAPTER_HELPERS = {"appliance.adapters.sysinfo", "appliance.adapters.storage", "appliance.adapters.media",
                   "appliance.adapters.audio_checks", "appliance.adapters.echo_canceller",
                   "appliance.adapters.echo_delay", "appliance.adapters.remote_ops",
                   # RAUC's boot-chooser program; its autoboot.txt reading is what the updater asks too
                   "appliance.adapters.tryboot"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", modules_under("core"), ids=lambda path: path.name)
def test_the_core_imports_nothing_outside_the_core(path: Path) -> None:
    outside = {name for name in imported_modules(path)
               if name.split(".")[0] in ("appliance", "appliance_dev") and not name.startswith("appliance.core")}
    assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", modules_under("adapters") + modules_under("media"), ids=lambda path: path.name)
def test_no_adapter_drives_another_adapter_or_reaches_the_daemon(path: Path) -> None:
    own = f"appliance.{path.parent.name}.{path.stem}"
    used = {name for name in imported_modules(path) if name.startswith(("appliance.adapters", "appliance.daemon",
                                                                          "appliance.loop", "appliance.console"))}
    packages = {"appliance.adapters", "appliance.media"}  # `from appliance.adapters import x` names the package too
    drives = {name for name in used - packages - {own} if not any(name.startswith(helper) for helper in ADAPTER_HELPERS)}
    assert not drives, f"{path.name} imports {sorted(drives)}"


def test_no_development_tool_is_inside_the_installed_package() -> None:
    names = {path.stem for path in PACKAGE.rglob("*.py")}
    assert not names & {"demo", "simulate", "central", "central_media", "localnet"}
    users = [path for path in PACKAGE.rglob("*.py") if "appliance_dev" in imported_modules(path)
             or any(name.startswith("appliance_dev") for name in imported_modules(path))]
    assert not users, f"the product imports development tools: {users}"
