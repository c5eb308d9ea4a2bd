"""What each estimator declares about itself: its options (a dataclass: default, allowed values, help) and the
graphs one estimate keeps (``memory_pieces``), which the memory prediction sums for every registered estimator."""

from __future__ import annotations

import pytest

from rlr_core.estimators import ESTIMATORS, estimator_options, get_estimator, list_estimators, option_specs
from rlr_core.estimators.memory_pieces import MemoryPieces
from rlr_core.memory import prediction

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec():
    return prediction.spec_for_arch("sd15", width_divisor=20, image_size=64, num_steps=6, reward="pixel")


@pytest.mark.parametrize("name", list_estimators())
def test_every_option_is_declared_with_help_and_its_default_is_accepted(name):
    specs = option_specs(name)
    assert set(specs) == set(estimator_options(name))
    assert all(spec.help for spec in specs.values())
    assert get_estimator(name).options.as_dict() == estimator_options(name)


@pytest.mark.parametrize("name", list_estimators())
def test_bad_values_name_the_option_and_what_it_allows(name):
    for option, spec in option_specs(name).items():
        if spec.kind == "choice":
            with pytest.raises(ValueError, match=rf"{option} must be one of \["):
                get_estimator(name, **{option: "nonsense"})
        elif spec.kind in ("int", "number"):
            with pytest.raises(ValueError, match=rf"{option} must be .*(integer|number)"):
                get_estimator(name, **{option: "nonsense"})
        elif spec.kind == "bool":
            with pytest.raises(ValueError, match=rf"{option} must be true"):
                get_estimator(name, **{option: "nonsense"})


@pytest.mark.parametrize("name", list_estimators())
def test_every_registered_estimator_declares_its_memory_and_gets_a_prediction(spec, name):
    estimator = get_estimator(name)
    assert isinstance(estimator.memory_pieces(spec.num_steps, True), MemoryPieces)
    result = prediction.predict(spec, name, 4, dtype="float32")
    assert result.estimator == name and result.peak_bytes > result.parts["weights"]
    if name == "zo":
        assert result.graph_bytes == 0
    else:
        assert result.graph_bytes > 0
    # an estimator instance gives the same prediction as its name and options
    assert prediction.predict(spec, estimator, 4, dtype="float32").graph_bytes == result.graph_bytes
    none = prediction.spec_for_arch("sd15", width_divisor=20, image_size=64, num_steps=6, reward="none")
    if ESTIMATORS[name].requires_differentiable_reward:
        with pytest.raises(ValueError, match="needs a differentiable reward"):
            prediction.predict(none, name, 4, dtype="float32")
    else:
        assert prediction.predict(none, name, 4, dtype="float32").graph_bytes <= result.graph_bytes


def test_the_preset_and_its_options_change_the_declared_graphs(spec):
    def graph(name, **options):
        return prediction.predict(spec, name, 2, dtype="float32", **options).graph_bytes

    assert graph("rlr-paper", h=3) < graph("rlr", h=3)  # no control-variate stand-in in the unbiased preset
    assert graph("rlr-paper", h=3) == graph("rlr", h=3, control_variate=False)
    assert graph("rlr", h=1) < graph("rlr", h=4)
    assert graph("full-bp", checkpointing=True) < graph("full-bp")  # only the step inputs are kept
    assert graph("truncated-bp", k_range=[1, 4]) == graph("truncated-bp", k=4)  # the largest K counts
    with pytest.raises(ValueError, match="unknown option"):
        graph("zo", h=2)


def test_the_old_module_path_keeps_its_names():
    from rlr_core import memory_model

    assert memory_model.predict is prediction.predict and memory_model.choose_h is prediction.choose_h
    assert set(prediction.__all__) <= set(dir(memory_model))
    assert memory_model.ESTIMATORS == tuple(list_estimators())
