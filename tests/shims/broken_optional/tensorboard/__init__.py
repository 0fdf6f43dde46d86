"""Simulates tensorboard not being installed."""

raise ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard")
