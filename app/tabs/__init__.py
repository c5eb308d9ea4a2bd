"""The tabs of RLR Studio, one module each; :func:`app.ui.build_app` assembles them.

Each tab module has ``layout(page)`` (its components, built inside its ``gr.Tab``) and ``wire(page, tab)``
(its events, attached once every tab exists). :mod:`app.tabs.events` holds what they share: the
:class:`~app.tabs.events.Page` (hosted flag, limits, the Train form's widgets) and the error handling of
events (toasts in the browser, ``gr.Error`` for the API). Handlers only format and dispatch; the work is
done by :mod:`app.runner` through ``rlr_core``.
"""
