"""Data-parallel training over several processes (`tuneforge train CONFIG --nproc N`, launched by torchrun).

Every rank holds the whole model and trains on its share of each optimizer step's examples; the gradients are
summed across ranks before the update, with the loss of every rank normalised by the units of the whole step, so
N ranks compute the same update as one process on the same global batch (up to float summation order) — the
global batch stays what the config says. Sums (loss, tokens, accuracy, validation) are reduced before they are
logged, so every rank sees the same figures and early stopping decides the same everywhere.

Only rank 0 writes the run folder (config, data reports, metrics, checkpoints, artifact, report); the other ranks
write into a scratch folder of their own, read rank 0's checkpoints on resume, and skip evaluation. Gradients are
all-reduced as one flat buffer per step (no overlap with backward: simple and exact; what DDP's bucketing would
gain is measured in bench/ when it matters). CPU ranks use gloo, GPU ranks nccl.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current() -> Ranks:
    """This process's place, from the variables torchrun sets (one process: rank 0 of 1)."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init(device: str | None) -> Ranks:
    """Join the process group (once); a GPU rank takes its local device."""
    r = current()
    if r.active and not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(r.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return r


def device_for(device: str | None, r: Ranks) -> str | None:
    """The device a rank trains on: its own GPU where there are GPUs (cuda:LOCAL_RANK), else what was asked."""
    if r.active and torch.cuda.is_available() and device in (None, "auto", "cuda"):
        return f"cuda:{r.local_rank}"
    return device


def _on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def sum_all(values: Sequence[float]) -> list[float]:
    """The element-wise sum of `values` over all ranks (themselves with one process)."""
    if not _on():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_figures(values: Sequence[float], stats: dict[str, float]) -> tuple[list[float], dict[str, float]]:
    """`values` and the named `stats` summed over all ranks. The names are rank 0's: a rank that saw nothing of
    this step or split has none of its own."""
    keys = from_main(sorted(stats))
    total = sum_all([*values, *(stats.get(k, 0.0) for k in keys)])
    return total[: len(values)], dict(zip(keys, total[len(values) :], strict=True))


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on one (a stop request seen by one rank stops them all together)."""
    return sum_all([1.0 if flag else 0.0])[0] > 0 if _on() else flag


def from_main(value: T) -> T:
    """Rank 0's value, on every rank (any picklable object)."""
    if not _on():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _on():
        dist.barrier()


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of `params` over all ranks, in place, as one flat buffer (a rank that saw no example
    of this step contributes zeros)."""
    if not _on() or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads]).to(_device())
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g).to(g.device, g.dtype))
        offset += n


def same_weights(params: Sequence[torch.Tensor]) -> None:
    """Rank 0's values of `params` on every rank (freshly initialised adapters must start equal)."""
    if not _on():
        return
    for p in params:
        buf = p.detach().to(_device())
        dist.broadcast(buf, src=0)
        p.data.copy_(buf.to(p.device))


def share(items: Sequence[T], r: Ranks) -> list[T]:
    """This rank's part of `items`: every world-th one, from its rank on."""
    return list(items[r.rank :: r.world])


def scratch_dir(r: Ranks) -> str:
    """Where a rank other than 0 writes what a run writes (removed when it ends)."""
    return tempfile.mkdtemp(prefix=f"tuneforge-rank{r.rank}-")


def remove_scratch(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- launch
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    args: Sequence[str],
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> int:
    """Run `tuneforge ARGS` as `nproc` ranks on this node through torchrun (torch.distributed.run), and return its
    exit code. On several nodes, run the same command on each with its --node-rank and the same master."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--nnodes={nnodes}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={master_port or (free_port() if nnodes == 1 else 29500)}",
        "-m",
        "tuneforge.cli",
        *args,
    ]
    env = dict(os.environ)
    # Each rank gets its share of the cores (torchrun would set 1 thread per rank and warn).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)


def describe(r: Ranks, batch_size: int, grad_accum: int) -> str:
    """The global batch, resolved and printed at the start: micro-batches split over ranks, never multiplied."""
    per = batch_size / r.world
    return (
        f"Data parallel over {r.world} ranks ({'nccl' if dist.get_backend() == 'nccl' else 'gloo'}): each optimizer "
        f"step's {batch_size} x {grad_accum} examples are shared out, about {per:g} x {grad_accum} per rank; "
        "gradients summed across ranks before the update; rank 0 writes the run folder"
    )
