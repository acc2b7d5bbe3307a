"""Optiscope's compute engine: torch and numpy only (never panel, holoviews, bokeh or param)."""
