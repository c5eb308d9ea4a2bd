"""The settings a click session's updates depend on: logged with every update, checked before a replay.

``SETTINGS`` names them, with the value each has in click logs older than the setting; those of ``SESSIONS_OWN``
take the replaying session's own value there (head_colour_cap None: uncapped; kl_weight 0: no KL; kl_steps 4:
TrainConfig's default, which every click run used before it was logged; kl_trajectories "sampled": the KL sampled a
batch of its own before it could read the update's). ``kl_trajectories`` is checked only where the log's KL is on.
"""

from __future__ import annotations

from typing import Any

SETTINGS = {"mode": "direct", "features": None, "head_updates": 0, "head_gradient": True, "lr": None, "check_seeds": [],
            "round_images": "batch", "estimator": None, "head_l2": 0.01, "head_group_weights": [0.0, 1.0, 3.0, 10.0],
            "head_solver": "lbfgs", "head_selection": None, "head_colour_cap": None, "kl_weight": 0.0,
            "kl_kind": "trajectory", "kl_steps": 4, "kl_trajectories": "sampled"}
SESSIONS_OWN = ("features", "lr", "estimator", "head_selection")


def check_replay_settings(ours: dict[str, Any], updates: dict[str, dict[str, Any]]) -> None:
    """ValueError naming the first setting in which a logged update (``updates``: round id -> update event)
    differs from ``ours`` (the replaying session's ``settings()``), and the value to replay with."""
    older_logs = {name: ours[name] if name in SESSIONS_OWN else value for name, value in SETTINGS.items()}
    for round_id, update in updates.items():
        for name in SETTINGS:
            if name == "kl_trajectories" and not update.get("kl_weight", older_logs["kl_weight"]):
                continue  # no KL in these updates: nothing came from where its trajectories would
            logged = update.get(name, older_logs[name])
            if logged != ours[name]:
                raise ValueError(f"{name}={ours[name]!r} differs from the click log's {name}={logged!r} "
                                 f"(round {round_id}); replay with {name}={logged!r}")
