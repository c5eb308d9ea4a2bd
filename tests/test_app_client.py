"""The app's named API endpoints driven with gradio_client against an in-process server."""

from __future__ import annotations

import os
import socket
import time
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
    job = c.submit(model=model, reward="saturation", prompt="a red circle\na blue square", estimator="rlr",
                   steps=steps, api_name="/train", **kw)
    updates = list(job)
    job.result()  # raises the server's error, if any
    return updates


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
    steps = [u["step"] for u in updates]
    assert steps[0] == 0 and "starting" in updates[0]["status"]
    for k in (1, 2, 3):
        assert k in steps  # one update per iteration
    last = updates[-1]
    assert last["finished"] and last["step"] == 3
    assert last["before_rewards"] and len(last["before_rewards"]) == 4
    from app.runner import FORM_DEFAULTS

    remaining = {FORM_DEFAULTS["remaining"]} - {"none"}  # the library's default rlr: zo / lr part, or none
    assert set(last["grad_norms"]) >= {"fo", "ho", "total", *remaining}
    assert Path(last["lora_dir"], "pytorch_lora_weights.safetensors").is_file()

    with_lora = c.predict(model=model, prompt="a red circle", seed=0, use_lora=True, api_name="/generate")
    base = c.predict(model=model, prompt="a red circle", seed=0, use_lora=False, api_name="/generate")
    assert len(with_lora) == 4 and len(base) == 4
    assert "LoRA" in with_lora[0]["caption"] and "base" in base[0]["caption"]
    assert image_bytes(with_lora) != image_bytes(base)


def test_first_update_within_five_seconds_with_a_warm_model(server):
    url, model = server
    c = client(url)
    train(c, model, steps=1)  # model cached now
    start = time.perf_counter()
    job = c.submit(model=model, reward="saturation", prompt="a red circle", estimator="rlr", steps=2, api_name="/train")
    first_iteration = None
    for update in job:
        if update["step"] >= 1 and first_iteration is None:
            first_iteration = time.perf_counter() - start
    assert first_iteration is not None and first_iteration < 5.0, first_iteration


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
    with pytest.raises(Exception, match="batch size"):
        train(c, model, steps=1, batch_size=0)
    with pytest.raises(Exception, match="model"):
        train(c, "/no/such/folder", steps=1)
    with pytest.raises(Exception, match="reward"):
        c.predict(model=model, reward="no-such-reward", prompt="x", estimator="rlr", steps=1, api_name="/train")
    assert train(c, model, steps=1)[-1]["finished"]
