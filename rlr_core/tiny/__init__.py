"""The bundled tiny text-to-image model: procedural data, architecture, training, detector, evaluation.

    python -m rlr_core.tiny.train --out assets/tiny-shapes --steps 2688 --weighting eps
    python -m rlr_core.tiny.train --out assets/tiny-shapes --resume --weighting plain
    python -m rlr_core.tiny.evaluate --model assets/tiny-shapes --chain

Submodules: ``data`` (seeded captioned shape images), ``model`` (UNet / CLIP text encoder /
tokenizer / DDIM scheduler and the export format), ``train``, ``evaluate``, ``detect``
(deterministic colour / shape / background detector), ``report`` (loss curve).
"""
