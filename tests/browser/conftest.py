"""The browser fixtures (a ``panel serve app`` server and a Chromium), defined once in
test_app_browser.py and shared with the other browser test files from here."""

from tests.browser.test_app_browser import browser, server  # noqa: F401
