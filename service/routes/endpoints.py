"""Endpoints and their fleet-wide rate limits: read them, and change them while jobs run.

A change is written to Redis, where every worker's limiter reads it on its next call: it applies fleet-wide
at once, without a restart (``store.limits``).
"""

from fastapi import APIRouter

from schemas.llm import EndpointLimits, EndpointLimitsPatch
from service.auth import AdminDep
from service.deps import RedisDep, SettingsDep
from service.errors import NOT_FOUND, not_found
from store import audit, endpoints, limits

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


async def _limits(redis: RedisDep, settings: SettingsDep, name: str) -> EndpointLimits:
    endpoint = await endpoints.find(redis, settings, name)
    if endpoint is None:
        not_found("endpoint", name)
    found = await limits.effective_limits(redis, name, endpoint)
    return EndpointLimits.model_validate({"name": name, "model": endpoint.model, **found})


@router.get("", response_model=list[EndpointLimits])
async def list_endpoints(redis: RedisDep, settings: SettingsDep) -> list[EndpointLimits]:
    names = set(settings.endpoints) | await endpoints.registered(redis)
    return [await _limits(redis, settings, name) for name in sorted(names)]


@router.get("/{name}", responses=NOT_FOUND, response_model=EndpointLimits)
async def get_endpoint(name: str, redis: RedisDep, settings: SettingsDep) -> EndpointLimits:
    return await _limits(redis, settings, name)


@router.patch("/{name}", responses=NOT_FOUND, response_model=EndpointLimits)
async def patch_endpoint(
    name: str, body: EndpointLimitsPatch, redis: RedisDep, settings: SettingsDep, caller: AdminDep
) -> EndpointLimits:
    """Set the endpoint's rpm/tpm for every worker; effective on each worker's next call (admin keys only:
    it changes every team's runs)."""
    await _limits(redis, settings, name)  # 404 before anything is written
    await limits.set_limits(redis, name, body.rpm, body.tpm, reset=body.reset)
    await audit.record(redis, caller, "endpoint.limits", name, body.model_dump_json(exclude_unset=True))
    return await _limits(redis, settings, name)
