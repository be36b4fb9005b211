import os
import runpy

from setuptools import find_packages, setup

# The tested ranges of the Hugging Face stack, declared once: `import peft_skip` refuses anything outside them.
HERE = os.path.dirname(os.path.abspath(__file__))
TESTED = runpy.run_path(os.path.join(HERE, "src", "peft_skip", "tuner", "versions.py"))["TESTED"]

setup(
    name="peft-skip",
    version="0.1.0",
    description="Skip Tuning (CVPR 2025) for CLIP-family models as a Hugging Face peft method",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={
        # Metric modules that `evaluate.load` reads from a directory: not packages, so listed as data.
        "peft_skip.metrics": ["base_new_accuracy/*.py"],
        # The CLIP pretrained here on the captioned world (`peft_skip.offline.pretrain.world_clip_path()`).
        "peft_skip": ["assets/world-clip/*"],
    },
    python_requires=">=3.10",
    install_requires=[
        # CI runs torch 2.13 (constraints.txt); a newer torch pulls several GB of CUDA wheels.
        "torch>=2.13",
        *(f"{name}{spec}" for name, spec in TESTED.items()),
        "packaging",  # `peft_skip.tuner.versions`
        # The adapter file format: peft writes it, `adapter_files.py` checks it before loading.
        "safetensors>=0.4",
        # `peft_skip.metrics`: metric modules that `evaluate.load` reads from the installed package, offline.
        "evaluate>=0.4",
        # `peft_skip.data`: Hugging Face datasets (`hf:`, `imagefolder:`) and scikit-learn's digits (`--data digits`).
        "datasets>=3.0",
        "scikit-learn",
        "pillow",
        "tqdm",
        "numpy",
        # `peft-skip ... --config FILE` (YAML or JSON).
        "pyyaml",
        # SigLIP's tokenizer (SentencePiece), for real checkpoints and `make_offline_model`.
        "sentencepiece",
        "protobuf",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist", "hypothesis", "ruff", "matplotlib", "tensorboard"],
        "bench": ["matplotlib"],
    },
    entry_points={"console_scripts": ["peft-skip=peft_skip.commands.cli:main"]},
)
