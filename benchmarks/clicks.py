"""Click benchmark: how fast simulated users' clicks move the tiny model toward what they click for.

A simulated user sees rounds of 4 images (one per prompt, T=20) and clicks the one with the most of an
attribute the prompts do not ask for; with probability ``noise`` the click goes to another image at
random. Every round is one ``rlr_core.training.clicks.PreferenceSession`` round with the product's
default estimator (``rlr``). After each round the attribute is measured on 8 fixed seeds (the same
images every round). Attributes:

* ``red``: mean red minus mean green/blue (the prompts ask for blue, green, yellow, purple shapes);
* ``boxy``: the extent of the largest shape the tiny detector finds (its area over its bounding box's: a square 1.0,
  a circle 0.75, a star 0.41; a ragged or broken outline lowers it); the full phase clicks for it on the prompts that
  name no shape (``ATTRIBUTE_PROMPTS``; the prompts that do ask for circles and squares);
* ``left``: how far left the shape sits, 0.5 minus the x of the centroid of the soft foreground mask
  (``rlr_core.rewards.composition``; the prompts say nothing of position).

Three more detector attributes for the offline head probe (benchmarks/click_head_probe.py; a task may name them):
``spiky`` (1 - solidity of the largest shape: stars ~0.5, circles and squares ~0.05; the full phase's shape until
2026-12-07, when ragged and broken outlines were found to raise it too), ``size`` (the shape's area as a share of the
image) and ``star`` (1 for a clean five-pointed star, ``rlr_core.tiny.detect.is_clean_star``,
else 0). A spiky session (and reference) also records the clean stars of its fixed seeds after each round
(``star_curve``): a ragged outline raises spiky without drawing a star.

The reference for each attribute is the attribute itself as the training reward, as many iterations
of batch 4 as the session has rounds; a session's "rounds to half" is the first round whose gain
reaches half of the reference's gain on the same seed.

    python benchmarks/clicks.py --out benchmarks/results/clicks --phase screen     # candidates, noise 0, seed 1
    python benchmarks/clicks.py --out benchmarks/results/clicks --phase full       # the default, 3 noises x 3 seeds
    python benchmarks/clicks.py --out benchmarks/results/clicks --phase full --default learned-both   # a candidate
    python benchmarks/clicks.py --out benchmarks/results/clicks --report
Candidates besides the product's modes (``MODES``): head variants (``HEAD_VARIANTS``: one common feature
scale, tiny-clip + pixel features, a scores-only head: ``differentiable=False``) and a session learning rate
(named in the mode, ``-lr0.005``; every other run uses 0.01). ``--modes reference-scores`` adds the attribute as a reward
without its gradient; ``--noises 1.0`` (every click wrong) is the control a real gain must beat; a task's
``"clicker": "worst"`` clicks the image with the LEAST of the attribute instead (the stricter control: a random wrong
click is often the best image's near twin).
Each session also records, per round, the cosine between the head's and the attribute's gradients with
respect to the shown images (``gradient_alignment``; red and left only), and the weights of the head's feature
groups (``group_weights``: all 1 unless the head weighs them, ``selection="cross-validated"``).
Runs use the tiny model's own LoRA targets (``lora_targets="auto"``: attention+conv since commit 139527e; the runs
of earlier pages used attention only) and the mode's learning rate; a task dict may name others (``lora_targets``,
``lr``, ``kl_weight``, ``kl_steps``, ``kl_kind`` and ``kl_trajectories``: the KL to the base model, docs/config.md),
another model (``model``: an exported model's
folder, e.g. one fine-tuned with ``rlr_core.tiny.train --generic-shape``) and the prompts (``prompts``:
``"shape-free"``, the same colours and backgrounds naming no shape, ``SHAPE_FREE_PROMPTS``). Each run records what it
trained with (``settings``), and the report labels and matches references by it. A task's ``wide_seeds`` (a count)
also measures the attribute on that many more fixed seeds at the start and the end (``wide_curve``; the report's
wide-seeds table): a finer figure of the gain than the 8 seeds.
Results are appended to ``<out>/runs.jsonl`` as they finish; a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLICK_PROMPTS = [
    "a blue circle on a white background",
    "a green square on a gray background",
    "a yellow circle on a black background",
    "a purple square on a white background",
]
# the same colours and backgrounds, naming no shape: for a model fine-tuned with --generic-shape (rlr_core.tiny.train),
# whose drawings of such a caption vary in shape; a task names them with "prompts": "shape-free"
SHAPE_FREE_PROMPTS = [prompt.replace(" circle ", " shape ").replace(" square ", " shape ") for prompt in CLICK_PROMPTS]
PROMPT_SETS = {"shapes-named": CLICK_PROMPTS, "shape-free": SHAPE_FREE_PROMPTS}
DEFAULT_PROMPT_SET = "shapes-named"  # a task's, unless it names "prompts"
# the prompt set plan() gives an attribute's tasks when it is not the default: prompts that name the shape ask for
# one, so the shape attribute is clicked for on prompts that name none (the bundled model draws any shape for them
# since 2026-12-06; pages before that ran spiky on the shapes-named prompts)
ATTRIBUTE_PROMPTS = {"spiky": "shape-free", "boxy": "shape-free"}
EVAL_SEEDS = list(range(3000, 3008))
WIDE_SEEDS_START = 5000  # a task's "wide_seeds" are 5000, 5001, ... (see wide_seeds)
# name -> PreferenceSession settings (mode, features, head_updates)
MODES = {
    "direct": ("direct", "tiny-clip", 0),  # the head (for the held-out accuracy only) on tiny-clip
    "learned-pixels": ("learned", "pixels", 0),
    "learned-layout": ("learned", "layout", 0),
    "learned-layout-lr3x": ("learned", "layout", 0),
    "learned-layout-one": ("learned", "layout", 0),
    "learned-pixels-one": ("learned", "pixels", 0),
    "learned-layout-one-checked": ("learned", "layout", 0),
    "learned-layout-one+head1": ("learned", "layout", 1),
    "learned-layout-one-hidden": ("learned", "layout", 0),
    "learned-layout-one-l2=0.1": ("learned", "layout", 0),
    "learned-layout-one-l2=1": ("learned", "layout", 0),
    "learned-layout-one-lr0.003": ("learned", "layout", 0),
    "learned-layout-one-lr0.005": ("learned", "layout", 0),
    "learned-layout-one-hidden-lr0.005": ("learned", "layout", 0),
    "learned-clip-one-lr0.005": ("learned", "tiny-clip", 0),
    "learned-clip-one-hidden-lr0.005": ("learned", "tiny-clip", 0),
    "learned-layout+clip-one-lr0.005": ("learned", "layout", 0),
    "learned-clip+grid-one-lr0.005": ("learned", "tiny-clip", 0),  # = the next one, screened before tiny-clip+grid existed
    "learned-tiny-clip+grid-one-lr0.005": ("learned", "tiny-clip+grid", 0),
    # the head weighs its feature groups by cross-validation (PreferenceReward selection "auto" for these features;
    # runs at commit 0e83a57 named selection="cross-validated" as a head variant: the same head; at 65e2010 the name
    # meant a selection of any subset of the groups, one that could drop the embedding: weighed-groups/screen.jsonl)
    "learned-tiny-clip+grid+colour-cv-one-lr0.005": ("learned", "tiny-clip+grid+colour", 0),
    "learned-tiny-clip+grid+colour-cv3-one-lr0.005": ("learned", "tiny-clip+grid+colour", 0),  # group weights 0, 1, 3
    "learned-tiny-clip+grid+colour-cv-one-hidden-lr0.005": ("learned", "tiny-clip+grid+colour", 0),
    "learned-tiny-clip+grid+colour-cv-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cv-one-hidden+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cv-one+head2-lr0.005": ("learned", "tiny-clip+grid+colour", 2),
    "learned-tiny-clip+grid+colour-cvkeep-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),  # no group dropped
    "learned-tiny-clip+grid+colour-cv-one+head1-fullbp-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cv-one-fullbp-lr0.005": ("learned", "tiny-clip+grid+colour", 0),
    "learned-tiny-clip+grid+colour-cvkeep-one-fullbp-lr0.005": ("learned", "tiny-clip+grid+colour", 0),  # no group dropped
    "learned-tiny-clip+grid+colour-cvavg-one-fullbp-lr0.005": ("learned", "tiny-clip+grid+colour", 0),  # weightings averaged
    "learned-tiny-clip+grid+colour-cvavg-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),  # weightings averaged
    "learned-tiny-clip+grid+colour-cvw100-l2=0.3-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cv100-l2=0.3-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cvavg-w100-l2=0.3-newton-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cv-l2=0.01-lbfgs-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    # the default's head, its group weights the simplest within one standard error of the best held-out loss
    "learned-tiny-clip+grid+colour-cv1se-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    # the default's head with the colour of the content and of the background for the colour statistics
    "learned-tiny-clip+grid+object-colour-cv-one+head1-lr0.005": ("learned", "tiny-clip+grid+object-colour", 1),
    # the default's head without the colour statistics (weighed by cross-validation like the default's)
    "learned-tiny-clip+grid-cvw100-l2=0.3-newton-one+head1-lr0.005": ("learned", "tiny-clip+grid", 1),
    "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-cap1-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-cap3-one+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    # the default's head on rounds of four different drawings (no twin pairs to click between or fit on)
    "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-one-hidden+head1-lr0.005": ("learned", "tiny-clip+grid+colour", 1),
    "learned": ("learned", "tiny-clip", 0),
    "direct+head2": ("direct", "tiny-clip", 2),
    "learned+head2": ("learned", "tiny-clip", 2),
    "learned-global": ("learned", "tiny-clip", 0),
    "learned-both": ("learned", "tiny-clip", 0),
    "learned-lr3x": ("learned", "tiny-clip", 0),
    "learned-scores": ("learned", "tiny-clip", 0),
    "learned-scores+head4": ("learned", "tiny-clip", 4),
}
LEARNING_RATE = 0.01  # of every session and reference run whose name names no other ("-lr0.005"; "-lr3x": 0.03)
# A mode's name states its settings beyond MODES' (mode, features, head updates): "-one" rounds of one prompt (4
# seeds of it; the prompt changes every round) instead of the prompts mixed; "-hidden" rounds of one image of each
# noise set of a batch twice their size (PreferenceSession round_images="hidden-twins"; else the update's own batch:
# rlr's antithetic twins, two drawings each twice); "-checked" updates that must not lower the head's score of
# rlr_core's CHECK_SEEDS' images or are undone (PreferenceSession check_seeds); "-fullbp" the sessions' estimator is
# full-bp (the head's exact gradient through every step; rounds of four different drawings), else rlr; "-lr<rate>"
# the learning rate.
# the reference run (the attribute as the reward) at each sessions' learning rate
REFERENCES = {LEARNING_RATE: "reference", 0.03: "reference-lr3x", 0.003: "reference-lr0.003", 0.005: "reference-lr0.005"}
# the group weights of the variants that weigh a group up to 100 (what they ran with, whatever GROUP_WEIGHTS becomes)
WEIGHTS_TO_100 = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
# screened head variants: name -> how the head differs from PreferenceReward's defaults
HEAD_VARIANTS = {"learned-global": {"scaling": "global"}, "learned-both": {"extra_features": "pixels"},
                 "learned-layout+clip-one-lr0.005": {"extra_features": "tiny-clip"},
                 "learned-clip+grid-one-lr0.005": {"extra_features": "layout-only"},
                 "learned-scores": {"differentiable": False}, "learned-scores+head4": {"differentiable": False},
                 "learned-tiny-clip+grid+colour-cv3-one-lr0.005": {"group_weight_choices": (0.0, 1.0, 3.0)},
                 "learned-tiny-clip+grid+colour-cvkeep-one+head1-lr0.005": {"group_weight_choices": (0.3, 1.0, 3.0, 10.0)},
                 "learned-tiny-clip+grid+colour-cvkeep-one-fullbp-lr0.005": {"group_weight_choices": (0.3, 1.0, 3.0, 10.0)},
                 "learned-tiny-clip+grid+colour-cvavg-one-fullbp-lr0.005": {"selection": "averaged"},
                 "learned-tiny-clip+grid+colour-cvavg-one+head1-lr0.005": {"selection": "averaged"},
                 # group weights up to 100 with a stronger ridge (l2 0.3): the embedding shrinks, a group may go nearly free
                 # (fitted by L-BFGS, the head's solver when it ran; "-newton": the same head by Newton's method)
                 "learned-tiny-clip+grid+colour-cvw100-l2=0.3-one+head1-lr0.005":
                     {"l2": 0.3, "group_weight_choices": WEIGHTS_TO_100, "solver": "lbfgs"},
                 "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-one+head1-lr0.005":
                     {"l2": 0.3, "group_weight_choices": WEIGHTS_TO_100, "solver": "newton"},
                 # the same ridge and weights with every weighting's head averaged by its held-out loss
                 "learned-tiny-clip+grid+colour-cvavg-w100-l2=0.3-newton-one+head1-lr0.005":
                     {"selection": "averaged", "l2": 0.3, "group_weight_choices": WEIGHTS_TO_100,
                      "solver": "newton"},
                 "learned-tiny-clip+grid+colour-cv100-l2=0.3-one+head1-lr0.005":
                     {"l2": 0.3, "group_weight_choices": (0.0, 1.0, 10.0, 100.0), "solver": "lbfgs"},
                 "learned-tiny-clip+grid+colour-cv1se-one+head1-lr0.005": {"selection": "cross-validated-1se"},
                 # the colour group's pixel gradient at most 1 or 3 times the embedding's (PreferenceReward colour_cap)
                 "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-one-hidden+head1-lr0.005":
                     {"l2": 0.3, "group_weight_choices": WEIGHTS_TO_100, "solver": "newton"},
                 "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-cap1-one+head1-lr0.005":
                     {"l2": 0.3, "group_weight_choices": WEIGHTS_TO_100, "solver": "newton", "colour_cap": 1.0},
                 "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-cap3-one+head1-lr0.005":
                     {"l2": 0.3, "group_weight_choices": WEIGHTS_TO_100, "solver": "newton", "colour_cap": 3.0},
                 "learned-tiny-clip+grid-cvw100-l2=0.3-newton-one+head1-lr0.005":
                     {"selection": "cross-validated", "l2": 0.3, "group_weight_choices": WEIGHTS_TO_100,
                      "solver": "newton"},
                 # the default head before the stronger ridge and Newton's method (stop 49), for timing
                 "learned-tiny-clip+grid+colour-cv-l2=0.01-lbfgs-one+head1-lr0.005":
                     {"l2": 0.01, "group_weight_choices": (0.0, 1.0, 3.0, 10.0), "solver": "lbfgs"},
                 "learned-layout-one-l2=0.1": {"l2": 0.1}, "learned-layout-one-l2=1": {"l2": 1.0}}
ATTRIBUTES = ("red", "boxy", "left")  # the full phase's (spiky until 2026-12-07: ragged outlines raise it)
DETECTOR_ATTRIBUTES = ("spiky", "boxy", "size", "star")  # read from the tiny detector's solidity, extent, area, stars
ALL_ATTRIBUTES = tuple(dict.fromkeys((*ATTRIBUTES, *DETECTOR_ATTRIBUTES)))  # what a task or the head probe may name
NOISES = (0.0, 0.25, 0.1)  # in the order the full phase runs them


class Attribute:
    """An attribute as a Reward (for the reference runs and for Trainer.evaluate)."""

    def __init__(self, name: str, differentiable: bool = True) -> None:
        self.name = name
        if name not in ALL_ATTRIBUTES:
            raise ValueError(f"attribute={name!r} is not allowed; allowed values: {list(ALL_ATTRIBUTES)}")
        self.differentiable = differentiable and name not in DETECTOR_ATTRIBUTES

    def __call__(self, images, prompts):
        import torch

        if self.name == "red":
            return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))
        if self.name == "left":
            from rlr_core.rewards.composition import foreground, mask_stats

            return 0.5 - mask_stats(foreground(images, prompts))["cx"]
        from rlr_core.tiny.detect import detect_batch

        detections = detect_batch(images.detach().float().cpu())
        if self.name == "spiky":
            values = [1.0 - float(d.features.get("solidity", 1.0)) for d in detections]
        elif self.name == "boxy":
            values = [float(d.features.get("extent", 0.0)) for d in detections]
        elif self.name == "star":
            from rlr_core.tiny.detect import is_clean_star

            values = [float(is_clean_star(d)) for d in detections]
        else:
            values = [float(d.features.get("area", 0.0)) / (images.shape[-1] * images.shape[-2]) for d in detections]
        return torch.tensor(values, dtype=torch.float32)


def _trainer(reward, seed: int, rounds: int, output_dir: str, num_steps: int = 20, lr: float = LEARNING_RATE,
             lora_targets: str = "auto", model: str = "tiny", prompts: list[str] = CLICK_PROMPTS, estimator: str = "rlr",
             **kl_options: Any):
    """The Trainer of a session or reference; ``kl_options``: ``kl_settings``' (else TrainConfig's defaults)."""
    from benchmarks.compare import _chain
    from rlr_core import TrainConfig, Trainer, get_estimator

    chain = _chain(num_steps, lora_targets, model)
    config = TrainConfig(model=model, num_steps=num_steps, prompts=list(prompts), steps=rounds, batch_size=4, lr=lr,
                         seed=seed, eval_seeds=[], eval_every=0, checkpoint_every=0, output_dir=output_dir,
                         **kl_options)
    return Trainer(chain, reward, get_estimator(estimator), config)


def measure(trainer, attribute: Attribute, seeds: list[int] | None = None) -> list[float]:
    """The attribute of the fixed-seed images (the 8 of ``EVAL_SEEDS`` unless told; the trainer's four prompts
    cycled)."""
    from rlr_core.training.evaluation import evaluate

    prompts, seeds = trainer.config.prompts, EVAL_SEEDS if seeds is None else seeds
    _, values = evaluate(trainer.chain, attribute, seeds, [prompts[i % len(prompts)] for i in range(len(seeds))])
    return [float(v) for v in values]


def measure_point(trainer, attribute: Attribute, curve: list, star_curve: list) -> None:
    """Append the attribute of the fixed-seed images to ``curve``; for spiky also, from the same sampled images, whether
    each holds a clean star to ``star_curve`` (ragged outlines raise spiky, not stars)."""
    if attribute.name != "spiky":
        curve.append(measure(trainer, attribute))
        return
    star, stars = Attribute("star"), []

    def spiky_and_stars(images, prompts):
        stars.extend(float(v) for v in star(images, prompts))
        return attribute(images, prompts)

    curve.append(measure(trainer, spiky_and_stars))
    star_curve.append(stars)


def wide_seeds(task: dict) -> list[int]:
    """A task's ``wide_seeds`` more fixed seeds (none unless it names them), measured at the start and the end only:
    a finer figure of the session's gain than the 8 of ``EVAL_SEEDS``, which one image's change moves by 1/8."""
    return list(range(WIDE_SEEDS_START, WIDE_SEEDS_START + int(task.get("wide_seeds", 0))))


def run_session(task: dict, on_round: Callable[[RoundTrace], None] | None = None) -> dict:
    """One simulated click session: ``rounds`` rounds of 4, the attribute measured after each (T=20 unless
    the task says ``num_steps``), on one CPU thread unless it says ``threads``. ``on_round`` receives each round's
    :class:`RoundTrace` (for benchmarks/click_session_trace.py)."""
    import numpy as np
    import torch

    from rlr_core.estimators.base import grouped_prompts
    from rlr_core.rewards.preference import ClickLog, PreferenceReward
    from rlr_core.training.clicks import PreferenceSession

    torch.set_num_threads(task.get("threads", 1))
    attribute = Attribute(task["attribute"])
    mode, features, head_updates = MODES[task["mode"]]
    wrong = np.random.default_rng([task["seed"], int(task["noise"] * 100), 17])
    pick = torch.argmin if task.get("clicker") == "worst" else torch.argmax
    with tempfile.TemporaryDirectory() as tmp:
        log = ClickLog(Path(tmp) / "clicks.jsonl")
        options = dict(HEAD_VARIANTS.get(task["mode"], {}))
        extra = options.pop("extra_features", None)
        head_class = _with_features(PreferenceReward, extra) if extra else PreferenceReward
        head = head_class(log, features=features, **options)
        # the head is the session's reward (as in the app); the attribute is only measured
        trainer = _trainer(head, task["seed"], task["rounds"], tmp, task.get("num_steps", 20),
                           *task_settings(task), estimator=estimator_name(task["mode"]), **kl_settings(task))
        session = PreferenceSession(trainer, log, mode=mode, k=1, reward=head, head_updates=head_updates,
                                    check_seeds=check_seeds(task["mode"]), round_images=round_images(task["mode"]))
        groups = trainer.estimator.noise_groups(mode == "learned" and head.differentiable)
        curve, star_curve = [], []
        measure_point(trainer, attribute, curve, star_curve)
        more_seeds = wide_seeds(task)
        wide = [measure(trainer, attribute, more_seeds)] if more_seeds else []
        accuracy, seconds, click_seconds, alignment, accepted, groups_used, colour_scales = [], [], [], [], [], [], []
        for index in range(task["rounds"]):
            start = time.perf_counter()
            prompts = grouped_prompts(round_prompts(task["mode"], index, trainer.config.prompts), 4, groups)
            shown = session.new_round(prompts, seed=task["seed"] * 100_000 + index)
            values = attribute(shown.images, shown.prompts)
            best, wrong_click = int(pick(values)), False
            if wrong.random() < task["noise"]:
                best, wrong_click = int(wrong.choice([i for i in range(shown.size) if i != best])), True
            clicked = time.perf_counter()
            session.click(shown, chosen=[best])  # logs the click and refits the head on every click so far
            click_seconds.append(time.perf_counter() - clicked)
            update = session.update(shown)
            seconds.append(time.perf_counter() - start)
            accepted.append(update.accepted)
            accuracy.append(session.held_out_accuracy())
            groups_used.append(dict(getattr(session.head, "group_weights", {})))
            colour_scales.append(getattr(session.head, "colour_scale", 1.0))
            alignment.append(gradient_alignment(session.head, attribute, shown.images, shown.prompts))
            measure_point(trainer, attribute, curve, star_curve)
            if on_round is not None:
                on_round(RoundTrace(index, shown.prompts, best, wrong_click, [float(v) for v in values], update,
                                    session.head, _mean(curve[-1]) - _mean(curve[0])))
        if more_seeds:
            wide.append(measure(trainer, attribute, more_seeds))
    return {**task, "curve": curve, **({"wide_curve": wide} if wide else {}),
            **({"star_curve": star_curve} if star_curve else {}), "held_out_accuracy": accuracy,
            "seconds_per_round": seconds, "click_seconds_per_round": click_seconds, "gradient_alignment": alignment,
            "accepted": accepted, "group_weights": groups_used, "colour_scale": colour_scales,
            "settings": used_settings(task, trainer)}


@dataclass
class RoundTrace:
    """One round of a simulated session: the shown images' attribute, the clicked image and whether the click was
    wrong, the update, the head after it and the attribute's gain so far on the fixed seeds."""

    index: int
    prompts: list[str]
    clicked: int
    wrong_click: bool
    attribute: list[float]
    update: Any
    head: Any
    gain: float


