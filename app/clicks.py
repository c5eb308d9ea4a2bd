"""Preference (click) runs of the app, without Gradio: rounds of images from the session's model, the
clicks on them, and the Trainer iterations of each update (``rlr_core.training.clicks.PreferenceSession``);
after every update a strip of the same fixed seeds shows what the model draws now. A click log can be
loaded to rebuild a click run after a restart (``PreferenceSession.replay``). Also the batch of a round or
a probe: the run's prompts laid out for its estimator's noise groups.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlr_core.hub import WeightsUnavailableError
from rlr_core.rewards.preference import (CHECK_SEEDS, DEFAULT_CHECK_SEEDS, DEFAULT_FEATURES, DEFAULT_HEAD_UPDATES,
                                         DEFAULT_KL_KIND, DEFAULT_KL_STEPS, DEFAULT_KL_WEIGHT, DEFAULT_LEARNING_RATE,
                                         DEFAULT_ROUND_IMAGES, MODES, ClickLog, ClickReward, PreferenceReward,
                                         features_for, learning_rate_for)
from rlr_core.training import TrainingStepError
from rlr_core.training.clicks import PreferenceSession, round_prompt

from . import runs
from .errors import FieldError
from .form import config_from_form, parse_float, parse_int
from .model_cache import same_lora_layout
from .click_log_settings import (LOG_FIELD, MAX_HEAD_UPDATES, MAX_KL_WEIGHT, MAX_LEARNING_RATE, log_settings,
                                 updated_rounds)
from .formatting import check_text, kl_text
from .runs import Run
from .settings import caps
from .training import create_run, record_report, require_run
from .transfer import unpack_click_log

__all__ = ["PREFERENCE_MODES", "FEATURE_CHOICES", "MAX_HEAD_UPDATES", "STRIP_IMAGES", "STRIPS_KEPT", "Strip",
           "noise_group_batch", "preference_run", "preference_round", "preference_update", "strip_seeds", "strips",
           "load_click_log", "log_settings", "form_features", "check_seeds_for"]

PREFERENCE_MODES = MODES
# what the form offers; a loaded log may also name clip
FEATURE_CHOICES = ("auto", "tiny-clip+grid+colour", "tiny-clip+grid+object-colour", "tiny-clip+grid", "tiny-clip", "layout",
                   "pixels")
DEFAULT_CHECK_UPDATES = bool(DEFAULT_CHECK_SEEDS)  # the tab's "Check each update" box
STRIP_IMAGES = 4  # images of one strip (the same seeds after every update)
STRIPS_KEPT = 8  # strips kept after the first ("before") one
LEARNING_RATE_FIELD = "Learning rate (0 = auto)"
CHECK_FIELD = "Check each update"
KL_FIELD = "KL to the base model"


@dataclass
class Strip:
    """The run's fixed seeds sampled with the LoRA of one moment: ``label`` is "before" or "update n"."""

    label: str
    images: list[Any]  # PIL
    prompts: list[str]
    seeds: list[int]


def noise_group_batch(run: Run, size: Any, differentiable_reward: bool, field_name: str, maximum: int,
                      prompts: list[str] | None = None) -> list[str]:
    """The run's prompts (or ``prompts``) as a batch of ``size`` for its estimator's noise groups.

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
    return grouped_prompts(list(run.config.prompts) if prompts is None else prompts, size, groups)


def _kind(mode: str, features: str, head_updates: int, model: str, learning_rate: float, checked: bool,
          kl_weight: float) -> str:
    """The run kind of a click run: a new click run whenever one of its settings (as the form shows them) changes.
    What the KL counts and its steps are not on the form: a loaded log's run continues with its own."""
    return (f"clicks-{mode}-{features_for(features, model)}-{head_updates}-{learning_rate!r}-{'checked' if checked else ''}"
            f"-kl{kl_weight!r}")


def check_seeds_for(check_updates: bool) -> list[int]:
    """The check seeds of a click run whose "Check each update" box is ``check_updates``."""
    return list(CHECK_SEEDS) if check_updates else []


def form_features(features: str) -> str:
    """The form's features choice that gives ``features`` (a click log's: pixels, layout, tiny-clip, tiny-clip+grid,
    tiny-clip+grid+colour or clip)."""
    return features if features in FEATURE_CHOICES else "auto"


