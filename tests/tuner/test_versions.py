"""An untested peft or transformers is refused at import, naming the tested ranges, before anything is patched."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from peft_skip.tuner.versions import check_versions

SRC = Path(__file__).resolve().parents[2] / "src"


def test_an_untested_version_is_refused_naming_the_range(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.22.0" if name == "peft" else real(name))
    with pytest.raises(
        ImportError, match=r"needs peft>=0\.21,<0\.22 \(found 0\.22\.0\); .*pip install .*'peft>=0\.21"
    ):
        check_versions()


@pytest.mark.parametrize(
    "package, found", [("transformers", "5.24.0"), ("transformers", "5.16.0"), ("peft", "0.20.0")]
)
def test_import_refuses_an_untested_stack_and_leaves_peft_unpatched(package, found):
    code = (
        "import importlib.metadata as m\n"
        f"real = m.version; m.version = lambda name: {found!r} if name == {package!r} else real(name)\n"
        "try:\n    import peft_skip\nexcept ImportError as error:\n    print(error)\n"
        "import peft; print('SKIP' in peft.PeftType.__members__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC)
    message, patched = out.stdout.strip().splitlines()
    assert f"(found {found})" in message and package in message and patched == "False"
