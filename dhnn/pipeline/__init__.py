"""What the DVC stages and the notebooks call: one function per stage, dependency checks."""
