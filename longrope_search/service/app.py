"""The HTTP API and the dashboard: one FastAPI app over a :class:`JobManager`.

Every path a request can name is a job name (checked against the job-name pattern and looked up
among the manager's jobs) or a generation number, so no request reaches a file outside the
results folder; model and document paths in a submitted spec must lie under the server's data
roots. With a token set, every ``/api`` request needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from longrope_search import __version__
from longrope_search.deploy import JSON_FORMATS, ExportFormat
from longrope_search.errors import ConfigError
from longrope_search.evaluation.modes import SCORING_MODES
from longrope_search.export import export_job
from longrope_search.gguf_export import export_gguf, gguf_notes
from longrope_search.search.early_stopping import RULES
from longrope_search.search.job import JOB_NAME, JobRequest
from longrope_search.search.jobdir import JobDir
from longrope_search.search.trial import SEED_PREFIX, Operator, Status
from longrope_search.service import reports
from longrope_search.service.client import NOTES_HEADER
from longrope_search.service.jobs import Job, JobConflict, JobManager
from longrope_search.service.schema import (
    Best,
    Candidates,
    ConfigErrorBody,
    Curve,
    ErrorBody,
    FactorRecord,
    GenerationSummary,
    Health,
    HfExport,
    JobDetail,
    JobSummary,
    TableRow,
    VllmExport,
    Vocabulary,
)
from longrope_search.service.states import ACTIVE, CANCELLABLE, RESUMABLE, State
from longrope_search.validation import config_error

# what every /api answer may be instead (the token check runs first), and what a route that
# names a job or takes a query may answer too; each body as schema.py describes it
REFUSED = {401: {"model": ErrorBody, "description": "missing or wrong bearer token"}}
NO_JOB = {404: {"model": ErrorBody, "description": "no such job (or table)"},
          422: {"model": ConfigErrorBody, "description": "a bad parameter: field, problem, fix"}}
SUBMITTED = {409: {"model": ErrorBody, "description": "a job of that name exists"},
             413: {"model": ErrorBody, "description": "request body over 1 MiB"},
             422: {"model": ConfigErrorBody, "description": "a bad spec: field, problem, fix"}}
BINARY = {"schema": {"type": "string", "format": "binary"}}  # a file, not JSON
MAX_BODY_BYTES = 1 << 20  # a job spec is a few KB; anything over 1 MiB is refused with 413
STATIC = Path(str(files("longrope_search.service") / "static"))


def error_body(e: ConfigError) -> dict[str, str]:
    """A :class:`ConfigError` as the body of a 422 answer."""
    return {"detail": str(e), "field": e.field, "problem": e.problem, "fix": e.fix}


def _names(vocabulary: type[StrEnum]) -> dict[str, str]:
    """An enum as its constants' names and values (``{"OK": "ok", …}``)."""
    return {m.name: m.value for m in vocabulary}


def _in_request(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """A location inside the request part that holds it (FastAPI puts body, query, path first)."""
    return tuple(loc[1:]) if loc and loc[0] in ("body", "query", "path") else tuple(loc)


class LimitBody:
    """ASGI middleware: 413 for a request body over ``limit`` bytes without reading more than
    that: at once by its Content-Length, else (chunked) as soon as the chunks pass the limit.
    The body, at most ``limit`` bytes, is then handed to the app in one piece."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._refuse(send)
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        refusal = JSONResponse({"detail": f"request body over {self.limit} bytes"},
                               status_code=413)
        await refusal({"type": "http"}, None, send)


class RequireToken:
    """With a token, every ``/api/`` request must carry ``Authorization: Bearer <token>``;
    checked before the body is parsed, so a client without it gets 401 whatever it sent."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.expected = app, None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (self.expected is not None and scope["type"] == "http"
                and scope["path"].startswith("/api/")):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                refusal = JSONResponse({"detail": UNAUTHORIZED}, status_code=401,
                                       headers={"WWW-Authenticate": "Bearer"})
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


UNAUTHORIZED = ("missing or wrong bearer token: send 'Authorization: Bearer <TOKEN>' (the token "
                "the server was started with: --token or $LONGROPE_SEARCH_TOKEN); in the "
                "dashboard open /dashboard/?token=<TOKEN>")


def _gguf_file(job_dir: Path, short: Path | None) -> FileResponse:
    """The job's GGUF model with its factors, written once into the job folder (again when the
    job's best is newer), then served as a file."""
    files = JobDir(job_dir)
    files.finished_best()  # an unfinished job is refused before anything is written
    out = files.gguf_export
    stale = not out.is_file() or out.stat().st_mtime < files.best.stat().st_mtime
    if stale or short is not None:
        export_gguf(job_dir, None, out, short_factors=short)
    notes = json.dumps(gguf_notes(job_dir, out, short))  # ASCII: a header's charset
    return FileResponse(out, media_type="application/octet-stream",
                        filename=f"{job_dir.name}.gguf", headers={NOTES_HEADER: notes})


