"""Dependency aliases keep route signatures short."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from schemas.settings import Settings


def get_redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
