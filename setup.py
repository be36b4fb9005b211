from setuptools import find_packages, setup

setup(
    name="peft-skip",
    version="0.1.0",
    description="Skip Tuning (CVPR 2025) for CLIP-family models as a Hugging Face peft method",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # The pretrained world CLIP (`peft_skip.pretrain.world_clip_path()`).
    package_data={"peft_skip": ["assets/world-clip/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "peft>=0.21,<0.22",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "evaluate>=0.4",
        "datasets>=3.0",
        "pillow",
        "tqdm",
        "numpy",
        # SigLIP's tokenizer (SentencePiece), for real checkpoints and `make_offline_model`.
        "sentencepiece",
        "protobuf",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist", "hypothesis", "ruff", "matplotlib", "scikit-learn"],
        "bench": ["matplotlib"],
    },
    entry_points={"console_scripts": ["peft-skip=peft_skip.cli:main"]},
)
