"""Human click preference (see docs/rewards.md): the reward of an image is the user's judgement of it.

Two modes:

* **direct** -- the clicks *are* the rewards. A click session (``rlr_core.training.clicks.PreferenceSession``)
  samples a batch with ``estimator.rollout(chain, prompts, generator, differentiable_reward=False)``, which
  keeps exactly what the gradient needs (detached start of the HO sub-chain, noise seeds, ...); the user
  clicks; the clicks become rewards (chosen = 1, not chosen = 0, or rank-based, :func:`click_rewards`) and
  one Trainer iteration updates through the trajectories of exactly the images the user saw. The run's
  reward is :class:`ClickReward` (no function of the images).
* **learned** -- a Bradley-Terry head on image features (:class:`PreferenceReward`,
  ``rlr_core.rewards.preference_head``) is refitted on every click so far; it is a differentiable Reward
  (``get_reward("preference", mode="learned", log_path=...)``), so RLR's first-order part applies.

The click log (:class:`ClickLog`, ``rlr_core.rewards.click_log``) appends and fsyncs every click *before*
it is used and stores the displayed images beside it, so the learned head can be refitted after a restart.
This module keeps the public names of both in one import path.
"""

from __future__ import annotations

import torch

from rlr_core.rewards.click_log import LOG_VERSION, ClickLog, ClickRecord, click_rewards, image_sha256, to_uint8
from rlr_core.rewards.clip_models import is_tiny_base_model
from rlr_core.rewards.preference_head import (FEATURES, MODES, SELECTIONS, PreferenceReward, colour_features, layout_features,
                                              object_colour_features, pixel_features)
from rlr_core.rewards.simple import check_images

__all__ = ["ClickLog", "ClickRecord", "ClickReward", "PreferenceReward", "click_rewards", "image_sha256",
           "pixel_features", "layout_features", "colour_features", "object_colour_features", "to_uint8", "FEATURES", "SELECTIONS", "LOG_VERSION", "MODES", "DEFAULT_MODE", "DEFAULT_FEATURES",
           "DEFAULT_HEAD_UPDATES", "ROUND_IMAGES", "DEFAULT_ROUND_IMAGES", "CHECK_SEEDS", "DEFAULT_CHECK_SEEDS", "DEFAULT_LEARNING_RATE", "TINY_MODEL_FEATURES", "TINY_MODEL_LEARNING_RATE",
           "DEFAULT_KL_WEIGHT", "DEFAULT_KL_KIND", "DEFAULT_KL_STEPS", "features_for",
           "learning_rate_for", "check_round_images"]

# The defaults of a click session (the app's Preference tab, PreferenceSession), chosen by benchmarks/clicks.py
DEFAULT_MODE = "learned"
DEFAULT_FEATURES = "auto"  # TINY_MODEL_FEATURES for the tiny model, CLIP otherwise (pixels when CLIP's weights are missing)
DEFAULT_HEAD_UPDATES = 1  # one more iteration per round on fresh images the head scores (benchmarks/clicks.py, 2026-12-06)
# What a click round shows (PreferenceSession round_images): "batch" = the update's own batch (with rlr's antithetic
# twins, two drawings each shown twice, nearly alike); "hidden-twins" (learned mode) = one image of each twin pair of
# a batch twice the round's size, the update through the whole batch
ROUND_IMAGES = ("batch", "hidden-twins")
DEFAULT_ROUND_IMAGES = "batch"
CHECK_SEEDS = (9001, 9002, 9003, 9004)  # the fixed seeds of a checked session (PreferenceSession check_seeds)
DEFAULT_CHECK_SEEDS: tuple[int, ...] = ()  # () = no check: every update is kept
DEFAULT_LEARNING_RATE = 0.0  # "auto": learning_rate_for
TINY_MODEL_FEATURES = "tiny-clip+grid+colour"  # what features "auto" means for the bundled tiny model
TINY_MODEL_LEARNING_RATE = 0.005  # what learning rate "auto" means for the bundled tiny model (with its attention+conv LoRA)
# the KL to the base model of a click session's updates (its TrainConfig.kl_weight; 0 = off) and what it counts
# (TrainConfig.kl_kind). Without it the tiny model's drawings drifted away from the shape clicked for; the whole KL
# (0.01) let it learn the shape but held colour back; its local part ("local": a uniform colour shift is free, rlr_core.kl)
# kept shape, colour and position rising, with and without wrong clicks (benchmarks/clicks.py, 2026-12-07)
DEFAULT_KL_WEIGHT = 0.01
DEFAULT_KL_KIND = "local"
DEFAULT_KL_STEPS = 4  # the chain steps drawn per update for that KL's gradient (TrainConfig.kl_steps)


def features_for(features: str, base_model: str) -> str:
    """The head features that ``features`` means for ``base_model``: "auto" is :data:`TINY_MODEL_FEATURES` for
    the bundled tiny model (and stays "auto", CLIP with a pixel fallback, for other models); others are kept."""
    if features == "auto" and is_tiny_base_model(base_model):
        return TINY_MODEL_FEATURES
    return features


def learning_rate_for(learning_rate: float, base_model: str, train_learning_rate: float) -> float:
    """A click session's learning rate: ``learning_rate`` when it is above 0; 0 ("auto") is
    :data:`TINY_MODEL_LEARNING_RATE` for the bundled tiny model (the rate benchmarks/clicks.py measured) and
    the training settings' ``train_learning_rate`` for other models. ValueError for a negative rate."""
    if not float(learning_rate) >= 0:
        raise ValueError(f"learning_rate={learning_rate!r} is not allowed; allowed values: 0 (auto) or a number > 0")
    if float(learning_rate) > 0:
        return float(learning_rate)
    return TINY_MODEL_LEARNING_RATE if is_tiny_base_model(base_model) else float(train_learning_rate)


def check_round_images(round_images: str, mode: str) -> str:
    """``round_images`` when a ``mode`` session can show such rounds, else ValueError naming the allowed values
    (:data:`ROUND_IMAGES`; in direct mode only "batch": the clicks are the rewards of the shown trajectories)."""
    if round_images not in ROUND_IMAGES:
        raise ValueError(f"round_images={round_images!r} is not allowed; allowed values: {list(ROUND_IMAGES)}")
    if round_images != "batch" and mode != "learned":
        raise ValueError(f"round_images={round_images!r} needs mode='learned' (in mode={mode!r} the clicks are the "
                         f"rewards of the shown trajectories); allowed values here: ['batch']")
    return round_images


# The click session drives training, so it lives a layer up (rlr_core.training.clicks). Users' code that imported
# it from here keeps working: the name resolves on first access, by module path, without this module importing it.
_MOVED = {"PreferenceSession": "rlr_core.training.clicks", "PreferenceRound": "rlr_core.training.clicks",
          "PreferenceUpdate": "rlr_core.training.clicks"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ClickReward:
    """The reward of a direct-mode click run: the clicks themselves, so no function of the images.

    Calling it gives NaN for every image (evaluation images of a click run have no score; a
    training update from it would be skipped as non-finite). Updates come from
    ``rlr_core.training.clicks.PreferenceSession.update`` with the clicks as rewards.
    """

    name = "clicks"
    differentiable = False

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        return torch.full((images.shape[0],), float("nan"))
