"""A bare endpoint client for tests of the client itself (and of layers under the runner's metered path).

Only ``workers.runner.Resources`` builds clients in the product; tests reach for the private key on purpose,
here in one place (``tests/workers/test_one_path.py`` checks no product module does).
"""

from typing import Any

from schemas.settings import EndpointSettings
from workers.llm.client import _BUILD_KEY, LLMClient


def raw_client(name: str, endpoint: EndpointSettings, **options: Any) -> LLMClient:
    return LLMClient(name, endpoint, _key=_BUILD_KEY, **options)
