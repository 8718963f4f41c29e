"""The command-line shape the study jobs share (jobs/bow.py, jobs/dcgan.py): a parser that prints its
epilog of examples as written, and a main that turns the job's bad-arguments-or-data error into one line
on stderr and exit status 2 (no traceback)."""
from __future__ import annotations

import sys
from typing import Any, Callable


def job_parser(prog: str, description: str, epilog: str):
    """An argparse parser for a study job; `epilog` (examples, files, exit statuses) keeps its layout."""
    import argparse

    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def run_job(job: Callable[[Any], int], params: Any, error: type[Exception], name: str) -> int:
    """job(params)'s exit status; `error` is printed as `<name>: error: <message>` and gives exit status 2."""
    try:
        return job(params)
    except error as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
