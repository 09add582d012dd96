"""The FastAPI application of ``memplan serve``: the page, plotly.js, and the JSON API.

API (every answer is what the CLI prints with ``--json``, byte for byte):

- ``POST /api/{params,train,infer,serve-capacity,time}``: a JSON object of the command's
  fields, named as its flags without dashes (``{"model": "llama-3.1-8b", "batch": 2,
  "prompt-len": 2048, "qlora": true}``), or ``config`` (the text of a config.json) in place
  of ``model``. The fields are parsed by the command's own argparse parser
  (:class:`memplan.cli.schema.FieldParser`) and the Report comes from the command's own
  ``build_report``.
- ``POST /api/plan``: what ``memplan plan MODEL ... --json`` prints (the search's answer, not a
  Report: :func:`memplan.cli.plan.build_result`), with ``seconds`` the search's own wall time
  on the server; ``jobs`` must be 1 (the server runs one process).
- ``POST /api/sweep``: ``job``, ``over`` (``"batch=1..64"``) and the job's fields: what
  ``memplan sweep MODEL --job JOB --over ... --json`` prints.
- ``GET /api/models``, ``GET /api/gpus``: ``memplan models --json``, ``memplan gpus --json``.
- ``GET /api/schema``: every command's fields (from the parsers) and the limits.
- ``/docs``: the OpenAPI schema in Swagger UI, its files served locally.

Errors are 400 with ``{"error": "memplan: error: ..."}`` (the CLI's line); a body over 1 MiB
is 413. No request runs the trace engine or imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from memplan.cli.render import report_json
from memplan.cli.schema import ArgumentsError, FieldError, FieldParser
from memplan.errors import MemplanError
from memplan.web.bounds import (
    FEWER_POINTS,
    MAX_BODY_BYTES,
    PLAN_CPU_SECONDS,
    REPORT_CPU_SECONDS,
    SMALLER_SEARCH,
    SWEEP_CPU_SECONDS,
    BodyLimit,
    CpuTimeExceeded,
    cpu_time_limit,
)

__all__ = ["WEB_COMMANDS", "create_app"]

WEB_COMMANDS = ("params", "train", "infer", "serve-capacity", "time", "plan")
"""Commands the API answers: the analytic ones (``trace`` and ``compare`` run the trace engine,
which never runs from the web) and the plan search."""
RESERVED = ("config", "config_name")
"""Body keys that are not flags: the text of a config.json and its file name."""
STATIC = Path(__file__).parent / "static"


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file of an installed package, found without importing the package."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def _json_response(text: str) -> Response:
    return Response(content=text, media_type="application/json")


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _message(exc: MemplanError) -> str:
    """The line the CLI would print for this error."""
    return str(exc) if isinstance(exc, ArgumentsError) else f"memplan: error: {exc}"


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FieldError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise FieldError("the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise FieldError("the request body must be a JSON object of the command's fields")
    return data


class Api:
    """The parsers (built once) and the answers of the API."""

    def __init__(self) -> None:
        self.fields = FieldParser()

    def _spec(self, body: dict[str, Any]) -> Any:
        text = body.get("config")
        if text is None:
            return None
        if not isinstance(text, str):
            raise FieldError("config must be the text of a config.json file")
        from memplan.catalog.local import spec_from_text

        name = body.get("config_name") or "config.json"
        return spec_from_text(text, Path(str(name)).name or "config.json")

    def _values(self, body: dict[str, Any], spec: Any) -> dict[str, Any]:
        values = {k: v for k, v in body.items() if k not in RESERVED}
        if spec is not None:
            values["model"] = "config.json"  # build_report uses the spec, not this name
        return values

    def report(self, command: str, body: dict[str, Any]) -> str:
        """What ``memplan COMMAND ... --json`` prints for these fields."""
        spec = self._spec(body)
        args = self.fields.parse(command, self._values(body, spec))
        if command == "plan":
            return self.plan(args, spec)
        module = importlib.import_module(f"memplan.cli.{command.replace('-', '_')}")
        kwargs = {}
        if "allow_torch" in inspect.signature(module.build_report).parameters:
            kwargs["allow_torch"] = False  # no model built with torch from the web
        return report_json(module.build_report(args, spec, **kwargs))

    def plan(self, args: Any, spec: Any) -> str:
        """What ``memplan plan ... --json`` prints: the search's answer is JSON data, not a
        Report, and the CLI and the page both render that data."""
        from memplan.cli.plan import build_result, result_json

        if args.jobs != 1:
            raise FieldError("jobs: the server searches in one process; use the CLI's --jobs")
        args.json = True  # no progress bar on the server's stderr
        return result_json(build_result(args, spec))

    def sweep(self, body: dict[str, Any]) -> str:
        """What ``memplan sweep MODEL --job JOB --over FLAG=RANGE ... --json`` prints."""
        from memplan.cli.sweep import SWEEP_JOBS, default_job, parse_range, sweep_json

        values = dict(body)
        over = values.pop("over", None)
        job = values.pop("job", None)
        if not isinstance(over, str) or "=" not in over:
            raise FieldError("sweep needs over: FLAG=RANGE, e.g. batch=1..64")
        flag, _, text = over.partition("=")
        flag = flag.strip().removeprefix("--")
        job = job or default_job(flag, self.fields.parsers)
        if job not in SWEEP_JOBS:
            raise FieldError(f"job must be one of {', '.join(SWEEP_JOBS)}, got {job!r}")
        if f"--{flag}" not in self.fields.parsers[job]._option_string_actions:
            raise FieldError(f"memplan {job} has no flag --{flag}")
        points, spacing = parse_range(flag, text.strip())
        spec = self._spec(values)
        argv = self.fields.argv(job, self._values(values, spec))
        sweep = sweep_json(self.fields.parse_argv, job, argv, flag, points, spacing, spec)
        return json.dumps(sweep, indent=2, allow_nan=False) + "\n"

    @functools.cached_property
    def models(self) -> str:
        return _cli_output(["models", "--json"])

    @functools.cached_property
    def gpus(self) -> str:
        return _cli_output(["gpus", "--json"])

    def schema(self) -> dict[str, Any]:
        from memplan.cli.sweep import MAX_POINTS, SWEEP_JOBS

        commands = {
            name: {"description": self.fields.parsers[name].description,
                   "fields": self.fields.fields(name)}
            for name in WEB_COMMANDS
        }  # fmt: skip
        return {
            "commands": commands,
            "sweep": {"jobs": list(SWEEP_JOBS), "max_points": MAX_POINTS},
            "limits": {"max_body_bytes": MAX_BODY_BYTES, "report_cpu_seconds": REPORT_CPU_SECONDS,
                       "sweep_cpu_seconds": SWEEP_CPU_SECONDS},
        }  # fmt: skip


def _cli_output(argv: list[str]) -> str:
    """The stdout of ``memplan ARGV`` run in-process (the catalog listings)."""
    from memplan.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    if status != 0:
        raise MemplanError(f"memplan {' '.join(argv)} failed")
    return out.getvalue()


def _answer(compute: Any, seconds: float, advice: str = FEWER_POINTS) -> Response:
    """Run ``compute`` within the CPU budget; the CLI's one-line error on a bad input."""
    try:
        with cpu_time_limit(seconds, advice):
            return _json_response(compute())
    except MemplanError as exc:
        return _error(_message(exc))
    except CpuTimeExceeded as exc:
        return _error(f"memplan: error: {exc}")
    except (RecursionError, MemoryError, OverflowError) as exc:
        return _error(f"memplan: error: the input is too large to estimate ({type(exc).__name__})")


