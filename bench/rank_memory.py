"""Peak resident memory of every process a command starts (the ranks of a `tuneforge train --nproc N` run):
RSS sampled every 0.2 s over the whole run, per process, largest first, with the command's wall time.

    python bench/rank_memory.py -- tuneforge train examples/tickets-fsdp.yaml --set train.max_steps=6 \\
        --set train.eval_every=1000 --no-eval --overwrite
    MALLOC_MMAP_THRESHOLD_=131072 python bench/rank_memory.py -- ...   # glibc's defaults instead of tuneforge's

Prints one JSON line: {"peaks_gib": [...], "seconds": ...}. Figures in bench/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil


def main() -> None:
    cmd = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    ranked = sorted(peaks.values(), reverse=True)
    print(
        json.dumps(
            {
                "rc": proc.returncode,
                "peaks_gib": [round(b / 2**30, 2) for b in ranked[:4]],
                "seconds": round(time.time() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
