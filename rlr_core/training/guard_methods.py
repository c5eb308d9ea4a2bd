"""The Trainer's side of the reward-hacking guard (``rlr_core.training.guard``): the guarded evaluations and
the export of the kept LoRA at the end of a run. See docs/guard.md."""

from __future__ import annotations

from typing import Any

from .evaluation import evaluate_guarded

__all__ = ["GuardMethods"]


class GuardMethods:
    """The Trainer's guarded evaluation and final export (a mixin of ``rlr_core.training.trainer.Trainer``).

    Uses the Trainer's ``chain``, ``reward``, ``config``, ``probe``, ``guard``, ``eval_prompts``, ``output_dir``,
    ``before_images`` / ``before_rewards`` and its ``export_lora`` / ``lora_state`` / ``load_lora_state``.
    """

    def evaluate_base(self) -> None:
        """The "before" evaluation (LoRA off): the before images and the guard's base figures."""
        base = evaluate_guarded(self.chain, self.reward, self.config.eval_seeds, self.eval_prompts, self.probe,
                                adapters=False)
        self.before_images, self.before_rewards = base.images, base.rewards
        self.guard.set_base(base.rewards, base.heldout, base.diversity_raw, self.chain)
        self.before_guard = {**self.guard.metrics(base.heldout, base.diversity_raw, None).as_dict(),
                             "kl": 0.0, "space": base.space}

    def evaluate_step(self, report: Any) -> None:
        """Evaluate after iteration ``report.step``: images, rewards, the guard's figures and verdict (which may
        end the run: ``early_stop_patience``)."""
        result = evaluate_guarded(self.chain, self.reward, self.config.eval_seeds, self.eval_prompts, self.probe)
        report.eval_images, report.eval_rewards = result.images, result.rewards
        metrics = self.guard.metrics(result.heldout, result.diversity_raw, result.kl)
        report.heldout_reward, report.diversity, report.kl = metrics.heldout_reward, metrics.diversity, metrics.kl
        verdict = self.guard.judge(report.step, result.rewards, metrics, self.chain)
        report.guard = {**verdict, "space": result.space, "keep_best": self.guard.keep_best}
        if verdict["stop"]:
            self.stop()
            self._pending_message = "; ".join(m for m in (self._pending_message, self.guard.stop_message()) if m)

    def export_final(self) -> None:
        """At the end of ``run()``: the LoRA to ``output_dir/lora``; with keep_best the kept one there (and the
        chain holds it afterwards), the last one in ``output_dir/lora-last``."""
        kept = self.guard.best_lora if self.guard.keep_best else None
        if kept is None:
            self.export_lora(self.output_dir / "lora")
            return
        self.export_lora(self.output_dir / "lora-last")
        if self._last_lora is None:
            self._last_lora = self.lora_state()
        self.load_lora_state(kept)
        self.export_lora(self.output_dir / "lora")

    def restore_last(self) -> None:
        """Before a run continues: the chain goes back from the kept LoRA to the last one it trained."""
        if self._last_lora is not None:
            self.load_lora_state(self._last_lora)
            self._last_lora = None
