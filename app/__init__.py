"""Optiscope's front end: Panel components (``pn.viewable.Viewer``) that the served app
(``app/main.py``) and the notebooks embed alike."""
