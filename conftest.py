"""Test-wide settings."""
import os

# Notebooks opened on their own show the real results when dvc repro made them; under nbval they
# must always show the tiny demo whose outputs are committed.
os.environ["DHNN_DEMO"] = "1"
