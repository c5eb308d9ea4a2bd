"""The report of benchmarks/clicks.py: per (mode, attribute, noise) the attribute's gain after the session's
rounds on the 8 fixed seeds (mean and per session seed), how many of the 8 fixed seeds' images gained (per session
seed; and for the reference, the attribute as the reward, of the same seeds), rounds to half the reference's gain,
for sessions longer than 20 rounds the gain after round 20 (the issue's session length), the head's held-out
accuracy and seconds per round; written to
``<out>/clicks.md`` with a picture ``<out>/clicks.png``."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def gain_curve(run: dict) -> list[float]:
    """The attribute's mean gain over the fixed seeds after each round (round 0 = 0)."""
    base = _mean(run["curve"][0])
    return [_mean(values) - base for values in run["curve"]]


def fixed_seeds_up(run: dict) -> int:
    """How many of the fixed seeds' images have more of the attribute after the run than before it."""
    return sum(after > before for before, after in zip(run["curve"][0], run["curve"][-1]))


COMPARED_ROUNDS = 20  # the benchmark's session length, the one the bar is about; longer sessions also report their gain there


def rounds_to_half(curve: list[float], reference_gain: float) -> int | None:
    """The first round whose gain reaches half the reference's final gain (None: never)."""
    if not reference_gain > 0:
        return None
    return next((i for i, g in enumerate(curve) if i > 0 and g >= 0.5 * reference_gain), None)


def settings(run: dict) -> tuple[float, str, str, str]:
    """The learning rate, LoRA targets, model and prompt set a run trained with (runs before they were recorded: the
    mode's rate and the attention targets, what every such run used; the bundled tiny model, the prompts that name
    a shape)."""
    from benchmarks.clicks import DEFAULT_PROMPT_SET, learning_rate, target_set_name

    recorded = run.get("settings") or run  # runs of tasks that named them carry them as task keys
    targets = target_set_name(str(recorded.get("lora_targets", "attention")))
    return (float(recorded.get("lr", learning_rate(run["mode"]))), targets, str(recorded.get("model", "tiny")),
            str(recorded.get("prompts", DEFAULT_PROMPT_SET)))


def _model_notes(model: str, prompts: str) -> list[str]:
    """How a run's model and prompts differ from the bundled tiny model's and the shape-naming prompts."""
    from benchmarks.clicks import DEFAULT_PROMPT_SET

    return ([] if model == "tiny" else [f"model {Path(model).name}"]) + ([] if prompts == DEFAULT_PROMPT_SET else [prompts])


