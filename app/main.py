"""`panel serve app` entry point: compose the explorer into a page (logic lives in modules)."""

import panel as pn
import torch

from app.explorer import Explorer

torch.set_num_threads(1)  # many sessions share this server: one thread per run worker
pn.extension("katex", "filedropper", notifications=True)

explorer = Explorer(autostart=True)
# a share link (?race=... or ?problem=...&lanes=...) opens its race; a bad one says why over the default
link = {k: v[0].decode() for k, v in (pn.state.session_args or {}).items() if v}
if link.get("preset"):
    explorer.apply_preset(link["preset"])
elif link:
    explorer.apply_query(link)
explorer.start_streaming()
# Bootstrap: its design loads nothing from the network (Fast and Material fetch Google Fonts).
pn.template.BootstrapTemplate(
    title="Optiscope — optimizers racing, live",
    sidebar=[explorer.controls],
    main=[explorer.main],
    sidebar_width=330,
    header_background="#1f4e79",
    header_color="white",
).servable()
