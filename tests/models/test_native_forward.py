"""The native LLaDA / Dream networks against golden logits of each family's public modelling code
(``scripts/make_dllm_goldens.py``), and the network interface the engine drives: padded batches,
the block KV cache, sharded checkpoints."""

from __future__ import annotations

import pytest
import torch

from dfast_serve.models.native import load_native_diffusion
from tests.models.checkpoints import FAMILIES, MASK_ID, golden, make_checkpoint


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_logits_are_far_from_ties(family):
    """Identity tests below compare argmaxes: the goldens' top-2 gaps must dwarf float32 noise."""
    top2 = golden(family)["logits"].topk(2, dim=-1).values
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_native_forward_equals_the_public_code(native, family):
    data = golden(family)
    with torch.no_grad():
        logits = native[family].network(data["input_ids"])
    assert logits.shape == data["logits"].shape
    torch.testing.assert_close(logits, data["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_checkpoint_loads_the_same_weights(tmp_path, family):
    model = load_native_diffusion(str(make_checkpoint(family, tmp_path, shards=3)), family, "sharded")
    data = golden(family)
    with torch.no_grad():
        torch.testing.assert_close(model.network(data["input_ids"]), data["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_rows_equal_each_row_alone(native, family):
    """Canvases of different lengths share a pass (left padding, per-row positions) unchanged."""
    net = native[family].network
    ids = golden(family)["input_ids"][0]
    rows = [ids, ids[7:], ids[:20]]
    width = max(len(r) for r in rows)
    batch = torch.full((len(rows), width), MASK_ID)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, width - len(r):], mask[i, width - len(r):] = r, 1
        positions[i, width - len(r):] = torch.arange(len(r))
    with torch.no_grad():
        together = net(batch, attention_mask=mask, position_ids=positions)
        for i, r in enumerate(rows):
            torch.testing.assert_close(together[i, width - len(r):], net(r[None])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fresh_cache_reproduces_the_full_pass(native, family):
    """Keys/values cached from this very canvas (GQA heads for Dream): a slice attending to them
    gets the full pass's logits, for the prefix cache (slice to the end) and the dual cache."""
    net = native[family].network
    canvas = golden(family)["input_ids"]
    s, e, n = 16, 24, canvas.shape[1]
    with torch.no_grad():
        full, kv = net(canvas, return_kv=True)
        assert kv[0][0].shape[1] == net.config.num_kv_heads
        prefix = [(k[:, :, :s], v[:, :, :s]) for k, v in kv]
        logits, own = net(canvas[:, s:], position_ids=torch.arange(s, n)[None], past_kv=prefix, return_kv=True)
        torch.testing.assert_close(logits, full[:, s:], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(own[1][0], kv[1][0][:, :, s:], atol=1e-4, rtol=1e-4)
        outside = [(torch.cat([k[:, :, :s], k[:, :, e:]], 2), torch.cat([v[:, :, :s], v[:, :, e:]], 2)) for k, v in kv]
        logits = net(canvas[:, s:e], position_ids=torch.arange(s, e)[None], past_kv=outside)
        torch.testing.assert_close(logits, full[:, s:e], atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="position_ids"):
            net(canvas[:, s:e], past_kv=outside)


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_logits_equal_the_last_positions_of_the_full_pass(native, family):
    """The engine asks only for the answer positions' logits (``keep``); the network skips the rest,
    and Dream's realignment still scores the first kept position from the one before it."""
    model = native[family]
    ids = golden(family)["input_ids"]
    positions = torch.arange(ids.shape[1])[None]
    full = model.logits(ids)
    kept = model.logits(ids, keep=10)
    assert kept.shape[1] == 10
    torch.testing.assert_close(kept, full[:, -10:], atol=1e-5, rtol=1e-5)
    kept_kv, kv = model.logits_and_kv(ids, positions, keep=10)
    torch.testing.assert_close(kept_kv, full[:, -10:], atol=1e-5, rtol=1e-5)
    assert kv[0][0].shape[2] == ids.shape[1]  # keys/values of every position all the same