def round_prompts(mode: str, index: int, prompts: list[str] = CLICK_PROMPTS) -> list[str]:
    """The prompts of round ``index``: all four, starting at the round's (mixed), or only the round's (as the
    product's rounds: ``rlr_core.training.clicks.round_prompt``)."""
    if "-one" in mode:
        from rlr_core.training.clicks import round_prompt

        return [round_prompt(list(prompts), index)]
    return list(prompts[index % 4:]) + list(prompts[: index % 4])


def gradient_alignment(head, attribute: Attribute, images, prompts) -> float | None:
    """Mean over the images of the cosine between the head's and the attribute's gradients with respect to
    the image (pixels): does pushing the head's score up push the attribute up? None for an attribute
    without a gradient (the detector's: spiky, boxy, size) or before the head has a click."""
    import torch

    if not attribute.differentiable or not head.differentiable or head.weight is None:
        return None
    x = images.detach().clone().requires_grad_(True)
    (head_grad,) = torch.autograd.grad(head(x, list(prompts)).sum(), x)
    (attribute_grad,) = torch.autograd.grad(attribute(x, list(prompts)).sum(), x)
    cosine = torch.nn.functional.cosine_similarity(head_grad.flatten(1), attribute_grad.flatten(1), dim=1)
    return float(cosine.mean())


