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

`strategy: fsdp` shards instead of copying (FSDP2's fully_shard: each transformer block, then the rest at the
root): every rank keeps 1/N of the parameters, gradients and optimizer state, gathers a block's weights for its
forward and backward, and reduce-scatters its gradients. FSDP averages them over the ranks, so a sharded rank's
loss (normalised by the whole step's units, as under ddp) is scaled by N: the average is then the sum. Every rank
runs the same number of forwards (a collective each), so a rank with fewer micro-batches runs filler ones that add
nothing. A loss that calls the decoder and the head's weight directly (the fused LM loss) runs inside the root
unit's forward (`run`), where the root's weights are gathered. Checkpoints are sharded too
(torch.distributed.checkpoint): every rank writes its own shards of the trainable weights and optimizer state
into rank 0's checkpoint folder (a folder every rank can reach, as resume needs anyway), and a resume on any
number of ranks reads back its share. The best weights and the final artifact are whole models: they are
gathered on rank 0 as they are written. Checkpoints gather the full trainable state and
optimizer state on rank 0, in the same folder layout, so a run resumes on any number of ranks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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


def most(value: int) -> int:
    """The largest of `value` over all ranks."""
    if not _on():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


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


# ------------------------------------------------------------------------------------------ sharded (FSDP2)
def shard(model: torch.nn.Module, layers: Sequence[torch.nn.Module]) -> None:
    """Split `model` over the ranks: one FSDP unit per transformer block (gathered for its own forward and
    backward, then freed), the embeddings, final norm and head in the root unit. Call before the optimizer is
    built: it must hold the sharded parameters."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    model._tuneforge_in_unit = types.MethodType(lambda self, fn, *args: fn(self, *args), model)
    register_fsdp_forward_method(model, "_tuneforge_in_unit")


def run(model: torch.nn.Module, fn: Callable[..., T], *args: Any) -> T:
    """`fn(model, *args)`; on a sharded model inside its root unit's forward, so that the embeddings, final norm
    and head are gathered even when `fn` never calls the model itself."""
    in_unit = getattr(model, "_tuneforge_in_unit", None)
    return in_unit(fn, *args) if in_unit is not None else fn(model, *args)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The whole (unsharded) weights on rank 0's CPU; an empty dict on the others. Collective: every rank calls
    it. `trainable_only`: what a checkpoint or an adapter needs, not the frozen base."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(
        model, options=_options(cpu_offload=True, ignore_frozen_params=trainable_only)
    )


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": weights, "optimizer": optim}


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every rank writes its shards of the trainable weights and the optimizer state into `folder` (the same
    folder on every rank). Collective."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(folder))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every rank reads its share of what save_sharded wrote (on any number of ranks). Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _sharded_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(strict=False),
    )


@contextlib.contextmanager
def state_dict_as(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """`model.state_dict()` returns `state` (gathered full tensors) inside the block: PEFT's and transformers'
    save_pretrained read the weights through it, and a sharded model's own would give shards."""
    model.state_dict = lambda *a, **k: dict(state)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.state_dict


def gather_for_good(model: torch.nn.Module) -> None:
    """Every rank gathers the whole model and keeps it whole: after training, rank 0 evaluates alone, and a
    forward that reshards would need the others. Collective."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    # transformers' generate() syncs every decoding step with the other ranks when it sees FSDP's mark; they
    # have finished, and the whole model is here now.
    for m in model.modules():
        if getattr(m, "_is_fsdp_managed_module", False):
            m._is_fsdp_managed_module = False


def scalar(value: torch.Tensor) -> float:
    """A reduced figure (a gradient norm) as a number; a sharded one is a DTensor."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)


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


def describe(r: Ranks, batch_size: int, grad_accum: int, strategy: str = "ddp") -> str:
    """The global batch, resolved and printed at the start: micro-batches split over ranks, never multiplied."""
    per = batch_size / r.world
    how = (
        "parameters, gradients and optimizer state sharded (FSDP2), gradients reduce-scattered"
        if strategy == "fsdp"
        else "gradients summed across ranks before the update"
    )
    return (
        f"Data parallel over {r.world} ranks ({'nccl' if dist.get_backend() == 'nccl' else 'gloo'}, {strategy}): "
        f"each optimizer step's {batch_size} x {grad_accum} examples are shared out, about {per:g} x {grad_accum} "
        f"per rank; {how}; rank 0 writes the run folder"
    )
