"""API test fixtures: one in-process app (TestClient) per database backend, shared by the API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Service, ServiceFactory


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def api_service(request: pytest.FixtureRequest, service_factory: ServiceFactory) -> Service:
    return service_factory.new(request.param)


@pytest.fixture(scope="session")
def api(api_service: Service) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(api_service.settings())) as client:
        yield client
