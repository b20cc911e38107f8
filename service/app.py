"""The HTTP API: FastAPI app factory; OpenAPI docs at /docs."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.responses import FileResponse
from fastapi.routing import iter_route_contexts
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.errors import SkillmixError
from schemas.recipes import load_plugins
from schemas.settings import Settings, get_settings
from schemas.skills import SkillSetCreate
from service.auth import admin, authenticate, writer
from service.body_cap import BodyCap
from service.errors import (
    BODY_TOO_LARGE,
    FORBIDDEN,
    KEYED,
    UNAVAILABLE,
    QuotaDetail,
    http_error,
    redis_unavailable,
    skillmix_error,
)
from service.routes import (
    audit,
    curate,
    endpoints,
    extract,
    jobs,
    judge_evals,
    quality_profiles,
    review,
    skill_sets,
    teams,
)
from service.routes.metrics import router as metrics_router
from store.connection import REDIS_ERRORS, open_redis
from store.skill_sets import publish_once

STATIC = Path(__file__).parent / "static"
STARTER = Path(__file__).parent / "data" / "starter-skills.json"  # published to every team at the API's start
# The review page shows model text, which is untrusted: the page builds its DOM with textContent only, and as
# defence in depth no script but the page's own files may run (no inline script, no eval, no plugins).
# KaTeX sets inline style attributes, hence 'unsafe-inline' for styles only.
REVIEW_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; font-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": REVIEW_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _depends_on(dependant: Dependant, calls: tuple[Any, ...]) -> bool:
    return any(d.call in calls or _depends_on(d, calls) for d in dependant.dependencies)


def document_keys(app: FastAPI) -> None:
    """Document, once for every route (those added later too), what keys and the body cap add to its answers:
    401 and 429 where a key is read (``authenticate``), 403 where a role is checked (``WriterDep``,
    ``AdminDep``), 413 where there is a request body. Done on the generated document, from each route's own
    dependencies, so no route lists them and none can forget them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        routes = {(r.path, m.lower()): r for r in iter_route_contexts(app.routes) for m in (r.methods or ())}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                route = routes.get((path, method))
                dependant = getattr(route, "dependant", None)
                if dependant is None or not _depends_on(dependant, (authenticate,)):
                    continue
                extra = {**KEYED, **(FORBIDDEN if _depends_on(dependant, (writer, admin)) else {})}
                if getattr(route, "body_field", None) is not None:
                    extra.update(BODY_TOO_LARGE)
                for status, response in extra.items():
                    operation["responses"].setdefault(str(status), _response(response))
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (QuotaDetail,):
            components.setdefault(model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}"))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _response(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``responses=`` entry as the OpenAPI document writes it (``model`` becomes a ``$ref``)."""
    out = {k: v for k, v in spec.items() if k != "model"}
    model = spec.get("model")
    if model is not None:
        out["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    return out


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    load_plugins(settings.recipes)  # plug-in recipes: their specs join JobSpec before the first request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.redis = await open_redis(settings)
        await publish_once(app.state.redis, SkillSetCreate.model_validate_json(STARTER.read_bytes()))
        yield
        await app.state.redis.aclose()

    app = FastAPI(
        title="skillmix",
        version="0.1.0",
        lifespan=lifespan,
        description="Skill-mix synthetic training data as a service.",
        responses=UNAVAILABLE,
    )
    uploads = {curate.router.prefix, extract.router.prefix}  # multipart there: capped by max_upload_mb instead
    app.add_middleware(BodyCap, max_bytes=settings.max_body_kb << 10, uploads=uploads)
    app.add_exception_handler(SkillmixError, skillmix_error)  # every domain error, by its branch
    app.add_exception_handler(StarletteHTTPException, http_error)  # 405 and body-parsing 400s, as documented
    for error in REDIS_ERRORS:
        app.add_exception_handler(error, redis_unavailable)
    keyed = [Depends(authenticate)]  # every route below answers 401 without a live key (``service.auth``)
    app.include_router(jobs.router, dependencies=keyed)
    app.include_router(extract.router, dependencies=keyed)  # /v1/skill-sets/extract..., no clash with /{name}
    app.include_router(skill_sets.router, dependencies=keyed)
    app.include_router(curate.router, dependencies=keyed)  # POST /v1/curate: curate a dataset a team brings
    app.include_router(review.router, dependencies=keyed)  # /v1/review: the math review queue
    app.include_router(judge_evals.router, dependencies=keyed)  # /v1/judge-evals: calibrate a judge
    app.include_router(quality_profiles.router, dependencies=keyed)  # /v1/quality-profiles: saved judge settings
    app.include_router(endpoints.router, dependencies=keyed)  # /v1/endpoints: fleet-wide rate limits
    app.include_router(audit.router, dependencies=keyed)  # /v1/audit: who changed what (admins: every team)
    app.include_router(teams.router, dependencies=keyed)  # /v1/teams, /v1/keys: what `skillmix teams|keys` do
    app.include_router(metrics_router, dependencies=keyed)  # /metrics: fleet-wide Prometheus metrics (admins)

    document_keys(app)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/review", include_in_schema=False)
    async def review_page() -> FileResponse:
        """The reviewer's page (service/static/review.html): it reads and writes only through /v1/review."""
        return FileResponse(STATIC / "review.html", media_type="text/html", headers=SECURITY_HEADERS)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        await app.state.redis.ping()
        return {"status": "ok"}

    return app
