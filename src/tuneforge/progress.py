"""Progress display (rich) shared by the CLI, the trainer and the evaluator.

Output goes to stderr so that stdout stays clean for results. When stderr is not a terminal (CI, a pipe, a
log file), rich prints no live bars; the few milestone lines below keep logs readable instead.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
if not console.is_terminal:  # logs and CI: wide enough for the report tables, no wrapping at 80 columns
    console = Console(stderr=True, width=140)


def bar(description: str, total: int | None, *fields: str) -> Progress:
    """A progress bar with step counts, elapsed time and ETA, plus optional live `fields` (loss, tok/s ...)."""
    cols = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    cols += [TextColumn(f"{{task.fields[{f}]}}") for f in fields]
    return Progress(*cols, console=console, transient=False, disable=not console.is_terminal)


class Steps:
    """A named sequence of steps with a spinner, e.g. model preparation. Each step is also logged as a line."""

    def __init__(self, title: str):
        self.title = title
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._task = None
        self._t0 = 0.0
        self._depth = 0

    def __enter__(self) -> Steps:
        self._depth += 1
        if self._depth == 1:
            self._t0 = time.time()
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=None)
        return self

    def step(self, what: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, description=f"{self.title}: {what}")
        if not console.is_terminal:
            console.print(f"{self.title}: {what}")

    def track(self, iterable, what: str):
        """Iterate with a determinate bar (e.g. tensors being dequantised)."""
        items = list(iterable)
        self.step(what)
        if self._task is not None:
            self._progress.update(self._task, total=len(items), completed=0)
        for i, item in enumerate(items):
            yield item
            if self._task is not None:
                self._progress.update(self._task, completed=i + 1)
        if self._task is not None:
            self._progress.update(self._task, total=None, completed=0)

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._progress.stop()
            if exc[0] is None:
                console.print(f"[green]✓[/] {self.title} ({time.time() - self._t0:.0f}s)")
