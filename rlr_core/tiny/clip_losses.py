"""Losses and zero-shot evaluation of tiny-clip: the symmetric CLIP loss with hard negatives, the robust
shape loss (off-distribution and PGD-attacked images must keep their shape reading), and zero-shot accuracy
per attribute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .captions import ATTRIBUTES, SHAPE_CLASSES, candidates, shape_captions
from .clip_data import off_distribution
from .clip_model import TinyClip
from .data import Sample

__all__ = ["zero_shot_accuracy", "shape_logits", "adversarial", "robust_shape_loss", "contrastive_loss"]


@torch.no_grad()
def zero_shot_accuracy(model: TinyClip, images: torch.Tensor, labels: list[tuple[str, str, str]]) -> dict[str, float]:
    """Zero-shot accuracy per attribute of ``images`` [N,3,H,W] in [0,1] with (colour, shape, background) labels."""
    img = model.encode_image(images)
    text_cache: dict[str, torch.Tensor] = {}

    def emb(texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in text_cache]
        if missing:
            for t, e in zip(missing, model.encode_text(missing)):
                text_cache[t] = e
        return torch.stack([text_cache[t] for t in texts])

    right = {a: 0 for a in ATTRIBUTES}
    for i, (color, shape, background) in enumerate(labels):
        for attr in ATTRIBUTES:
            caps, truth = candidates(color, shape, background, attr)
            right[attr] += int(int((emb(caps) @ img[i]).argmax()) == truth)
    return {a: right[a] / max(len(labels), 1) for a in ATTRIBUTES}


def shape_logits(model: TinyClip, images: torch.Tensor, shape_text: torch.Tensor) -> torch.Tensor:
    """[B, K] logits of the K shape captions per image; ``shape_text`` is [B, K, D] (normalised)."""
    img = model.encode_image(images)
    return model.scale() * torch.einsum("bd,bkd->bk", img, shape_text)


def _l2_project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return delta * (eps / norm).clamp(max=1.0)


def adversarial(model: TinyClip, images: torch.Tensor, shape_text: torch.Tensor, truth: torch.Tensor, eps: float, steps: int,
                g: torch.Generator, norm: str = "linf") -> torch.Tensor:
    """PGD that maximises the shape cross-entropy from a random start, within an L-inf ball of radius
    ``eps`` (``norm="linf"``: steps of eps/2 along the gradient's sign) or an L2 ball per image
    (``norm="l2"``: steps of 2.5 eps/steps along the normalised gradient, the Madry et al. schedule)."""
    if norm == "linf":
        delta = (torch.rand(images.shape, generator=g) * 2 - 1) * eps
    elif norm == "l2":
        delta = _l2_project(torch.randn(images.shape, generator=g) * eps, eps * float(torch.rand(1, generator=g)))
    else:
        raise ValueError(f"norm={norm!r} is not allowed; allowed values: 'linf', 'l2'")
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(shape_logits(model, (images + delta).clamp(0, 1), shape_text), truth)
        (grad,) = torch.autograd.grad(loss, delta)
        if norm == "linf":
            delta = (delta.detach() + 0.5 * eps * grad.sign()).clamp(-eps, eps)
        else:
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = _l2_project(delta.detach() + 2.5 * eps / steps * step, eps)
    return (images + delta).clamp(0, 1).detach()


def robust_shape_loss(model: TinyClip, images: torch.Tensor, batch: list[Sample], eps: float, steps: int,
                      g: torch.Generator, classes: tuple[str, ...] = SHAPE_CLASSES, norm: str = "linf",
                      attack_clean: bool = False) -> torch.Tensor:
    """Shape cross-entropy (among the captions of ``classes`` with the sample's own colour and background:
    the 4 shapes, the empty caption, and the blob / noise captions when trained with them) of
    off-distribution versions of ``images`` and of PGD adversarial versions of them: a change that is not
    a change of shape must not move the shape scores (the star demo's reward hacking). ``attack_clean``:
    the PGD attacks the images themselves, not their off-distribution versions."""
    text = model.encode_text(shape_captions(batch, classes)).view(len(batch), len(classes), -1)
    truth = torch.tensor([classes.index(sp.shape) for sp in batch])
    shifted = off_distribution(images, g)
    start = images if attack_clean else shifted
    attacked = adversarial(model, start, text.detach(), truth, eps, steps, g, norm) if steps > 0 else start
    both = torch.cat([shifted, attacked])
    return F.cross_entropy(shape_logits(model, both, torch.cat([text, text])), torch.cat([truth, truth]))


def contrastive_loss(model: TinyClip, images: torch.Tensor, captions: list[str], negatives: list[str]) -> torch.Tensor:
    """Symmetric CLIP loss; equal captions are positives; ``negatives`` are extra texts for image->text."""
    img = model.encode_image(images)
    texts = list(captions) + list(negatives)
    txt = model.encode_text(texts)
    logits = model.scale() * img @ txt.T  # [B, 2B]
    index = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    tid = torch.tensor([index[t] for t in texts])
    cid = tid[: len(captions)]
    pos = (cid[:, None] == tid[None, :]).float()  # [B, 2B]
    i2t = -(torch.logsumexp(logits.masked_fill(pos == 0, -1e9), dim=1) - torch.logsumexp(logits, dim=1)).mean()
    t_logits = logits[:, : len(captions)].T  # [B texts, B images]
    t_pos = (cid[:, None] == cid[None, :]).float()
    t2i = -(torch.logsumexp(t_logits.masked_fill(t_pos == 0, -1e9), dim=1) - torch.logsumexp(t_logits, dim=1)).mean()
    return 0.5 * (i2t + t2i)