def preference_run(session: str, form: dict[str, Any], hosted: bool, mode: str, features: str,
                   head_updates: int = DEFAULT_HEAD_UPDATES, learning_rate: float = DEFAULT_LEARNING_RATE,
                   check_seeds: list[int] | None = None, kl_weight: float = DEFAULT_KL_WEIGHT,
                   kl_kind: str = DEFAULT_KL_KIND, kl_steps: int = DEFAULT_KL_STEPS) -> Run:
    """The session's click run for ``mode`` / ``features`` / ``head_updates`` / ``learning_rate`` / ``check_seeds``
    (None: ``DEFAULT_CHECK_SEEDS``) / ``kl_weight`` / ``kl_kind`` / ``kl_steps``, created when needed.

    A click run is a TrainingRun whose reward is the clicks (direct: ``ClickReward``) or the
    Bradley-Terry head refitted on them (learned); every click update is one of its Trainer
    iterations, and ``head_updates`` more follow on fresh images scored by the head. Its learning rate is
    ``learning_rate``, or with 0 (auto) ``learning_rate_for``'s: the benchmarked one for the tiny model, the
    Train settings' otherwise. With ``check_seeds`` an update the head scores lower on those seeds' images is
    undone (``PreferenceSession``). Its updates add ``kl_weight`` x the gradient of the KL to the base model
    (``TrainConfig.kl_weight``, ``kl_kind`` and ``kl_steps``, whatever the Train settings say; FieldError when the
    weight is above 0 and their eta is 0).
    It continues from the session's current LoRA when the model and rank fit.
    """
    check_seeds = list(DEFAULT_CHECK_SEEDS if check_seeds is None else check_seeds)
    run = runs.session_run(session)
    base = run.config if run is not None else config_from_form(form, hosted)
    base_lr = run.train_lr if run is not None and run.train_lr is not None else base.lr
    learning_rate = learning_rate_for(learning_rate, base.model, base_lr)
    kind = _kind(mode, features, head_updates, base.model, learning_rate, bool(check_seeds), float(kl_weight))
    if run is not None and run.kind == kind:
        return run
    if run is not None and run.running:
        raise FieldError("preference", "training is running in this session; stop it first")
    continue_lora = run is not None  # the new run is built from this run's own config, so its LoRA fits
    return _new_click_run(session, base, hosted, mode, features, head_updates, learning_rate, check_seeds, kind,
                          continue_lora, base_lr, kl_weight=float(kl_weight), kl_kind=kl_kind, kl_steps=kl_steps)


