"""`executor: ray` (TUNEFORGE_EXECUTOR=ray): a worker trains each fine-tuning job it leases as a task on a Ray
cluster instead of in its own process. The task asks for `ray_cpus_per_job` CPUs and, only where set,
`ray_gpus_per_job` GPUs; it renews the job's lease, writes its events and checkpoints to the job store and trains
from the shared data folder exactly as a local worker does (it runs the same `Worker.process`), so the job's
states, resume after a lost worker, pause and cancel are the same. The leasing worker waits for it, keeping its
own row alive for GET /health/ready.

Every node of the cluster must reach the database and the data folder (TUNEFORGE_DATABASE_URL, a shared
TUNEFORGE_DATA_DIR), as workers on several machines must today. Exports still run in the worker itself.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from tuneforge.jobs.store import ExportJob, Job, Lease
from tuneforge.recipes.ray_tasks import connect, options, threads_as_assigned, where
from tuneforge.settings import Settings

if TYPE_CHECKING:
    from tuneforge.jobs.worker import Worker

TABLES = {"jobs": Job, "exports": ExportJob}


def process_on_ray(worker: Worker, lease: Lease) -> None:
    s = worker.settings
    ray = connect(s.ray_address)
    task = ray.remote(_process_task).options(**options(s.ray_cpus_per_job, s.ray_gpus_per_job))
    local = s.model_copy(update={"executor": "local"})  # the task runs the job itself
    plain = {**dataclasses.asdict(lease), "table": lease.table.__tablename__}
    ref = task.remote(local.model_dump(mode="json"), worker.id, plain)
    while True:
        done, _ = ray.wait([ref], timeout=s.heartbeat_s)
        if done:
            ray.get(ref)  # a failure of the task itself (not of the job, which the job's error records)
            return
        worker._beat(lease.job_id)


def _process_task(settings: dict[str, Any], worker_id: str, lease: dict[str, Any]) -> None:
    from tuneforge.jobs import store
    from tuneforge.jobs.worker import Worker

    threads_as_assigned()
    table = TABLES[lease.pop("table")]
    worker = Worker(Settings(**settings), worker_id=worker_id)
    at = where()
    with store.transaction(worker.sessions) as db:
        store.add_event(db, lease["job_id"], f"Training on Ray node {at['node']} (process {at['pid']})")
    worker.process(Lease(**lease, table=table))
