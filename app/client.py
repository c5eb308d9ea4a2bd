"""Driving a running RLR Studio from Python with ``gradio_client``, errors included.

Iterating a ``gradio_client`` Job ends silently when the server raises (the error only comes out
of ``job.result()``). :func:`train_updates` iterates and then raises the server's error, so a bad
input raises inside the caller's loop::

    from gradio_client import Client
    from app.client import train_updates

    for update in train_updates(Client("http://127.0.0.1:7860"), steps=20, reward="saturation"):
        print(update["step"], update["reward_mean"])
"""

from __future__ import annotations

from typing import Any, Iterator


def train_updates(client: Any, **parameters: Any) -> Iterator[dict[str, Any]]:
    """Submit ``/train`` with ``parameters`` and yield its updates (one per iteration, then the final
    one); raises ``gradio_client.exceptions.AppError`` with the server's message on a bad input."""
    job = client.submit(api_name="/train", **parameters)
    yield from job
    job.result()  # raises the server's error; a success returns the final update again