def _new_click_run(session: str, base: Any, hosted: bool, mode: str, features: str, head_updates: int,
                   learning_rate: float, check_seeds: list[int], kind: str, continue_lora: bool, train_lr: float,
                   round_images: str = DEFAULT_ROUND_IMAGES, estimator: str | None = None,
                   head_fit: dict[str, Any] | None = None, kl_weight: float = DEFAULT_KL_WEIGHT,
                   kl_kind: str = DEFAULT_KL_KIND, kl_steps: int = DEFAULT_KL_STEPS,
                   kl_trajectories: str | None = None) -> Run:
    """A new click run from config ``base`` (its "before" strip sampled); FieldError for unusable features.
    ``round_images``: what its rounds show (PreferenceSession's; a loaded log's own). ``estimator``: a loaded log's
    (None: ``base``'s, the Train settings'); ``base``'s estimator options go with ``base``'s estimator only.
    ``head_fit``: a loaded log's head ``l2``, ``group_weight_choices`` and ``solver`` (None: the head's defaults).
    ``kl_weight`` / ``kl_kind`` / ``kl_steps`` / ``kl_trajectories``: the KL to the base model of its updates, what it
    counts, the steps drawn for it and whose trajectories (the tab's or a loaded log's; ``kl_trajectories`` None:
    ``base``'s)."""
    if kl_weight > 0 and base.eta <= 0:
        raise FieldError(KL_FIELD, f"needs stochastic steps: set it to 0, or eta above 0 in the Train settings (eta is "
                                   f"{base.eta:g}); got {kl_weight:g}")
    features = features_for(features, base.model)
    estimator = estimator or base.estimator
    options = dict(base.estimator_options) if estimator == base.estimator else {}
    run_id = runs.new_run_id()
    log = ClickLog(runs.run_dir(run_id) / "clicks.jsonl")
    try:  # the head is built once: in learned mode it is the run's reward, in direct mode it predicts the clicks
        head = PreferenceReward(log, features=features, **(head_fit or {}))
        # keep_best off: a click update exports its LoRA at once (the guard's figures are still computed)
        config = base.replace(reward="preference", reward_options={"mode": mode, "features": features,
                                                                   "log_path": str(log.path)},
                              eval_every=max(base.eval_every, 1), keep_best=False, lr=learning_rate,
                              estimator=estimator, estimator_options=options, kl_weight=float(kl_weight),
                              kl_kind=kl_kind, kl_steps=int(kl_steps),
                              kl_trajectories=kl_trajectories or base.kl_trajectories)
        new = create_run(session, config, hosted, continue_lora, reward=head if mode == "learned" else ClickReward(),
                         kind=kind, run_id=run_id)
        new.preference = PreferenceSession(new.trainer, log, mode=mode, k=None, reward=head, features=features,
                                           head_updates=head_updates, check_seeds=check_seeds,
                                           round_images=round_images)
    except WeightsUnavailableError as error:
        raise FieldError("Learned-head features", f"{error} Pick 'pixels' or 'layout' (weight-free).") from None
    new.train_lr = train_lr  # what "auto" falls back to for a model other than the tiny one
    settings = new.preference.settings()
    new.status = (f"click run ({mode}, estimator {estimator}, features {settings['features']}, "
                  f"{head_updates} head update(s) per round, "
                  f"learning rate {learning_rate:g}, KL to the base model {kl_text(kl_weight, kl_kind)}, "
                  f"{check_text(check_seeds)}) "
                  f"from {'the current LoRA' if continue_lora else 'a fresh LoRA'}")
    _add_strip(new, "before")
    return new


def strip_seeds(config: Any) -> list[int]:
    """The fixed seeds of a click run's strips: its first evaluation seeds, filled up with 0, 1, 2, ..."""
    seeds = list(dict.fromkeys(int(s) for s in config.eval_seeds))[:STRIP_IMAGES]
    return seeds + [s for s in range(2 * STRIP_IMAGES) if s not in seeds][: STRIP_IMAGES - len(seeds)]


def _add_strip(run: Run, label: str) -> None:
    """Sample the run's fixed seeds with its current LoRA (no reward needed) and keep them as a strip;
    the first strip and the last ``STRIPS_KEPT`` are kept."""
    seeds, prompts = strip_seeds(run.config), list(run.config.prompts)
    with runs.using(run):
        images, _ = run.trainer.evaluate(seeds, prompts)  # a click run's reward scores nothing: ignored
    run.strips.append(Strip(label, list(images or []), [prompts[i % len(prompts)] for i in range(len(seeds))], seeds))
    if len(run.strips) > STRIPS_KEPT + 1:
        del run.strips[1]


def strips(run: Run | None) -> list[Strip]:
    """The run's strips to show, latest first, the "before" strip last (none for a training run)."""
    kept = list(run.strips) if run is not None else []
    return kept[:0:-1] + kept[:1]