def create_app(manager: JobManager, *, token: str | None = None) -> FastAPI:
    app = FastAPI(title="longrope-search", version=__version__,
                  description="Search LongRoPE rescale factors; watch generations; export.",
                  docs_url=None, redoc_url=None,  # the stock docs pages load from a CDN
                  responses=REFUSED)
    app.add_middleware(RequireToken, token=token)  # inside LimitBody: a huge body is 413 first
    app.add_middleware(LimitBody)

    def job_of(name: str) -> Job:
        if not re.fullmatch(JOB_NAME, name):
            raise HTTPException(404, f"no job named {name!r}")
        try:
            return manager.get(name)
        except KeyError:
            raise HTTPException(404, f"no job named {name!r}") from None

    @app.exception_handler(ConfigError)
    async def config_error_response(_: Request, e: ConfigError) -> JSONResponse:
        return JSONResponse(error_body(e), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        """The same field, problem and fix as the CLI gives for the same spec."""
        errors = [{**err, "loc": _in_request(err["loc"])} for err in e.errors()]
        shown = [{k: v for k, v in err.items() if k != "input"} for err in errors]  # may be huge
        return JSONResponse({**error_body(config_error(errors, JobRequest)),
                             "errors": jsonable_encoder(shown)}, status_code=422)

    @app.exception_handler(JobConflict)
    async def conflict(_: Request, e: JobConflict) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    @app.get("/api/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__, "jobs": len(manager.listed())}

    @app.get("/api/vocabulary", response_model=Vocabulary)
    def vocabulary() -> Vocabulary:
        """The statuses, states, operators and formats the other answers use."""
        return Vocabulary(
            statuses=_names(Status), states=_names(State), active=list(ACTIVE),
            cancellable=list(CANCELLABLE), resumable=list(RESUMABLE), operators=_names(Operator),
            seed_prefix=SEED_PREFIX, export_formats=_names(ExportFormat),
            json_exports=list(JSON_FORMATS),
            scoring_modes=list(SCORING_MODES), early_stopping_rules=list(RULES))

    @app.post("/api/jobs", status_code=201, response_model=JobSummary, responses=SUBMITTED)
    def submit(spec: JobRequest) -> dict[str, Any]:
        """Queue a job: the spec as in a YAML config (``results_dir`` is ignored)."""
        return manager.submit(spec.model_dump(mode="json", exclude_unset=True)).summary()

    @app.get("/api/jobs", response_model=list[JobSummary])
    def list_jobs() -> list[dict[str, Any]]:
        return [j.summary() for j in manager.listed()]

    @app.get("/api/jobs/{name}", response_model=JobDetail, responses=NO_JOB)
    def job_detail(name: str) -> dict[str, Any]:
        return job_of(name).detail()

    @app.get("/api/jobs/{name}/generations",
             response_model=list[GenerationSummary], responses=NO_JOB)
    def generations(name: str) -> list[dict[str, Any]]:
        return reports.generation_summaries(job_of(name).dir)

    @app.get("/api/jobs/{name}/generations/{generation}",
             response_model=list[TableRow], responses=NO_JOB)
    def generation(name: str, generation: int) -> list[dict[str, Any]]:
        rows = reports.generation_rows(job_of(name).dir, generation)
        if rows is None:
            raise HTTPException(404, f"job {name!r} has no table for generation {generation}")
        return rows

    @app.get("/api/jobs/{name}/candidates", response_model=Candidates, responses=NO_JOB)
    def candidates(name: str) -> dict[str, list[Any]]:
        return reports.candidates(job_of(name).dir)

    @app.get("/api/jobs/{name}/curve", response_model=Curve, responses=NO_JOB)
    def curve(name: str) -> dict[str, Any]:
        """Best-so-far and median perplexity against cost spent (forward tokens), per table."""
        return reports.cost_curve(job_of(name).dir)

    @app.get("/api/jobs/{name}/table",
             response_class=Response, responses={200: {"content": {
                 "application/vnd.apache.parquet": BINARY, "text/csv": BINARY},
                 "description": "every factor table as one file"}, **NO_JOB})
    def table(name: str, format: str = Query("parquet", pattern="^(parquet|csv)$")
              ) -> Response:
        """Every factor table of the job as one file (the rows as written, per generation)."""
        job = job_of(name)
        media = "text/csv" if format == "csv" else "application/vnd.apache.parquet"
        return Response(reports.tables_file(job.dir, format), media_type=media, headers={
            "Content-Disposition": f'attachment; filename="{name}.generations.{format}"'})

    @app.get("/api/jobs/{name}/best", response_model=Best, responses=NO_JOB)
    def best(name: str) -> dict[str, Any]:
        job = job_of(name)
        out = reports.best(job.dir, job.spec.search.top_k)
        if out is None:
            raise HTTPException(404, f"job {name!r} has no finished evaluation yet")
        return out

    @app.post("/api/jobs/{name}/cancel", response_model=JobSummary, responses=NO_JOB)
    def cancel(name: str) -> dict[str, Any]:
        job_of(name)
        return manager.cancel(name).summary()

    @app.post("/api/jobs/{name}/resume", response_model=JobSummary,
              responses={**NO_JOB, 409: {"model": ErrorBody,
                                         "description": "not cancelled or failed"}})
    def resume(name: str) -> dict[str, Any]:
        job_of(name)
        return manager.resume(name).summary()

    @app.get("/api/jobs/{name}/export", response_model=HfExport | VllmExport | FactorRecord,
             responses={200: {"content": {"application/octet-stream": BINARY},
                              "description": "JSON by format; gguf: the model file"},
                        **NO_JOB})
    def export(name: str, format: Annotated[ExportFormat, Query(
                   description="gguf: the job's GGUF model with the factors (jobs whose model "
                   "is a GGUF file)")] = ExportFormat.HF,
               config: bool = Query(False, description="hf: the whole patched config.json"),
               short_from: str | None = Query(None, pattern=JOB_NAME,
                                              description="job whose λ become short_factor"),
               ) -> Response:
        job = job_of(name)
        short = job_of(short_from).dir if short_from else None
        if format == ExportFormat.GGUF:
            return _gguf_file(job.dir, short)
        data = export_job(job.dir, format, with_config=config, short_factors=short)
        suffix = "config" if config and format == ExportFormat.HF else format.value
        return JSONResponse(data, headers={
            "Content-Disposition": f'attachment; filename="{name}.{suffix}.json"'})

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
