"""Messages for the person running the pipeline: one line each, on the terminal that started it.

Inside a papermill kernel ``sys.stdout`` belongs to the notebook, but ``sys.__stderr__`` is still
the terminal of ``dvc repro`` (ipykernel also copies it into the notebook), so progress and
warnings written here reach both.
"""
from __future__ import annotations

import sys


def say(message: str) -> None:
    """Write one line to the terminal (and, inside a kernel, to the notebook's stderr)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(message.rstrip("\n") + "\n")
    stream.flush()