def check_seeds(mode: str) -> tuple[int, ...]:
    """The check seeds of a benchmark mode's sessions: rlr_core's CHECK_SEEDS for a checked mode, else none."""
    from rlr_core.rewards.preference import CHECK_SEEDS

    return tuple(CHECK_SEEDS) if "-checked" in mode else ()


def estimator_name(mode: str) -> str:
    """The estimator of a benchmark mode's sessions: full-bp for a "-fullbp" mode, else the default rlr."""
    return "full-bp" if "-fullbp" in mode else "rlr"


def round_images(mode: str) -> str:
    """What a benchmark mode's rounds show (PreferenceSession round_images)."""
    return "hidden-twins" if "-hidden" in mode else "batch"


def learning_rate(mode: str) -> float:
    """The learning rate of a benchmark mode's runs: the one its name states ("-lr0.005", "-lr3x": 0.03), else
    LEARNING_RATE."""
    rate = re.search(r"-lr(3x|[0-9.]+)", mode)
    if rate is None:
        return LEARNING_RATE
    return 0.03 if rate.group(1) == "3x" else float(rate.group(1))


def run_reference(task: dict) -> dict:
    """The attribute as the reward: ``rounds`` iterations of batch 4, measured after each (``reference-scores``:
    as a non-differentiable reward, so through likelihood ratios only, as a head's scores would be)."""
    import torch

    torch.set_num_threads(1)
    attribute = Attribute(task["attribute"], differentiable=task["mode"] != "reference-scores")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(attribute, task["seed"], task["rounds"], tmp, task.get("num_steps", 20),
                           *task_settings(task), **kl_settings(task))
        curve, star_curve = [], []
        measure_point(trainer, attribute, curve, star_curve)
        more_seeds = wide_seeds(task)
        wide = [measure(trainer, attribute, more_seeds)] if more_seeds else []
        for _ in trainer.run(task["rounds"]):
            measure_point(trainer, attribute, curve, star_curve)
        if more_seeds:
            wide.append(measure(trainer, attribute, more_seeds))
    return {**task, "curve": curve, **({"wide_curve": wide} if wide else {}),
            **({"star_curve": star_curve} if star_curve else {}), "settings": used_settings(task, trainer)}


