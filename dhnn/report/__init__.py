"""Reports: result tables over the grid of runs, and figures."""