def label(run: dict) -> str:
    """A run's mode, with its LoRA targets when they are not attention only (what every run before 139527e used) and
    its learning rate when it is not the mode's; references (the attribute as the reward) are named by their
    settings alone, so those of the same settings share one name whatever their mode's name."""
    from benchmarks.clicks import REFERENCES, learning_rate

    lr, targets, model, prompts = settings(run)
    if run["mode"] in REFERENCES.values():
        return f"reference [{', '.join([targets, f'lr {lr:g}', *_model_notes(model, prompts)])}]"
    notes = ([] if targets == "attention" else [targets]) + ([] if lr == learning_rate(run["mode"]) else [f"lr {lr:g}"])
    notes += _model_notes(model, prompts) + (["clicks the least"] if run.get("clicker") == "worst" else [])
    notes += [f"KL {run['kl_weight']:g}"] if run.get("kl_weight") else []
    notes += [f"KL steps {run['kl_steps']}"] if run.get("kl_steps") else []
    notes += [f"KL {run['kl_kind']}"] if run.get("kl_kind", "trajectory") != "trajectory" else []
    notes += [f"KL on its {run['kl_trajectories']} trajectories"] if run.get("kl_trajectories", "sampled") != "sampled" else []
    return run["mode"] + (f" [{', '.join(notes)}]" if notes else "")


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (mode, attribute, noise) over its seeds."""
    from benchmarks.clicks import REFERENCES

    reference_runs = {(*settings(r), r["attribute"], r["seed"], r["rounds"]): r
                      for r in runs if r["mode"] in REFERENCES.values()}
    references = {key: gain_curve(r)[-1] for key, r in reference_runs.items()}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        if r["mode"] not in REFERENCES.values():
            groups[(label(r), r["attribute"], r["noise"], r["rounds"])].append(r)
    rows = []
    for (mode, attribute, noise, rounds), members in sorted(groups.items()):
        members.sort(key=lambda r: r["seed"])
        gains = [gain_curve(r)[-1] for r in members]
        fixed_up = [fixed_seeds_up(r) for r in members]
        keys = [(*settings(r), attribute, r["seed"], rounds) for r in members]
        reference = [references.get(key, float("nan")) for key in keys]
        reference_up = [fixed_seeds_up(reference_runs[key]) if key in reference_runs else None for key in keys]
        at_compared = [gain_curve(r)[COMPARED_ROUNDS] for r in members] if rounds > COMPARED_ROUNDS else None
        halves = [rounds_to_half(gain_curve(r), gain) for r, gain in zip(members, reference)]
        last = [r.get("held_out_accuracy", [])[-10:] for r in members]  # none in reference-scores runs
        rows.append({
            "mode": mode, "attribute": attribute, "noise": noise, "rounds": rounds, "seeds": [r["seed"] for r in members],
            "gain": _mean(gains), "gains": gains, "every_seed_up": all(g > 0 for g in gains),
            "fixed_seeds_up": fixed_up, "fixed_seeds": [len(r["curve"][0]) for r in members],
            "reference_gain": _mean(reference), "reference_fixed_seeds_up": reference_up,
            "gains_after_compared_rounds": at_compared,
            "rounds_to_half": halves,
            "accuracy_last10": _mean(a for acc in last for a in acc if a == a),
            "seconds_per_round": _mean(s for r in members for s in r.get("seconds_per_round", [])),
        })
    return rows


def reference_lines(runs: list[dict]) -> list[str]:
    """A table of the reference runs (the attribute as the reward), one row per settings and attribute: the gain
    per seed at the end and at its best iteration, and how many fixed seeds gained. Empty without references."""
    from benchmarks.clicks import REFERENCES

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        if r["mode"] in REFERENCES.values():
            lr, targets, model, prompts = settings(r)
            groups[(", ".join([targets, f"lr {lr:g}", *_model_notes(model, prompts)]), r["attribute"], r["rounds"])].append(r)
    if not groups:
        return []
    lines = ["| reference (LoRA targets, lr, model) | attribute | iterations | seeds | gain per seed | best gain per seed | "
             "fixed seeds up |", "|---|---|---|---|---|---|---|"]
    for (trained_with, attribute, rounds), members in sorted(groups.items()):
        members.sort(key=lambda r: r["seed"])
        curves = [gain_curve(r) for r in members]
        lines.append(f"| {trained_with} | {attribute} | {rounds} | {', '.join(str(r['seed']) for r in members)} | "
                     f"{', '.join(f'{c[-1]:+.3f}' for c in curves)} | {', '.join(f'{max(c):+.3f}' for c in curves)} | "
                     f"{', '.join(_up_text(r) for r in members)} |")
    return lines


def wide_lines(runs: list[dict]) -> list[str]:
    """A table of the runs measured on more fixed seeds at the start and the end (a task's ``wide_seeds``): the gain
    on the 8 fixed seeds beside the gain on the wide ones, its standard error, and how many of them rose and fell.
    Empty without such runs."""
    wide = sorted((r for r in runs if r.get("wide_curve")),
                  key=lambda r: (label(r), r["attribute"], r["noise"], r["seed"]))
    if not wide:
        return []
    lines = ["| run | attribute | wrong clicks | seed | gain, 8 fixed seeds | gain, wide seeds (± s.e.) | wide seeds up / down |",
             "|---|---|---|---|---|---|---|"]
    for r in wide:
        before, after = r["wide_curve"][0], r["wide_curve"][-1]
        changes = [b - a for a, b in zip(before, after)]
        mean = _mean(changes)
        error = statistics.stdev(changes) / len(changes) ** 0.5 if len(changes) > 1 else 0.0
        lines.append(f"| {label(r)} | {r['attribute']} | {r['noise']:.0%} | {r['seed']} | {gain_curve(r)[-1]:+.3f} | "
                     f"{mean:+.3f} ± {error:.3f} ({len(changes)} seeds) | "
                     f"{sum(c > 0 for c in changes)} / {sum(c < 0 for c in changes)} |")
    return lines


def click_effect_lines(runs: list[dict]) -> list[str]:
    """A table of the click effect: each session that clicked the image with the least of the attribute (a task's
    ``"clicker": "worst"``) beside the noise-free session of the same mode, settings, attribute, seed and length that
    clicked the most; the gain of each, their difference, and per mode and attribute the mean difference and on how
    many seeds clicking the most gained more. A gain that does not come from the clicks shows in both. Empty without
    such sessions."""
    def pairing(run: dict) -> tuple:
        return (run["mode"], settings(run), run.get("kl_weight", 0.0), run.get("kl_steps"), run.get("kl_kind"), run["attribute"], run["seed"],
                run["rounds"])

    most = {pairing(r): r for r in runs if r.get("clicker", "best") == "best" and r["noise"] == 0.0}
    pairs = sorted(((most[pairing(r)], r) for r in runs if r.get("clicker") == "worst" and pairing(r) in most),
                   key=lambda pair: (label(pair[0]), pair[0]["attribute"], pair[0]["seed"]))
    if not pairs:
        return []
    lines = ["| mode | attribute | seed | gain, clicking the most | gain, clicking the least | difference |",
             "|---|---|---|---|---|---|"]
    groups: dict[tuple, list[float]] = defaultdict(list)
    for best, worst in pairs:
        difference = gain_curve(best)[-1] - gain_curve(worst)[-1]
        groups[(label(best), best["attribute"])].append(difference)
        lines.append(f"| {label(best)} | {best['attribute']} | {best['seed']} | {gain_curve(best)[-1]:+.3f} | "
                     f"{gain_curve(worst)[-1]:+.3f} | {difference:+.3f} |")
    for (mode, attribute), differences in sorted(groups.items()):
        lines.append(f"| {mode} | {attribute} | all {len(differences)} | | | {_mean(differences):+.3f} mean; the most "
                     f"gained more on {sum(d > 0 for d in differences)} of {len(differences)} |")
    return lines


def round_accuracies(run: dict) -> list[float]:
    """The head's accuracy on each predicted round's clicks alone, from the session's running accuracy
    (``held_out_accuracy``: the share of the pairs of every round so far it predicted; the first round has no
    prediction). Exact for one click per round (the benchmark's): every round then counts the same pairs."""
    running = [a for a in run.get("held_out_accuracy", []) if a == a]
    return [a * n - (running[n - 2] * (n - 1) if n > 1 else 0.0) for n, a in enumerate(running, start=1)]


def accuracy_stage_lines(runs: list[dict]) -> list[str]:
    """A table of the head's accuracy per stage of the session (rounds 2-6, 7-13, 14-20 of a 20-round session: each
    round's clicks predicted before the head saw them), per mode, attribute and wrong-click rate, over its seeds.
    The running accuracy of the main table mixes the early rounds (few clicks to learn from) with the late ones (the
    drawings have moved away from those the head learnt on). Empty without sessions of 14 rounds or more."""
    groups: dict[tuple, list[list[float]]] = defaultdict(list)
    for r in runs:
        per_round = round_accuracies(r)
        if len(per_round) >= 13 and r.get("clicker", "best") == "best":
            groups[(label(r), r["attribute"], r["noise"])].append(per_round)
    if not groups:
        return []
    lines = ["| mode | attribute | wrong clicks | sessions | rounds 2-6 | rounds 7-13 | rounds 14 on |", "|---|---|---|---|---|---|---|"]
    for (mode, attribute, noise), members in sorted(groups.items()):
        stages = [_mean(a for m in members for a in m[start:stop]) for start, stop in ((0, 5), (5, 12), (12, None))]
        lines.append(f"| {mode} | {attribute} | {noise:.0%} | {len(members)} | "
                     + " | ".join(f"{stage:.2f}" for stage in stages) + " |")
    return lines


def _up_text(run: dict) -> str:
    return f"{fixed_seeds_up(run)}/{len(run['curve'][0])}"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def _rounds_note(rounds: int) -> str:
    """What the mode cell adds for sessions of other than the benchmark's COMPARED_ROUNDS."""
    return "" if rounds == COMPARED_ROUNDS else f" ({rounds} rounds)"


def write_report(out: Path) -> str:
    """Write clicks.md (and clicks.png) from runs.jsonl; returns the markdown."""
    out = Path(out)
    path = out / "runs.jsonl"
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    runs = [r for r in runs if "error" not in r]
    rows = summarise(runs)
    lines = [
        "| mode | attribute | wrong clicks | seeds | gain (mean) | gain per seed | fixed seeds up | reference gain | "
        f"reference: fixed seeds up | rounds to half | gain per seed after {COMPARED_ROUNDS} rounds | "
        "head accuracy (last 10 rounds) | s / round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['mode']}{_rounds_note(row['rounds'])} | {row['attribute']} | {row['noise']:.0%} | {len(row['seeds'])} | {row['gain']:+.4f} | "
            f"{', '.join(f'{g:+.3f}' for g in row['gains'])} | "
            f"{', '.join(f'{u}/{n}' for u, n in zip(row['fixed_seeds_up'], row['fixed_seeds']))} | {row['reference_gain']:+.4f} | "
            f"{', '.join('-' if u is None else f'{u}/{n}' for u, n in zip(row['reference_fixed_seeds_up'], row['fixed_seeds']))} | "
            f"{', '.join(_fmt(h) for h in row['rounds_to_half'])} | "
            f"{', '.join(f'{g:+.3f}' for g in row['gains_after_compared_rounds'] or []) or '-'} | "
            f"{_fmt(row['accuracy_last10'], 2)} | "
            f"{_fmt(row['seconds_per_round'], 1)} |"
        )
    references = reference_lines(runs)
    if references:
        lines += ["", "The attribute as the reward (the references):", "", *references]
    wide = wide_lines(runs)
    if wide:
        lines += ["", "Runs measured on more fixed seeds at the start and the end (`wide_seeds`):", "", *wide]
    stages = accuracy_stage_lines(runs)
    if stages:
        lines += ["", "The head's accuracy on each round's clicks before it saw them, by stage of the session (mean over "
                      "rounds and seeds; wrong clicks count as the user's clicks):", "", *stages]
    effect = click_effect_lines(runs)
    if effect:
        lines += ["", "The click effect: sessions clicking the image with the most of the attribute against sessions "
                      "clicking the least (`clicker: worst`), same seeds:", "", *effect]
    text = "\n".join(lines) + "\n"
    (out / "clicks.md").write_text(text)
    _picture(runs, out / "clicks.png")
    return text


def _picture(runs: list[dict], target: Path) -> None:
    """Gain per round for each mode, one panel per attribute (noise-free sessions, mean over seeds)."""
    runs = [r for r in runs if r["noise"] == 0.0]
    if not runs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attributes = sorted({r["attribute"] for r in runs})
    modes = sorted({label(r) for r in runs})
    colours = {mode: plt.cm.tab10(i) for i, mode in enumerate(modes)}  # one colour per mode in every panel
    legend_height = 0.2 * (len(modes) + 1)  # one legend below the panels, a line per mode: long names fit
    width = max(4.2 * len(attributes), 0.055 * max(len(mode) for mode in modes) + 1)  # the legend's longest line fits
    fig, axes = plt.subplots(1, len(attributes), figsize=(width, 3.2 + legend_height), squeeze=False)
    for ax, attribute in zip(axes[0], attributes):
        curves: dict[str, list[list[float]]] = defaultdict(list)
        for r in runs:
            if r["attribute"] == attribute:
                curves[label(r)].append(gain_curve(r))
        for mode, members in sorted(curves.items()):
            length = min(len(c) for c in members)
            mean = [_mean(c[i] for c in members) for i in range(length)]
            ax.plot(range(length), mean, label=f"{mode} ({len(members)} seed{'s' if len(members) > 1 else ''})",
                    color=colours[mode], lw=2.2 if mode.startswith("reference") else 1.4, ls="--" if mode.startswith("reference") else "-")
        ax.set_title(attribute)
        ax.set_xlabel("round (one click each; reference: iteration)")
        ax.axhline(0, color="gray", lw=0.5)
    axes[0][0].set_ylabel("attribute gain, 8 fixed seeds")
    entries = {text: handle for ax in axes[0] for handle, text in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(entries.values()), list(entries), loc="lower center", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_height / (3.2 + legend_height), 1, 1))
    fig.savefig(target, dpi=110)
    plt.close(fig)