def task_settings(task: dict) -> tuple[float, str, str, list[str]]:
    """A task's learning rate, LoRA targets, model and prompts: its own ``lr`` / ``lora_targets`` / ``model`` (an
    exported model's folder) / ``prompts`` (a ``PROMPT_SETS`` name) when it names them, else the mode's learning
    rate, the model's own targets ("auto"), the bundled tiny model and the prompts that name a shape."""
    prompt_set = task.get("prompts", DEFAULT_PROMPT_SET)
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"prompts={prompt_set!r} is not allowed; allowed values: {list(PROMPT_SETS)}")
    return (float(task.get("lr", learning_rate(task["mode"]))), str(task.get("lora_targets", "auto")),
            str(task.get("model", "tiny")), PROMPT_SETS[prompt_set])


def kl_settings(task: dict) -> dict:
    """The KL to the base model a task trains with: ``kl_weight`` (0: none), ``kl_steps`` (the chain steps drawn
    per iteration for its gradient, TrainConfig's default unless the task says), ``kl_kind`` ("local": the KL's
    part that is not a uniform colour shift; rlr_core.kl) and ``kl_trajectories`` ("own": the update's own batch;
    TrainConfig's default "sampled", a batch of its own, unless the task says)."""
    from rlr_core import TrainConfig

    defaults = TrainConfig.__dataclass_fields__
    return {"kl_weight": float(task.get("kl_weight", 0.0)), "kl_steps": int(task.get("kl_steps", defaults["kl_steps"].default)),
            "kl_kind": str(task.get("kl_kind", "trajectory")),
            "kl_trajectories": str(task.get("kl_trajectories", defaults["kl_trajectories"].default))}


