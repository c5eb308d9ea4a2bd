"""Preference (click) runs of the app, without Gradio: rounds of images from the session's model, the
clicks on them, and one Trainer iteration per update (``rlr_core.rewards.preference``). Also the batch of a
round or a probe: the run's prompts laid out for its estimator's noise groups.
"""

from __future__ import annotations

from typing import Any

from rlr_core.rewards import default_clip_model
from rlr_core.rewards.preference import ClickLog, ClickReward, PreferenceReward
from rlr_core.training import TrainingStepError
from rlr_core.training.clicks import PreferenceSession

from . import runs
from .errors import FieldError
from .form import config_from_form, parse_int
from .runs import Run
from .settings import caps
from .training import create_run, record_report, require_run

__all__ = ["PREFERENCE_MODES", "noise_group_batch", "preference_run", "preference_round", "preference_update"]

PREFERENCE_MODES = ("direct", "learned")


def noise_group_batch(run: Run, size: Any, differentiable_reward: bool, field_name: str, maximum: int) -> list[str]:
    """The run's prompts as a batch of ``size`` for its estimator's noise groups.

    The estimator splits the batch in g groups (samples i, i + n, i + 2n, ... share noise, n = size / g),
    and rows that share noise must share the prompt: n prompts, repeated g times
    (``rlr_core.estimators.base.grouped_prompts``). FieldError naming ``field_name`` unless size % g == 0.
    """
    from rlr_core.estimators.base import grouped_prompts

    groups = int(run.estimator.noise_groups(differentiable_reward))
    size = int(size)
    if size % groups:
        allowed = ", ".join(str(m) for m in range(groups, maximum + 1, groups)) or f"none up to {maximum}"
        raise FieldError(field_name, f"must be a multiple of {groups} for estimator {run.config.estimator!r} "
                                     f"(its batch is split in {groups} groups that share noise); "
                                     f"allowed: {allowed}; got {size}")
    return grouped_prompts(list(run.config.prompts), size, groups)


def preference_run(session: str, form: dict[str, Any], hosted: bool, mode: str, features: str) -> Run:
    """The session's click run for ``mode`` / ``features``, created when needed.

    A click run is a TrainingRun whose reward is the clicks (direct: ``ClickReward``) or the
    Bradley-Terry head refitted on them (learned); every click update is one of its Trainer
    iterations. It continues from the session's current LoRA when the model and rank fit.
    """
    kind = f"clicks-{mode}-{features}"
    run = runs.session_run(session)
    if run is not None and run.kind == kind:
        return run
    if run is not None and run.running:
        raise FieldError("preference", "training is running in this session; stop it first")
    base = run.config if run is not None else config_from_form(form, hosted)
    if features == "auto" and default_clip_model(base.model) == "tiny-clip":
        features = "tiny-clip"  # the bundled image-text model: offline CLIP features for the tiny model
    run_id = runs.new_run_id()
    log = ClickLog(runs.run_dir(run_id) / "clicks.jsonl")
    head = PreferenceReward(log, features=features) if mode == "learned" else None
    # keep_best off: a click update exports its LoRA at once (the guard's figures are still computed)
    config = base.replace(reward="preference", reward_options={"mode": mode, "features": features, "log_path": str(log.path)},
                          eval_every=max(base.eval_every, 1), keep_best=False)
    continue_lora = (run is not None and run.config.model == config.model and run.config.lora_rank == config.lora_rank
                     and run.config.lora_targets == config.lora_targets)
    new = create_run(session, config, hosted, continue_lora, reward=head or ClickReward(), kind=kind, run_id=run_id)
    new.preference = PreferenceSession(new.trainer, log, mode=mode, k=None, reward=head)
    new.status = f"click run ({mode}, features {features}) from {'the current LoRA' if continue_lora else 'a fresh LoRA'}"
    return new


def preference_round(session: str, form: dict[str, Any], hosted: bool, k: int, mode: str,
                     features: str = "pixels") -> Run:
    """Show a new round of ``k`` images from the session's current model (a click run is created if needed)."""
    if mode not in PREFERENCE_MODES:
        raise FieldError("Mode", f"must be 'direct' or 'learned'; got {mode!r}")
    k = parse_int("Images per round", k, 2, caps(hosted)["pref_k"])
    run = preference_run(session, form, hosted, mode, features)
    prompts = noise_group_batch(run, k, mode == "learned", "Images per round", caps(hosted)["pref_k"])
    seed = 10_000 + run.config.seed * 1000 + run.counters["rounds"]
    with runs.using(run):
        run.round = run.preference.new_round(prompts, seed=seed)
    run.counters["rounds"] += 1
    return run


def preference_update(session: str, chosen: list[int], best_only: bool) -> tuple[Run, Any]:
    """Record the clicks of the round on screen and run one Trainer iteration from them."""
    run = require_run(session, "preference")
    if run.round is None or run.round.updated:
        raise FieldError("preference", "no round on screen: click 'New round' first")
    chosen = sorted({int(i) for i in chosen})
    n = run.round.size
    if not chosen:
        raise FieldError("Preferred images", "select at least one image (click it, or tick its number)")
    if best_only and len(chosen) != 1:
        raise FieldError("Preferred images", f"'best one' mode: select exactly one image; got {len(chosen)}")
    if len(chosen) >= n:
        raise FieldError("Preferred images", f"leave at least one image unselected (a preference needs a contrast); "
                                             f"selected {len(chosen)} of {n}")
    with runs.using(run):
        try:
            run.preference.click(run.round, chosen=chosen)
        except ValueError as error:
            raise FieldError("Preferred images", str(error)) from None
        try:
            update = run.preference.update(run.round)
        except TrainingStepError as error:
            raise FieldError("preference", str(error)) from None
    record_report(run, update.report)
    run.counters["clicks"] += len(chosen)
    run.counters["updates"] += 1
    return run, update
