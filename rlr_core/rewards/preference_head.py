"""The learned preference reward: a Bradley-Terry (logistic) head on image features, refitted on a click log.

Image features are open_clip image embeddings when the weights are available (or the bundled tiny-clip),
a weight-free differentiable colour/layout feature otherwise. The head is a differentiable Reward
(``get_reward("preference", mode="learned", log_path=...)``), so RLR's first-order part applies.
See docs/rewards.md (preference).
"""

from __future__ import annotations

import itertools
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlr_core.hub import WeightsUnavailableError
from rlr_core.rewards.bradley_terry import fit_bradley_terry_lbfgs, fit_bradley_terry_newton
from rlr_core.rewards.click_log import ClickLog
from rlr_core.rewards.clip_models import encode_images, load_clip
from rlr_core.rewards.image_features import colour_features, layout_features, object_colour_features, pixel_features
from rlr_core.rewards.simple import check_images

__all__ = ["MODES", "FEATURES", "SELECTIONS", "SOLVERS", "PreferenceReward", "pixel_features", "layout_features",
           "colour_features", "object_colour_features"]

MODES = ("direct", "learned")
# tiny-clip = clip features from the bundled tiny-clip; layout = pixels + where the content sits;
# tiny-clip+grid = tiny-clip's embedding + where the content sits and its outline (layout_features, no pixel statistics);
# tiny-clip+grid+colour = those and the colour statistics (colour_features); tiny-clip+grid+object-colour = tiny-clip+grid
# and the colour of the content and of the background, not how much of each (object_colour_features)
FEATURES = ("auto", "clip", "tiny-clip", "pixels", "layout", "tiny-clip+grid", "tiny-clip+grid+colour",
            "tiny-clip+grid+object-colour")
# the feature groups of each kind (see PreferenceReward.feature_groups), what "cross-validated" selection chooses among
GROUPS = {"clip": ("embedding",), "pixels": ("pixels",), "layout": ("pixels", "grid"),
          "tiny-clip+grid": ("embedding", "grid"), "tiny-clip+grid+colour": ("embedding", "grid", "colour"),
          "tiny-clip+grid+object-colour": ("embedding", "grid", "object-colour")}
# How the head weighs its feature groups: all alike ("all"), or ("cross-validated") the first group (the embedding, where
# the kind has one) at 1
# and each other group at the weight of GROUP_WEIGHTS whose head, fitted on the other rounds, best predicts each
# held-out round's clicks (folds of rounds; all alike until there are 2 rounds). A group's weight multiplies its
# standardised features, so its L2 penalty is divided by the weight squared: 0 drops the group, 10 lets a few
# clicks lean on it. "averaged": no one weighting is chosen; the head is the average of every weighting's head, each
# weighed by how well it predicts the held-out rounds (exp(-held-out loss), pseudo Bayesian model averaging), so a
# few clicks that tip the choice move the head a little, not from one weighting to another. "cross-validated-1se": of the
# weightings whose held-out loss is within one standard error (over the held-out pairs) of the best one's, the one
# with the smallest sum of weights, so a group is weighed up only when the clicks clearly ask for it.
# "auto": cross-validated for the kinds in CROSS_VALIDATED_FEATURES, all alike for the others
# (whose logs from before the selection existed then replay as they were made).
SELECTIONS = ("auto", "all", "cross-validated", "averaged", "cross-validated-1se")
CROSS_VALIDATED_FEATURES = ("tiny-clip+grid+colour", "tiny-clip+grid+object-colour")
GROUP_WEIGHTS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
SELECTION_FOLDS = 5
# colour_cap: the colour groups' pixel gradient, measured on the latest CAP_ROUNDS rounds' clicked images, is scaled down
# to at most colour_cap times the embedding's. The training step (AdamW) follows the direction of the whole gradient,
# and a colour gradient many times the embedding's takes the step even where the embedding explains the clicks.
CAPPED_GROUPS = ("colour", "object-colour")
CAP_ROUNDS = 4
# The ridge of the Bradley-Terry fit (l2=None): DEFAULT_L2 for a head that weighs all its features alike; for one that
# weighs its groups by held-out clicks WEIGHED_GROUPS_L2, which is the first group's (the embedding's): another group at
# weight g has WEIGHED_GROUPS_L2 / g^2, so with GROUP_WEIGHTS up to 100 the many embedding features stay shrunk while
# the few that explain the clicks (colour statistics for "redder") are nearly free.
DEFAULT_L2 = 1e-2
WEIGHED_GROUPS_L2 = 0.3
WEIGHT_FREE = ("pixels", "layout")
# How the head scales the features before the fit: every feature to unit variance over the clicked images
# ("per-feature"), or one scale for all of them ("global")
SCALINGS = ("per-feature", "global")
# How the head solves its (convex) fit: Newton's method (exact to ~1e-12 in the loss, fast), or L-BFGS (at most 200
# iterations; the solver of click logs made before Newton's, which replay with it)
SOLVERS = ("newton", "lbfgs")


