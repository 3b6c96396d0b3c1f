"""Training as Ray tasks: a connection to a Ray cluster, and `finetune` run remotely with the resources it asks
for. The service's workers (`executor: ray`) and sweeps (`tuneforge sweep --ray ADDRESS`) use it; nothing here
assumes GPUs — a task asks for what its settings say (CPUs, and GPUs only where given).

Ray is an extra (`pip install 'tuneforge[ray]'`); the embedded default (local processes) needs none of it.
"""

from __future__ import annotations

from typing import Any

from tuneforge.errors import ConfigError


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """The `ray` module, connected to the cluster at `address` (None: a local instance started here, with
    `num_cpus`)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "Ray is not installed", "pip install 'tuneforge[ray]' (or pip install ray)"
        ) from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
        else:
            ray.init(
                num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True
            )
    return ray


def options(num_cpus: float, num_gpus: float) -> dict[str, Any]:
    """A task's resources as Ray takes them; GPUs only when asked for (a CPU cluster runs GPU-less tasks)."""
    out: dict[str, Any] = {"num_cpus": num_cpus, "max_retries": 0}
    if num_gpus:
        out["num_gpus"] = num_gpus
    return out


def threads_as_assigned() -> None:
    """In a Ray task: train on as many threads as the task was given CPUs, not on every core of the node."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))


def _finetune_task(cfg_json: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    from tuneforge.config import RunConfig
    from tuneforge.recipes.run import finetune

    summary = finetune(RunConfig.model_validate(cfg_json), **kwargs)
    return {**summary, "ray": where()}


def _on_assigned_threads(fn: Any, *args: Any) -> Any:
    threads_as_assigned()
    return fn(*args)


def where() -> dict[str, Any]:
    """Which node and process a task ran in (said in job events and sweep records)."""
    import os

    import ray

    return {"node": ray.util.get_node_ip_address(), "pid": os.getpid()}


def submit_finetune(ray: Any, cfg: Any, num_cpus: float, num_gpus: float, **kwargs: Any) -> Any:
    """Start `finetune(cfg, **kwargs)` as a Ray task; its ObjectRef (ray.get gives the summary finetune returns).
    kwargs must be plain values (no callbacks: the task runs in another process)."""
    return submit(ray, _finetune_task, num_cpus, num_gpus, cfg.model_dump(mode="json"), kwargs)


def submit(ray: Any, fn: Any, num_cpus: float, num_gpus: float, *args: Any) -> Any:
    """Start `fn(*args)` as a Ray task with these resources, on as many threads as it was given CPUs; its
    ObjectRef. `fn` must be importable by name on the cluster's nodes (a module-level function of tuneforge)."""
    task = ray.remote(_on_assigned_threads).options(**options(num_cpus, num_gpus))
    return task.remote(fn, *args)
