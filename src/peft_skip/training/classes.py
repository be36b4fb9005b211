"""CSkip: the classes the text tower runs for in one training step.

Every class of the batch is kept, plus the classes whose zero-shot prototypes are most similar to the batch's images:
the top `K` ranks always, and the ranks after them with a probability that decays exponentially with the rank.
"""

from __future__ import annotations

import math

import torch


def keep_count(num_classes: int, class_ratio: float, max_classes: int) -> int:
    """Number `K` of top-ranked classes that are always kept.

    `K = ceil(class_ratio * C)` for `class_ratio <= 1` and `min(int(class_ratio), C)` above 1, then at most
    `max_classes`. `class_ratio == 1` keeps all `C` classes, whatever `max_classes` says.

    Args:
        num_classes (`int`): Number of classes `C`.
        class_ratio (`float`): Fraction of the classes (`<= 1`) or number of classes (`> 1`) to keep.
        max_classes (`int`): Upper bound on `K` (unless `class_ratio == 1`).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    if class_ratio <= 0:
        raise ValueError(f"class_ratio must be positive (a fraction <= 1 or a count > 1), got {class_ratio}.")
    if max_classes < 1:
        raise ValueError(f"max_classes must be at least 1, got {max_classes}.")
    if class_ratio == 1:
        return num_classes
    if class_ratio < 1:
        # Rounding first keeps float noise (0.07 * 100 = 7.000000000000001) from adding a class.
        count = math.ceil(round(class_ratio * num_classes, 9))
    else:
        count = min(int(class_ratio), num_classes)
    return min(count, max_classes)


def rank_keep_probabilities(num_ranks: int, class_decay: float) -> torch.Tensor:
    """Probability of keeping each rank after the top `K`, shape `(num_ranks,)`.

    The exponential pdf with scale `class_decay` over `linspace(0, 5, num_ranks)`, min-max normalised: the first rank
    is kept with probability 1, the last with probability 0. A single rank is never kept, as in the reference, whose
    normalisation is then 0/0 (NaN, and a comparison with NaN never keeps).

    Args:
        num_ranks (`int`): Number of ranks after the top `K`, i.e. `C - K`.
        class_decay (`float`): Scale of the exponential (reference `LAMBDA`); smaller keeps fewer classes.
    """
    if num_ranks < 0:
        raise ValueError(f"num_ranks must be non-negative, got {num_ranks}.")
    if class_decay <= 0:
        raise ValueError(f"class_decay must be positive, got {class_decay}.")
    if num_ranks <= 1:
        return torch.zeros(num_ranks, dtype=torch.float64)
    x = torch.linspace(0, 5, num_ranks, dtype=torch.float64)
    pdf = torch.exp(-x / class_decay) / class_decay
    return (pdf - pdf.min()) / (pdf.max() - pdf.min())


class ClassSelector:
    """Selects the classes of one training step (CSkip).

    The keep-mask over the ranks after the top `K` is drawn once, here, as the reference does; the kept classes still
    change from batch to batch because the ranking does.

    Args:
        num_classes (`int`): Number of classes `C`.
        class_ratio (`float`): See [`keep_count`].
        max_classes (`int`): See [`keep_count`].
        class_decay (`float`): See [`rank_keep_probabilities`].
        generator (`torch.Generator`, *optional*): Source of randomness for the keep-mask.

    Attributes:
        num_top (`int`): `K`, the number of top ranks always kept.
        keeps_all (`bool`): Whether every class is kept (then [`select`] does no work).
        rank_mask (`torch.Tensor`): Whether each rank is kept, shape `(C,)`, `True` for the first `K`.
    """

    def __init__(
        self,
        num_classes: int,
        class_ratio: float,
        max_classes: int,
        class_decay: float,
        generator: torch.Generator | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.num_top = keep_count(num_classes, class_ratio, max_classes)
        self.keeps_all = class_ratio == 1 or self.num_top == num_classes
        probabilities = rank_keep_probabilities(num_classes - self.num_top, class_decay)
        # rand is in [0, 1): probability 1 always keeps, probability 0 never does.
        rest = torch.rand(probabilities.shape, generator=generator, dtype=torch.float64) < probabilities
        self.rank_mask = torch.cat([torch.ones(self.num_top, dtype=torch.bool), rest])

    @torch.no_grad()
    def select(
        self, image_features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept classes of a batch and its labels remapped to them.

        Args:
            image_features (`torch.Tensor`): Normalised image features, shape `(batch, dim)`.
            prototypes (`torch.Tensor`): Normalised zero-shot text features of all classes, shape `(C, dim)`.
            labels (`torch.Tensor`): Class of each image, shape `(batch,)`.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: The kept class indices in ascending order, shape `(K',)`, and the
            labels as positions in them, shape `(batch,)`. Every class of the batch is kept, even when the batch has
            more distinct classes than `K`.
        """
        if image_features.ndim != 2 or prototypes.ndim != 2 or image_features.shape[1] != prototypes.shape[1]:
            raise ValueError(
                f"Expected image_features (batch, dim) and prototypes (C, dim) with the same dim, got shapes "
                f"{tuple(image_features.shape)} and {tuple(prototypes.shape)}."
            )
        if prototypes.shape[0] != self.num_classes:
            raise ValueError(
                f"prototypes has {prototypes.shape[0]} classes but the selector was built for {self.num_classes}."
            )
        if labels.shape != image_features.shape[:1]:
            raise ValueError(
                f"labels must have shape (batch,) = ({image_features.shape[0]},), got {tuple(labels.shape)}."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got values outside it.")
        device = image_features.device
        if self.keeps_all:
            return torch.arange(self.num_classes, device=device), labels
        similarity = image_features.detach().float() @ prototypes.detach().float().to(device).T
        similarity[torch.arange(labels.shape[0], device=device), labels] = torch.inf
        scores = similarity.max(dim=0).values
        ranking = torch.argsort(scores, descending=True, stable=True)
        keep = self.rank_mask.to(device)[torch.argsort(ranking)]  # keep-mask indexed by class
        keep[labels] = True
        classes = torch.nonzero(keep).squeeze(1)
        return classes, torch.searchsorted(classes, labels.long())
