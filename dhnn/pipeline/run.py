"""``python -m dhnn.pipeline.run NOTEBOOK OUTPUT [-p NAME VALUE]...``: execute one stage's notebook.

A quiet papermill: the params file is checked first (a typo stops the stage in about a second,
before a kernel starts); the kernel's own log is kept quiet; the notebook's progress lines
reach the terminal through dhnn.console. A failing cell prints papermill's error, which names the
cell and the exception. Ctrl-C stops the notebook's code as Jupyter's interrupt does (its cleanup
runs) and prints one line: where the run stopped and how to resume.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

STAGE_ENV = "DHNN_STAGE"  # tells the notebook's kernel it runs as a stage (dhnn.pipeline.demo refuses to)
INTERRUPTED = 130  # the exit status of a process stopped by SIGINT, as shells report it


def _parse(argv: list[str]) -> tuple[str, str, dict]:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    notebook, output, rest, parameters = argv[0], argv[1], argv[2:], {}
    while rest:
        if rest[0] != "-p" or len(rest) < 3:
            raise SystemExit(f"expected -p NAME VALUE, got {' '.join(rest)}")
        name, value = rest[1], rest[2]
        parameters[name] = int(value) if value.lstrip("-").isdigit() else value
        rest = rest[3:]
    return notebook, output, parameters


def _forward_ctrl_c() -> list[bool]:
    """Hand Ctrl-C on to the kernel; the returned flag turns true when one came.

    The kernel runs in a session of its own (jupyter_client starts it so), so Ctrl-C at the terminal
    reaches this process and dvc (which waits, ignoring it), never the kernel. Interrupted here,
    papermill would tear the kernel down mid-cell, with screens of ZMQ tracebacks and the notebook's
    cleanup skipped; sent on, the cell raises KeyboardInterrupt and papermill returns its error.
    A second Ctrl-C stops this process at once.
    """
    import psutil

    seen = [False]

    def handler(signum, frame) -> None:
        if seen[0]:
            raise KeyboardInterrupt
        seen[0] = True
        for child in psutil.Process().children():
            try:
                if "ipykernel" in " ".join(child.cmdline()):
                    os.kill(child.pid, signal.SIGINT)
            except psutil.Error:
                pass

    signal.signal(signal.SIGINT, handler)
    return seen


def _where(parameters: dict) -> str:
    """Where a train stage's runs stopped, from their resume files, and what `dvc repro` does next."""
    results, variant = parameters.get("results_dir"), parameters.get("variant")
    lasts = sorted((Path(results) / "resume" / str(variant)).glob("seed*/last.pt")) if results and variant else []
    if not lasts:
        return "nothing to resume; `dvc repro` runs the stage again"
    # the file names only: reading the epochs would make every stage depend on the checkpoint code
    kept = ", ".join(f"{p.parent.name} ({p})" for p in lasts)
    return f"kept the last finished epoch of {kept}; `dvc repro` resumes there"


def main(argv: list[str] | None = None) -> int:
    """Check the params, then run the notebook with papermill."""
    notebook, output, parameters = _parse(sys.argv[1:] if argv is None else argv)
    if "params_file" in parameters:
        from ..params import ParamsError, load_params

        try:
            load_params(parameters["params_file"])
        except ParamsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    import papermill
    from papermill.exceptions import PapermillExecutionError

    logging.getLogger("papermill").setLevel(logging.WARNING)
    os.environ[STAGE_ENV] = notebook  # the kernel inherits it
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    # executed into a temp file, renamed when complete: a failed stage leaves nothing under results/
    partial = out.with_name(f".partial-{out.name}")
    interrupted = _forward_ctrl_c()
    try:
        # the kernel's log kept to CRITICAL: a cell's error reaches papermill anyway, and at ERROR the kernel
        # reports an interrupt ("KeyboardInterrupt caught in kernel") beside the one line printed below
        papermill.execute_notebook(notebook, str(partial), parameters=parameters, progress_bar=False,
                                   log_output=False, extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        partial.replace(out)
    except (PapermillExecutionError, KeyboardInterrupt) as err:
        if interrupted[0]:
            print(f"stopped by Ctrl-C: {notebook} ({output}): {_where(parameters)}", file=sys.stderr)
            return INTERRUPTED
        kept = Path(tempfile.gettempdir()) / "dhnn-failed" / "-".join(out.parts[-2:])
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, kept)
        print(f"error: {notebook} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
              f"(the executed notebook, with the traceback, is {kept})", file=sys.stderr)
        return 1
    finally:
        partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
