import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from peft_skip.tuner.versions import TESTED

ROOT = Path(__file__).resolve().parents[1]


def test_builds_as_a_wheel_with_the_console_script(tmp_path):
    # Build from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "runs"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path, source],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("peft_skip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"peft_skip/__init__.py", "peft_skip/tuner/model.py", "peft_skip/tuner/layer.py"} <= set(names)
    # The metric module is package data (evaluate.load reads it from its directory).
    assert "peft_skip/metrics/base_new_accuracy/base_new_accuracy.py" in names
    assert "peft_skip/data/__init__.py" in names
    # The pretrained world CLIP ships as package data.
    assert {"peft_skip/assets/world-clip/config.json", "peft_skip/assets/world-clip/model.safetensors"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "peft-skip = peft_skip.commands.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # setup.py requires exactly the ranges `import peft_skip` checks.
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    prefix = "Requires-Dist: "
    requires = [Requirement(line.removeprefix(prefix)) for line in metadata.splitlines() if line.startswith(prefix)]
    declared = {r.name: r.specifier for r in requires if r.name in TESTED}
    assert declared == {name: SpecifierSet(spec) for name, spec in TESTED.items()}


def test_import_registers_the_peft_type():
    code = (
        "import peft_skip, peft; from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m; print(m['SKIP'].__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT / "src")
    assert out.stdout.strip() == "SkipConfig"
