"""The Preference tab's click runs without a server: the head's held-out accuracy and the strips of fixed seeds,
head updates, and a click log downloaded, loaded after a restart and replayed bit for bit."""

from __future__ import annotations

import json
import shutil
import zipfile
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")


def form(model: str, **kw):
    # one prompt: 4 evaluation seeds; T = 4; no evaluation due during the test
    return {"model": model, "prompt": "a red circle", "num_steps": 4, "steps": 100, "eval_every": 100,
            "keep_best": False, **kw}


def click_rounds(session, values, rounds, mode="direct", head_updates=0, features="pixels", check=False, kl_weight=None):
    """``rounds`` rounds clicked the same way (the first image preferred); the next round is left on screen,
    as the tab does after an update. ``kl_weight`` None: the tab's default."""
    from app import clicks, runs
    from rlr_core.rewards.preference import DEFAULT_KL_WEIGHT

    kl_weight = DEFAULT_KL_WEIGHT if kl_weight is None else kl_weight

    run = runs.session_run(session)
    if run is None or run.round is None:
        run = clicks.preference_round(session, values, False, 4, mode, features, head_updates, 0, check, kl_weight)
    for _ in range(rounds):
        run, _update = clicks.preference_update(session, [0], best_only=True)
        run = clicks.preference_round(session, values, False, 4, mode, features, head_updates, 0, check, kl_weight)
    return run


def test_status_line_and_strips_show_what_is_learnt(studio):
    from app import clicks, formatting

    values = form(studio)
    run = clicks.preference_round("a", values, False, 4, "direct", "pixels", 0)
    assert "predicted **-**" in formatting.counters_text(run)  # no prediction before the first click
    assert [s.label for s in clicks.strips(run)] == ["before"]
    run = click_rounds("a", values, 3)
    text = formatting.counters_text(run)
    assert run.counters == {"rounds": 4, "clicks": 3, "updates": 3, "undone": 0}
    assert "rounds 4 · updates 3 · clicks 3" in text and "last 10 rounds" in text
    assert len(run.preference.predictions) == 2  # rounds 2 and 3 were predicted before the head saw them
    accuracy = run.preference.held_out_accuracy(last=formatting.ACCURACY_ROUNDS)
    assert f"predicted **{accuracy:.0%}**" in text
    strips = clicks.strips(run)
    assert [s.label for s in strips] == ["update 3", "update 2", "update 1", "before"]
    assert all(len(s.images) == clicks.STRIP_IMAGES and s.seeds == strips[0].seeds for s in strips)
    assert strips[0].images[0].tobytes() != strips[-1].images[0].tobytes()  # the same seed, another LoRA


def test_status_line_shows_how_a_cross_validated_head_weighs_its_features(studio):
    from app import formatting

    run = click_rounds("w", form(studio), 3, mode="learned", features="tiny-clip+grid+colour")
    weights = run.preference.head.group_weights
    assert list(weights) == ["embedding", "grid", "colour"] and weights["embedding"] == 1.0
    text = formatting.counters_text(run)
    assert "features tiny-clip+grid+colour (weighed from your clicks: embedding ×1, grid ×" in text
    assert f"colour ×{weights['colour']:g})" in text
    assert "weighed" not in formatting.counters_text(click_rounds("x", form(studio), 1, mode="learned", features="layout"))
    capped = SimpleNamespace(group_weights={"embedding": 1.0, "grid": 0.0, "colour": 30.0}, selection="cross-validated",
                             colour_scale=0.25)
    assert formatting.group_weights_text(capped) == (" (weighed from your clicks: embedding ×1, grid ×0, colour ×30; "
                                                      "colour's pull capped ×0.25)")


def test_head_updates_add_trainer_iterations(studio):
    from app import clicks

    run = click_rounds("b", form(studio), 2, head_updates=1)
    assert run.step == 4 and len(run.history) == 4  # per round: the click update and one from the head
    assert run.counters["updates"] == 2 and run.preference.settings()["head_updates"] == 1
    # another number of head updates is another click run, continuing from the current LoRA
    other = clicks.preference_round("b", {}, False, 4, "direct", "pixels", 0)
    assert other is not run and other.step == 0 and other.preference.head_updates == 0



