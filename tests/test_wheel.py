"""The wheel: built from the repository, it ships the search spaces; installed without -e into a fresh
virtual environment (which reuses this one's dependencies), `rst-tune search --check` finds them from
another directory."""

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_the_wheel_ships_the_spaces_and_runs_from_another_directory(tmp_path):
    source = tmp_path / "source"  # a copy: the build leaves its build/ and egg-info beside the sources
    shutil.copytree(ROOT / "rst_tune", source / "rst_tune", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("rst_tune-*.whl")
    shipped = sorted(p.name for p in (ROOT / "rst_tune" / "search_spaces").glob("*.yaml"))
    packed = sorted(
        name.rsplit("/", 1)[1] for name in zipfile.ZipFile(wheel).namelist() if "/search_spaces/" in name
    )
    assert packed == shipped and "default.yaml" in packed
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python, bin_dir = env / "bin" / "python", env / "bin"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # the dependencies come from this environment; a path in a .pth file does not run its .pth files,
    # so this checkout's editable install stays out
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import rst_tune; print(rst_tune.__file__)"],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(env)), where
    for space in ("default", "rivals", "study_rivals"):
        command = "study" if space.startswith("study") else "search"
        args = [space] if command == "study" else ["--space", space]
        done = subprocess.run(
            [bin_dir / "rst-tune", command, *args, "--check"], cwd=elsewhere, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{space}: valid;"), done.stdout
