import logging
import math
import os

import pytest
import torch
from conftest import PAD, image_batch, text_batch, tiny_clip

from peft_skip.towers import get_towers
from peft_skip.training.cache import ImageCache, TextCache, build_text_cache, human_bytes
from peft_skip.training.loss import drop_tokens

NUM_IMAGES = 7
IMAGES = image_batch(NUM_IMAGES)


class Images:
    """`images(view, index_batch)` for the cache: view `v` shifts the pixels by `v`; counts the calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, view: int, index_batch: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted build")
        self.calls += 1
        return IMAGES[index_batch] + view


def build(model, **kwargs):
    kwargs = {"num_images": NUM_IMAGES, "skip_layers": 2, "batch_size": 3, **kwargs}
    return ImageCache.build(get_towers(model).vision, kwargs.pop("images", Images()), **kwargs)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("skip_layers", [0, 2, 4])
def test_image_forward_from_cache_equals_full_forward(attn_implementation, skip_layers, device):
    model = tiny_clip(attn_implementation=attn_implementation).to(device)
    vision = get_towers(model).vision
    cache = build(model, skip_layers=skip_layers, views=2)
    assert cache.shape == (2, NUM_IMAGES, 17, 32) and len(cache) == NUM_IMAGES
    indices = torch.tensor([5, 0, 3])
    with torch.no_grad():
        for view in range(2):
            hidden = vision.run_layers(cache.get(indices, view).to(device), skip_layers, vision.num_layers)
            pixels = (IMAGES[indices] + view).to(device)
            expected = model.get_image_features(pixel_values=pixels).pooler_output
            torch.testing.assert_close(vision.pool(hidden), expected)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("skip_layers", [0, 2, 4])
def test_text_forward_from_trimmed_cache_equals_full_forward(attn_implementation, skip_layers, device):
    model = tiny_clip(attn_implementation=attn_implementation).to(device)
    text = get_towers(model).text
    batch = text_batch(num=6, length=10, seed=3)
    # Extra padding up to the longest position the model supports: the cache trims it.
    input_ids = torch.cat([batch["input_ids"], torch.full((6, 6), PAD)], dim=1).to(device)
    attention_mask = torch.cat([batch["attention_mask"], torch.zeros(6, 6, dtype=torch.long)], dim=1).to(device)
    cache = build_text_cache(text, input_ids, attention_mask, skip_layers)
    longest = int(batch["attention_mask"].sum(dim=1).max())
    assert cache.hidden.shape == (6, longest, 32) and len(cache) == 6
    assert cache.input_ids.shape == cache.attention_mask.shape == (6, longest)
    assert cache.hidden.device.type == cache.input_ids.device.type == device.type
    assert not cache.hidden.requires_grad
    with torch.no_grad():
        expected = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        hidden = text.run_layers(cache.hidden, skip_layers, text.num_layers, attention_mask=cache.attention_mask)
        torch.testing.assert_close(text.pool(hidden, cache.input_ids), expected)
        classes = torch.tensor([1, 4], device=device)
        part = cache.subset(classes)
        hidden = text.run_layers(part.hidden, skip_layers, text.num_layers, attention_mask=part.attention_mask)
        torch.testing.assert_close(text.pool(hidden, part.input_ids), expected[classes])


def test_text_cache_dtype_and_bad_input():
    text = get_towers(tiny_clip()).text
    batch = text_batch()
    cache = build_text_cache(text, batch["input_ids"], batch["attention_mask"], 2, dtype=torch.bfloat16)
    assert cache.hidden.dtype == torch.bfloat16
    assert isinstance(cache.to("cpu"), TextCache)
    with pytest.raises(ValueError, match="skip_layers"):
        build_text_cache(text, batch["input_ids"], batch["attention_mask"], 5)
    with pytest.raises(ValueError, match="shape"):
        build_text_cache(text, batch["input_ids"], batch["attention_mask"][:, :3], 2)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("on_disk", [False, True])
def test_storage_dtype_round_trip(tmp_path, dtype, atol, on_disk):
    model = tiny_clip()
    reference = build(model).get(torch.arange(NUM_IMAGES), 0)
    cache = build(model, dtype=dtype, cache_dir=tmp_path if on_disk else None)
    assert cache.dtype == dtype and cache.nbytes == reference.numel() * 2
    states = cache.get(torch.arange(NUM_IMAGES), 0)
    assert states.dtype == torch.float32
    torch.testing.assert_close(states, reference, atol=atol, rtol=1e-2)
    assert not torch.equal(states, reference)
    assert cache.get(torch.tensor([2]), 0, dtype=dtype).dtype == dtype


def test_cache_moved_to_the_device_reads_the_same_states_there(tmp_path, device):
    cache = build(tiny_clip(), dtype=torch.float16, views=2)
    moved = cache.to(device)
    indices = torch.tensor([6, 1])
    states = moved.get(indices, torch.tensor([1, 0]))
    assert states.device.type == device.type and moved.shape == cache.shape and moved.nbytes == cache.nbytes
    assert torch.equal(states.cpu(), cache.get(indices, torch.tensor([1, 0])))
    with pytest.raises(ValueError, match="memory-mapped on disk; build it without cache_dir"):
        build(tiny_clip(), cache_dir=tmp_path).to(device)


def test_disk_cache_reopens_without_recomputation(tmp_path, caplog):
    model = tiny_clip()
    in_memory = build(model, views=2)
    on_disk = build(model, views=2, cache_dir=tmp_path, fingerprint={"data": "seven images"})
    assert (tmp_path / "all" / "states.npy").exists() and on_disk.path == tmp_path / "all"
    images = Images()
    with caplog.at_level(logging.INFO, logger="peft_skip.training.cache"):
        reopened = build(model, views=2, cache_dir=tmp_path, fingerprint={"data": "seven images"}, images=images)
    assert images.calls == 0
    assert "Reusing" in caplog.text
    indices, views = torch.tensor([6, 1, 1, 4]), torch.tensor([1, 0, 1, 0])
    torch.testing.assert_close(reopened.get(indices, views), in_memory.get(indices, views), atol=0, rtol=0)
    torch.testing.assert_close(on_disk.get(indices, 1), in_memory.get(indices, 1), atol=0, rtol=0)


def test_size_is_logged_before_building(caplog):
    with caplog.at_level(logging.INFO, logger="peft_skip.training.cache"):
        with pytest.raises(KeyboardInterrupt):
            build(tiny_clip(), views=3, images=Images(fail_after=1))
    # 3 views x 7 images x 17 tokens x 32 x 4 bytes, logged after the first batch and before the rest.
    assert "3 view(s) x 7 images x 17 tokens x 32" in caplog.text
    assert human_bytes(3 * 7 * 17 * 32 * 4) in caplog.text
    assert human_bytes(1536) == "1.5 KB" and human_bytes(3 * 2**30) == "3.0 GB" and human_bytes(12) == "12 B"


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"fingerprint": {"data": "other images"}}, "(data differ)"),
        ({"skip_layers": 3}, "(skip_layers, weights differ)"),  # layer 2 joins the weights read
        ({"views": 1}, "(views differ)"),
        ({"dtype": torch.float16}, "(dtype differ)"),
        ({"model": tiny_clip(seed=1)}, "(weights differ)"),
    ],
)
def test_fingerprint_mismatch_rebuilds(tmp_path, caplog, change, reason):
    base = {"model": tiny_clip(), "views": 2, "fingerprint": {"data": "seven images"}, "cache_dir": tmp_path}
    build(**base)
    images = Images()
    arguments = {**base, **change}
    with caplog.at_level(logging.INFO, logger="peft_skip.training.cache"):
        rebuilt = build(images=images, **arguments)
    assert images.calls > 0
    assert reason in caplog.text
    expected = build(**{**arguments, "cache_dir": None}).get(torch.arange(NUM_IMAGES), 0)
    torch.testing.assert_close(rebuilt.get(torch.arange(NUM_IMAGES), 0), expected, atol=0, rtol=0)


def test_the_key_holds_the_weights_the_states_depend_on_and_no_other(tmp_path):
    """A change to a shallow vision weight rebuilds the cache; the deep layers and the text tower do not count."""
    model = tiny_clip()
    build(model, cache_dir=tmp_path)
    with torch.no_grad():
        model.vision_model.encoder.layers[3].mlp.fc2.weight.mul_(-1)  # deep (skip_layers=2)
        model.text_model.encoder.layers[0].mlp.fc2.weight.mul_(-1)
    images = Images()
    build(model, cache_dir=tmp_path, images=images)
    assert images.calls == 0
    with torch.no_grad():
        model.vision_model.encoder.layers[1].mlp.fc2.weight.mul_(-1)
    build(model, cache_dir=tmp_path, images=images)
    assert images.calls > 0


def test_interrupted_build_is_rebuilt(tmp_path, caplog):
    model = tiny_clip()
    with pytest.raises(KeyboardInterrupt):
        build(model, cache_dir=tmp_path, images=Images(fail_after=2))
    assert (tmp_path / "all" / "states.npy").exists() and not (tmp_path / "all" / "complete").exists()
    images = Images()
    with caplog.at_level(logging.INFO, logger="peft_skip.training.cache"):
        cache = build(model, cache_dir=tmp_path, images=images)
    assert images.calls == 3 and "incomplete" in caplog.text
    torch.testing.assert_close(cache.get(torch.arange(NUM_IMAGES), 0), build(model).get(torch.arange(NUM_IMAGES), 0))


def test_a_folder_the_cache_did_not_write_is_never_deleted(tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="is not an image cache peft-skip wrote"):
        build(tiny_clip(), cache_dir=tmp_path)
    assert (tmp_path / "all" / "photo.jpg").read_bytes() == b"mine"


def test_a_full_disk_while_the_cache_is_built_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    def disk_full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", disk_full)
    with pytest.raises(OSError, match="Not enough disk space for the image cache .* needed: No space left"):
        build(tiny_clip(), cache_dir=tmp_path)
    assert not (tmp_path / "all").exists()  # nothing half-written left to map


def test_missing_completeness_marker_rebuilds(tmp_path, caplog):
    model = tiny_clip()
    build(model, cache_dir=tmp_path)
    (tmp_path / "all" / "complete").unlink()
    images = Images()
    with caplog.at_level(logging.INFO, logger="peft_skip.training.cache"):
        build(model, cache_dir=tmp_path, images=images)
    assert images.calls == 3 and "incomplete" in caplog.text
    assert (tmp_path / "all" / "complete").exists()


@pytest.mark.parametrize("on_disk", [False, True])
def test_shards(tmp_path, on_disk):
    model = tiny_clip()
    full = build(model, views=2)
    cache_dir = tmp_path if on_disk else None
    shards = [build(model, views=2, indices=range(rank, NUM_IMAGES, 2), cache_dir=cache_dir) for rank in range(2)]
    assert [len(shard) for shard in shards] == [4, 3]
    assert shards[1].indices.tolist() == [1, 3, 5]
    if on_disk:
        assert len({shard.path for shard in shards}) == 2 and all(shard.path.parent == tmp_path for shard in shards)
    for shard in shards:
        indices = shard.indices.flip(0)
        # Other batches than the full build's: equal up to float reassociation.
        torch.testing.assert_close(shard.get(indices, 1), full.get(indices, 1))
    with pytest.raises(IndexError, match="not in this cache"):
        shards[0].get(torch.tensor([0, 1]), 0)
    with pytest.raises(IndexError, match="view"):
        shards[0].get(torch.tensor([0]), 2)
    with pytest.raises(IndexError, match="image indices"):
        full.get(torch.tensor([NUM_IMAGES]), 0)


def test_build_rejects_bad_input():
    model = tiny_clip()
    with pytest.raises(ValueError, match="skip_layers"):
        build(model, skip_layers=5)
    with pytest.raises(ValueError, match="dtype"):
        build(model, dtype=torch.int8)
    with pytest.raises(ValueError, match="indices"):
        build(model, indices=[0, NUM_IMAGES])


@pytest.mark.parametrize("class_tokens", [1, 0, 2])
def test_drop_tokens_per_image(class_tokens):
    hidden = torch.arange(2 * 50 * 3, dtype=torch.float32).reshape(2, 50, 3)
    assert drop_tokens(hidden, 0.0, class_tokens=class_tokens) is hidden
    generator = torch.Generator().manual_seed(0)
    others = 50 - class_tokens
    counts, first_kept = set(), set()
    for _ in range(20):
        dropped = drop_tokens(hidden, 0.5, generator=generator, class_tokens=class_tokens, mode="per_image")
        kept = dropped.shape[1] - class_tokens
        counts.add(kept)
        assert others - int(0.5 * others) <= kept <= others
        torch.testing.assert_close(dropped[:, :class_tokens], hidden[:, :class_tokens])
        for b in range(2):
            positions = ((dropped[b, :, 0] - hidden[b, 0, 0]) / 3).long()  # token index of each kept row
            assert torch.all(positions[1:] > positions[:-1])  # unique, in order
            torch.testing.assert_close(dropped[b], hidden[b, positions])
            first_kept.add(int(positions[0]))
    assert len(counts) > 5  # the ratio is random
    # Only class tokens are always kept: without one, the first token is dropped like any other.
    assert first_kept == {0} if class_tokens else len(first_kept) > 1
    with pytest.raises(ValueError, match="max_ratio"):
        drop_tokens(hidden, 1.0)


def test_drop_tokens_reference_mode():
    """The authors' token drop: ceil(r * T) of all T tokens, the same ones for every image, the class token too."""
    hidden = torch.arange(2 * 50 * 3, dtype=torch.float32).reshape(2, 50, 3)
    generator = torch.Generator().manual_seed(0)
    counts, class_token_dropped = set(), False
    for _ in range(40):
        draws = generator.get_state()
        dropped = drop_tokens(hidden, 0.5, generator=generator, class_tokens=1)
        ratio = float(torch.rand((), generator=torch.Generator().set_state(draws))) * 0.5
        assert dropped.shape[1] == 50 - math.ceil(50 * ratio)  # rounded up, the class token counted
        positions = ((dropped[:, :, 0] - hidden[:, :1, 0]) / 3).long()
        assert torch.equal(positions[0], positions[1])  # the same tokens for the whole batch
        assert torch.all(positions[0, 1:] > positions[0, :-1])
        counts.add(dropped.shape[1])
        class_token_dropped |= int(positions[0, 0]) != 0
    assert len(counts) > 5 and class_token_dropped
    with pytest.raises(ValueError, match="mode"):
        drop_tokens(hidden, 0.5, mode="per_batch")