class PreferenceReward:
    """Learned preference reward: ``w . standardise(features(image))`` fitted by Bradley-Terry.

    ``refit()`` fits ``w`` on every pair (preferred, other) in the click log:
    minimise mean log(1 + exp(-(s_preferred - s_other))) + l2 * |w|^2 (convex; ``solver``: Newton's method, or
    L-BFGS for click logs made before it). Before any
    click ``w = 0`` (every image scores 0). Differentiable in the pixels through the features, unless
    ``differentiable=False``: then the scores are constants to the estimator (a click session's updates use
    them through likelihood ratios only, not the head's pixel gradient). With ``selection="cross-validated"`` the
    fit weighs the feature groups (:meth:`feature_groups`; ``group_weights``) by how well they predict held-out
    rounds' clicks: twenty clicks cannot weigh 89 features alike, but they can tell whether colour, place or the
    embedding explains them. The first group (the embedding) is always kept, at weight 1: another group can
    predict the clicks as well (colour statistics predict "spikier" clicks, stars cover less) while only the
    embedding's gradient moves the model toward the shape. ``group_weight_choices``: the weights the other groups
    may get. ``selection="averaged"``: no weighting is chosen; the head is the average of every weighting's head,
    each weighed by exp(-its held-out loss), and ``group_weights`` are the expected weights.
    ``selection="auto"``: cross-validated for the kinds in ``CROSS_VALIDATED_FEATURES``, else all alike.
    ``l2``: the ridge; None: ``WEIGHED_GROUPS_L2`` for a head that weighs its groups, else ``DEFAULT_L2``.
    """

    name = "preference"
    differentiable = True

    def __init__(
        self,
        log: ClickLog | str | os.PathLike | None = None,
        features: str = "auto",
        clip_model: str = "ViT-L-14-quickgelu",
        pretrained: str = "openai",
        l2: float | None = None,
        device: str | torch.device = "cpu",
        scaling: str = "per-feature",
        differentiable: bool = True,
        selection: str = "auto",
        group_weight_choices: tuple[float, ...] = GROUP_WEIGHTS,
        solver: str = "newton",
        colour_cap: float | None = None,
    ) -> None:
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is not allowed; allowed values: {list(SOLVERS)}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection={selection!r} is not allowed; allowed values: {list(SELECTIONS)}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling={scaling!r} is not allowed; allowed values: {list(SCALINGS)}")
        if features not in FEATURES:
            raise ValueError(f"features={features!r} is not allowed; allowed values: {list(FEATURES)}")
        if not group_weight_choices or not all(float(w) >= 0 for w in group_weight_choices):
            raise ValueError(f"group_weight_choices={group_weight_choices!r} is not allowed; allowed values: numbers >= 0 "
                             f"(at least one), e.g. {GROUP_WEIGHTS}")
        if l2 is not None and not float(l2) >= 0:
            raise ValueError(f"l2={l2!r} is not allowed; allowed values: a number >= 0 or None (DEFAULT_L2 or "
                             f"WEIGHED_GROUPS_L2)")
        if colour_cap is not None and not float(colour_cap) >= 0:
            raise ValueError(f"colour_cap={colour_cap!r} is not allowed; allowed values: a number >= 0 or None (uncapped)")
        self.colour_scale = 1.0  # what colour_cap multiplied the colour group's weights by at the last refit
        self.log = log if isinstance(log, ClickLog) or log is None else ClickLog(log)
        self.scaling = scaling
        self.solver = solver
        self.differentiable = bool(differentiable)
        self.group_weight_choices = tuple(float(w) for w in group_weight_choices)
        self.device = torch.device(device)
        if features.startswith("tiny-clip"):  # the bundled offline model (rlr_core.tiny.clip_model)
            features, clip_model = ("clip" if features == "tiny-clip" else features), "tiny-clip"
        self._clip_args = (clip_model, pretrained)
        self.features_kind = self._choose_features(features)
        # the group colour_cap scales (None for kinds without one; their colour_cap is then None: nothing to cap)
        self._capped_group = next((name for name in GROUPS[self.features_kind] if name in CAPPED_GROUPS), None)
        self.colour_cap = None if colour_cap is None or self._capped_group is None else float(colour_cap)
        if selection == "auto":
            selection = "cross-validated" if self.features_kind in CROSS_VALIDATED_FEATURES else "all"
        self.selection = selection  # "all", "cross-validated" or "averaged"
        weighs_groups = selection != "all" and len(GROUPS[self.features_kind]) > 1
        self.l2 = float(l2) if l2 is not None else WEIGHED_GROUPS_L2 if weighs_groups else DEFAULT_L2
        self.weight: torch.Tensor | None = None  # [D] float64 on cpu
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.num_pairs = 0
        self.group_weights: dict[str, float] = dict.fromkeys(GROUPS[self.features_kind], 1.0)
        self._group_sizes: tuple[int, ...] | None = None
        self._feature_cache: dict[str, torch.Tensor] = {}
        if self.log is not None and self.log.records:
            self.refit()

    @classmethod
    def from_options(cls, mode: str = "learned", log_path: str = "clicks.jsonl", device: Any = "cpu", **options: Any) -> "PreferenceReward":
        """Factory behind ``get_reward("preference", ...)``."""
        if mode not in MODES:
            raise ValueError(f"preference mode={mode!r} is not allowed; allowed values: {list(MODES)}")
        if mode == "direct":
            raise ValueError(
                "preference mode='direct' has no reward function: the clicks themselves are the rewards. "
                "Use rlr_core.training.clicks.PreferenceSession(..., mode='direct'); get_reward('preference') allows mode='learned'"
            )
        return cls(ClickLog(log_path), device=device, **options)

    def _choose_features(self, features: str) -> str:
        if features in WEIGHT_FREE:
            return features
        try:
            load_clip(*self._clip_args, device=self.device)
            return features if features.startswith("tiny-clip+grid") else "clip"
        except WeightsUnavailableError as exc:
            if features == "clip":
                raise
            warnings.warn(f"preference reward: using weight-free pixel features ({exc})")
            return "pixels"

    @property
    def features_name(self) -> str:
        """The features in use, as a ``features`` value: ``pixels``, ``layout``, ``tiny-clip``, ``tiny-clip+grid``,
        ``tiny-clip+grid+colour`` or ``clip``."""
        if self.features_kind.startswith("tiny-clip+grid") or self.features_kind in WEIGHT_FREE:
            return self.features_kind
        return "tiny-clip" if self._clip_args[0] == "tiny-clip" else "clip"

    def feature_groups(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The features by group (``GROUPS`` of the kind, in order): ``embedding`` (CLIP's image embedding),
        ``pixels`` (:func:`pixel_features`), ``grid`` (:func:`layout_features`), ``colour`` (:func:`colour_features`),
        ``object-colour`` (:func:`object_colour_features`)."""
        compute = {"pixels": pixel_features, "grid": layout_features, "colour": colour_features,
                   "object-colour": object_colour_features,
                   "embedding": lambda x: encode_images(load_clip(*self._clip_args, device=x.device), x)}
        return {name: compute[name](images) for name in GROUPS[self.features_kind]}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vectors [B, D] (float32, differentiable in ``images``): the groups concatenated."""
        groups = self.feature_groups(images)
        self._group_sizes = tuple(g.shape[1] for g in groups.values())
        return torch.cat(list(groups.values()), dim=1)

    def _stored_features(self, sha: str) -> torch.Tensor:
        if sha not in self._feature_cache:
            assert self.log is not None
            image = self.log.load_image(sha).unsqueeze(0).to(self.device)
            with torch.no_grad():
                self._feature_cache[sha] = self.features(image)[0].double().cpu()
        return self._feature_cache[sha]

    def refit(self, log: ClickLog | None = None) -> int:
        """Refit on every click in the log; returns the number of pairs used."""
        if log is not None:
            self.log = log
        if self.log is None:
            raise ValueError("PreferenceReward.refit needs a click log (log=ClickLog(path))")
        by_round = self.log.round_pairs()
        pairs = [pair for round_pairs in by_round.values() for pair in round_pairs]
        self.num_pairs = len(pairs)
        self.group_weights = dict.fromkeys(GROUPS[self.features_kind], 1.0)
        if not pairs:
            self.weight = None
            return 0
        shas = sorted({s for pair in pairs for s in pair})
        index = {s: i for i, s in enumerate(shas)}
        feats = torch.stack([self._stored_features(s) for s in shas])
        mean = feats.mean(dim=0)
        std = feats.std(dim=0, unbiased=False).clamp_min(1e-3) if len(shas) > 1 else torch.ones_like(mean)
        if self.scaling == "global" and len(shas) > 1:
            std = torch.full_like(mean, float((feats - mean).pow(2).mean().sqrt().clamp_min(1e-3)))
        z = (feats - mean) / std
        win = torch.tensor([index[a] for a, _ in pairs])
        lose = torch.tensor([index[b] for _, b in pairs])
        diff = z[win] - z[lose]  # [P, D]
        scale = torch.ones(z.shape[1], dtype=torch.float64)
        if self.selection != "all" and len(by_round) >= 2 and len(self.group_weights) > 1:
            round_of_pair = torch.tensor([r for r, round_pairs in enumerate(by_round.values()) for _ in round_pairs])
            candidates = self._held_out_losses(diff, round_of_pair)
            if self.selection == "averaged":
                self.weight, self.mean, self.std = self._averaged_weight(diff, candidates), mean, std
                self._cap_colour_gradient(by_round)
                return self.num_pairs
            self.group_weights = _lowest_loss(candidates) if self.selection == "cross-validated" else _within_one_se(candidates)
            scale = self._column_scale(self.group_weights)
        used = scale > 0
        weight = torch.zeros(z.shape[1], dtype=torch.float64)
        weight[used] = self._fit(diff[:, used] * scale[used])
        std = std.clone()
        std[used] = std[used] / scale[used]  # so that a new image's (features - mean) / std carries its group's weight
        self.weight, self.mean, self.std = weight, mean, std
        self._cap_colour_gradient(by_round)
        return self.num_pairs

    def _cap_colour_gradient(self, by_round: dict[str, list[tuple[str, str]]]) -> None:
        """With ``colour_cap``: scale the colour group's weights so that its gradient with respect to the pixels of the
        latest ``CAP_ROUNDS`` rounds' clicked images is at most ``colour_cap`` times the embedding's (``colour_scale``)."""
        self.colour_scale = 1.0
        names, capped = GROUPS[self.features_kind], self._capped_group
        if self.colour_cap is None or self.weight is None or "embedding" not in names:
            return
        assert self.log is not None and self._group_sizes is not None
        ends = dict(zip(names, itertools.accumulate(self._group_sizes)))
        columns = {name: slice(ends[name] - size, ends[name]) for name, size in zip(names, self._group_sizes)}
        if not float(self.weight[columns[capped]].abs().sum()) > 0:
            return
        shas = sorted({sha for pairs in list(by_round.values())[-CAP_ROUNDS:] for pair in pairs for sha in pair})
        images = torch.stack([self.log.load_image(sha) for sha in shas]).to(self.device).requires_grad_(True)
        with torch.enable_grad():
            z = (self.features(images).double() - self.mean.to(self.device)) / self.std.to(self.device)
            weight = self.weight.to(self.device)
            norms = {}
            for name in ("embedding", capped):
                term = (z[:, columns[name]] @ weight[columns[name]]).sum()
                norms[name] = float(torch.autograd.grad(term, images, retain_graph=True)[0].norm())
        if norms[capped] > self.colour_cap * norms["embedding"]:
            self.colour_scale = self.colour_cap * norms["embedding"] / norms[capped]
            self.weight = self.weight.clone()
            self.weight[columns[capped]] *= self.colour_scale

    @property
    def selected_groups(self) -> tuple[str, ...]:
        """The feature groups the head uses (weight above 0), in order."""
        return tuple(name for name, weight in self.group_weights.items() if weight > 0)

    def _column_scale(self, group_weights: dict[str, float]) -> torch.Tensor:
        """Each feature's group weight, [D] float64."""
        assert self._group_sizes is not None and len(self._group_sizes) == len(group_weights)
        return torch.cat([torch.full((size,), float(weight), dtype=torch.float64)
                          for size, weight in zip(self._group_sizes, group_weights.values())])

    def _fit(self, diff: torch.Tensor) -> torch.Tensor:
        """Bradley-Terry weights for pair feature differences [P, D]: the minimiser of the mean logistic loss plus
        ``l2`` times the squared norm (convex), by ``self.solver``."""
        l2 = max(self.l2, 1e-6)
        return fit_bradley_terry_newton(diff, l2) if self.solver == "newton" else fit_bradley_terry_lbfgs(diff, l2)

    def _held_out_losses(self, diff: torch.Tensor, round_of_pair: torch.Tensor) -> list[tuple[dict[str, float], float, torch.Tensor]]:
        """Every candidate group weighting (the first group at 1, the others from ``group_weight_choices``; all at 1
        first) with the summed Bradley-Terry loss of its heads, each fitted on the other folds of rounds, on the
        held-out fold, and that loss pair by pair [P]."""
        names = GROUPS[self.features_kind]
        fold = round_of_pair % SELECTION_FOLDS
        others = sorted(self.group_weight_choices, key=lambda w: w != 1.0)  # 1.0 first
        candidates = []
        for rest in itertools.product(others, repeat=len(names) - 1):
            weights = dict(zip(names, (1.0, *rest)))
            scale = self._column_scale(weights)
            used = scale > 0
            scaled = diff[:, used] * scale[used]
            loss, per_pair = 0.0, torch.zeros(len(diff), dtype=torch.float64)
            for held_out in fold.unique():
                train = fold != held_out
                w = self._fit(scaled[train])
                per_pair[~train] = F.softplus(-(scaled[~train] @ w))
                loss += float(per_pair[~train].sum())
            candidates.append((weights, loss, per_pair))
        return candidates

    def _averaged_weight(self, diff: torch.Tensor, candidates: list[tuple[dict[str, float], float, torch.Tensor]]) -> torch.Tensor:
        """The average of every candidate weighting's head fitted on all pairs, as a weight on the standardised
        features, each weighed by exp(-its held-out loss) (normalised); ``group_weights`` becomes the expected weight
        of each group."""
        losses = torch.tensor([candidate[1] for candidate in candidates], dtype=torch.float64)
        probabilities = torch.softmax(-losses, dim=0)
        weight = torch.zeros(diff.shape[1], dtype=torch.float64)
        for (weights, _, _), probability in zip(candidates, probabilities):
            scale = self._column_scale(weights)
            used = scale > 0
            head = torch.zeros_like(weight)
            head[used] = self._fit(diff[:, used] * scale[used]) * scale[used]
            weight += probability * head
        shares = probabilities.tolist()
        self.group_weights = {name: round(sum(p * weights[name] for (weights, _, _), p in zip(candidates, shares)), 9)
                              for name in candidates[0][0]}
        return weight

    def pair_accuracy(self) -> float:
        """Fraction of logged pairs the current head orders correctly (training accuracy)."""
        if self.log is None or self.weight is None:
            return float("nan")
        pairs = self.log.pairs()
        score = {s: float(((self._stored_features(s) - self.mean) / self.std) @ self.weight) for p in pairs for s in p}
        return float(np.mean([score[a] > score[b] for a, b in pairs])) if pairs else float("nan")

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:

        check_images(images, prompts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.differentiable):
            feats = self.features(images)
        if self.weight is None:
            return (feats * 0.0).sum(dim=1).float()
        dev, dt = feats.device, feats.dtype
        z = (feats - self.mean.to(dev, dt)) / self.std.to(dev, dt)
        return (z @ self.weight.to(dev, dt)).float()


def _lowest_loss(candidates: list[tuple[dict[str, float], float, torch.Tensor]]) -> dict[str, float]:
    """The group weights of the candidate with the lowest held-out loss; near ties (1e-9) go to the earlier one."""
    best = candidates[0]
    for candidate in candidates[1:]:
        if candidate[1] < best[1] - 1e-9:
            best = candidate
    return best[0]


def _within_one_se(candidates: list[tuple[dict[str, float], float, torch.Tensor]]) -> dict[str, float]:
    """The group weights of the simplest candidate (the smallest sum of weights; then the lower loss) whose held-out
    loss exceeds the lowest by at most one standard error of the pair-by-pair difference between the two."""
    best = min(candidates, key=lambda candidate: candidate[1])
    eligible = []
    for weights, loss, per_pair in candidates:
        difference = per_pair - best[2]
        standard_error = float(difference.std() * len(difference) ** 0.5) if len(difference) > 1 else 0.0
        if loss - best[1] <= standard_error:
            eligible.append((sum(weights.values()), loss, weights))
    return min(eligible, key=lambda entry: entry[:2])[2]
