"""Accuracy, and for the base-to-new protocol the base and new accuracies and their harmonic mean.

An `evaluate` metric module: load it with `evaluate.load(peft_skip.metrics.base_new_accuracy_path())`.

Self-contained on purpose: `evaluate.load` copies this file into its own module cache and imports it there, as a
standalone script, so it cannot import the package relatively, and importing `peft_skip` would tie a copied metric to
whichever version is installed later. Its harmonic mean is `peft_skip.training.evaluation.harmonic_mean`, restated;
tests/metrics/test_base_new_accuracy.py checks that the two agree.
"""

import datasets
import evaluate

_DESCRIPTION = """
Fraction of correct predictions. With `is_base`, also the accuracy on the images of base classes, on the images of
new classes, and their harmonic mean, the figures of the base-to-new protocol of CoOp / CoCoOp.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class of each image.
    references (`list[int]`): True class of each image.
    is_base (`list[bool]`, *optional*): Whether each image's true class is a base class. In the protocol, base images
        are classified among the base classes only and new images among the new classes only: pass predictions
        made that way.

Returns:
    accuracy (`float`): Fraction of correct predictions, in [0, 1].
    base_accuracy, new_accuracy, harmonic_mean (`float`): With `is_base` only. The harmonic mean is 0 when both
        accuracies are.

Examples:
    >>> metric = evaluate.load(base_new_accuracy_path())
    >>> metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 2, 3], is_base=[True, True, False, False])
    {'accuracy': 0.75, 'base_accuracy': 1.0, 'new_accuracy': 0.5, 'harmonic_mean': 0.6666666666666666}
"""

_CITATION = """
@inproceedings{wu2025skip,
  title={Skip Tuning: Pre-trained Vision-Language Models are Effective and Efficient Adapters Themselves},
  author={Wu, Shihan and others},
  booktitle={CVPR},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BaseNewAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, is_base=None):
        if not references:
            raise ValueError("No predictions: pass at least one prediction and its reference.")
        correct = [int(p) == int(r) for p, r in zip(predictions, references, strict=True)]
        result = {"accuracy": sum(correct) / len(correct)}
        if is_base is None:
            return result
        if len(is_base) != len(correct):
            raise ValueError(f"{len(is_base)} is_base flags for {len(correct)} predictions: give one per prediction.")
        base = [c for c, flag in zip(correct, is_base, strict=True) if flag]
        new = [c for c, flag in zip(correct, is_base, strict=True) if not flag]
        if not base or not new:
            raise ValueError("is_base marks no base or no new image: base-to-new accuracy needs images of both.")
        base_accuracy, new_accuracy = sum(base) / len(base), sum(new) / len(new)
        total = base_accuracy + new_accuracy
        # Both zero: the harmonic mean's limit, 0, rather than a division by zero.
        harmonic_mean = 0.0 if total == 0 else 2 * base_accuracy * new_accuracy / total
        return {**result, "base_accuracy": base_accuracy, "new_accuracy": new_accuracy, "harmonic_mean": harmonic_mean}