def test_a_round_shows_one_prompt_the_prompts_in_turn(studio):
    from app import clicks

    values = form(studio, prompt="a red circle\na blue square\na green star")
    run = clicks.preference_round("h", values, False, 4, "direct", "pixels", 0)
    shown = [run.round.prompts]
    for _ in range(3):
        clicks.preference_update("h", [0], best_only=True)
        shown.append(clicks.preference_round("h", {}, False, 4, "direct", "pixels", 0).round.prompts)
    assert shown == [[p] * 4 for p in ("a red circle", "a blue square", "a green star", "a red circle")]


def test_learning_rate_of_a_click_run(studio):
    from app import clicks, formatting
    from app.state import FieldError

    run = clicks.preference_round("g", form(studio, lr=0.003), False, 4, "direct", "pixels", 0)
    assert run.config.lr == 0.003 and "learning rate 0.003" in formatting.counters_text(run)  # auto: the Train form's
    chosen = clicks.preference_round("g", {}, False, 4, "direct", "pixels", 0, 0.05)
    assert chosen is not run and chosen.config.lr == 0.05 and chosen.trainer.optimizer.param_groups[0]["lr"] == 0.05
    back = clicks.preference_round("g", {}, False, 4, "direct", "pixels", 0, 0)  # auto again: the Train form's, not 0.05
    assert back is not chosen and back.config.lr == 0.003
    for bad in (-0.01, 2, "fast"):
        with pytest.raises(FieldError, match=r"^Learning rate \(0 = auto\): must be"):
            clicks.preference_round("g", {}, False, 4, "direct", "pixels", 0, bad)


def test_kl_to_the_base_model_of_a_click_run(studio):
    """The tab's KL weight is the click run's (whatever the Train form says), shown in its status line and logged with
    every update; a changed weight makes a new click run; a weight the Train settings cannot use is refused by name."""
    from app import clicks, formatting
    from app.state import FieldError
    from rlr_core.rewards.preference import DEFAULT_KL_KIND, DEFAULT_KL_STEPS

    values = form(studio, kl_weight=0.5)
    run = click_rounds("q", values, 1, kl_weight=0.0)
    assert run.config.kl_weight == 0.0 and "KL to the base model 0 ·" in formatting.counters_text(run)
    assert [(e["kl_weight"], e["kl_steps"]) for e in run.preference.log.events if e.get("type") == "update"] == [
        (0.0, DEFAULT_KL_STEPS)]
    weighted = clicks.preference_round("q", {}, False, 4, "direct", "pixels", 0, 0, False, 0.01)
    assert weighted is not run and weighted.config.kl_weight == 0.01 and weighted.config.kl_kind == DEFAULT_KL_KIND
    assert weighted.config.kl_steps == DEFAULT_KL_STEPS
    assert f"KL to the base model {formatting.kl_text(0.01, DEFAULT_KL_KIND)} ·" in formatting.counters_text(weighted)
    assert formatting.kl_text(0.01, "local") == "0.01 (local: a uniform colour shift is free)"
    assert formatting.kl_text(0.01, "trajectory") == "0.01" and formatting.kl_text(0.0, "local") == "0"
    for bad in (-1, 1e4, "strong"):
        with pytest.raises(FieldError, match=r"^KL to the base model: must be"):
            clicks.preference_round("q", {}, False, 4, "direct", "pixels", 0, 0, False, bad)
    deterministic = form(studio, eta=0.0, estimator="full-bp")  # rlr needs eta > 0 anyway
    with pytest.raises(FieldError, match=r"^KL to the base model: needs stochastic steps: set it to 0, or eta above 0"):
        clicks.preference_round("r", deterministic, False, 4, "learned", "pixels", 0, 0, False, 0.01)
    assert clicks.preference_round("r", deterministic, False, 4, "learned", "pixels", 0, 0, False, 0.0).config.eta == 0


