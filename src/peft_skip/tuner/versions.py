"""The versions of the Hugging Face stack peft-skip is tested with, declared once: setup.py reads `TESTED` from this
file (it imports nothing at module level), and `import peft_skip` refuses anything outside them.

peft-skip adds its member to peft's `PeftType` enum and routes transformers' `load_adapter` for its adapters; both
rely on internals that change between releases, so an untested peft or transformers is refused instead of patched.
transformers 5.24 requires peft >= 0.22 in `add_adapter`, and no peft 0.22 exists yet.
"""

TESTED = {
    "transformers": ">=5.17,<5.24",
    "peft": ">=0.21,<0.22",
    "accelerate": ">=1.15,<2",
}


def check_versions() -> None:
    """Raises `ImportError` naming every installed package of `TESTED` outside its range, and the range."""
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    wrong = [
        f"{name}{spec} (found {version(name)})"
        for name, spec in TESTED.items()
        if version(name) not in SpecifierSet(spec)
    ]
    if wrong:
        pins = " ".join(f"'{name}{spec}'" for name, spec in TESTED.items())
        raise ImportError(f"peft-skip needs {', '.join(wrong)}; install tested versions: pip install {pins}")
