"""``python -m dhnn.pipeline.run NOTEBOOK OUTPUT [-p NAME VALUE]...``: execute one stage's notebook.

A quiet papermill: the params file is checked first (a typo stops the stage in about a second,
before a kernel starts); the kernel's own log is kept to errors; the notebook's progress lines
reach the terminal through dhnn.console. A failing cell prints papermill's error, which names the
cell and the exception.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

STAGE_ENV = "DHNN_STAGE"  # tells the notebook's kernel it runs as a stage (dhnn.pipeline.demo refuses to)


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
    try:
        papermill.execute_notebook(notebook, str(partial), parameters=parameters, progress_bar=False,
                                   log_output=False, extra_arguments=["--IPKernelApp.log_level=ERROR"])
        partial.replace(out)
    except PapermillExecutionError as err:
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