def test_click_log_zip_loads_and_replays_bit_for_bit(studio, tmp_path):
    import torch

    from app import clicks, runs
    from app.transfer import click_log_zip
    from rlr_core.rewards.preference import DEFAULT_KL_KIND, DEFAULT_KL_STEPS

    values = form(studio, lr=0.004)  # auto: off the tiny model, the Train form's learning rate
    run = click_rounds("c", values, 2, mode="learned", head_updates=1, features="layout", kl_weight=0.02)
    run, update = clicks.preference_update("c", [0], best_only=True)
    assert update.report.grad_norms["kl"] > 0  # the update added the gradient of the KL to the base model
    run = clicks.preference_round("c", values, False, 4, "learned", "layout", 1, 0, False, 0.02)
    assert run.config.lr == 0.004 and run.config.kl_weight == 0.02
    trained = runs.current_lora(run)
    next_seed = run.round.seed  # the round on screen, not clicked: the log holds 3 rounds
    download = tmp_path / "clicks.zip"
    shutil.copyfile(click_log_zip("c"), download)
    with zipfile.ZipFile(download) as archive:
        names = archive.namelist()
    assert "clicks.jsonl" in names and "clicks_start_lora.safetensors" in names
    assert sum(n.startswith("clicks_images/") for n in names) == 12

    runs.reset_all()  # a restart: no run, no model; the Train form now has another learning rate (and no KL)
    loaded, message = clicks.load_click_log("d", str(download), form(studio, lr=0.02), False)
    assert message == "replayed 3 rounds; 0 rounds' images differed from the log"
    assert loaded.preference.settings() == {"mode": "learned", "features": "layout", "head_updates": 1, "head_gradient": True,
                                            "lr": 0.004, "check_seeds": [], "round_images": "batch",
                                            "estimator": "rlr", "head_l2": 0.01,
                                            "head_group_weights": [0.0, 1.0, 3.0, 10.0, 30.0, 100.0],
                                            "head_solver": "newton", "head_selection": "all",
                                            "head_colour_cap": None, "kl_weight": 0.02,
                                            "kl_kind": DEFAULT_KL_KIND, "kl_steps": DEFAULT_KL_STEPS,
                                            "kl_trajectories": "sampled"}  # the log's
    assert loaded.config.kl_weight == 0.02 and loaded.config.kl_kind == DEFAULT_KL_KIND
    rebuilt = runs.current_lora(loaded)
    assert set(rebuilt) == set(trained) and all(torch.equal(rebuilt[k], trained[k]) for k in trained)
    assert loaded.step == 6 and loaded.counters == {"rounds": 3, "clicks": 3, "updates": 3, "undone": 0}
    assert len(loaded.preference.log.rounds()) == 3  # the new log holds every replayed round
    assert [s.label for s in clicks.strips(loaded)][-1] == "before" and len(clicks.strips(loaded)) == 4
    # the same settings in the tab (loading sets its learning rate to the log's) continue the loaded run; its next
    # round has the next seed
    same = clicks.preference_round("d", values, False, 4, "learned", "layout", 1, loaded.config.lr, False,
                                   loaded.config.kl_weight)
    assert same is loaded and same.round.seed == next_seed


def test_a_click_log_replays_with_its_own_estimator(studio, tmp_path):
    """A click run trains with the Train form's estimator and options, and its log records the estimator: loaded into
    a Train form with another estimator, the log is replayed with its own and rebuilds the same LoRA."""
    import torch

    from app import clicks, formatting, runs
    from app.transfer import click_log_zip

    values = form(studio, estimator="full-bp")
    run = click_rounds("t", values, 2, mode="learned", features="layout")
    assert run.config.estimator == "full-bp" and run.trainer.estimator.name == "full-bp"
    assert "estimator full-bp" in formatting.counters_text(run)
    assert [e["estimator"] for e in run.preference.log.events if e.get("type") == "update"] == ["full-bp", "full-bp"]
    trained = runs.current_lora(run)
    download = tmp_path / "clicks.zip"
    shutil.copyfile(click_log_zip("t"), download)

    runs.reset_all()
    other = form(studio, estimator="rlr", estimator_options='{"h": 2}')
    loaded, message = clicks.load_click_log("u", str(download), other, False)
    assert message == "replayed 2 rounds; 0 rounds' images differed from the log"
    assert loaded.config.estimator == "full-bp" and loaded.config.estimator_options == {}  # rlr's options left out
    rebuilt = runs.current_lora(loaded)
    assert set(rebuilt) == set(trained) and all(torch.equal(rebuilt[k], trained[k]) for k in trained)
    direct = clicks.preference_round("v", other, False, 4, "direct", "pixels", 0)  # a new run: the Train form's
    assert direct.config.estimator == "rlr" and direct.config.estimator_options == {"h": 2}


