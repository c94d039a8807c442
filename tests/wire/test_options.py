"""The range of every numeric diffusion option (``wire/options.py``): both ends accepted, one step
beyond either refused naming the field, and no numeric field without an upper bound."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dfast_serve.wire.options import DiffusionOptions, UltraFastConfig

# field: (lowest, highest, step beyond either end)
ULTRA_FAST_RANGES = {
    "first_token_steps": (1, 64, 1),
    "first_token_confidence_threshold": (0.0, 1.0, 0.01),
    "stream_confidence_threshold": (0.0, 1.0, 0.01),
    "stream_every_n_tokens": (0, 4096, 1),
    "steps_per_block": (1, 4096, 1),
    "min_steps": (1, 4096, 1),
    "max_steps": (1, 4096, 1),
    "early_stop_confidence": (0.0, 1.0, 0.01),
    "early_stop_min_progress": (0.0, 1.0, 0.01),
    "hold_steps": (1, 4096, 1),
}
OPTION_RANGES = {
    "steps": (1, 4096, 1),
    "block_length": (1, 4096, 1),
    "threshold": (0.0, 1.0, 0.01),
}
# min_steps <= max_steps is checked too: each end of one is tried with the other out of the way
COMPANION = {"min_steps": {"max_steps": 4096}, "max_steps": {"min_steps": 1}}


def numeric_fields(model) -> set[str]:
    def numeric(annotation) -> bool:
        return annotation in (int, float) or set(getattr(annotation, "__args__", ())) & {int, float}

    return {name for name, info in model.model_fields.items() if numeric(info.annotation)}


def upper_bound(info):
    return next((getattr(m, "le", None) for m in info.metadata if getattr(m, "le", None) is not None), None)


def test_the_tables_cover_every_numeric_option_and_each_has_an_upper_bound():
    assert numeric_fields(UltraFastConfig) == set(ULTRA_FAST_RANGES)
    assert numeric_fields(DiffusionOptions) == set(OPTION_RANGES)
    for model, ranges in ((UltraFastConfig, ULTRA_FAST_RANGES), (DiffusionOptions, OPTION_RANGES)):
        for name, (_, highest, _) in ranges.items():
            assert upper_bound(model.model_fields[name]) == highest, name


@pytest.mark.parametrize("field", sorted(ULTRA_FAST_RANGES))
def test_ultra_fast_config_range(field):
    lowest, highest, step = ULTRA_FAST_RANGES[field]
    other = COMPANION.get(field, {})
    for ok in (lowest, highest):
        assert getattr(UltraFastConfig(**{field: ok, **other}), field) == ok
        assert getattr(DiffusionOptions(ultra_fast_config={field: ok, **other}).ultra_fast_config, field) == ok
    for bad in (lowest - step, highest + step):
        with pytest.raises(ValidationError) as refused:
            UltraFastConfig(**{field: bad, **other})
        assert [e["loc"] for e in refused.value.errors()] == [(field,)], bad
        with pytest.raises(ValidationError) as refused:
            DiffusionOptions(ultra_fast_config={field: bad, **other})
        assert [e["loc"] for e in refused.value.errors()] == [("ultra_fast_config", field)], bad


@pytest.mark.parametrize("field", sorted(OPTION_RANGES))
def test_diffusion_options_range(field):
    lowest, highest, step = OPTION_RANGES[field]
    for ok in (lowest, highest):
        assert getattr(DiffusionOptions(**{field: ok}), field) == ok
    for bad in (lowest - step, highest + step):
        with pytest.raises(ValidationError) as refused:
            DiffusionOptions(**{field: bad})
        assert [e["loc"] for e in refused.value.errors()] == [(field,)], bad


def test_min_steps_above_max_steps_is_refused_and_equal_is_accepted():
    assert UltraFastConfig(min_steps=12, max_steps=12).min_steps == 12
    with pytest.raises(ValidationError, match=r"min_steps \(13\) must not exceed max_steps \(12\)"):
        UltraFastConfig(min_steps=13, max_steps=12)
