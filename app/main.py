"""`panel serve app` entry point: compose the explorer into a page (logic lives in modules)."""

import logging
import os
import time

import panel as pn
import torch

from app import load
from app.explorer import Explorer
from app.page import frozen, template
from engine.worker import RunWorker

torch.set_num_threads(1)  # many sessions share this server: one thread per run worker
RunWorker.budget = load.BUDGET  # the races of all pages share this process's CPU fairly (app/load.py)
# The template's design from the first render on: without it, a pane is rendered without the design's
# stylesheets and its first update sends them (a 10 kB message, and a walk over the whole document) --
# once per pane that changes (the counter, the rate meter, each lane card's live lr) as the page starts.
pn.extension("katex", "filedropper", notifications=True, design="native")

doc = pn.state.curdoc
t0 = time.perf_counter()
# The races of this process step slowly while the page is built (load.BUDGET.page_build): a page
# opened while a class races loads at the speed of an idle server. One walk over the document's models.
with load.BUDGET.page_build(), frozen(doc):
    explorer = Explorer(autostart=True)
    # a share link (?race=... or ?problem=...&lanes=...) opens its race; a bad one says why over the default
    link = {k: v[0].decode() for k, v in (pn.state.session_args or {}).items() if v}
    if link.get("preset"):
        explorer.apply_preset(link["preset"])
    elif link:
        explorer.apply_query(link)
    explorer.start_streaming()
    if doc is not None and doc.session_context is not None:
        load.join(explorer)  # before the page loads: its pump starts then
    template(explorer).servable()
# one line per page built (benchmarks/load.py counts them per process: a page whose websocket reaches
# another server process than its GET is built twice)
logging.getLogger("app.main").info("optiscope: page built in %.2f s by process %d",
                                   time.perf_counter() - t0, os.getpid())
