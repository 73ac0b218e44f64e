"""mailplat's trial suites: `python -m twisted.trial tests`."""