def test_a_loaded_click_log_keeps_the_rounds_it_showed(studio, tmp_path, monkeypatch):
    """A log's round_images decide what its replay shows: a log older than the setting showed the update's batch and
    replays exactly (with the head's fit of then: l2 0.01, group weights 0, 1, 3, 10, L-BFGS; here a session whose head
    was made so, the settings then removed from its log); a log of hidden-twins rounds (Python API) is replayed with
    them (here the same log relabelled, so every round's images differ from the logged ones, and are counted)."""
    import functools

    import torch

    from app import clicks, runs
    from app.transfer import click_log_zip
    from rlr_core.rewards.preference import PreferenceReward

    with monkeypatch.context() as patch:
        patch.setattr(clicks, "PreferenceReward", functools.partial(PreferenceReward, solver="lbfgs"))
        run = click_rounds("k", form(studio), 2, mode="learned", features="layout", kl_weight=0.0)  # as then
    assert run.preference.round_images == "batch"
    trained = runs.current_lora(run)
    download = tmp_path / "clicks.zip"
    shutil.copyfile(click_log_zip("k"), download)
    with zipfile.ZipFile(download) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    events = [json.loads(line) for line in files["clicks.jsonl"].decode().splitlines() if line.strip()]
    assert sum(e.pop("round_images", None) == "batch" for e in events) == 2
    assert sum(e.pop("head_l2", None) == 0.01 and e.pop("head_group_weights", None) == [0, 1, 3, 10, 30, 100]
               and e.pop("head_solver", None) == "lbfgs" and e.pop("head_selection", None) == "all"
               and e.pop("head_colour_cap", 0) is None and e.pop("kl_weight", None) == 0.0
               and e.pop("kl_kind", None) is not None and e.pop("kl_steps", None) is not None
               and e.pop("kl_trajectories", None) == "sampled" for e in events) == 2
    for name, value in (("older", None), ("hidden", "hidden-twins")):
        lines = [{**e, "round_images": value} if value and e.get("type") == "update" else e for e in events]
        if name == "hidden":  # and its KL's trajectories the update's own: the loaded run's config says so
            lines = [{**e, "kl_trajectories": "own"} if e.get("type") == "update" else e for e in lines]
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as archive:
            for file_name, data in files.items():
                archive.writestr(file_name, "".join(json.dumps(e) + "\n" for e in lines) if file_name == "clicks.jsonl" else data)
    runs.reset_all()
    older, message = clicks.load_click_log("l", str(tmp_path / "older.zip"), form(studio), False)
    assert older.preference.settings()["round_images"] == "batch" and message.endswith("0 rounds' images differed from the log")
    head = older.preference.head
    assert head.l2 == 0.01 and head.group_weight_choices == (0, 1, 3, 10) and head.solver == "lbfgs"  # as then
    assert older.config.kl_kind == "trajectory" and older.config.kl_steps == 4
    assert older.config.kl_trajectories == "sampled"  # what a log older than the setting had (no KL here, so no matter)
    again = clicks.preference_round("l", {}, False, 4, "learned", "layout", 0, older.config.lr, False,
                                    older.config.kl_weight)  # the tab's settings are the log's: the loaded run goes on
    assert again is older and again.config.kl_kind == "trajectory"
    rebuilt = runs.current_lora(older)
    assert all(torch.equal(rebuilt[k], trained[k]) for k in trained)
    hidden, message = clicks.load_click_log("m", str(tmp_path / "hidden.zip"), form(studio), False)
    assert hidden.preference.settings()["round_images"] == "hidden-twins"
    assert hidden.config.kl_trajectories == "own" and hidden.preference.settings()["kl_trajectories"] == "own"
    assert hidden.counters == {"rounds": 2, "clicks": 2, "updates": 2, "undone": 0}  # a round's 4 images, not its 8 rewards
    assert message.endswith("2 rounds' images differed from the log")
    assert clicks.preference_round("m", {}, False, 4, "learned", "layout", 0, hidden.config.lr, False,
                                   hidden.config.kl_weight) is hidden  # continues