def preference_round(session: str, form: dict[str, Any], hosted: bool, k: int, mode: str,
                     features: str = DEFAULT_FEATURES, head_updates: Any = DEFAULT_HEAD_UPDATES,
                     learning_rate: Any = DEFAULT_LEARNING_RATE, check_updates: Any = DEFAULT_CHECK_UPDATES,
                     kl_weight: Any = DEFAULT_KL_WEIGHT) -> Run:
    """Show a new round of ``k`` images from the session's current model (a click run is created if needed);
    ``check_updates``: undo an update the head scores lower on fixed seeds (``CHECK_SEEDS``); ``kl_weight``: the
    KL to the base model of the updates."""
    if mode not in PREFERENCE_MODES:
        raise FieldError("Mode", f"must be one of {', '.join(PREFERENCE_MODES)}; got {mode!r}")
    if features not in FEATURE_CHOICES:
        raise FieldError("Learned-head features", f"must be one of {', '.join(FEATURE_CHOICES)}; got {features!r}")
    head_updates = parse_int("Updates per round from the head", head_updates, 0, MAX_HEAD_UPDATES)
    learning_rate = parse_float(LEARNING_RATE_FIELD, learning_rate, 0.0, MAX_LEARNING_RATE)
    kl_weight = parse_float(KL_FIELD, kl_weight, 0.0, MAX_KL_WEIGHT)
    k = parse_int("Images per round", k, 2, caps(hosted)["pref_k"])
    if not isinstance(check_updates, bool):
        raise FieldError(CHECK_FIELD, f"must be true or false; got {check_updates!r}")
    run = preference_run(session, form, hosted, mode, features, head_updates, learning_rate,
                         check_seeds_for(check_updates), kl_weight)
    shown = [round_prompt(run.config.prompts, run.counters["rounds"])]  # one prompt per round, in turn
    prompts = noise_group_batch(run, k, mode == "learned", "Images per round", caps(hosted)["pref_k"], shown)
    seed = 10_000 + run.config.seed * 1000 + run.counters["rounds"]
    with runs.using(run):
        run.round = run.preference.new_round(prompts, seed=seed)
    run.counters["rounds"] += 1
    return run


def preference_update(session: str, chosen: list[int], best_only: bool) -> tuple[Run, Any]:
    """Record the clicks of the round on screen, run the Trainer iterations of one update (the click
    update, then the head updates) and sample the strip of the fixed seeds."""
    run = require_run(session, "preference")
    if run.preference is None or run.round is None or run.round.updated:
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
    _count_update(run, update, len(chosen))
    _add_strip(run, f"update {run.counters['updates']}")
    return run, update


def _count_update(run: Run, update: Any, clicks: int) -> None:
    for report in [update.report, *update.head_reports]:
        record_report(run, report)
    run.counters["clicks"] += clicks
    run.counters["updates"] += 1
    run.counters["undone"] += not update.accepted


# ------------------------------------------------------------------------------------ loading a click log


