"""Click sessions of a preference run: rounds of images to click, each turned into Trainer iterations.

A session samples a round with the run's estimator (``estimator.rollout``, keeping what the gradient
needs), logs the user's click in the click log (``rlr_core.rewards.click_log``, durable before use), and
updates with the clicks as rewards (direct mode) or with the refitted learned head's rewards on the shown
images (learned mode, ``rlr_core.rewards.preference_head``) through ``trainer.update_from_rewards``: a step,
a metrics line and checkpoints when due, like any other iteration. ``head_updates`` more iterations per
round sample fresh images and score them with the head, without the user. A round is the update's batch (rlr's
antithetic twins included: two drawings, each shown twice) or, with ``round_images="hidden-twins"``, one image of
each twin pair of a batch twice its size.

With ``check_seeds`` an update must also convince the head: the images of those fixed seeds (the run's
prompts in turn) are sampled before and after it and scored by the head refitted on the round's click; when
the mean score went down, the update is undone (parameters and optimizer state). A click the model
misreads, or a step that moves the model off the images the head was fitted on, then costs nothing.

A Bradley-Terry head is fitted on the clicks in every mode: before it learns from a round it predicts
the round's click, which is the held-out accuracy the session reports. Everything the updates depend on
(the starting LoRA, the round seeds, the clicks, the settings) is in the log, and the updates are
deterministic, so :meth:`PreferenceSession.replay` rebuilds the model from a log. See docs/rewards.md
(preference).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from ..rewards.click_log import ClickLog, ClickRecord, click_rewards, image_sha256, to_uint8
from ..rewards.preference import (DEFAULT_CHECK_SEEDS, DEFAULT_FEATURES, DEFAULT_HEAD_UPDATES, DEFAULT_MODE,
                                  DEFAULT_ROUND_IMAGES, check_round_images, features_for)
from ..rewards.preference_head import MODES, PreferenceReward
from ..sampling import sample
from .click_settings import check_replay_settings
from .run_folder import isolated_rng

__all__ = ["PreferenceRound", "PreferenceSession", "PreferenceUpdate", "ReplayResult", "round_prompt"]


def round_prompt(prompts: Sequence[str], index: int) -> str:
    """The prompt round ``index`` shows (all its images), the run's prompts in turn.

    A round of one prompt asks the user to compare what the model can change (the same prompt drawn from
    other seeds). A round mixing prompts mostly asks which prompt they like: in benchmarks/click_head_probe.py
    a head fitted on mixed rounds ordered same-prompt pairs by redness at chance (0.49), after one-prompt
    rounds 0.66.
    """
    if not prompts:
        raise ValueError("prompts must not be empty")
    return str(prompts[int(index) % len(prompts)])


@dataclass
class PreferenceRound:
    """One batch shown to the user. ``rollout`` is what the estimator needs for the update."""

    round_id: str
    prompts: list[str]
    seed: int | None
    images: torch.Tensor  # [B, 3, H, W] cpu float in [0, 1], detached (what is displayed)
    image_hashes: list[str]
    rollout: Any = field(repr=False, default=None)
    records: list[ClickRecord] | None = None
    updated: bool = False

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def clicked(self) -> bool:
        return self.records is not None

    def pil_images(self) -> list[Any]:
        """The images as PIL (for a UI gallery)."""

        return [Image.fromarray(a) for a in to_uint8(self.images)]


@dataclass
class PreferenceUpdate:
    """What ``PreferenceSession.update`` did.

    ``report``: the Trainer's StepReport of the click update; ``head_reports``: those of the
    ``head_updates`` iterations that followed it (fresh images scored by the learned head). ``accepted``:
    False when the session's check undid them (``check_scores``: the head's mean score of the check images
    before and after; None without a check).
    """

    round_id: str
    rewards: list[float]
    update_norm: float
    report: Any
    head_reports: list[Any] = field(default_factory=list)
    accepted: bool = True
    check_scores: tuple[float, float] | None = None  # the head's mean score of the check images before, after


@dataclass
class ReplayResult:
    """What ``PreferenceSession.replay`` did: rounds replayed, and those whose images differed from the log."""

    rounds: int
    mismatched_rounds: list[str]
    updates: list[PreferenceUpdate]


class PreferenceSession:
    """Rounds of images to click, each turned into iterations of the run's Trainer.

    ``trainer``: the run's ``rlr_core.training.Trainer`` (anything with ``chain``, ``estimator``, ``config``
    and ``update_from_rewards(rollout, rewards) -> StepReport``): its estimator samples the rounds and
    every update is a Trainer iteration (a step, a metrics line, checkpoints when due).
    ``mode``: ``direct`` (the clicks are the rewards of the shown images) or ``learned`` (the head's
    scores of them). ``k``: how many images the user must choose per round in ``click(chosen=...)``
    (None = any number between 1 and B-1). ``reward``: the head (a ``PreferenceReward``); built from
    ``features`` when not given. ``head_updates``: iterations per round on fresh images scored by the
    head, after the click update (none before the first click). ``check_seeds``: the fixed seeds whose
    images (the run's prompts in turn) must score at least as high with the head after an update as before it,
    or the update is undone (empty: every update is kept; a check needs the trainer's ``step``,
    ``config.prompts``, ``snapshot()`` and ``restore()``, as ``rlr_core.training.Trainer`` has them).
    ``round_images``: what a round shows, ``batch`` (the update's own batch; with rlr's antithetic twins that is two
    drawings, each shown twice, nearly alike) or ``hidden-twins`` (learned mode: the batch is the estimator's noise
    groups times the round's size, the round shows its first group, one image of each noise set, and the update uses
    all of it, scored by the head refitted on the click). The defaults are ``rlr_core.rewards.preference``'s
    DEFAULT_MODE, DEFAULT_FEATURES, DEFAULT_HEAD_UPDATES, DEFAULT_CHECK_SEEDS and DEFAULT_ROUND_IMAGES.
    """

    def __init__(
        self,
        trainer: Any,
        log: ClickLog | str | os.PathLike,
        mode: str = DEFAULT_MODE,
        k: int | None = 1,
        reward: PreferenceReward | None = None,
        features: str = DEFAULT_FEATURES,
        head_updates: int = DEFAULT_HEAD_UPDATES,
        check_seeds: Sequence[int] = DEFAULT_CHECK_SEEDS,
        round_images: str = DEFAULT_ROUND_IMAGES,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not allowed; allowed values: {list(MODES)}")
        if k is not None and int(k) < 1:
            raise ValueError(f"k={k!r} is not allowed; allowed values: an integer >= 1 or None")
        if int(head_updates) < 0:
            raise ValueError(f"head_updates={head_updates!r} is not allowed; allowed values: an integer >= 0")
        self.round_images = check_round_images(round_images, mode)
        self.trainer = trainer
        self.log = log if isinstance(log, ClickLog) else ClickLog(log)
        self.mode = mode
        self.k = None if k is None else int(k)
        self.head_updates = int(head_updates)
        self.check_seeds = [int(seed) for seed in check_seeds]
        self._check_images: tuple[int, torch.Tensor] | None = None  # (trainer step, images) of the check seeds
        if reward is None:
            features = features_for(features, getattr(getattr(trainer, "config", None), "model", ""))
        self.head = reward if reward is not None else PreferenceReward(self.log, features=features)
        if self.head.log is not self.log:
            self.head.refit(self.log)
        self.features = self.head.features_name
        self.reward: PreferenceReward | None = self.head if mode == "learned" else None
        self.predictions: list[tuple[int, int]] = [p for p in (_logged_prediction(e) for e in self.log.events) if p]

    def settings(self) -> dict[str, Any]:
        """The settings the updates depend on, as logged with every update."""
        config = getattr(self.trainer, "config", None)
        learning_rate = getattr(config, "lr", None)
        return {"mode": self.mode, "features": self.features, "head_updates": self.head_updates,
                "head_gradient": bool(self.head.differentiable),
                "lr": None if learning_rate is None else float(learning_rate), "check_seeds": list(self.check_seeds),
                "round_images": self.round_images, "estimator": getattr(self.trainer.estimator, "name", None),
                "head_l2": self.head.l2, "head_group_weights": list(self.head.group_weight_choices),
                "head_solver": self.head.solver, "head_selection": self.head.selection,
                "head_colour_cap": self.head.colour_cap, "kl_weight": float(getattr(config, "kl_weight", 0.0)),
                "kl_kind": str(getattr(config, "kl_kind", "trajectory")),
                "kl_steps": int(getattr(config, "kl_steps", 4)),
                "kl_trajectories": str(getattr(config, "kl_trajectories", "sampled"))}

    def new_round(self, prompts: Sequence[str], generator: torch.Generator | None = None, seed: int | None = None) -> PreferenceRound:
        """Sample one round (one image per prompt) with what the update will need: the update's batch is the round
        (``round_images`` batch) or holds the round and its hidden twins (hidden-twins)."""
        prompts = [str(p) for p in prompts]
        if len(prompts) < 2:
            raise ValueError(f"a round needs at least 2 images to compare, got {len(prompts)} prompts")
        if self.k is not None and self.k >= len(prompts):
            raise ValueError(f"k={self.k} must be smaller than the number of images per round ({len(prompts)})")
        if generator is None:
            seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            generator = torch.Generator().manual_seed(seed)
        else:
            seed = int(generator.initial_seed())
        self._record_start()
        differentiable = self.mode == "learned" and self.head.differentiable
        # hidden-twins: rows i, i + n, ... share noise set i, so the first n (the round) are all different
        groups = self.trainer.estimator.noise_groups(differentiable) if self.round_images == "hidden-twins" else 1
        rollout = self._rollout(list(prompts) * groups, generator, differentiable)
        images = rollout.images[: len(prompts)].detach().float().cpu()
        hashes = [image_sha256(a) for a in to_uint8(images)]
        return PreferenceRound(uuid.uuid4().hex, prompts, seed, images, hashes, rollout)

    def _rollout(self, prompts: Sequence[str], generator: torch.Generator, differentiable_reward: bool) -> Any:
        return self.trainer.estimator.rollout(self.trainer.chain, list(prompts), generator,
                                              differentiable_reward=differentiable_reward)

    def _record_start(self) -> None:
        """Before the first round of a log: an untrained LoRA is drawn from the run's seed (as a fresh
        training run's is), so the same seed, rounds and clicks give the same LoRA in any process; then the
        LoRA the session starts from is kept in the log (replay starts there). A trained or loaded LoRA is
        kept as it is."""
        if self.log.start_lora() is not None or not hasattr(self.trainer.chain, "lora_state_dict"):
            return
        initialize_lora = getattr(self.trainer, "initialize_lora", None)
        if callable(initialize_lora):
            initialize_lora()  # no-op unless every lora_B is zero: the images a round shows do not change
        self.log.save_start_lora(self.trainer.chain.lora_state_dict())

    def predict(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """The head's scores of images (fitted on the clicks so far; all 0 before the first click)."""
        with torch.no_grad():
            return [float(v) for v in self.head(images, list(prompts))]

    def click(self, round: PreferenceRound, chosen: Sequence[int] | None = None, ranks: Sequence[int] | None = None) -> list[ClickRecord]:
        """Record the user's choice (logged and fsynced before anything uses it).

        Before the head refits on it, its prediction of this click is scored (``predictions``).
        """
        if round.clicked:
            raise ValueError(f"round {round.round_id} was already clicked")
        if chosen is not None and self.k is not None and len(list(chosen)) != self.k:
            raise ValueError(f"chosen={list(chosen)} must pick exactly k={self.k} images")
        flags, rank_list, rewards = click_rewards(round.size, chosen, ranks)
        prediction = self._prediction(round, rewards) if self.head.weight is not None else None
        round.records = self.log.append_round(round.round_id, round.prompts, round.seed, to_uint8(round.images), flags, rank_list, self.mode)
        if prediction is not None:
            self.predictions.append(prediction)
            self.log.append_event("prediction", round_id=round.round_id, correct=prediction[0], pairs=prediction[1])
        self.head.refit(self.log)
        return round.records

    def _prediction(self, round: PreferenceRound, rewards: torch.Tensor) -> tuple[int, int]:
        """(pairs the head orders as the user did, pairs) of one round, before it learns from it."""
        scores = self.predict(round.images, round.prompts)
        values = [float(v) for v in rewards]
        pairs = [(a, b) for a in range(len(values)) for b in range(len(values)) if values[a] > values[b]]
        return sum(scores[a] > scores[b] for a, b in pairs), len(pairs)

    def held_out_accuracy(self, last: int | None = None) -> float:
        """Share of click pairs the head predicted before seeing them (over the ``last`` rounds; nan before any)."""
        chosen = self.predictions[-last:] if last else self.predictions
        pairs = sum(p for _, p in chosen)
        return sum(c for c, _ in chosen) / pairs if pairs else float("nan")

    def rewards_for(self, round: PreferenceRound) -> torch.Tensor:
        """Rewards of the round's update: its clicks (direct) or the refitted head's scores of the update's batch
        (learned: the shown images, and with hidden-twins their twins)."""
        if not round.clicked:
            raise ValueError(f"round {round.round_id} has no click yet; call click() first")
        if self.mode == "direct":
            recs = sorted(round.records or [], key=lambda r: r.index)
            chosen = None if recs[0].rank is not None else [r.index for r in recs if r.chosen]
            ranks = [r.rank for r in recs] if recs[0].rank is not None else None
            return click_rewards(round.size, chosen, ranks)[2]  # type: ignore[arg-type]
        return self.head(round.rollout.images, list(round.rollout.prompts))

    def update(self, round: PreferenceRound) -> PreferenceUpdate:
        """One optimiser step from the round's clicks, through the round's own trajectories (with hidden-twins also
        their twins, scored by the refitted head like the shown ones), then ``head_updates`` steps on fresh images of
        the round's prompts scored by the head."""
        if round.updated:
            raise ValueError(f"round {round.round_id} was already used for an update")
        if round.rollout is None:
            raise ValueError(f"round {round.round_id} has no rollout (rounds do not survive a restart; sample a new one)")
        rewards = self.rewards_for(round)
        before = self._check_start() if self.check_seeds and self.head.weight is not None else None
        report = self.trainer.update_from_rewards(round.rollout, rewards)
        round.updated, round.rollout = True, None  # free the kept graph / states
        head_updates = [self._head_update(round, i) for i in range(self.head_updates if self.head.weight is not None else 0)]
        head_reports = [report for report, _ in head_updates]
        accepted, check_scores = self._check_end(before) if before is not None else (True, None)
        values = [float(v) for v in rewards.detach().cpu()]
        norm = float(report.update_norm)
        self.log.append_event("update", round_id=round.round_id, rewards=values, update_norm=norm, step=int(report.step),
                              head_rewards=[mean for _, mean in head_updates], accepted=accepted,
                              check_scores=list(check_scores) if check_scores else None, **self.settings())
        return PreferenceUpdate(round.round_id, values, norm, report, head_reports, accepted, check_scores)

    def _check_start(self) -> tuple[float, torch.Tensor, dict[str, Any]]:
        """Before an update: the head's mean score of the check images, the images, the trainer's snapshot."""
        score = self._check_score()
        return score, self._check_images[1], self.trainer.snapshot()

    def _check_end(self, before: tuple[float, torch.Tensor, dict[str, Any]]) -> tuple[bool, tuple[float, float]]:
        """After an update: keep it when the check images score at least as high as before, else undo it.
        Returns (kept, (score before, score after))."""
        score_before, images_before, snapshot = before
        scores = (score_before, self._check_score())
        if scores[1] >= scores[0]:
            return True, scores
        self.trainer.restore(snapshot)
        self._check_images = (self.trainer.step, images_before)  # the restored parameters' images
        return False, scores

    def _check_score(self) -> float:
        """The head's mean score of the check seeds' images with the current parameters (the images are sampled
        once per trainer step and kept; the head is the one fitted now)."""
        prompts = self._check_prompts()
        if self._check_images is None or self._check_images[0] != self.trainer.step:
            with isolated_rng(), torch.no_grad():
                images = sample(self.trainer.chain, prompts, seeds=self.check_seeds).float().cpu()
            self._check_images = (self.trainer.step, images)
        return sum(self.predict(self._check_images[1], prompts)) / len(prompts)

    def _check_prompts(self) -> list[str]:
        """The run's prompts in turn over the check seeds."""
        prompts = [str(p) for p in self.trainer.config.prompts]
        return [prompts[i % len(prompts)] for i in range(len(self.check_seeds))]

    def _head_update(self, round: PreferenceRound, index: int) -> tuple[Any, float]:
        """One iteration on a fresh batch of the round's prompts (its own seed), the head's scores as
        rewards; returns the StepReport and the mean score."""
        seed = (int(round.seed or 0) * 7919 + 104_729 * (index + 1)) % (2**63 - 1)
        rollout = self._rollout(round.prompts, torch.Generator().manual_seed(seed), self.head.differentiable)
        scores = self.head(rollout.images, round.prompts)
        return self.trainer.update_from_rewards(rollout, scores), float(scores.detach().mean())

    def history(self) -> dict[str, list[ClickRecord]]:
        """Every clicked round in the log (survives restarts)."""
        return self.log.rounds()

    def replay(self, source: ClickLog | str | os.PathLike,
               on_round: Callable[[int, PreferenceUpdate], None] | None = None) -> ReplayResult:
        """Rebuild the model from a click log: every round of ``source`` again, same seed, same clicks.

        The session starts from the log's starting LoRA (when it kept one) and must have the settings
        the log's updates were made with (``mode``, ``features``, ``head_updates``, ``head_gradient``: whether
        the head is differentiable, ``lr``: the trainer's learning rate, ``check_seeds``, ``round_images``, ``estimator``:
        the trainer's estimator's name, ``head_l2``, ``head_group_weights``, ``head_solver``, ``head_selection`` and
        ``head_colour_cap``: the head's ``l2``, ``group_weight_choices``, ``solver``, ``selection`` and ``colour_cap``;
        ``kl_weight``, ``kl_kind``, ``kl_steps`` and ``kl_trajectories``: the trainer's KL to the base model, what it
        counts, the steps drawn for it and whose trajectories, 0, "trajectory", 4 and "sampled" in logs older than them;
        a ValueError names the one that differs).
        Rounds whose images differ from the logged ones (another model, another machine's arithmetic) are replayed
        with the logged clicks and listed in ``mismatched_rounds``.
        This session's own log receives the replayed rounds, so it continues where ``source`` ended.
        """
        source = source if isinstance(source, ClickLog) else ClickLog(source)
        updates = {e.get("round_id"): e for e in source.events if e.get("type") == "update"}
        rounds = [(rid, recs) for rid, recs in source.rounds().items() if rid in updates]
        check_replay_settings(self.settings(), {rid: updates[rid] for rid, _ in rounds})
        start = source.start_lora()
        if start is not None and hasattr(self.trainer.chain, "load_lora_state_dict"):
            self.trainer.chain.load_lora_state_dict(start)
            self._check_images = None
            if self.log.start_lora() is None:  # this log starts where the source did (no re-draw from the seed)
                self.log.save_start_lora(start)
        mismatched, done = [], []
        for number, (rid, records) in enumerate(rounds):
            records = sorted(records, key=lambda r: r.index)
            shown = self.new_round([r.prompt for r in records], seed=records[0].seed)
            if shown.image_hashes != [r.image_sha256 for r in records]:
                mismatched.append(rid)
            if records[0].rank is not None:
                self.click(shown, ranks=[int(r.rank) for r in records])
            else:
                self._click_any(shown, [r.index for r in records if r.chosen])
            done.append(self.update(shown))
            if on_round is not None:
                on_round(number, done[-1])
        return ReplayResult(len(rounds), mismatched, done)

    def _click_any(self, round: PreferenceRound, chosen: list[int]) -> None:
        """A logged click, whatever this session's ``k`` (the log decided it)."""
        k, self.k = self.k, None
        try:
            self.click(round, chosen=chosen)
        finally:
            self.k = k


def _logged_prediction(event: dict[str, Any]) -> tuple[int, int] | None:
    if event.get("type") != "prediction":
        return None
    return int(event.get("correct", 0)), int(event.get("pairs", 0))
