"""The package's layering: inference never loads training or evaluation code, and the CLI has
one module per command group with no command module importing another."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "stepvar_cli"
SHARED_CLI = {"__init__", "app", "options", "console"}  # app assembles; options/console are shared


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(m for m in sys.modules if m.startswith('stepvar'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


def test_inference_loads_no_training_and_no_eval_module():
    loaded = _loaded_after("import stepvar.pipeline")
    assert "stepvar.pipeline" in loaded
    assert [m for m in loaded if m.startswith(("stepvar.training", "stepvar.eval"))] == []


def test_public_api_from_the_package_root():
    loaded = _loaded_after("import stepvar")
    assert loaded == ["stepvar"]  # importing the package alone stays light
    from stepvar import SamplingConfig, load_pipeline, make_pruner
    from stepvar.pipeline import load_pipeline as direct

    assert load_pipeline is direct and SamplingConfig().seed == 0 and make_pruner("dense").name == "dense"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, absolute (relative imports resolved inside stepvar_cli)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "stepvar_cli" + (f".{base}" if base else "")
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def test_no_cli_command_module_imports_another():
    commands = {p.stem for p in CLI.glob("*.py")} - SHARED_CLI
    assert {"generate", "info", "benchmark", "evaluate", "train"} <= commands
    for path in CLI.glob("*.py"):
        if path.stem == "app":
            continue
        imported = _imported_modules(path)
        others = {f"stepvar_cli.{c}" for c in commands - {path.stem}} | {"stepvar_cli.app"}
        assert not imported & others, f"{path.name} imports {sorted(imported & others)}"


def test_shared_cli_modules_import_no_command():
    for name in ("options", "console"):
        imported = _imported_modules(CLI / f"{name}.py")
        assert not {m for m in imported if m.startswith("stepvar_cli.")}, name
