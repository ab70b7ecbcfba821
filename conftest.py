"""Test-wide settings."""
import os

# Notebooks opened on their own show the real results when dvc repro made them; under nbval they
# must always show the tiny demo whose outputs are committed.
os.environ["DHNN_DEMO"] = "1"

# Property tests draw the same examples on every run and machine: a failure is reproducible, never
# a matter of which random examples a run happened to draw.
from hypothesis import settings  # noqa: E402

settings.register_profile("dhnn", derandomize=True, deadline=None)
settings.load_profile("dhnn")
