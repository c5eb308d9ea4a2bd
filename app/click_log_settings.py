"""What a loaded click log's updates were made with (its settings, checked before a replay) and which of its rounds
were used for an update. Split from app/clicks.py, which replays the log."""

from __future__ import annotations

from typing import Any

from rlr_core.config import KL_KINDS, KL_TRAJECTORIES, field_spec
from rlr_core.estimators import list_estimators
from rlr_core.rewards.preference import DEFAULT_FEATURES, FEATURES, MODES, ROUND_IMAGES, ClickLog, check_round_images
from rlr_core.rewards.preference_head import SELECTIONS, SOLVERS
from rlr_core.training.click_settings import SETTINGS

from .errors import FieldError

__all__ = ["LOG_FIELD", "MAX_HEAD_UPDATES", "MAX_LEARNING_RATE", "MAX_CHECK_SEEDS", "MAX_GROUP_WEIGHTS", "MAX_KL_WEIGHT",
           "log_settings", "updated_rounds"]

LOG_FIELD = "Click log"
MAX_HEAD_UPDATES = 3  # the form's "Updates per round from the head" slider
MAX_LEARNING_RATE = 1.0  # the Preference tab's learning rate (0 = auto), as the Train form's
MAX_CHECK_SEEDS = 16  # the most check seeds a loaded click log may name (each is an image sampled per update)
MAX_GROUP_WEIGHTS = 8  # the most head group weights a loaded click log may name (the head fits their square per fold)
MAX_HEAD_FIT_NUMBER = 1e6  # the largest head_l2 or group weight a loaded click log may name
MAX_KL_WEIGHT = float(field_spec("kl_weight").max)  # the Preference tab's KL to the base model, as TrainConfig's bound
MAX_KL_STEPS = int(field_spec("kl_steps").max)


