"""Composition rewards (rlr_core.rewards.composition): shape-position and shape-size.

Ground truth comes from the tiny model's own renderer (rlr_core.tiny.data.render): shapes drawn at
known positions and sizes on every kind of background. The rankings fail for a reward that ignores
its target; the hack tests fail for a reward that a noise / speckle / background trick satisfies.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlr_core.rewards import get_reward, list_rewards
from rlr_core.rewards.composition import TARGETS, ShapePositionReward, ShapeSizeReward, parse_target, prompt_color
from rlr_core.tiny.data import COLORS, SHAPES, Sample, ShapeSpec, caption_for, render

# (shape colour, background): plain, dark, gray, coloured, low contrast (orange on yellow: 0.34 apart), gradients
COMBOS = [
    ("red", "white"),
    ("blue", "black"),
    ("purple", "gray"),
    ("white", "blue"),
    ("orange", "yellow"),
    ("green", "purple gradient"),
    ("black", "orange gradient"),
]
H = W = 32
_YY, _XX = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing="ij")


def _img(shape: str, color: str, background: str, cx: float = 0.5, cy: float = 0.5, r: float = 0.3) -> torch.Tensor:
    sample = Sample(0, "", shape, color, background, 1, "", (ShapeSpec(shape, color, cx, cy, r),))
    return torch.from_numpy(render(sample)).permute(2, 0, 1).float() / 255.0


def _batch(shape: str, cx: float, cy: float, r: float, combos=COMBOS) -> torch.Tensor:
    return torch.stack([_img(shape, c, b, cx, cy, r) for c, b in combos])


def _caps(shape: str, combos=COMBOS) -> list[str]:
    return [caption_for(c, shape, b) for c, b in combos]


def _rgb(name: str) -> torch.Tensor:
    return torch.tensor(COLORS[name]).float().view(3, 1, 1) / 255.0


def _paint(base: torch.Tensor, mask: torch.Tensor, color: str) -> torch.Tensor:
    return base * (1 - mask) + _rgb(color) * mask


def _true_area(shape: str, r: float) -> float:
    """Coverage of the shape as the renderer draws it (white on black, anti-aliased), no reward code involved."""
    x = _img(shape, "white", "black", r=r)[0]
    lo, hi = COLORS["black"][0] / 255.0, COLORS["white"][0] / 255.0
    return float(((x - lo) / (hi - lo)).clamp(0, 1).mean())


def _hacks(color: str, background: str, cx: float, cy: float, r: float, area: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    empty = _img("circle", color, background, 2.0, 2.0, 0.01)  # shape off the canvas: background only
    disc = (((_XX - cx) ** 2 + (_YY - cy) ** 2) < r**2).float()
    wide = (((_XX - cx) ** 2 + (_YY - cy) ** 2) < (2 * r) ** 2).float()
    grid = ((torch.arange(H)[:, None] % 2 == 0) & (torch.arange(W)[None] % 2 == 0)).float()
    grid2 = ((torch.arange(H)[:, None] % 3 < 2) & (torch.arange(W)[None] % 3 < 2)).float()
    other = "green" if color != "green" else "blue"
    return {
        "uniform noise": torch.rand(3, H, W, generator=g),
        "speckle of the shape colour at the target density": _paint(empty, (torch.rand(H, W, generator=g) < area).float(), color),
        "recoloured flat background": _rgb(other).expand(3, H, W).clone(),
        "empty canvas": empty,
        "whole image in the shape colour": _rgb(color).expand(3, H, W).clone(),
        "shape split into dots over a 2x wider disc": _paint(empty, wide * grid, color),
        "shape split into 2x2 dots in its own footprint": _paint(empty, disc * grid2, color),
        "speckle in the footprint (50%)": _paint(empty, disc * (torch.rand(H, W, generator=g) < 0.5).float(), color),
        "faded shape: 1.7x the radius at 35% opacity": _paint(empty, 0.35 * (((_XX - cx) ** 2 + (_YY - cy) ** 2) < (1.7 * r) ** 2).float(), color),
        "tiny dot (2x2 pixels) on the target": _paint(empty, ((_XX - cx).abs() < 1.5 / W) * ((_YY - cy).abs() < 1.5 / H) * 1.0, color),
        "noise of random colours in the footprint": empty * (1 - disc) + torch.rand(3, H, W, generator=g) * disc,
        "correct shape + gaussian noise 0.1": (_img("circle", color, background, cx, cy, r) + 0.1 * torch.randn(3, H, W, generator=g)).clamp(0, 1),
    }


# these put foreground mass everywhere (or none): they must also lose to the base model's centred shape
SPREAD_HACKS = {"uniform noise", "speckle of the shape colour at the target density", "recoloured flat background",
                "empty canvas", "whole image in the shape colour", "shape split into dots over a 2x wider disc",
                "correct shape + gaussian noise 0.1", "tiny dot (2x2 pixels) on the target",
                "noise of random colours in the footprint"}


# ------------------------------------------------------------------ registry and options


def test_registered_listed_and_built_by_get_reward():
    infos = {r["name"]: r for r in list_rewards()}
    for name, option, default in [("shape-position", "target", "left"), ("shape-size", "target_area", 0.08)]:
        info = infos[name]
        assert info["differentiable"] is True and info["needs_weights"] is False and info["description"]
        assert info["options"][option]["default"] == default
        assert info["options"]["prompt_color"]["default"] is True and info["options"]["prompt_color"]["type"] == "bool"
    position = get_reward("shape-position", device="cpu", target="top-right")
    assert isinstance(position, ShapePositionReward) and position.name == "shape-position" and position.differentiable
    assert position.target == (0.75, 0.25)
    assert get_reward("shape-position", device="cpu").target == TARGETS["left"]
    size = get_reward("shape-size", device="cpu", target_area="0.3")  # UI strings coerced
    assert isinstance(size, ShapeSizeReward) and size.name == "shape-size" and size.target_area == pytest.approx(0.3)
    assert get_reward("shape-size", device="cpu").target_area == pytest.approx(0.08)
    assert get_reward("shape-size", device="cpu", prompt_color="false").prompt_color is False


def test_options_are_validated_with_the_field_and_allowed_values():
    for bad in ["middle", "1.2,0.5", "0.5", "0.1,0.2,0.3", "-0.1,0.5", "nan,0.5"]:
        with pytest.raises(ValueError, match=r"shape-position option target=.*allowed values: \['left', 'right'.*'x,y'"):
            get_reward("shape-position", target=bad)
    for bad in [0, 0.0, -0.1, 0.95, 1.0, float("nan")]:
        with pytest.raises(ValueError, match=r"shape-size option target_area=.*allowed values: a number in \(0, 0.9\]"):
            get_reward("shape-size", target_area=bad)
    with pytest.raises(ValueError, match=r"target_area='big' must be a float"):
        get_reward("shape-size", target_area="big")
    with pytest.raises(ValueError, match=r"no option 'position'.*allowed options: \['prompt_color', 'target'\]"):
        get_reward("shape-position", position="left")
    with pytest.raises(ValueError, match=r"prompt_color='maybe' must be a bool"):
        get_reward("shape-position", prompt_color="maybe")
    with pytest.raises(ValueError, match=r"shape-size option prompt_color=1 is not allowed; allowed values: \[True, False\]"):
        ShapeSizeReward(prompt_color=1)
    with pytest.raises(ValueError, match="shape-position option target"):
        ShapePositionReward(target=None)
    with pytest.raises(ValueError, match="shape-size option target_area"):
        ShapeSizeReward(target_area=True)


def test_parse_target_names_pairs_and_strings():
    assert parse_target("left") == (0.25, 0.5)
    assert parse_target(" Bottom Right ") == (0.75, 0.75)
    assert parse_target("centre") == parse_target("center") == (0.5, 0.5)
    assert parse_target("0.3, 0.7") == (0.3, 0.7)
    assert parse_target("(0, 1)") == (0.0, 1.0)
    assert parse_target([0.1, 0.9]) == (0.1, 0.9)


# ------------------------------------------------------------------ rankings on rendered ground truth


def test_position_ranks_the_shape_at_the_target_first_for_every_target_shape_and_background():
    names = [n for n in TARGETS if n != "centre"]
    for shape in SHAPES:
        images = {n: _batch(shape, *TARGETS[n], r=0.2) for n in names}  # r = 0.2 fits at every target
        for target in names:
            reward = ShapePositionReward(target)
            scores = torch.stack([reward(images[n], _caps(shape)) for n in names])  # [target images, combos]
            i = names.index(target)
            others = torch.cat([scores[:i], scores[i + 1 :]]).max(dim=0).values
            assert (scores[i] > others + 0.02).all(), (shape, target, scores[i], others)


def test_position_falls_off_with_the_distance_to_the_target():
    reward = ShapePositionReward("0.25,0.5")
    for shape in SHAPES:
        scores = torch.stack([reward(_batch(shape, cx, 0.5, 0.2), _caps(shape)) for cx in (0.25, 0.35, 0.5, 0.65, 0.75)])
        assert (scores[:-1] > scores[1:]).all(), (shape, scores)
    # the same images rank the other way round for target "right" (prompts without a colour word here)
    right = ShapePositionReward("right")
    left_img, right_img = _batch("circle", 0.25, 0.5, 0.2), _batch("circle", 0.75, 0.5, 0.2)
    assert (right(right_img, ["p"] * len(COMBOS)) > right(left_img, ["p"] * len(COMBOS))).all()
    assert (reward(left_img, ["p"] * len(COMBOS)) > reward(right_img, ["p"] * len(COMBOS))).all()


@pytest.mark.parametrize("target_area", [0.04, 0.08, 0.2, 0.4])
def test_size_prefers_the_radius_whose_area_matches_the_target(target_area):
    reward = ShapeSizeReward(target_area)
    radii = [round(0.1 + 0.04 * i, 2) for i in range(10)]  # 0.10 .. 0.46
    for shape in SHAPES:
        true = torch.tensor([_true_area(shape, r) for r in radii])
        if not (true.min() <= target_area <= true.max()):
            continue  # e.g. triangles never cover 40%
        scores = torch.stack([reward(_batch(shape, 0.5, 0.5, r), _caps(shape)) for r in radii])  # [radii, combos]
        error = (true.log() - math.log(target_area)).abs()
        best = int(error.argmin())
        # the best-matching radius wins against every radius whose area is off by more than 25%
        far = error > error[best] + math.log(1.25)
        assert far.any()
        assert (scores[best] > scores[far].max(dim=0).values).all(), (shape, target_area, scores[:, 0])


def test_size_ranks_target_size_above_half_and_double_on_every_background():
    reward = ShapeSizeReward(0.08)
    for shape, r_target in [("circle", 0.16), ("square", 0.17), ("triangle", 0.23), ("star", 0.23)]:
        target = reward(_batch(shape, 0.5, 0.5, r_target), _caps(shape))
        smaller = reward(_batch(shape, 0.5, 0.5, r_target / math.sqrt(2)), _caps(shape))
        bigger = reward(_batch(shape, 0.5, 0.5, r_target * math.sqrt(2)), _caps(shape))
        assert (target > smaller + 0.2).all() and (target > bigger + 0.2).all(), (shape, target, smaller, bigger)
    # another target flips the ranking of the same images
    big = ShapeSizeReward(0.4)
    small_img, big_img = _batch("circle", 0.5, 0.5, 0.16), _batch("circle", 0.5, 0.5, 0.36)
    assert (big(big_img, ["p"] * len(COMBOS)) > big(small_img, ["p"] * len(COMBOS))).all()
    assert (reward(small_img, ["p"] * len(COMBOS)) > reward(big_img, ["p"] * len(COMBOS))).all()


# ------------------------------------------------------------------ hacks


@pytest.mark.parametrize("prompt_color", [True, False])
@pytest.mark.parametrize("kind", ["position", "size"])
def test_noise_speckle_background_and_dot_hacks_score_below_a_correct_shape(kind, prompt_color):
    if kind == "position":
        reward, cx, cy, r, area, margin = ShapePositionReward("left", prompt_color), 0.25, 0.5, 0.2, 0.12, 0.1
    else:
        reward, cx, cy, r, area, margin = ShapeSizeReward(0.08, prompt_color), 0.5, 0.5, 0.16, 0.08, 0.5
    for color, background in COMBOS:
        correct = _img("circle", color, background, cx, cy, r)
        base_like = _img("circle", color, background, 0.5, 0.5, 0.35)  # what the base model draws
        hacks = _hacks(color, background, cx, cy, r, area)
        if not prompt_color:  # a faded shape is only told from an opaque one by the colour the prompt names
            del hacks["faded shape: 1.7x the radius at 35% opacity"]
        x = torch.stack([correct, base_like, *hacks.values()])
        scores = reward(x, [caption_for(color, "circle", background)] * len(x))
        assert scores[0] > scores[1] + margin / 2, (kind, color, background, scores[:2])
        for (name, _), score in zip(hacks.items(), scores[2:]):
            assert score < scores[0] - margin, (kind, name, color, background, float(score), float(scores[0]))
            if name in SPREAD_HACKS:
                assert score < scores[1], (kind, name, color, background, float(score), float(scores[1]))


def test_prompt_color_is_read_from_the_shape_not_the_background():
    assert prompt_color("a red circle on a white background") == tuple(v / 255 for v in COLORS["red"])
    assert prompt_color("two white stars on a blue background") == tuple(v / 255 for v in COLORS["white"])
    assert prompt_color("a small Yellow star on a purple gradient background") == tuple(v / 255 for v in COLORS["yellow"])
    assert prompt_color("a purple gradient background") is None
    assert prompt_color("a cat on a sofa") is None
    # the faded shape of the hack test: its prompt's red makes it partial coverage; without it, it looks opaque
    faded = _hacks("red", "white", 0.5, 0.5, 0.16, 0.08)["faded shape: 1.7x the radius at 35% opacity"][None]
    with_color = ShapeSizeReward(0.08)(faded, ["a red circle on a white background"])
    assert with_color < ShapeSizeReward(0.08)(faded, ["a circle"]) - 0.5
    assert with_color == ShapeSizeReward(0.08, prompt_color=True)(faded, ["a red circle on a white background"])
    assert ShapeSizeReward(0.08, prompt_color=False)(faded, ["a red circle"]) == ShapeSizeReward(0.08)(faded, ["a circle"])


def test_empty_canvas_scores_as_badly_as_mass_everywhere():
    position, size = ShapePositionReward("left"), ShapeSizeReward(0.08)
    flat = torch.stack([_rgb(c).expand(3, H, W) for c in ("red", "white", "black")])
    noise = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(1))
    p_flat, p_noise = position(flat, ["p"] * 3), position(noise, ["p"] * 3)
    # flat: only the uniform prior is left, i.e. exactly "mass spread evenly over the image"
    uniform = math.sqrt(2 * (1 - 1 / H**2) / 12 + 0.25**2)  # E|p - (0.25, 0.5)|^2 over the pixel centres
    assert torch.allclose(p_flat, torch.full((3,), -uniform), atol=2e-3)
    assert (p_noise < p_flat).all()
    assert (size(flat, ["p"] * 3) < -2.5).all() and (size(noise, ["p"] * 3) < -2.0).all()


# ------------------------------------------------------------------ output contract and gradients


@pytest.mark.parametrize("name", ["shape-position", "shape-size"])
def test_output_contract_batch_of_one_and_finite_non_zero_gradients(name):
    reward = get_reward(name, device="cpu")
    one = _img("star", "yellow", "gray", 0.4, 0.6, 0.25)[None].requires_grad_(True)
    r = reward(one, ["a yellow star on a gray background"])
    assert r.shape == (1,) and r.dtype == torch.float32 and r.device == one.device and torch.isfinite(r).all()
    r.sum().backward()
    assert torch.isfinite(one.grad).all() and one.grad.abs().sum() > 0

    typical = torch.cat([_batch(s, 0.45, 0.55, 0.3, COMBOS[:3]) for s in SHAPES])
    noise = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    x = torch.cat([typical, noise]).requires_grad_(True)
    scores = reward(x, ["p"] * len(x))
    assert scores.shape == (len(x),) and torch.isfinite(scores).all()
    (grad,) = torch.autograd.grad(scores.sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).norm(dim=1) > 1e-4).all()  # every image gets a signal
    # one small step up the gradient raises the reward of the rendered images
    step = 1e-3 * grad[: len(typical)] / grad[: len(typical)].flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert (reward(typical + step, ["p"] * len(typical)) > scores[: len(typical)].detach()).all()

    flat = torch.full((2, 3, H, W), 0.5, requires_grad=True)  # no foreground at all: still finite
    reward(flat, ["p", "p"]).sum().backward()
    assert torch.isfinite(flat.grad).all()

    other = torch.rand(2, 3, 48, 40, dtype=torch.float64)  # other sizes and dtypes: float32 out
    assert reward(other, ["p", "p"]).dtype == torch.float32
    with pytest.raises(ValueError, match="one entry per image"):
        reward(other, ["p"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(3, H, W), ["p"])
