import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_skip.training.classes import ClassSelector, keep_count, rank_keep_probabilities


def normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize(
    "num_classes, ratio, max_classes, expected",
    [
        (10, 0.5, 50, 5),
        (11, 0.5, 50, 6),  # ceil
        (30, 0.1, 50, 3),
        (100, 0.07, 50, 7),  # 0.07 * 100 is 7.000000000000001 in floats: ceil alone gives 8
        (25, 0.56, 50, 14),  # 14.000000000000002
        (200, 0.5, 50, 50),  # max_classes caps
        (10, 3, 50, 3),  # a count above 1
        (10, 3.7, 50, 3),
        (10, 25, 50, 10),  # a count above C
        (100, 80, 50, 50),
        (200, 1, 50, 200),  # ratio 1 keeps everything, max_classes does not apply
        (200, 1.0, 50, 200),
    ],
)
def test_keep_count(num_classes, ratio, max_classes, expected):
    assert keep_count(num_classes, ratio, max_classes) == expected


@pytest.mark.parametrize("args", [(0, 0.5, 5), (10, 0, 5), (10, -1, 5), (10, 0.5, 0)])
def test_keep_count_rejects_bad_input(args):
    with pytest.raises(ValueError):
        keep_count(*args)


def test_rank_keep_probabilities():
    p = rank_keep_probabilities(20, 0.3)
    assert p.shape == (20,)
    assert p[0] == 1 and p[-1] == 0
    assert torch.all(p[1:] < p[:-1])
    x = torch.linspace(0, 5, 20, dtype=torch.float64)
    # Min-max normalised exp(-x / 0.3): p = (e^{-x/λ} - e^{-5/λ}) / (1 - e^{-5/λ}).
    expected = (torch.exp(-x / 0.3) - math.exp(-5 / 0.3)) / (1 - math.exp(-5 / 0.3))
    torch.testing.assert_close(p, expected)
    # A larger scale decays more slowly.
    assert torch.all(rank_keep_probabilities(20, 1.0)[1:-1] > p[1:-1])
    assert rank_keep_probabilities(0, 0.3).shape == (0,)
    # One rank after the top K: the reference normalises 0/0 and never keeps it.
    assert rank_keep_probabilities(1, 0.3).tolist() == [0.0]
    with pytest.raises(ValueError):
        rank_keep_probabilities(5, 0.0)


def ranked_batch(num_classes: int, order: list[int], labels: list[int]):
    """A batch whose class scores rank the classes in `order` (labels aside)."""
    prototypes = torch.eye(num_classes)
    weights = torch.zeros(num_classes)
    weights[torch.tensor(order)] = torch.linspace(1.0, 0.1, len(order))
    image_features = normalised(weights.expand(len(labels), -1).clone())
    return image_features, prototypes, torch.tensor(labels)


def test_select_keeps_ground_truth_and_top_k():
    torch.manual_seed(0)
    num_classes = 12
    order = torch.randperm(num_classes).tolist()
    labels = [order[-1], order[-2]]  # the least similar classes
    selector = ClassSelector(num_classes, class_ratio=4, max_classes=50, class_decay=0.3)
    selector.rank_mask[4:] = False  # no random extras: exactly the top 4 ranks
    classes, remapped = selector.select(*ranked_batch(num_classes, order, labels))
    # Ground truth ranks first, then the most similar classes fill the top K.
    assert set(classes.tolist()) == set(labels) | set(order[:2])
    assert classes.tolist() == sorted(classes.tolist())
    assert classes[remapped].tolist() == labels


def test_select_ranks_by_max_over_batch():
    num_classes = 6
    prototypes = torch.eye(num_classes)
    # Image 0 likes class 1, image 1 likes class 4; class 2 is second-best for both but best for neither.
    image_features = normalised(torch.tensor([[0, 0.9, 0.5, 0, 0, 0], [0, 0, 0.5, 0, 0.9, 0.0]]))
    labels = torch.tensor([0, 0])
    selector = ClassSelector(num_classes, class_ratio=3, max_classes=50, class_decay=0.3)
    selector.rank_mask[3:] = False
    classes, remapped = selector.select(image_features, prototypes, labels)
    assert classes.tolist() == [0, 1, 4]
    assert remapped.tolist() == [0, 0]