def log_settings(log: ClickLog) -> dict[str, Any]:
    """The mode / features / head_updates / lr / check_seeds / round_images / estimator / head_l2 / head_group_weights /
    head_solver / head_selection / head_colour_cap / kl_weight / kl_kind / kl_steps / kl_trajectories the log's updates
    were made with (its
    last update's; lr and estimator None in logs older than the setting: they were made with the Train settings';
    head_selection "auto" in those older than it; the others as PreferenceSession's SETTINGS says for logs older than
    the setting); FieldError naming the click log when it has no updated round or names an unknown setting."""
    updates = [e for e in log.events if e.get("type") == "update"]
    if not updated_rounds(log):
        raise FieldError(LOG_FIELD, "holds no updated round: nothing to replay (click a few rounds, then "
                                    "download the click log)")
    last = updates[-1]
    settings = {"mode": last.get("mode", log.records[-1].mode), "features": last.get("features", DEFAULT_FEATURES),
                "head_updates": last.get("head_updates", 0), "lr": last.get("lr"),
                "check_seeds": last.get("check_seeds", []), "round_images": last.get("round_images", "batch"),
                "estimator": last.get("estimator"), "head_l2": last.get("head_l2", SETTINGS["head_l2"]),
                "head_group_weights": last.get("head_group_weights", SETTINGS["head_group_weights"]),
                "head_solver": last.get("head_solver", SETTINGS["head_solver"]),
                "head_selection": last.get("head_selection", "auto"),
                "head_colour_cap": last.get("head_colour_cap", SETTINGS["head_colour_cap"]),
                "kl_weight": last.get("kl_weight", SETTINGS["kl_weight"]),
                "kl_kind": last.get("kl_kind", SETTINGS["kl_kind"]),
                "kl_steps": last.get("kl_steps", SETTINGS["kl_steps"]),
                "kl_trajectories": last.get("kl_trajectories", SETTINGS["kl_trajectories"])}
    if settings["mode"] not in MODES or settings["features"] not in FEATURES:
        raise FieldError(LOG_FIELD, f"names mode {settings['mode']!r} / features {settings['features']!r}; allowed: "
                                    f"mode {', '.join(MODES)}, features {', '.join(FEATURES)}")
    if not isinstance(settings["head_updates"], int) or not 0 <= settings["head_updates"] <= MAX_HEAD_UPDATES:
        raise FieldError(LOG_FIELD, f"names head_updates {settings['head_updates']!r}; allowed: 0 to {MAX_HEAD_UPDATES}")
    learning_rate = settings["lr"]
    if learning_rate is not None and (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
                                      or not 0 < learning_rate <= MAX_LEARNING_RATE):
        raise FieldError(LOG_FIELD, f"names lr {learning_rate!r}; allowed: a number > 0 and at most {MAX_LEARNING_RATE:g}")
    seeds = settings["check_seeds"]
    if (not isinstance(seeds, list) or len(seeds) > MAX_CHECK_SEEDS
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in seeds)):
        raise FieldError(LOG_FIELD, f"names check_seeds {seeds!r}; allowed: a list of at most {MAX_CHECK_SEEDS} "
                                    "seeds (integers >= 0)")
    try:
        check_round_images(settings["round_images"], settings["mode"])
    except ValueError:
        raise FieldError(LOG_FIELD, f"names round_images {settings['round_images']!r} in mode {settings['mode']!r}; "
                                    f"allowed: {', '.join(ROUND_IMAGES)} in learned mode, batch in direct mode") from None
    if settings["estimator"] is not None and settings["estimator"] not in list_estimators():
        raise FieldError(LOG_FIELD, f"names estimator {settings['estimator']!r}; allowed: {', '.join(list_estimators())}")
    weights = settings["head_group_weights"]
    if not _head_fit_number(settings["head_l2"]):
        raise FieldError(LOG_FIELD, f"names head_l2 {settings['head_l2']!r}; allowed: a number >= 0 and at most "
                                    f"{MAX_HEAD_FIT_NUMBER:g}")
    if not isinstance(weights, list) or not 0 < len(weights) <= MAX_GROUP_WEIGHTS or not all(map(_head_fit_number, weights)):
        raise FieldError(LOG_FIELD, f"names head_group_weights {weights!r}; allowed: a list of 1 to {MAX_GROUP_WEIGHTS} "
                                    f"numbers >= 0 and at most {MAX_HEAD_FIT_NUMBER:g}")
    if settings["head_solver"] not in SOLVERS:
        raise FieldError(LOG_FIELD, f"names head_solver {settings['head_solver']!r}; allowed: {', '.join(SOLVERS)}")
    if settings["head_selection"] not in SELECTIONS:
        raise FieldError(LOG_FIELD, f"names head_selection {settings['head_selection']!r}; allowed: {', '.join(SELECTIONS)}")
    if settings["head_colour_cap"] is not None and not _head_fit_number(settings["head_colour_cap"]):
        raise FieldError(LOG_FIELD, f"names head_colour_cap {settings['head_colour_cap']!r}; allowed: null (uncapped) or a "
                                    f"number >= 0 and at most {MAX_HEAD_FIT_NUMBER:g}")
    if not _number_at_most(settings["kl_weight"], MAX_KL_WEIGHT):
        raise FieldError(LOG_FIELD, f"names kl_weight {settings['kl_weight']!r}; allowed: a number >= 0 and at most "
                                    f"{MAX_KL_WEIGHT:g}")
    if settings["kl_kind"] not in KL_KINDS:
        raise FieldError(LOG_FIELD, f"names kl_kind {settings['kl_kind']!r}; allowed: {', '.join(KL_KINDS)}")
    steps = settings["kl_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_KL_STEPS:
        raise FieldError(LOG_FIELD, f"names kl_steps {steps!r}; allowed: an integer from 1 to {MAX_KL_STEPS}")
    if settings["kl_trajectories"] not in KL_TRAJECTORIES:
        raise FieldError(LOG_FIELD, f"names kl_trajectories {settings['kl_trajectories']!r}; allowed: "
                                    f"{', '.join(KL_TRAJECTORIES)}")
    if last.get("head_gradient", True) is not True:
        raise FieldError(LOG_FIELD, "was made with a scores-only head (head_gradient false, from the Python API); the app "
                                    "replays logs of its own differentiable head: replay it with PreferenceSession.replay")
    return settings


def _head_fit_number(value: Any) -> bool:
    return _number_at_most(value, MAX_HEAD_FIT_NUMBER)


def _number_at_most(value: Any, maximum: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= maximum


def updated_rounds(log: ClickLog) -> list[list[Any]]:
    """The click records of each round of the log that was used for an update (what a replay replays)."""
    updated = {e.get("round_id") for e in log.events if e.get("type") == "update" and isinstance(e.get("round_id"), str)}
    return [records for rid, records in log.rounds().items() if rid in updated]