def test_checked_click_run_counts_undone_updates_and_replays_them(studio, tmp_path):
    """"Check each update": the run's session has CHECK_SEEDS, the status line counts the undone updates, and a
    loaded log replays with the log's check seeds to the same LoRA."""
    import torch

    from app import clicks, formatting, runs
    from app.transfer import click_log_zip
    from rlr_core.rewards.preference import CHECK_SEEDS

    values = form(studio, lr=0.05)
    run = click_rounds("i", values, 4, mode="learned", features="layout", check=True)
    events = [e for e in run.preference.log.events if e["type"] == "update"]
    undone = sum(not e["accepted"] for e in events)
    assert run.preference.check_seeds == list(CHECK_SEEDS) and all(e["check_seeds"] == list(CHECK_SEEDS) for e in events)
    assert 0 < undone < 4  # this session undoes some updates and keeps others
    assert run.counters["undone"] == undone
    assert f"updates checked on {len(CHECK_SEEDS)} fixed seeds, {undone} undone" in formatting.counters_text(run)
    trained = runs.current_lora(run)
    download = tmp_path / "checked.zip"
    shutil.copyfile(click_log_zip("i"), download)

    runs.reset_all()
    loaded, _message = clicks.load_click_log("j", str(download), form(studio), False)
    assert loaded.preference.check_seeds == list(CHECK_SEEDS) and loaded.counters["undone"] == undone
    rebuilt = runs.current_lora(loaded)
    assert all(torch.equal(rebuilt[k], trained[k]) for k in trained)
    # the tab's box (set to the log's: checked) continues the loaded run; unchecked is another click run
    assert clicks.preference_round("j", {}, False, 4, "learned", "layout", 0, loaded.config.lr, True) is loaded
    unchecked = clicks.preference_round("j", {}, False, 4, "learned", "layout", 0, loaded.config.lr, False)
    assert unchecked is not loaded and unchecked.preference.check_seeds == []


