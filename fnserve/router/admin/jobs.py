"""/api/jobs: submit, list, inspect, follow the log of, and cancel training jobs; train a deployed function."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fnserve.manifest import ManifestError, read_yaml
from fnserve.router.admin import actor_of, bounded_int
from fnserve.router.admin.bodies import SubmitJob, with_body
from fnserve.router.admin.functions import source_dir
from fnserve.router.services.catalog import TRAIN_FILE, Catalog, NotInFolder
from fnserve.router.services.functions import DeployRejected
from fnserve.router.services.training import TrainingService
from fnserve.settings import Settings


class JobRoutes:
    def __init__(self, training: TrainingService, catalog: Catalog, settings: Settings) -> None:
        self.training = training
        self.catalog = catalog
        self.settings = settings

    @with_body(SubmitJob)
    async def submit(self, request: Request, body: SubmitJob) -> Response:
        """Queue a training job: {"manifest": {...TrainingJob}, "sourceDir": "...", "params": {...}} → 202."""
        record = await self.training.submit(body.manifest, await source_dir(self.settings, body),
                                            body.source or "manifest", body.params, actor_of(request))
        return JSONResponse(record.to_dict(), 202, headers={"Location": f"/api/jobs/{record.id}"})

    async def train(self, request: Request) -> Response:
        """Train a function with the train.yaml its current revision was deployed with → 202 and the job."""
        revision = self.training.functions.current(request.path_params["name"])
        manifest = self.catalog.train_manifest(revision)
        if manifest is None:
            raise NotInFolder(f"function {revision.name!r} has no {TRAIN_FILE} beside its manifest")
        try:
            data = await asyncio.to_thread(read_yaml, manifest)
        except ManifestError as exc:
            raise DeployRejected(f"invalid manifest: {exc}", exc.problems) from None
        record = await self.training.submit(data, str(revision.source_dir), f"{revision.name}/{TRAIN_FILE}", None,
                                            actor_of(request))
        return JSONResponse(record.to_dict(), 202, headers={"Location": f"/api/jobs/{record.id}"})

    async def list_jobs(self, request: Request) -> Response:
        """The newest training jobs (?limit=N, default 50)."""
        limit = bounded_int(request, "limit", 50, 1, 1000, "")
        return JSONResponse({"jobs": [j.to_dict() for j in await self.training.jobs(limit)]})

    async def get(self, request: Request) -> Response:
        """One job: state, times, exit code, metrics, artifact, and what deployOnSuccess did."""
        return JSONResponse((await self.training.job(request.path_params["job_id"])).to_dict())

    async def logs(self, request: Request) -> Response:
        """The job's log (?follow=1 streams it until the job ends)."""
        job_id = request.path_params["job_id"]
        await self.training.job(job_id)  # 404 before the stream starts
        follow = request.query_params.get("follow", "") in ("1", "true", "yes")
        return StreamingResponse(self.training.logs(job_id, follow), media_type="text/plain; charset=utf-8",
                                 headers={"X-Accel-Buffering": "no"})  # each line as it comes, through nginx

    async def cancel(self, request: Request) -> Response:
        """Stop a queued or running job; it publishes nothing. Answers once it has stopped."""
        return JSONResponse((await self.training.cancel(request.path_params["job_id"], actor_of(request))).to_dict())

    def routes(self) -> list[Route]:
        return [
            Route("/api/jobs", self.list_jobs, methods=["GET"], name="list_jobs"),
            Route("/api/jobs", self.submit, methods=["POST"], name="submit_job"),
            Route("/api/jobs/{job_id}", self.get, methods=["GET"], name="get_job"),
            Route("/api/jobs/{job_id}/logs", self.logs, methods=["GET"], name="job_logs"),
            Route("/api/jobs/{job_id}/cancel", self.cancel, methods=["POST"], name="cancel_job"),
            Route("/api/functions/{name}/train", self.train, methods=["POST"], name="train_function"),
        ]
