"""Datum validation, micro-batch packing and rank spreading (pure Python, no Ray)."""

from __future__ import annotations

import pytest

from tinsmith.actors.batching import pack_micro_batches, plan_rank_work, to_token_datums
from tinsmith.errors import UserInputError
from tinsmith.types import Datum, ModelInput, TensorData
from tinsmith.types.internal import BatchLayout, TokenDatum


def _datum(
    tokens: list[int], targets: list[int] | None = None, weights: list[float] | None = None
) -> Datum:
    targets = targets if targets is not None else [t + 1 for t in tokens]
    inputs = {"target_tokens": TensorData(data=targets, dtype="int64")}
    if weights is not None:
        inputs["weights"] = TensorData(data=weights, dtype="float32")
    return Datum(model_input=ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


def _token_datum(index: int, length: int) -> TokenDatum:
    return TokenDatum(
        index=index, input_tokens=[1] * length, target_tokens=[1] * length, weights=[1.0] * length
    )


def test_valid_datums_flatten_with_default_weights() -> None:
    out = to_token_datums(
        [_datum([1, 2, 3]), _datum([4, 5], weights=[0.5, -2.0])], "cross_entropy", 100, 10
    )
    assert out[0].weights == [1.0, 1.0, 1.0]
    assert out[1].weights == [0.5, -2.0]
    assert out[1].index == 1


@pytest.mark.parametrize(
    ("datum", "loss", "needle"),
    [
        (
            _datum([1, 200, 3]),
            "cross_entropy",
            "data[0].model_input[1] = 200 is outside the vocabulary",
        ),
        (_datum([1, 2, 3], targets=[1, 2]), "cross_entropy", "'target_tokens'] has length 2"),
        (_datum([1, 2, 3], targets=[1, 2, -1]), "cross_entropy", "outside the vocabulary"),
        (_datum([1, 2, 3], weights=[1.0]), "cross_entropy", "['weights'] has length 1"),
        (_datum([1, 2, 3], weights=[1.0, float("nan"), 1.0]), "cross_entropy", "NaN"),
        (_datum([1, 2, 3]), "nonsense", "loss_fn 'nonsense' is not supported"),
        (_datum(list(range(20))), "cross_entropy", "more than the model's 10"),
    ],
)
def test_bad_datums_name_the_problem(datum: Datum, loss: str, needle: str) -> None:
    with pytest.raises(UserInputError) as info:
        to_token_datums([datum], loss, 100, 10)
    assert needle in str(info.value)


def _layout(budget: int, packing: bool = False, **kw: object) -> BatchLayout:
    return BatchLayout(micro_batch_tokens=budget, packing=packing, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("packing", [False, True])
def test_micro_batches_respect_the_budget_and_keep_every_datum(packing: bool) -> None:
    datums = [_token_datum(i, n) for i, n in enumerate([100, 30, 250, 60, 60, 500])]
    batches = pack_micro_batches(datums, _layout(256, packing))
    assert sorted(d.index for b in batches for d in b.datums) == list(range(6))
    for batch in batches:
        # a packed row holds datums of different lengths; one length runs as plain rows
        assert batch.packed == (packing and len({d.length for d in batch.datums}) > 1)
        assert batch.padded_tokens <= 256 or len(batch.datums) == 1
    if packing:
        assert any(batch.packed for batch in batches)


def test_datums_of_one_length_run_as_plain_rows() -> None:
    """8 x 128 tokens fill one bin of one length: a plain batch of 8 rows, no padding either."""
    batches = pack_micro_batches([_token_datum(i, 128) for i in range(8)], _layout(1024, True))
    assert [(b.packed, len(b.datums), b.padded_tokens) for b in batches] == [(False, 8, 1024)]


def test_packed_rows_have_no_padding_and_few_rows() -> None:
    lengths = [230, 219, 217, 183, 175, 155, 147, 127, 114, 109, 98, 98, 94, 82, 80, 71]
    datums = [_token_datum(i, n) for i, n in enumerate(lengths)]
    batches = pack_micro_batches(datums, _layout(512, packing=True))
    assert sum(b.padded_tokens for b in batches) == sum(lengths)
    assert len(batches) == -(-sum(lengths) // 512)  # first fit needs no extra row here


def test_datums_with_images_are_never_packed() -> None:
    from tinsmith.types.data import ImagePlacement

    plain = [_token_datum(0, 40), _token_datum(2, 30)]
    image = _token_datum(1, 40).model_copy(
        update={"images": [ImagePlacement(data=b"x", format="png", offset=0, tokens=4)]}
    )
    batches = pack_micro_batches([*plain, image], _layout(512, packing=True))
    placed = [(b.packed, [d.index for d in b.datums]) for b in batches]
    assert placed == [(True, [0, 2]), (False, [1])]


def test_every_rank_gets_the_same_number_of_micro_batches() -> None:
    per_rank = plan_rank_work([_token_datum(i, 50) for i in range(5)], 2, _layout(100))
    assert len(per_rank[0]) == len(per_rank[1])
    assert sorted(d.index for work in per_rank for b in work for d in b.datums) == list(range(5))


def test_kth_micro_batches_share_checkpointing_and_chunks_across_ranks() -> None:
    # rank 0 gets the 300-token datum, rank 1 two short ones; its second micro-batch is empty
    datums = [_token_datum(0, 300), _token_datum(1, 100), _token_datum(2, 100)]
    layout = _layout(100, packing=True, checkpoint_above_tokens=299, logprob_chunk_tokens=64)
    per_rank = plan_rank_work(datums, 2, layout)
    shapes = [[(b.checkpoint, b.logit_chunks) for b in work] for work in per_rank]
    assert shapes[0] == shapes[1] == [(True, 5), (False, 2)]
    off = plan_rank_work(datums, 2, _layout(100, packing=True))
    assert {(b.checkpoint, b.logit_chunks) for work in off for b in work} == {(False, 1)}


def test_ranks_get_nearly_equal_tokens() -> None:
    # the mixed-length batch of benchmarks/train_step.py --scaling
    lengths = [230, 219, 217, 183, 175, 155, 147, 127, 114, 109, 98, 98, 94, 82, 80, 71]
    datums = [_token_datum(i, n) for i, n in enumerate(lengths)]
    per_rank = plan_rank_work(datums, 2, _layout(4096))
    tokens = [sum(d.length for b in work for d in b.datums) for work in per_rank]
    padded = [sum(b.padded_tokens for b in work) for work in per_rank]
    assert sum(tokens) == sum(lengths)
    assert max(tokens) - min(tokens) <= min(lengths)  # less than one datum apart
    assert max(padded) <= 1.1 * sum(lengths) / 2
    assert sorted(d.index for work in per_rank for b in work for d in b.datums) == list(
        range(len(lengths))
    )


def test_padding_is_capped_without_packing() -> None:
    lengths = [230, 220, 200, 160, 150, 120, 100, 90, 80, 71]
    datums = [_token_datum(i, n) for i, n in enumerate(lengths)]
    batches = pack_micro_batches(datums, _layout(4096))
    padded = sum(b.padded_tokens for b in batches)
    assert (padded - sum(lengths)) / padded <= 0.1
    assert sorted(d.index for b in batches for d in b.datums) == list(range(len(lengths)))
