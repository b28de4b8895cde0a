"""Rules of the house: the engine loads no search or tracking library, and only the one adapter
reaches into private attributes of Ray or Optuna."""

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "rst_tune"
ENGINE = (
    "rst_tune.schedules",
    "rst_tune.sharpness",
    "rst_tune.data",
    "rst_tune.models",
    "rst_tune.config",
    "rst_tune._train",
)
ADAPTER = PACKAGE / "search" / "_optuna.py"


def _loaded_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_engine_loads_neither_ray_nor_optuna_nor_mlflow():
    loaded = _loaded_after("\n".join(f"import {module}" for module in ENGINE))
    assert "torch" in loaded and "rst_tune" in loaded  # the probe does see what was imported
    assert not loaded & {"ray", "optuna", "mlflow"}


def test_rst_tune_train_loads_neither_ray_nor_optuna_nor_mlflow(tmp_path):
    code = (
        "from rst_tune.cli import main\n"
        f"args = ['train', '--quiet', 'epochs=1', 'batch_size=512', '--checkpoint', '{tmp_path}/c.pt']\n"
        "assert main(args) == 0"
    )
    loaded = _loaded_after(code)
    assert (tmp_path / "c.pt").exists() and not loaded & {"ray", "optuna", "mlflow"}


def _private_accesses(path: Path) -> list[str]:
    """`x._name` where x is not self or cls: a reach into another object's private state."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


def test_only_the_adapter_reaches_into_private_attributes_of_ray_or_optuna():
    wing = [p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem in ("cli", "runs", "ui")]
    private = [hit for path in wing if path != ADAPTER for hit in _private_accesses(path)]
    assert private == []
    imports = [
        node.module
        for path in wing
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("ray", "optuna")
    ]
    assert [module for module in imports if "._" in module] == []  # nothing from ray.*._private or optuna._*
    assert "ray.tune.search" in imports  # the scan does see the imports


def test_subclasses_of_ray_classes_touch_none_of_their_private_state():
    import importlib

    checked = 0
    for path in PACKAGE.rglob("*.py"):
        module = importlib.import_module(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for cls in [
            c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__
        ]:
            for base in cls.__mro__[1:]:
                if base.__module__.split(".")[0] in ("ray", "optuna"):
                    theirs = set(re.findall(r"self\.(_[a-z]\w*)", inspect.getsource(base)))
                    theirs |= {
                        name for name in vars(base) if name.startswith("_") and not name.startswith("__")
                    }
                    mine = set(re.findall(r"self\.(_[a-z]\w*)", inspect.getsource(cls)))
                    assert not mine & theirs, f"{cls.__name__} uses {base.__name__}'s {sorted(mine & theirs)}"
                    checked += 1
    assert checked >= 5  # the searcher, the schedulers, the progress and tracking callbacks
