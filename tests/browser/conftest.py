"""The served app and Chromium, for every browser test module (defined in test_app_browser.py)."""

from tests.browser.test_app_browser import browser, server  # noqa: F401