def used_settings(task: dict, trainer) -> dict:
    """What a run trained with, as recorded in runs.jsonl: learning rate and the LoRA targets' set name (or list),
    and the model and prompt set where the task names them."""
    extra = {name: task[name] for name in ("model", "prompts", "kl_weight", "kl_steps", "kl_kind", "kl_trajectories")
             if name in task}
    return {"lr": task_settings(task)[0], "lora_targets": target_set_name(trainer.chain.lora_targets), **extra}


def target_set_name(targets: str | list[str]) -> str:
    """The ``LORA_TARGET_SETS`` name of ``targets`` (module-name suffixes, as a list or a comma-separated string),
    else the suffixes comma-separated; a set's name is returned as it is."""
    from rlr_core.config import LORA_TARGET_SETS

    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets)]
    return next((name for name, members in LORA_TARGET_SETS.items() if list(members) == items), ",".join(items))


def _with_features(base, extra: str):
    """A head whose features are the base's followed by those of ``extra`` (a screened variant): "pixels" (the
    weight-free pixel features), "layout-only" (``layout_features`` alone: where the content sits and its outline)
    or "tiny-clip" (the bundled CLIP's image embedding)."""
    import torch

    from rlr_core.rewards.preference_head import layout_features, pixel_features

    extras = {"pixels": pixel_features, "layout-only": layout_features}
    extra_features = extras[extra] if extra in extras else base(features=extra).features

    class WithExtra(base):
        def features(self, images):
            return torch.cat([super().features(images), extra_features(images)], dim=1)

    return WithExtra


