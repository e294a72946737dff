"""The mslddm Gradio Space: total and partial multi-stem generation in the browser.

- ``render.py``: the files a generation produces (a WAV per stem and the mix with one shared gain, the ZIP that
  also carries the settings, the spectrogram picture); no Gradio in it.
- ``handlers.py``: what the page's events do (check uploads, sample with progress, re-mix, switch variation);
  every bad input becomes a ``gr.Error`` that says what to do.
- ``ui.py``: the Blocks layout and the wiring of the events, the queue and the launch settings.

``app.py`` at the top of the repository (and of the Space) parses flags and launches it.
"""
