"""The layout the README's "Layout" section describes: the library (guidance/ without guidance/app, and pipelines/,
installed as guidance.pipelines) never imports the application (guidance.app) nor the test builders
(guidance.pipelines.testing)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# guidance/__main__.py is the application's entry point (`python -m guidance` runs the CLI), not library code.
LIBRARY = [p for p in (ROOT / "guidance").rglob("*.py")
           if "app" not in p.relative_to(ROOT / "guidance").parts[:1] and p.name != "__main__.py"]
INTEGRATION = [p for p in (ROOT / "pipelines").rglob("*.py") if "testing" not in p.relative_to(ROOT).parts]


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` imports, also inside functions (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "pipelines":
        parts = ("guidance", *parts)
    return ".".join(parts if parts[-1] == "__init__" else parts[:-1]).removesuffix(".__init__")


def test_the_library_never_imports_the_application_or_the_test_builders() -> None:
    assert len(LIBRARY) > 20 and len(INTEGRATION) > 10
    for path in LIBRARY + INTEGRATION:
        forbidden = {m for m in imported_modules(path, package_of(path))
                     if m.startswith(("guidance.app", "guidance.pipelines.testing"))}
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_a_guided_run_loads_no_application_module(tmp_path) -> None:
    """In a fresh process: load the bundled digits model, run guidance, list what got imported."""
    script = (
        "import sys, guidance\n"
        "from guidance.pipelines.digits import load_pipeline\n"
        "guidance.run(load_pipeline(), {'rule': 'apg', 'scale': 3}, class_labels=[1], num_inference_steps=2)\n"
        "print([m for m in sys.modules if m.startswith(('guidance.app', 'guidance.pipelines.testing'))])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_import_scan_sees_an_application_import(tmp_path) -> None:
    """The scan above can fail: a relative import of the application from the library is found."""
    module = tmp_path / "example.py"
    module.write_text("def f():\n    from ..app.cli import main\n    return main\n")
    assert "guidance.app.cli" in imported_modules(module, "guidance.rules")


def test_every_package_is_installed() -> None:
    """pyproject.toml lists its packages one by one: every folder with an __init__.py must be among them."""
    import tomllib  # Python 3.11+, as CI

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for init in [*(ROOT / "guidance").rglob("__init__.py"), *(ROOT / "pipelines").rglob("__init__.py")]:
        parts = init.parent.relative_to(ROOT).parts
        found.add(".".join(("guidance", *parts) if parts[0] == "pipelines" else parts))
    assert len(found) > 8 and found <= listed, sorted(found - listed)