def _request_schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of a command's body, for the OpenAPI document."""
    kinds = {"bool": "boolean", "integer": "integer", "number": "number"}
    props: dict[str, Any] = {}
    for field in fields:
        prop: dict[str, Any] = {"description": field["help"] or ""}
        if field["kind"] == "bool":
            prop["type"] = "boolean"
        elif field["kind"] in kinds:
            prop["anyOf"] = [{"type": kinds[field["kind"]]}, {"type": "string"}]
        else:
            prop["type"] = "string"
        if "choices" in field:
            prop["enum"] = field["choices"]
        if field["default"] is not None:
            prop["default"] = field["default"]
        props[field["name"]] = prop
    props["config"] = {"type": "string", "description": "the text of a config.json (instead of "
                       "model)"}  # fmt: skip
    return {"type": "object", "properties": props, "additionalProperties": False}


def create_app() -> FastAPI:
    """The application ``memplan serve`` runs."""
    api = Api()
    app = FastAPI(
        title="memplan",
        description="Will this model fit, where does the memory go, how long will it take. "
        "Every answer is the CLI's --json for the same flags.",
        docs_url=None,
        redoc_url=None,
    )
    _add_pages(app)
    for command in WEB_COMMANDS:
        _add_command(app, api, command)

    @app.post("/api/sweep", summary="memplan sweep MODEL --job JOB --over FLAG=RANGE ... --json")
    async def sweep(request: Request) -> Response:
        try:
            body = await _body(request)
        except MemplanError as exc:
            return _error(_message(exc))
        return _answer(lambda: api.sweep(body), SWEEP_CPU_SECONDS)

    @app.get("/api/models", summary="memplan models --json")
    async def models() -> Response:
        return _answer(lambda: api.models, REPORT_CPU_SECONDS)

    @app.get("/api/gpus", summary="memplan gpus --json")
    async def gpus() -> Response:
        return _answer(lambda: api.gpus, REPORT_CPU_SECONDS)

    @app.get("/api/schema", summary="every command's fields, from the CLI's parsers")
    async def schema() -> JSONResponse:
        return JSONResponse(api.schema())

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    return app


def _add_command(app: FastAPI, api: Api, command: str) -> None:
    parser = api.fields.parsers[command]
    extra = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": _request_schema(api.fields.fields(command))}}}}  # fmt: skip

    async def endpoint(request: Request) -> Response:
        try:
            body = await _body(request)
        except MemplanError as exc:
            return _error(_message(exc))
        if command == "plan":
            return _answer(lambda: api.report(command, body), PLAN_CPU_SECONDS, SMALLER_SEARCH)
        return _answer(lambda: api.report(command, body), REPORT_CPU_SECONDS)

    app.add_api_route(
        f"/api/{command}",
        endpoint,
        methods=["POST"],
        summary=f"memplan {command} ... --json",
        description=parser.description or "",
        openapi_extra=extra,
        name=command,
    )


def _add_pages(app: FastAPI) -> None:
    docs = _package_file("fastapi_offline", "static", "swagger-ui-bundle.js")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name == "plotly.min.js":
            path = _package_file("plotly", "package_data", "plotly.min.js")
        elif name.startswith("swagger-ui") and docs is not None:
            path = docs.parent / name
        else:
            path = STATIC / name
        if path is None or name.startswith(".") or "/" in name or not path.is_file():
            return _error("not found", 404)
        return FileResponse(path)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="memplan API",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