def _read_log(path: Path) -> ClickLog:
    """The uploaded click log, read; FieldError when it is empty or holds no readable click record."""
    if not any(line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()):
        raise FieldError(LOG_FIELD, "is empty: it holds no clicks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable lines are skipped; a log without any record is refused below
        log = ClickLog(path)
    if not log.records or not all(isinstance(r.round_id, str) for r in log.records):
        raise FieldError(LOG_FIELD, f"is not a click log: {path.name!r} has no readable click records "
                                    "(upload the .zip or .jsonl of 'Download click log')")
    return log


def load_click_log(session: str, path: str, form: dict[str, Any], hosted: bool) -> tuple[Run, str]:
    """Rebuild a click run from an uploaded click log (.zip of 'Download click log', or its .jsonl).

    The new click run has the log's settings (mode, features, head updates, learning rate, check seeds, estimator) and
    the Train form's model,
    LoRA rank and targets; every round of the log is replayed (same seeds, same clicks) from the log's
    starting LoRA, and its own log receives them, so the session continues where the log ended.
    Returns the run and a message for the user.
    """
    previous = runs.session_run(session)
    if previous is not None and previous.running:
        raise FieldError(LOG_FIELD, "training is running in this session; stop it first")
    folder = runs.run_dir(runs.new_run_id())  # the upload, unpacked; deleted once replayed
    try:
        return _replay_upload(session, unpack_click_log(path, folder, hosted), form, hosted, previous)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _replay_upload(session: str, path: Path, form: dict[str, Any], hosted: bool,
                   previous: Run | None) -> tuple[Run, str]:
    """:func:`load_click_log` once the upload is unpacked at ``path``."""
    log = _read_log(path)
    settings = log_settings(log)
    _check_size(log, settings, hosted)
    config = config_from_form(form, hosted)
    start = _start_lora(log, config, session)
    mode, features, head_updates = settings["mode"], settings["features"], settings["head_updates"]
    learning_rate = float(settings["lr"] if settings["lr"] is not None else config.lr)
    continue_lora = previous is not None and same_lora_layout(previous.config, config)
    check_seeds, kl_weight, kl_kind = settings["check_seeds"], float(settings["kl_weight"]), settings["kl_kind"]
    kl_steps, kl_trajectories = settings["kl_steps"], settings["kl_trajectories"]
    run = _new_click_run(session, config, hosted, mode, features, head_updates, learning_rate, check_seeds,
                         _kind(mode, form_features(features), head_updates, config.model, learning_rate, bool(check_seeds),
                               kl_weight),
                         continue_lora, config.lr, settings["round_images"], settings["estimator"],
                         {"l2": settings["head_l2"], "group_weight_choices": tuple(settings["head_group_weights"]),
                          "solver": settings["head_solver"], "selection": settings["head_selection"],
                          "colour_cap": settings["head_colour_cap"]}, kl_weight, kl_kind, kl_steps, kl_trajectories)
    rounds = len(updated_rounds(log))

    def on_round(number: int, update: Any) -> None:
        last = run.preference.log.records[-caps(hosted)["pref_k"]:]  # the round just replayed is at the end (_check_size)
        shown = [r for r in last if r.round_id == update.round_id]
        _count_update(run, update, sum(1 for r in shown if r.chosen))
        if number >= rounds - STRIPS_KEPT:
            _add_strip(run, f"update {number + 1} (replayed)")

    with runs.using(run) as chain:
        try:
            if start is not None:  # the "before" strip of the log's starting LoRA
                chain.load_lora_state_dict(start)
                run.strips.clear()
                _add_strip(run, "before")
            result = run.preference.replay(log, on_round=on_round)
        except (ValueError, TypeError, TrainingStepError) as error:
            raise FieldError(LOG_FIELD, str(error)) from None
    first = 10_000 + run.config.seed * 1000  # the first round seed of this run (preference_round)
    seeds = [records[0].seed for records in log.rounds().values() if isinstance(records[0].seed, int)]
    run.counters["rounds"] = max([result.rounds, *(s - first + 1 for s in seeds if first <= s < first + 1000)])
    message = (f"replayed {result.rounds} rounds; {len(result.mismatched_rounds)} rounds' images differed from the log"
               + ("" if start is not None else " (the log has no starting LoRA: upload the .zip to replay exactly)"))
    run.status = message
    return run, message


def _check_size(log: ClickLog, settings: dict[str, Any], hosted: bool) -> None:
    """FieldError naming the click log when replaying it with its ``settings`` exceeds this server's limits
    (iterations, images per round, prompt length)."""
    limits = caps(hosted)
    rounds = updated_rounds(log)
    iterations = len(rounds) * (1 + settings["head_updates"])
    if iterations > limits["steps"]:
        raise FieldError(LOG_FIELD, f"replaying it takes {iterations} training iterations; at most {limits['steps']} here")
    hidden_twins = settings["round_images"] == "hidden-twins"  # trains on its images and their rlr twins: twice as many
    most = limits["pref_k"] // (2 if hidden_twins else 1)
    if max(len(records) for records in rounds) > most:
        raise FieldError(LOG_FIELD, f"has a round of more than {most} images, the most per round here"
                                    + (" with hidden twins" if hidden_twins else ""))
    if max(len(str(r.prompt)) for records in rounds for r in records) > limits["prompt_chars"]:
        raise FieldError(LOG_FIELD, f"has a prompt longer than {limits['prompt_chars']} characters, the most here")


def _start_lora(log: ClickLog, config: Any, session: str) -> dict[str, Any] | None:
    """The log's starting LoRA (None without one); FieldError unless it fits the Train form's model, LoRA rank
    and targets."""
    try:
        start = log.start_lora()
    except Exception as error:  # a damaged file: safetensors raises its own error type
        raise FieldError(LOG_FIELD, f"its starting LoRA cannot be read ({error})") from None
    initial = runs.MODELS.get(config, session).initial_lora
    if start is not None and (set(start) != set(initial) or any(start[k].shape != initial[k].shape for k in start)):
        raise FieldError(LOG_FIELD, f"its starting LoRA does not fit {config.model} with LoRA rank {config.lora_rank}, "
                                    f"targets {config.lora_targets}; set the Train form to the model, LoRA rank and "
                                    "targets the log was made with")
    return start
