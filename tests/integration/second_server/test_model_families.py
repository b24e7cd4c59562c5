"""The model families of configs/models.yaml through the official SDK, on the package's server:
the tiny random-weight Qwen3 and Qwen3-MoE (Llama, SmolLM2-135M, gets the same checks on the
session server: test_sdk_sampling.py). For each: get_info names the
family and the tokenizer by the model's public name; five cross_entropy steps lower the loss; the
trained weights sample, and the sampler's logprobs of a greedy sample equal the trainer's forward
logprobs of the same tokens; a client with no hub loads each tokenizer from the server's /hf.
On the MoE, ``train_mlp`` trains LoRA on every expert (the sampler
serves it merged into the weights: vLLM's CPU build has no MoE LoRA kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types

from tests.integration.helpers import checkpoint_dir, datum, random_tokens, read_adapter
from tests.integration.second_server.conftest import MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QWEN3 = MODEL
QWEN3_MOE = "tinsmith/tiny-qwen3-moe"
FAMILIES = {QWEN3: "qwen3", QWEN3_MOE: "qwen3_moe"}


def train_and_compare(client: tinker.ServiceClient, base_model: str) -> tinker.TrainingClient:
    """Five steps lower the loss; the sampler's greedy logprobs equal the trainer's forward."""
    tc = client.create_lora_training_client(base_model=base_model, rank=8).result()
    info = tc.get_info()
    assert info.model_data.arch == FAMILIES[base_model], info
    assert info.model_data.tokenizer_id == base_model, info
    batch = [datum(random_tokens(9000 + i, 33, vocab=20000)) for i in range(2)]
    losses = []
    for _ in range(5):
        out = tc.forward_backward(batch, "cross_entropy").result()
        losses.append(out.metrics["loss:sum"])
        tc.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    assert losses[-1] < 0.9 * losses[0], (base_model, losses)

    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = random_tokens(9100, 9, vocab=20000)
    params = types.SamplingParams(max_tokens=8, temperature=0.0)
    seq = sampler.sample(types.ModelInput.from_ints(prompt), 1, params).result().sequences[0]
    assert len(seq.tokens) == 8 and seq.logprobs is not None, seq
    fwd = tc.forward([datum(prompt + list(seq.tokens))], "cross_entropy").result()
    trainer = np.array(fwd.loss_fn_outputs[0]["logprobs"].tolist())[len(prompt) - 1 :]
    np.testing.assert_allclose(seq.logprobs, trainer, atol=1e-3, err_msg=base_model)
    return tc


def test_qwen3_trains_and_samples_what_it_trained(second_client: tinker.ServiceClient) -> None:
    train_and_compare(second_client, QWEN3)


def test_moe_train_mlp_trains_every_expert(
    second_client: tinker.ServiceClient, second_server: object
) -> None:
    """The adapter of a train_mlp client holds LoRA on the fused expert weights (one rank-8 LoRA
    per expert), training moved them, and the merged sampler follows (train_and_compare)."""
    tc = train_and_compare(second_client, QWEN3_MOE)
    path = tc.save_weights_for_sampler("moe-experts").result().path
    adapter = read_adapter(checkpoint_dir(second_server, path))
    experts = {k: v for k, v in adapter.items() if ".mlp.experts." in k}
    assert experts, sorted(adapter)
    lora_b = [v for k, v in experts.items() if "lora_B" in k]  # zero at the start
    assert lora_b and all(np.abs(v).max() > 0 for v in lora_b), sorted(experts)
    assert all(v.shape[-1] == 8 * 4 for k, v in experts.items() if "lora_B" in k)  # 4 experts


def test_a_client_without_the_hub_loads_each_tokenizer_from_the_server(
    second_server: object, tmp_path: Path
) -> None:
    """A fresh process with an empty HF_HOME, HF_HUB_OFFLINE unset and HF_ENDPOINT at the server's
    /hf loads every served model's tokenizer by its public name, and it encodes as the server's
    copy does; and the VL model's processor (AutoProcessor)."""
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "out = {n: AutoTokenizer.from_pretrained(n).encode('Hello, tinsmith!')\n"
        "       for n in sys.argv[1:]}\n"
        "from transformers import AutoProcessor\n"
        "processor = AutoProcessor.from_pretrained(sys.argv[-1])\n"
        "out['processor'] = [type(processor).__name__, processor.image_processor.patch_size]\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"{second_server.base_url}/hf"}  # type: ignore[attr-defined]
    names = [QWEN3, QWEN3_MOE, "tinsmith/tiny-qwen3-vl"]
    done = subprocess.run(
        [sys.executable, "-c", script, *names], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    from transformers import AutoTokenizer

    for name in names:  # the server's copy, from the local cache `tinsmith prepare` filled
        assert got[name] == AutoTokenizer.from_pretrained(name).encode("Hello, tinsmith!"), name
    assert got["processor"] == ["Qwen3VLProcessor", 16]  # the VL model's, with its image config
