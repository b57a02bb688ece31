"""Progress display for long work (rich), quiet when stderr is not a terminal and in CI."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator


def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; draws a rich bar on a terminal, prints milestones otherwise."""
    if progress_enabled():
        from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            "{task.completed}/{task.total}",
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
        return
    done = 0
    step = max(1, total // 10)
    print(f"{description} ...", file=sys.stderr, flush=True)

    def advance(n: int) -> None:
        nonlocal done
        before = done // step
        done += n
        if done // step != before or done >= total:
            print(f"  {description}: {done}/{total}", file=sys.stderr, flush=True)

    yield advance
