"""Images, labels and class names for Skip Tuning.

Every loader returns an `ImageDataset`: class names, one item per image (a file path, a PIL image, or a row of an
array / HF dataset) and integer labels. Images are decoded lazily and always come back as RGB.

| module | its one job |
|---|---|
| `dataset.py` | `ImageDataset` and decoding any image to RGB |
| `loaders.py` | image folders, Hugging Face `datasets`, Parquet / CSV / JSON files, the CLI's `--data` spec |
| `builtin.py` | the offline datasets: Fashion-MNIST (IDX files) and scikit-learn's digits |
| `splits.py` | the few-shot draw (Dassl's), the base/new class split, class subsets by name |
| `prompts.py` | prompt templates and prompts from class names |
| `transforms.py` | preprocessing and augmentation into `(3, S, S)` tensors |
| `workers.py` | reading and transforming images in worker processes, in order (`ordered_map`) |
"""

from .builtin import DIGITS_CLASSES, FASHION_MNIST_CLASSES, load_digits, load_fashion_mnist
from .dataset import ImageDataset, ImageDecoding, ImageSource, read_image, to_rgb
from .loaders import (
    IMAGE_EXTENSIONS,
    from_hf_dataset,
    is_table_spec,
    load_data_file,
    load_dataset_spec,
    load_hf_dataset,
    load_image_folder,
)
from .prompts import TEMPLATES, build_prompts
from .splits import check_shots, sample_few_shot, short_classes, split_base_new, subset_classes
from .transforms import ImageTransform

__all__ = [
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "TEMPLATES",
    "ImageDataset",
    "ImageDecoding",
    "ImageSource",
    "ImageTransform",
    "build_prompts",
    "check_shots",
    "from_hf_dataset",
    "is_table_spec",
    "load_data_file",
    "load_dataset_spec",
    "load_digits",
    "load_fashion_mnist",
    "load_hf_dataset",
    "load_image_folder",
    "read_image",
    "sample_few_shot",
    "short_classes",
    "split_base_new",
    "subset_classes",
    "to_rgb",
]