def _run(task: dict) -> dict:
    start = time.time()
    try:
        result = run_reference(task) if task["mode"].startswith("reference") else run_session(task)
    except Exception as error:  # a failed run is recorded, the benchmark goes on
        result = {**task, "error": f"{type(error).__name__}: {error}"}
    return {**result, "wall_seconds": time.time() - start}


def key(task: dict) -> str:
    named = ("lora_targets", "lr", "model", "prompts", "wide_seeds", "clicker", "kl_weight", "kl_steps", "kl_kind",
             "kl_trajectories")
    extra = "".join(f"|{name}={task[name]}" for name in named if name in task)
    return f"{task['mode']}|{task['attribute']}|{task['noise']}|{task['seed']}|{task['rounds']}{extra}"


def load_runs(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plan(phase: str, rounds: int, modes: list[str], default: str, noises: tuple[float, ...] = NOISES,
         seeds: tuple[int, ...] = (1, 2, 3), kl_weight: float | None = None, kl_kind: str | None = None) -> list[dict]:
    """The runs of a phase: screen = every candidate mode at noise 0, seed 1 (and the references);
    full = the default mode at every noise and seed (and the references at the modes' learning rates).
    ``kl_weight`` / ``kl_kind``: the click sessions' KL to the base model and what it counts (None:
    ``DEFAULT_KL_WEIGHT`` / ``DEFAULT_KL_KIND``, the app's; the references train without one)."""
    from rlr_core.rewards.preference import DEFAULT_KL_KIND, DEFAULT_KL_WEIGHT

    kl_weight = DEFAULT_KL_WEIGHT if kl_weight is None else float(kl_weight)
    kl_kind = DEFAULT_KL_KIND if kl_kind is None else kl_kind

    def task(mode, attribute, noise, seed):
        prompts = {"prompts": ATTRIBUTE_PROMPTS[attribute]} if attribute in ATTRIBUTE_PROMPTS else {}
        kl = {"kl_weight": kl_weight} if kl_weight > 0 and mode not in REFERENCES.values() else {}
        kl.update({"kl_kind": kl_kind} if kl and kl_kind != "trajectory" else {})
        return {"mode": mode, "attribute": attribute, "noise": noise, "seed": seed, "rounds": rounds, **prompts, **kl}

    seeds = [1] if phase == "screen" else list(seeds)
    references = {REFERENCES[learning_rate(m)] for m in (modes if phase == "screen" else [default])}
    tasks = [task(r, a, 0.0, s) for r in sorted(references) for a in ATTRIBUTES for s in seeds]
    if phase == "screen":
        tasks += [task(m, a, 0.0, 1) for m in modes for a in ATTRIBUTES]
    else:
        tasks += [task(default, a, n, s) for n in noises for a in ATTRIBUTES for s in seeds]
    return tasks


def execute(tasks: list[dict], out: Path, workers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in load_runs(out) if "error" not in r}
    todo = [t for t in tasks if key(t) not in done]
    print(f"{len(tasks) - len(todo)} runs already done, {len(todo)} to run", flush=True)
    if not todo:
        return
    with mp.get_context("spawn").Pool(workers) as pool, open(out / "runs.jsonl", "a") as sink:
        for result in pool.imap_unordered(_run, todo):
            result["commit"] = _commit()
            sink.write(json.dumps(result) + "\n")
            sink.flush()
            gain = result["curve"][-1] if "curve" in result else None
            summary = result.get("error") or f"gain {_mean(gain) - _mean(result['curve'][0]):+.4f}"
            print(f"[{time.strftime('%H:%M:%S')}] {key(result)}: {summary} ({result['wall_seconds']:.0f} s)", flush=True)


def default_mode() -> str:
    """The benchmark mode that is rlr_core's default click session on the tiny model (DEFAULT_MODE / _FEATURES /
    _HEAD_UPDATES / _LEARNING_RATE / _CHECK_SEEDS / _ROUND_IMAGES, rounds of one prompt as the app shows them)."""
    from rlr_core.rewards.preference import (DEFAULT_CHECK_SEEDS, DEFAULT_FEATURES, DEFAULT_HEAD_UPDATES,
                                             DEFAULT_LEARNING_RATE, DEFAULT_MODE, DEFAULT_ROUND_IMAGES, features_for,
                                             learning_rate_for)

    settings = (DEFAULT_MODE, features_for(DEFAULT_FEATURES, "tiny"), DEFAULT_HEAD_UPDATES)
    rate = learning_rate_for(DEFAULT_LEARNING_RATE, "tiny", LEARNING_RATE)
    for name, mode_settings in MODES.items():
        if (mode_settings == settings and learning_rate(name) == rate and name not in HEAD_VARIANTS
                and "-one" in name and check_seeds(name) == tuple(DEFAULT_CHECK_SEEDS)
                and round_images(name) == DEFAULT_ROUND_IMAGES):
            return name
    raise ValueError(f"no benchmark mode has the default settings {settings} at learning rate {rate}")


def _commit() -> str:
    from benchmarks.compare import _commit as commit

    return commit()


def _mean(values) -> float:
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Simulated click sessions (docs/rewards.md, preference).")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/clicks"))
    p.add_argument("--phase", choices=["screen", "full"], default="screen")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=[*MODES, "reference-scores", *(r for r in REFERENCES.values() if r != "reference")],
                   help="the screen's candidates (reference-scores: the attribute as a reward without its gradient)")
    p.add_argument("--default", default=None, choices=list(MODES),
                   help="the mode of the full phase (default: rlr_core's DEFAULT_MODE)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--noises", type=float, nargs="+", default=list(NOISES),
                   help="wrong-click rates of the full phase (1.0: every click on another image than the best, a control)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the full phase's seeds")
    p.add_argument("--kl-weight", type=float, default=None,
                   help="the click sessions' KL to the base model (default: rlr_core's DEFAULT_KL_WEIGHT)")
    p.add_argument("--kl-kind", default=None, choices=["trajectory", "local"],
                   help="what that KL counts (default: rlr_core's DEFAULT_KL_KIND)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only write the report from runs.jsonl")
    args = p.parse_args(argv)
    if not args.report:
        default = args.default or default_mode()
        execute(plan(args.phase, args.rounds, args.modes, default, tuple(args.noises), tuple(args.seeds),
                     args.kl_weight, args.kl_kind), args.out, args.workers)
    from benchmarks.clicks_report import write_report

    print(write_report(args.out))


if __name__ == "__main__":
    main()
