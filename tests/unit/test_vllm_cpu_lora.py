"""The grouped LoRA ops give what vLLM's reference CPU ops give, for every op and index pattern,
except that a token without an adapter (index -1) gets none, where the reference applies the
last slot's."""

from __future__ import annotations

import pytest
import torch

from tinsmith.actors import vllm_cpu_lora

lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

SLOTS, IN, OUT, RANK = 4, 48, 40, 8


def _index_patterns(tokens: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "one adapter": torch.full((tokens,), 2, dtype=torch.long),
        "mixed": torch.randint(0, SLOTS, (tokens,), generator=gen),
        "mixed with no-adapter (-1)": torch.randint(-1, SLOTS, (tokens,), generator=gen),
    }


@pytest.mark.parametrize("tokens", [1, 7, 64])
@pytest.mark.parametrize("four_dim", [False, True])
def test_shrink_and_expand_match_the_reference(tokens: int, four_dim: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, RANK, IN, generator=gen)  # shrink: (slots, rank, in)
    b = torch.randn(SLOTS, OUT, RANK, generator=gen)  # expand: (slots, out, rank)
    if four_dim:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    x = torch.randn(tokens, IN, generator=gen)
    h = torch.randn(tokens, RANK, generator=gen)
    for name, idx in _index_patterns(tokens).items():
        base_rows = idx < 0  # no adapter: the reference's answer is replaced by "nothing"
        ref, new = torch.zeros(tokens, RANK + 3), torch.zeros(tokens, RANK + 3)
        lora_ops.bgmv_shrink(x, a, ref, idx, 0.5)
        ref[base_rows, :RANK] = 0.0
        vllm_cpu_lora.bgmv_shrink(x, a, new, idx, 0.5)
        torch.testing.assert_close(new, ref, msg=f"shrink, {name}")
        for add in (False, True):
            base = torch.randn(tokens, OUT + 8, generator=gen)
            ref, new = base.clone(), base.clone()
            lora_ops.bgmv_expand(h, b, ref, idx, add)
            ref[base_rows] = base[base_rows]
            vllm_cpu_lora.bgmv_expand(h, b, new, idx, add)
            torch.testing.assert_close(new, ref, msg=f"expand add={add}, {name}")
            ref, new = base.clone(), base.clone()
            lora_ops.bgmv_expand_slice(h, b, ref, idx, 5, OUT, add)
            ref[base_rows] = base[base_rows]
            vllm_cpu_lora.bgmv_expand_slice(h, b, new, idx, 5, OUT, add)
            torch.testing.assert_close(new, ref, msg=f"expand_slice add={add}, {name}")


@pytest.mark.parametrize("rows", [1, 9])
def test_a_token_without_an_adapter_gets_none_whatever_the_last_slot_holds(rows: int) -> None:
    """vLLM marks base-model tokens with -1. Indexed as torch does, -1 is the last slot: the
    reference ops applied its adapter to base-model requests (their logprobs moved once any
    adapter had been loaded there). The logits processor passes one index per sequence for all of
    its rows (``rows`` > 1 here)."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(SLOTS, RANK, IN, generator=gen)
    b = torch.randn(SLOTS, OUT, RANK, generator=gen)
    x = torch.randn(rows, IN, generator=gen)
    idx = torch.tensor([-1])
    shrunk = torch.full((rows, RANK), 7.0)
    vllm_cpu_lora.bgmv_shrink(x, a, shrunk, idx, 1.0)
    assert torch.count_nonzero(shrunk) == 0
    for add in (False, True):
        out = torch.randn(rows, OUT, generator=gen)
        before = out.clone()
        vllm_cpu_lora.bgmv_expand(torch.randn(rows, RANK, generator=gen), b, out, idx, add)
        torch.testing.assert_close(out, before, rtol=0, atol=0)
        vllm_cpu_lora.bgmv_expand_slice(torch.randn(rows, RANK), b, out, idx, 0, OUT, add)
        torch.testing.assert_close(out, before, rtol=0, atol=0)
    reference = torch.zeros(rows, RANK)
    lora_ops.bgmv_shrink(x, a, reference, idx, 1.0)
    assert torch.count_nonzero(reference) > 0  # the reference's behaviour this replaces


def test_install_replaces_the_ops_that_the_cpu_wrapper_calls() -> None:
    punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")
    from vllm.lora.ops import torch_ops

    saved = {
        m: {n: getattr(m, n) for n in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")}
        for m in (lora_ops, torch_ops, punica_cpu)
    }
    try:
        vllm_cpu_lora.install()
        assert punica_cpu.bgmv_shrink is vllm_cpu_lora.bgmv_shrink
        assert (
            lora_ops.bgmv_expand_slice is vllm_cpu_lora.bgmv_expand_slice
        )  # what lora_ops.sgmv_* call
        assert torch_ops.bgmv_expand is vllm_cpu_lora.bgmv_expand
    finally:
        for module, names in saved.items():
            for name, fn in names.items():
                setattr(module, name, fn)


def test_the_plugin_is_registered_for_vllm() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert found.get("tinsmith_cpu_lora") == "tinsmith.actors.vllm_cpu_lora:install"
