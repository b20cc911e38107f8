"""The HTTP API: FastAPI app factory; OpenAPI docs at /docs."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from schemas.errors import SkillmixError
from schemas.recipes import load_plugins
from schemas.settings import Settings, get_settings
from schemas.skills import SkillSetCreate
from service.auth import authenticate
from service.body_cap import BodyCap
from service.errors import UNAVAILABLE, redis_unavailable, skillmix_error
from service.routes import audit, curate, endpoints, extract, jobs, review, skill_sets, teams
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
    for error in REDIS_ERRORS:
        app.add_exception_handler(error, redis_unavailable)
    keyed = [Depends(authenticate)]  # every route below answers 401 without a live key (``service.auth``)
    app.include_router(jobs.router, dependencies=keyed)
    app.include_router(extract.router, dependencies=keyed)  # /v1/skill-sets/extract..., no clash with /{name}
    app.include_router(skill_sets.router, dependencies=keyed)
    app.include_router(curate.router, dependencies=keyed)  # POST /v1/curate: curate a dataset a team brings
    app.include_router(review.router, dependencies=keyed)  # /v1/review: the math review queue
    app.include_router(endpoints.router, dependencies=keyed)  # /v1/endpoints: fleet-wide rate limits
    app.include_router(audit.router, dependencies=keyed)  # /v1/audit: who changed what (admins: every team)
    app.include_router(teams.router, dependencies=keyed)  # /v1/teams, /v1/keys: what `skillmix teams|keys` do
    app.include_router(metrics_router, dependencies=keyed)  # /metrics: fleet-wide Prometheus metrics (admins)

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
