import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import PeftConfig
from peft.utils import PeftType

import peft_skip  # noqa: F401
from peft_skip import SkipConfig


def test_defaults_are_the_papers():
    config = SkipConfig()
    assert config.peft_type == PeftType.SKIP
    assert (config.skip_layers, config.class_ratio, config.max_classes, config.class_decay, config.token_drop) == (
        6,
        0.5,
        50,
        0.3,
        0.0,
    )
    assert config.init_weights is True


def test_every_field_has_help():
    own = {f.name for f in dataclasses.fields(SkipConfig)} - {f.name for f in dataclasses.fields(PeftConfig)}
    assert own >= {"skip_layers", "vision_skip_layers", "text_skip_layers", "class_ratio", "max_classes"}
    for f in dataclasses.fields(SkipConfig):
        if f.name in own:
            assert f.metadata.get("help"), f.name


def test_tower_overrides():
    config = SkipConfig(skip_layers=4, text_skip_layers=2)
    assert config.tower_skip_layers("vision") == 4
    assert config.tower_skip_layers("text") == 2


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"skip_layers": -1}, "skip_layers"),
        ({"skip_layers": 1.5}, "skip_layers"),
        ({"skip_layers": True}, "skip_layers"),
        ({"vision_skip_layers": -2}, "vision_skip_layers"),
        ({"text_skip_layers": "3"}, "text_skip_layers"),
        ({"max_classes": 0}, "max_classes"),
        ({"class_ratio": 0}, "class_ratio"),
        ({"class_ratio": -0.5}, "class_ratio"),
        ({"class_ratio": 2.5}, "class_ratio"),
        ({"class_decay": 0}, "class_decay"),
        ({"class_decay": -1.0}, "class_decay"),
        ({"token_drop": 1.0}, "token_drop"),
        ({"token_drop": -0.1}, "token_drop"),
        ({"delta_dtype": "int8"}, "delta_dtype"),
    ],
)
def test_invalid_values_name_the_field_value_and_range(kwargs, field):
    with pytest.raises(ValueError) as error:
        SkipConfig(**kwargs)
    message = str(error.value)
    assert f"SkipConfig.{field}=" in message
    assert repr(next(iter(kwargs.values()))) in message
    assert "expected" in message


def test_class_ratio_accepts_fractions_and_counts():
    assert SkipConfig(class_ratio=1).class_ratio == 1
    assert SkipConfig(class_ratio=0.25).class_ratio == 0.25
    assert SkipConfig(class_ratio=20).class_ratio == 20


def test_skip_layers_beyond_depth_fail_when_wrapped(clip):
    from peft import get_peft_model

    with pytest.raises(ValueError, match=r"SkipConfig.vision_skip_layers=9 .*\[0, 4\]"):
        get_peft_model(clip, SkipConfig(skip_layers=2, vision_skip_layers=9))


def test_round_trip_through_json(tmp_path):
    config = SkipConfig(skip_layers=3, class_ratio=0.25, delta_dtype="bfloat16")
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SkipConfig)
    assert (loaded.skip_layers, loaded.class_ratio, loaded.delta_dtype) == (3, 0.25, "bfloat16")


_numbers = st.one_of(
    st.integers(-5, 200), st.floats(-2, 200), st.sampled_from([float("nan"), float("inf")]), st.booleans(), st.none()
)
_FIELDS = ("skip_layers", "vision_skip_layers", "text_skip_layers", "class_ratio", "max_classes", "class_decay")


def _valid(name, value):
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in ("vision_skip_layers", "text_skip_layers") and value is None:
        return True
    if name in ("skip_layers", "vision_skip_layers", "text_skip_layers"):
        return is_int and value >= 0
    if name == "max_classes":
        return is_int and value >= 1
    if name == "class_ratio":
        return is_number and (0 < value <= 1 or (value > 1 and value % 1 == 0 and value != float("inf")))
    return is_number and value > 0 and value == value  # class_decay


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(_FIELDS), value=_numbers)
def test_any_value_is_accepted_or_refused_by_name(name, value):
    if _valid(name, value):
        assert getattr(SkipConfig(**{name: value}), name) == value
    else:
        with pytest.raises(ValueError, match=f"SkipConfig.{name}="):
            SkipConfig(**{name: value})
