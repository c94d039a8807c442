"""tiny-mdlm's shipped checkpoint on the shared bidirectional network: it loads key for key and
gives the logits it gave before the network was shared.

``data/tiny-mdlm/golden.safetensors`` was computed at commit d408c80 (tiny-mdlm's own transformer
block, before ``models/bidirectional.py`` served both): two rows of 24 ids (eight masked, the second
row left-padded by five), their logits over the first 256 ids, and over the whole vocabulary the
log-sum-exp and the argmax of every position.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dfast_serve.models import tiny_mdlm
from dfast_serve.models.embedded import TINY_MDLM_DIR, load_tiny_mdlm

GOLDEN = Path(__file__).parent / "data" / "tiny-mdlm" / "golden.safetensors"


@pytest.fixture(scope="module")
def network():
    return load_tiny_mdlm().network


def test_the_shipped_checkpoint_fills_every_parameter_and_nothing_else(network):
    shipped = load_file(str(TINY_MDLM_DIR / "model.safetensors"))
    assert set(tiny_mdlm.native_names(shipped)) == set(network.state_dict())


@pytest.mark.parametrize("edit", ["drop", "add"])
def test_a_key_missing_or_left_over_refuses_the_checkpoint(tmp_path, edit):
    from safetensors.torch import save_file

    shipped = load_file(str(TINY_MDLM_DIR / "model.safetensors"))
    if edit == "drop":
        del shipped["blocks.3.gate_up.weight"]
    else:
        shipped["blocks.3.extra.weight"] = shipped["norm.weight"].clone()
    save_file(shipped, str(tmp_path / tiny_mdlm.WEIGHTS_FILE))
    with pytest.raises(RuntimeError, match="Missing key" if edit == "drop" else "Unexpected key"):
        tiny_mdlm.load(tmp_path, tiny_mdlm.read_config(TINY_MDLM_DIR))


def test_save_writes_the_shipped_layout_back_tensor_for_tensor(network, tmp_path):
    tiny_mdlm.save(network, tiny_mdlm.read_config(TINY_MDLM_DIR), tmp_path)
    saved, shipped = load_file(str(tmp_path / "model.safetensors")), load_file(str(TINY_MDLM_DIR / "model.safetensors"))
    assert set(saved) == set(shipped)
    assert all(torch.equal(saved[key], shipped[key]) for key in shipped)
    assert (tmp_path / "config.json").read_text() == (TINY_MDLM_DIR / "config.json").read_text()


def test_logits_equal_the_ones_pinned_before_the_block_was_shared(network):
    data = load_file(str(GOLDEN))
    with torch.no_grad():
        logits = network(data["input_ids"], attention_mask=data["attention_mask"])
    torch.testing.assert_close(logits[..., :256], data["logits_head"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits.logsumexp(-1), data["logsumexp"], atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.argmax(-1), data["argmax"])
