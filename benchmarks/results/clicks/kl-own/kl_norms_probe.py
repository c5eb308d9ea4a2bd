"""The probe behind the kl-own page's gradient norms: a 4-round red session (seed 1, noise-free) per source of the
KL's trajectories, printing each update's part norms after the KL was added. Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/results/clicks/kl-own/kl_norms_probe.py own sampled
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from benchmarks import clicks  # noqa: E402
import rlr_core.training.trainer as trainer_module  # noqa: E402

original = trainer_module.add_kl_gradient


def printing(chain, params, config, step, shard, world, estimate):
    original(chain, params, config, step, shard, world, estimate)
    print(config.kl_trajectories, {name: round(value, 4) for name, value in estimate.grad_norms.items()}, flush=True)


trainer_module.add_kl_gradient = printing
for trajectories in sys.argv[1:]:
    clicks.run_session({"mode": "learned-tiny-clip+grid+colour-cvw100-l2=0.3-newton-one+head1-lr0.005",
                        "attribute": "red", "noise": 0.0, "seed": 1, "rounds": 4, "threads": 1, "kl_weight": 0.01,
                        "kl_kind": "local", "kl_trajectories": trajectories})
