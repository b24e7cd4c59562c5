"""Config parsing, SDK JSON compatibility of the types, and the light-import promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tinker import types as tt

from tinsmith import types as ts
from tinsmith.cluster.config import load_config, parse_config
from tinsmith.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load(preset: Path) -> None:
    assert load_config(preset).models


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_config({"models": [{"name": "m", "source": "/x"}], "trainer": {"num_rankz": 2}})
    assert "trainer.num_rankz" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        parse_config({"models": [{"name": "m", "source": "/x"}], "trainer": {"zero_stage": 5}})
    assert "trainer.zero_stage" in str(info.value)


def test_a_models_sampler_context_is_capped_at_its_own() -> None:
    """A top-level max_model_len meant for a long model does not exceed a shorter model's context
    (vLLM refuses a max_model_len beyond the model's positions)."""
    config = parse_config(
        {
            "models": [
                {"name": "long", "source": "/x", "max_context_length": 8192},
                {"name": "short", "source": "/y", "max_context_length": 2048},
            ],
            "sampler": {"max_model_len": 8192},
        }
    )
    lengths = [config.sampler_for(spec).max_model_len for spec in config.models]
    assert lengths == [8192, 2048]


def test_sdk_json_parses_into_tinsmith_types_and_back() -> None:
    sdk_params = tt.SamplingParams(max_tokens=5, temperature=0.7, top_p=0.9, stop=["\n\n"], seed=42)
    ours = ts.SamplingParams.model_validate_json(sdk_params.model_dump_json(exclude_none=True))
    assert ours.max_tokens == 5 and ours.stop == ["\n\n"] and ours.seed == 42
    assert tt.SamplingParams.model_validate_json(ours.model_dump_json()) == sdk_params

    sdk_input = tt.ModelInput.from_ints([1, 2, 3])
    ours_input = ts.ModelInput.model_validate_json(sdk_input.model_dump_json())
    assert ours_input.to_ints() == [1, 2, 3]

    adam = ts.AdamParams()
    assert adam.model_dump() == tt.AdamParams().model_dump()
    lora = ts.LoraConfig(rank=8)
    assert lora.model_dump() == tt.LoraConfig(rank=8).model_dump()

    info = ts.GetInfoResponse(
        model_id="m", model_data=ts.ModelData(model_name="x", tokenizer_id="/t"), lora_rank=8
    )
    assert tt.GetInfoResponse.model_validate_json(info.model_dump_json()).lora_rank == 8


def test_tinker_paths_parse() -> None:
    parsed = ts.ParsedCheckpointTinkerPath.from_tinker_path(
        "tinker://sess:train:0/sampler_weights/x"
    )
    assert parsed.training_run_id == "sess:train:0"
    assert parsed.checkpoint_type == "sampler"
    assert parsed.checkpoint_id == "sampler_weights/x"
    with pytest.raises(ValueError, match="kind"):
        ts.ParsedCheckpointTinkerPath.from_tinker_path("tinker://r/bogus/x")


def test_types_and_config_import_without_torch_or_ray() -> None:
    code = (
        "import sys, tinsmith.types, tinsmith.types.proto, tinsmith.cluster.config, "
        "tinsmith.cluster.server\n"
        "bad = [m for m in ('torch', 'ray', 'vllm', 'deepspeed', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_exports() -> None:
    for name in ts.__all__:
        assert hasattr(ts, name), name


def test_impossible_placement_is_refused_naming_the_fields() -> None:
    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.placement import check_capacity

    config = load_config(ROOT / "configs" / "gpu-node.yaml")
    check_capacity(config, {"CPU": 64, "GPU": 8, "trainer": 4, "sampler": 4})
    with pytest.raises(ConfigurationError) as info:
        check_capacity(config, {"CPU": 64, "GPU": 2, "trainer": 4, "sampler": 4})
    message = str(info.value)
    assert "impossible placement" in message and "GPU: config asks for 8" in message
    assert "trainer (4 x 1)" in message and "the Ray cluster has 2" in message