def test_bad_click_log_uploads_name_the_field(studio, tmp_path):
    from app import clicks
    from app.state import FieldError

    values = form(studio)
    click = {"round_id": "x", "index": 0, "prompt": "p", "seed": 1, "image_sha256": "0" * 64, "chosen": True,
             "rank": None, "time": 0.0}
    cases = {"notes.txt": "hello", "empty.jsonl": "\n", "junk.jsonl": "not json\n[1, 2]\n",
             "unclicked.jsonl": json.dumps(click) + "\n",
             "hostile.jsonl": json.dumps({**click, "round_id": [1]}) + "\n" + json.dumps({"type": "update", "round_id": [1]}),
             "scores-only.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                       "features": "pixels", "head_updates": 0,
                                                                       "head_gradient": False}),
             "bad-check.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                     "features": "pixels", "head_updates": 0,
                                                                     "check_seeds": [1, "two"]}),
             "bad-rounds.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "direct",
                                                                      "features": "pixels", "head_updates": 0,
                                                                      "round_images": "hidden-twins"}),
             "bad-estimator.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                         "features": "pixels", "head_updates": 0,
                                                                         "estimator": "guesswork"}),
             "bad-l2.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                  "features": "pixels", "head_updates": 0, "head_l2": -1}),
             "bad-weights.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                       "features": "pixels", "head_updates": 0,
                                                                       "head_group_weights": list(range(100))}),
             "bad-solver.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                      "features": "pixels", "head_updates": 0,
                                                                      "head_solver": "adam"}),
             "bad-selection.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                         "features": "pixels", "head_updates": 0,
                                                                         "head_selection": "best"}),
             "bad-cap.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                   "features": "pixels", "head_updates": 0,
                                                                   "head_colour_cap": "half"}),
             "bad-kl.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                  "features": "pixels", "head_updates": 0,
                                                                  "kl_weight": True}),
             "bad-kind.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                    "features": "pixels", "head_updates": 0,
                                                                    "kl_kind": "global"}),
             "bad-steps.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                     "features": "pixels", "head_updates": 0,
                                                                     "kl_steps": 0}),
             "bad-source.jsonl": json.dumps(click) + "\n" + json.dumps({"type": "update", "round_id": "x", "mode": "learned",
                                                                      "features": "pixels", "head_updates": 0,
                                                                      "kl_trajectories": "borrowed"})}
    messages = {}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(FieldError, match="^Click log: ") as info:
            clicks.load_click_log("e", str(tmp_path / name), values, False)
        messages[name] = str(info.value)
    assert "must be a .zip" in messages["notes.txt"] and "is empty" in messages["empty.jsonl"]
    assert "is not a click log" in messages["junk.jsonl"] and "is not a click log" in messages["hostile.jsonl"]
    assert "no updated round" in messages["unclicked.jsonl"]
    assert "scores-only head" in messages["scores-only.jsonl"]
    assert "names check_seeds [1, 'two']; allowed: a list of at most 16" in messages["bad-check.jsonl"]
    assert "names round_images 'hidden-twins' in mode 'direct'; allowed: batch, hidden-twins in learned" in messages["bad-rounds.jsonl"]
    assert "names estimator 'guesswork'; allowed: " in messages["bad-estimator.jsonl"] and "full-bp" in messages["bad-estimator.jsonl"]
    assert "names head_l2 -1; allowed: a number >= 0 and at most 1e+06" in messages["bad-l2.jsonl"]
    assert "names head_group_weights [0, 1, 2," in messages["bad-weights.jsonl"]
    assert "allowed: a list of 1 to 8 numbers >= 0" in messages["bad-weights.jsonl"]
    assert "names head_solver 'adam'; allowed: newton, lbfgs" in messages["bad-solver.jsonl"]
    assert "names head_selection 'best'; allowed: auto, all, cross-validated" in messages["bad-selection.jsonl"]
    assert "names head_colour_cap 'half'; allowed: null (uncapped) or a number >= 0" in messages["bad-cap.jsonl"]
    assert "names kl_weight True; allowed: a number >= 0 and at most 1000" in messages["bad-kl.jsonl"]
    assert "names kl_kind 'global'; allowed: trajectory, local" in messages["bad-kind.jsonl"]
    assert "names kl_steps 0; allowed: an integer from 1 to 1000" in messages["bad-steps.jsonl"]
    assert "names kl_trajectories 'borrowed'; allowed: own, sampled" in messages["bad-source.jsonl"]
    hidden = "".join(json.dumps({**click, "index": i}) + "\n" for i in range(6)) + json.dumps(
        {"type": "update", "round_id": "x", "mode": "learned", "features": "pixels", "head_updates": 0,
         "round_images": "hidden-twins"})
    (tmp_path / "hidden-six.jsonl").write_text(hidden)  # 6 images and their 6 twins: over a hosted server's 8
    with pytest.raises(FieldError, match="^Click log: has a round of more than 4 images, the most per round here with hidden twins"):
        clicks.load_click_log("e", str(tmp_path / "hidden-six.jsonl"), values, True)
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(FieldError, match="^Click log: is not a readable .zip"):
        clicks.load_click_log("e", str(tmp_path / "broken.zip"), values, False)
    with zipfile.ZipFile(tmp_path / "nolog.zip", "w") as archive:
        archive.writestr("readme.txt", "no log here")
    with pytest.raises(FieldError, match="exactly one .jsonl"):
        clicks.load_click_log("e", str(tmp_path / "nolog.zip"), values, False)