def test_select_extra_ranks_follow_mask():
    num_classes = 8
    order = [5, 2, 7, 0, 1, 6, 3, 4]
    selector = ClassSelector(num_classes, class_ratio=2, max_classes=50, class_decay=0.3)
    selector.rank_mask[2:] = torch.tensor([False, True, False, False, True, False])
    classes, remapped = selector.select(*ranked_batch(num_classes, order, [5]))
    assert classes.tolist() == sorted([5, 2, 0, 3])
    assert remapped.tolist() == [classes.tolist().index(5)]


def test_select_keeps_all():
    for ratio, max_classes in [(1, 3), (10, 50), (0.99, 50)]:
        selector = ClassSelector(10, class_ratio=ratio, max_classes=max_classes, class_decay=0.3)
        assert selector.keeps_all
        image_features, prototypes, labels = ranked_batch(10, list(range(10)), [3, 9, 3])
        classes, remapped = selector.select(image_features, prototypes, labels)
        assert classes.tolist() == list(range(10))
        assert remapped is labels
    assert not ClassSelector(10, 0.5, 50, 0.3).keeps_all


def test_select_has_no_grad():
    image_features = normalised(torch.randn(3, 4)).requires_grad_()
    selector = ClassSelector(10, 0.3, 50, 0.3, generator=torch.Generator().manual_seed(0))
    classes, remapped = selector.select(image_features, normalised(torch.randn(10, 4)), torch.tensor([1, 2, 3]))
    assert not classes.requires_grad and not remapped.requires_grad


def test_select_rejects_bad_input():
    selector = ClassSelector(10, 0.5, 50, 0.3)
    features, prototypes = normalised(torch.randn(2, 4)), normalised(torch.randn(10, 4))
    with pytest.raises(ValueError, match="labels must lie"):
        selector.select(features, prototypes, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="selector was built for"):
        selector.select(features, prototypes[:9], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same dim"):
        selector.select(features, prototypes[:, :3], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        selector.select(features, prototypes, torch.tensor([0]))


def test_kept_rank_frequencies_match_probabilities():
    num_classes, num_top, seeds = 16, 4, 1000
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(1)).tolist()
    batch = ranked_batch(num_classes, order, [order[0]])
    rank_of = {c: r for r, c in enumerate(order)}
    counts = torch.zeros(num_classes)
    for seed in range(seeds):
        selector = ClassSelector(num_classes, num_top, 50, 0.3, generator=torch.Generator().manual_seed(seed))
        classes, _ = selector.select(*batch)
        for c in classes.tolist():
            counts[rank_of[c]] += 1
    frequencies = counts / seeds
    expected = torch.cat([torch.ones(num_top), rank_keep_probabilities(num_classes - num_top, 0.3).float()])
    # 1000 Bernoulli draws (fixed seeds): standard error at most 0.016.
    torch.testing.assert_close(frequencies, expected, atol=0.06, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(1, 30),
    batch=st.integers(1, 8),
    ratio=st.one_of(st.floats(0.01, 1.0), st.integers(2, 40).map(float)),
    max_classes=st.integers(1, 40),
    decay=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_invariants(num_classes, batch, ratio, max_classes, decay, seed):
    generator = torch.Generator().manual_seed(seed)
    image_features = normalised(torch.randn(batch, 8, generator=generator))
    prototypes = normalised(torch.randn(num_classes, 8, generator=generator))
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    selector = ClassSelector(num_classes, ratio, max_classes, decay, generator=generator)
    classes, remapped = selector.select(image_features, prototypes, labels)
    kept = classes.tolist()
    assert set(labels.tolist()) <= set(kept)
    assert len(kept) >= keep_count(num_classes, ratio, max_classes)
    assert kept == sorted(set(kept))
    assert 0 <= min(kept) and max(kept) < num_classes
    assert torch.equal(classes[remapped], labels)
