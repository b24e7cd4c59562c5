"""Model families on the real transformers and peft: random-weight models built from
configs/models/*.yaml, each family read from its config.json, the LoRA switches adapting the same
kind of layer on every family (a MoE's experts, a vision model's language model only), a LoRA
that cannot be built as asked refused by name, and an adapter merged into the weights computing
what the LoRA computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tinsmith.actors.lora_adapters import LoraAdapters, check_built
from tinsmith.actors.merged_weights import MergedWeights
from tinsmith.actors.rank_setup import auto_model_class
from tinsmith.cluster.config import load_config
from tinsmith.cluster.model_cache import prepare_all
from tinsmith.cluster.random_models import build_random_model
from tinsmith.errors import ConfigurationError, UserInputError
from tinsmith.types.architectures import architecture, read_model_shape
from tinsmith.types.training import LoraConfig

TINY = ("tinsmith/tiny-qwen3", "tinsmith/tiny-qwen3-moe", "tinsmith/tiny-qwen3-vl")


@pytest.fixture(scope="module")
def model_dirs() -> dict[str, Path]:
    """configs/models.yaml's models, prepared (built once into the model cache)."""
    return prepare_all(load_config(ROOT / "configs" / "models.yaml"))


def load(model_dir: Path) -> tuple[torch.nn.Module, LoraAdapters]:
    arch = read_model_shape(model_dir).arch
    model = auto_model_class(arch).from_pretrained(str(model_dir), dtype=torch.float32)
    model.requires_grad_(False)
    return model, LoraAdapters(model, arch)


def adapted(lora: LoraAdapters, name: str) -> set[str]:
    """The module paths an adapter's LoRA sits on."""
    return {n.split(".lora_")[0] for n in lora.named_params(name)}


def test_families_are_read_from_config_json(model_dirs: dict[str, Path]) -> None:
    shapes = {name: read_model_shape(d) for name, d in model_dirs.items()}
    assert {n: s.arch.model_type for n, s in shapes.items()} == {
        "HuggingFaceTB/SmolLM2-135M-Instruct": "llama",
        "tinsmith/tiny-qwen3": "qwen3",
        "tinsmith/tiny-qwen3-moe": "qwen3_moe",
        "tinsmith/tiny-qwen3-vl": "qwen3_vl",
    }
    vl = shapes["tinsmith/tiny-qwen3-vl"]  # its vocabulary is under text_config
    assert vl.vocab_size == 49216 and vl.arch.vision and vl.image_token_id == 49154
    with pytest.raises(ConfigurationError, match=r"not a family tinsmith serves.*qwen3_moe"):
        architecture("gpt_bigcode")


def test_random_weights_come_from_the_seed(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = "random:configs/models/tiny-qwen3.yaml"
    build_random_model(
        source, tmp_path / "again", model_dirs["HuggingFaceTB/SmolLM2-135M-Instruct"]
    )
    first = load_file(str(model_dirs["tinsmith/tiny-qwen3"] / "model.safetensors"))
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("name", TINY)
def test_each_switch_adapts_the_same_kind_of_layer(model_dirs: dict[str, Path], name: str) -> None:
    _, lora = load(model_dirs[name])
    # (adapter names that are no module's name: the server's are model ids)
    lora.add("t:attn", LoraConfig(rank=4, train_mlp=False, train_unembed=False))
    lora.add("t:mlp", LoraConfig(rank=4, train_attn=False, train_unembed=False))
    lora.add("t:head", LoraConfig(rank=4, train_attn=False, train_mlp=False))
    attn, mlp, head = (adapted(lora, f"t:{n}") for n in ("attn", "mlp", "head"))
    assert attn and {p.rsplit(".", 1)[1] for p in attn} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert head == {"base_model.model.lm_head"}
    if "moe" in name:  # every layer's experts (the fused parameters), nothing else
        assert mlp and all(".mlp.experts" in p for p in mlp), mlp
    else:
        assert {p.rsplit(".", 1)[1] for p in mlp} == {"gate_proj", "up_proj", "down_proj"}
    if "vl" in name:  # the vision tower is never adapted
        assert not any("visual" in p for p in attn | mlp | head)
        assert all(".language_model." in p for p in attn | mlp)


def test_moe_experts_get_one_lora_each_and_learn(model_dirs: dict[str, Path]) -> None:
    _, lora = load(model_dirs["tinsmith/tiny-qwen3-moe"])
    params = lora.add("a", LoraConfig(rank=8, seed=1))
    experts = {n: p for n, p in lora.named_params("a").items() if ".mlp.experts." in n}
    num_experts = lora.base.config.num_experts
    for n, p in experts.items():
        assert (p.shape[0] if ".lora_A." in n else p.shape[1]) == 8 * num_experts, (n, p.shape)
    # lora_B starts at zero; give it a value so that gradients reach lora_A too
    for n, p in experts.items():
        if ".lora_B." in n:
            p.data.normal_(std=0.01)
    lora.activate("a")
    assert lora.peft is not None
    logits = lora.peft(input_ids=torch.tensor([[5, 17, 300, 9, 41]])).logits
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in experts.values())
    assert len(params) == len(lora.named_params("a"))


def test_a_lora_built_otherwise_than_asked_is_refused() -> None:
    qwen3, moe = architecture("qwen3"), architecture("qwen3_moe")
    with pytest.raises(UserInputError, match=r"lora_config\.train_attn: this qwen3 model has no"):
        check_built({}, qwen3, LoraConfig(rank=4, train_mlp=False, train_unembed=False), 1)
    fused = {  # what peft builds for gate+up fused at rank 2r: twice the rows asked for
        "base_model.model.model.layers.0.mlp.experts.lora_A.weight": torch.zeros(2 * 4 * 4, 8),
    }
    with pytest.raises(UserInputError, match=r"lora_config\.rank: .* 32 LoRA rows, not the 16"):
        check_built(fused, moe, LoraConfig(rank=4, train_attn=False, train_unembed=False), 4)


@pytest.mark.parametrize("name", ["tinsmith/tiny-qwen3", "tinsmith/tiny-qwen3-moe"])
def test_an_adapter_merged_into_the_weights_computes_what_the_lora_does(
    model_dirs: dict[str, Path], name: str, tmp_path: Path
) -> None:
    """What a merged-mode sampler loads (tied unembedding untied, LoRA on every switch) gives the
    logits of the base model with the LoRA."""
    from safetensors.torch import save_file

    _, lora = load(model_dirs[name])
    lora.add("a", LoraConfig(rank=4, seed=3))
    for n, p in lora.named_params("a").items():
        if ".lora_B." in n:
            p.data.normal_(std=0.02)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes(lora.config_json("a"))
    save_file(lora.tensors("a", zero3=False), str(adapter / "adapter_model.safetensors"))
    tokens = torch.tensor([[5, 17, 300, 9, 41, 7000, 3]])
    assert lora.peft is not None
    with torch.no_grad():
        want = lora.peft(input_ids=tokens).logits

    weights = MergedWeights(str(model_dirs[name]), tmp_path / "merged")
    base_dir = Path(weights.base_dir())
    assert json.loads((base_dir / "config.json").read_text())["tie_word_embeddings"] is False
    merged_dir = Path(weights.merge(str(adapter)))
    merged, _ = load(merged_dir)
    with torch.no_grad():
        got = merged(input_ids=tokens).logits
        base = auto_model_class(read_model_shape(base_dir).arch).from_pretrained(str(base_dir))
        plain = base(input_ids=tokens).logits
    assert (want - plain).abs().max() > 1e-3  # the adapter changes the logits...
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)  # ...and the merge computes it
