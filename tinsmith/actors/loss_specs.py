"""What each supported loss reads and accepts: inputs, config keys, defaults (no torch).

The coordinator validates requests against these before any work reaches a trainer; losses the
server does not implement (stable_reinforce, whose objective Tinker does not publish, and custom
graphs) are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinsmith.errors import UserInputError


@dataclass(frozen=True)
class LossSpec:
    """``required``: float inputs that must be present; ``optional``: float inputs with a
    default; ``marks``: a required input that must be non-zero on at least one token (gspo's
    sequence ratio is a mean over the tokens it marks)."""

    required: tuple[str, ...] = ()
    optional: dict[str, float] = field(default_factory=dict)
    config: dict[str, float] = field(default_factory=dict)
    marks: str | None = None


# The trainer adds this input to every micro-batch: each token's datum (1, 2, ... in the
# micro-batch; 0 on padding), for the losses that reduce over a datum (gspo). Not a client key.
DATUM_KEY = "_datum"


_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
_RL = ("logprobs", "advantages")

LOSS_SPECS: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(optional={"weights": 1.0}),
    "importance_sampling": LossSpec(required=_RL),
    "ppo": LossSpec(required=_RL, config=dict(_CLIP)),
    "cispo": LossSpec(required=_RL, config=dict(_CLIP)),
    "dro": LossSpec(required=_RL, config={"beta": 0.05}),
    "gspo": LossSpec(
        required=(*_RL, "sequence_ratio_mask"), config=dict(_CLIP), marks="sequence_ratio_mask"
    ),
}
UNSUPPORTED = ("stable_reinforce", "custom")


def loss_spec(loss_fn: str) -> LossSpec:
    """The spec for ``loss_fn``, or a UserInputError saying which losses this server supports."""
    spec = LOSS_SPECS.get(loss_fn)
    if spec is not None:
        return spec
    if loss_fn in UNSUPPORTED:
        raise UserInputError(
            f"loss_fn {loss_fn!r} is not implemented by this server; "
            f"supported: {', '.join(LOSS_SPECS)}"
        )
    raise UserInputError(
        f"loss_fn {loss_fn!r} is not supported; supported: {', '.join(LOSS_SPECS)}"
    )


def validate_loss_config(loss_fn: str, config: dict[str, float | str] | None) -> dict[str, float]:
    """Fill defaults and check ranges; errors name the key, the value and what is allowed."""
    spec = loss_spec(loss_fn)
    given = dict(config or {})
    unknown = sorted(set(given) - set(spec.config))
    if unknown:
        allowed = ", ".join(spec.config) or "none"
        raise UserInputError(
            f"loss_fn_config keys {unknown} are not accepted by {loss_fn} (allowed: {allowed})"
        )
    out: dict[str, float] = {}
    for key, default in spec.config.items():
        value = given.get(key, default)
        if isinstance(value, str):
            raise UserInputError(f"loss_fn_config[{key!r}] must be a number, got {value!r}")
        out[key] = float(value)
    if "clip_low_threshold" in out:
        lo, hi = out["clip_low_threshold"], out["clip_high_threshold"]
        if not 0.0 <= lo <= 1.0 <= hi:
            raise UserInputError(
                "loss_fn_config clip thresholds must satisfy 0 <= clip_low_threshold <= 1 <= "
                f"clip_high_threshold, got {lo} and {hi}"
            )
    if not out.get("beta", 0.0) >= 0:  # also refuses NaN
        raise UserInputError(f"loss_fn_config['beta'] must be >= 0, got {out['beta']}")
    return out


def config_value(loss_fn: str, config: dict[str, float | str], key: str) -> float:
    """A validated config value (the coordinator filled in defaults)."""
    value = config.get(key, LOSS_SPECS[loss_fn].config[key])
    return float(value)
