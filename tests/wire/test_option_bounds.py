"""Every bound of the diffusion options (``DiffusionOptions``, ``UltraFastConfig``): the bound itself
is accepted, one step past it is refused, and the refusal names the field."""

import pytest
from pydantic import ValidationError

from dfast_serve.wire import DiffusionOptions, UltraFastConfig

# field: (lowest accepted, highest accepted, a value under the lowest, a value over the highest)
ULTRA_FAST = {
    "first_token_steps": (1, 64, 0, 65),
    "first_token_confidence_threshold": (0.0, 1.0, -0.01, 1.01),
    "stream_confidence_threshold": (0.0, 1.0, -0.01, 1.01),
    "stream_every_n_tokens": (0, 4096, -1, 4097),
    "steps_per_block": (1, 4096, 0, 4097),
    "min_steps": (1, 1, 0, None),  # its upper bound is max_steps (below)
    "max_steps": (8, 4096, None, 4097),  # at least min_steps (8 by default)
    "early_stop_confidence": (0.0, 1.0, -0.01, 1.01),
    "early_stop_min_progress": (0.0, 1.0, -0.01, 1.01),
    "hold_steps": (1, 4096, 0, 4097),
}
DIFFUSION = {
    "steps": (1, 4096, 0, 4097),
    "block_length": (1, 4096, 0, 4097),
    "threshold": (0.0, 1.0, -0.01, 1.01),
}


def refused_field(model, **values) -> str:
    with pytest.raises(ValidationError) as info:
        model(**values)
    (error,) = info.value.errors()
    return ".".join(str(part) for part in error["loc"])


@pytest.mark.parametrize("field", sorted(ULTRA_FAST))
def test_ultra_fast_bounds(field):
    low, high, under, over = ULTRA_FAST[field]
    assert getattr(UltraFastConfig(**{field: low}), field) == low
    assert getattr(UltraFastConfig(**{field: high}), field) == high
    if under is not None:
        assert refused_field(UltraFastConfig, **{field: under}) == field
    if over is not None:
        assert refused_field(UltraFastConfig, **{field: over}) == field


@pytest.mark.parametrize("field", sorted(DIFFUSION))
def test_diffusion_option_bounds(field):
    low, high, under, over = DIFFUSION[field]
    assert getattr(DiffusionOptions(**{field: low}), field) == low
    assert getattr(DiffusionOptions(**{field: high}), field) == high
    assert refused_field(DiffusionOptions, **{field: under}) == field
    assert refused_field(DiffusionOptions, **{field: over}) == field


def test_nested_ultra_fast_bounds_name_the_nested_field():
    assert refused_field(DiffusionOptions, ultra_fast_config={"early_stop_min_progress": 1.5}) == \
        "ultra_fast_config.early_stop_min_progress"


def test_min_steps_may_equal_max_steps_but_not_exceed_it():
    assert UltraFastConfig(min_steps=12, max_steps=12).min_steps == 12
    with pytest.raises(ValidationError, match=r"min_steps \(13\) must not exceed max_steps \(12\)"):
        UltraFastConfig(min_steps=13, max_steps=12)


def test_threshold_decoding_cannot_remask_at_random():
    assert DiffusionOptions(decoding="threshold", remasking="low_confidence").decoding == "threshold"
    assert DiffusionOptions(decoding="schedule", remasking="random").remasking == "random"
    with pytest.raises(ValidationError, match="cannot be combined with remasking 'random'"):
        DiffusionOptions(decoding="threshold", remasking="random")


def test_unknown_options_are_refused_naming_them():
    assert refused_field(DiffusionOptions, block_lenght=8) == "block_lenght"
    assert refused_field(UltraFastConfig, min_step=2) == "min_step"
