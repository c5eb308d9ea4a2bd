"""The app's named API endpoints driven with gradio_client against an in-process server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_pixel_dir, tmp_path_factory):
    os.environ["RLR_STUDIO_HOME"] = str(tmp_path_factory.mktemp("studio-home"))
    from app import state
    from app.ui import build_app, launch_kwargs

    state.reset_all()
    demo = build_app(hosted=False, preload=False)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **launch_kwargs())
    yield url, str(tiny_pixel_dir)
    demo.close()
    state.reset_all()


def client(url: str):
    return gradio_client.Client(url, verbose=False)


def train(c, model: str, steps: int = 2, **kw):
    from app.client import train_updates

    return list(train_updates(c, model=model, reward="saturation", prompt="a red circle\na blue square",
                              estimator="rlr", steps=steps, num_steps=kw.pop("num_steps", 6), **kw))


def image_bytes(result) -> list[bytes]:
    return [Path(item["image"]).read_bytes() for item in result]


def test_endpoints_are_named_with_keyword_arguments(server):
    url, _ = server
    api = client(url).view_api(return_format="dict", print_info=False)["named_endpoints"]
    train_params = {p["parameter_name"]: p for p in api["/train"]["parameters"]}
    for name in ("model", "reward", "prompt", "estimator", "steps"):
        assert name in train_params
    assert train_params["batch_size"]["parameter_has_default"]
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == ["model", "prompt", "seed", "use_lora"]


def test_train_streams_one_update_per_iteration_and_generate_uses_the_lora(server):
    url, model = server
    c = client(url)
    updates = train(c, model, steps=3, lr=0.05)
    assert [u["step"] for u in updates] == [1, 2, 3, 3]  # one update per iteration, then the final one
    assert [u["finished"] for u in updates] == [False, False, False, True]
    last = updates[-1]
    assert last["step"] == 3 and not last["running"] and last["status"].startswith("Finished 3 iterations")
    assert last["before_rewards"] and len(last["before_rewards"]) == 8  # 2 prompts x 4 evaluation images
    assert last["guard"]["keep_best"] and "Kept LoRA" in last["guard_status"]  # keep best is on in the app
    assert last["diversity"] is not None and last["before_guard"]["diversity"] == 1.0
    assert set(last["grad_norms"]) >= {"fo", "ho", "total"}
    assert Path(last["lora_dir"], "pytorch_lora_weights.safetensors").is_file()

    with_lora = c.predict(model=model, prompt="a red circle", seed=0, use_lora=True, api_name="/generate")
    base = c.predict(model=model, prompt="a red circle", seed=0, use_lora=False, api_name="/generate")
    assert len(with_lora) == 4 and len(base) == 4
    assert "LoRA" in with_lora[0]["caption"] and "base" in base[0]["caption"]
    assert image_bytes(with_lora) != image_bytes(base)


def test_bad_input_raises_inside_the_loop(server):
    """Iterating a plain Job ends silently on a server error; app.client.train_updates raises it."""
    from app.client import train_updates

    url, model = server
    seen = []
    with pytest.raises(gradio_client.exceptions.AppError, match="Batch size"):
        for update in train_updates(client(url), model=model, steps=2, batch_size=0):
            seen.append(update)
    assert seen == []


def test_two_sessions_do_not_see_each_other(server):
    url, model = server
    a, b = client(url), client(url)
    with pytest.raises(Exception, match="use_lora"):
        b.predict(model=model, prompt="a red circle", seed=0, use_lora=True, api_name="/generate")
    run_a = train(a, model, steps=2, lr=0.05, seed=1)[-1]
    images_a = image_bytes(a.predict(model=model, prompt="a red circle", seed=0, use_lora=True, api_name="/generate"))
    with pytest.raises(Exception, match="use_lora"):  # B still has no run, although A trained
        b.predict(model=model, prompt="a red circle", seed=0, use_lora=True, api_name="/generate")
    run_b = train(b, model, steps=2, lr=0.05, seed=7)[-1]
    assert run_a["run_id"] != run_b["run_id"] and run_a["lora_dir"] != run_b["lora_dir"]
    assert run_a["reward_mean"] != run_b["reward_mean"]
    images_b = image_bytes(b.predict(model=model, prompt="a red circle", seed=0, use_lora=True, api_name="/generate"))
    again_a = image_bytes(a.predict(model=model, prompt="a red circle", seed=0, use_lora=True, api_name="/generate"))
    assert again_a == images_a  # B's training did not touch A's LoRA (same shared model, swapped LoRA)
    assert images_b != images_a


def test_bad_input_is_an_error_naming_the_field_and_the_server_survives(server):
    url, model = server
    c = client(url)
    with pytest.raises(Exception, match="estimator"):
        train(c, model, steps=1, estimator_options='{"nope": 1}')
    with pytest.raises(Exception, match="Batch size"):
        train(c, model, steps=1, batch_size=0)
    with pytest.raises(Exception, match="[Mm]odel"):
        train(c, "/no/such/folder", steps=1)
    with pytest.raises(Exception, match="reward"):
        c.predict(model=model, reward="no-such-reward", prompt="x", estimator="rlr", steps=1, api_name="/train")
    assert train(c, model, steps=1)[-1]["finished"]
