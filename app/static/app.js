() => {
  // Runs once when the page loads (launch(js=...), read by app.ui.launch_kwargs): feedback on Start before
  // the server answers (the queue may be busy), so the progress bar says "Starting" at once. A start the
  // server refuses (an error toast) leaves the outputs as they were, so the bar gets its previous text back.
  const STARTING = 'Starting … (waiting for the server)';
  let saved = null;
  document.addEventListener('click', (event) => {
    if (!event.target.closest('#start-btn')) return;
    const bar = document.querySelector('#progress .rlr-progress');
    if (bar) {
      const span = bar.querySelector('span'), progress = bar.querySelector('progress');
      saved = {bar: bar, text: span.innerText, value: progress.getAttribute('value'),
               toasts: document.querySelectorAll('.toast-body.error').length};
      span.innerText = STARTING;
      progress.removeAttribute('value');
    }
  }, true);
  new MutationObserver(() => {
    if (!saved) return;
    if (!document.contains(saved.bar)) { saved = null; return; }  // the server re-rendered the bar
    if (document.querySelectorAll('.toast-body.error').length <= saved.toasts) return;  // no new error yet
    const span = saved.bar.querySelector('span');
    if (span.innerText === STARTING) {
      span.innerText = saved.text;
      if (saved.value !== null) saved.bar.querySelector('progress').setAttribute('value', saved.value);
    }
    saved = null;
  }).observe(document.body, {childList: true, subtree: true});
}
