"""`panel serve app` entry point: compose the explorer into a page (logic lives in modules)."""

import panel as pn
import torch

from app.explorer import Explorer

torch.set_num_threads(1)  # many sessions share this server: one thread per run worker
pn.extension("katex", "tabulator", notifications=True)

explorer = Explorer(autostart=True)
explorer.start_streaming()
# Bootstrap: its design loads nothing from the network (Fast and Material fetch Google Fonts).
pn.template.BootstrapTemplate(
    title="Optiscope — optimizers racing, live",
    sidebar=[explorer.controls],
    main=[explorer.views],
    sidebar_width=380,
    header_background="#1f4e79",
).servable()
