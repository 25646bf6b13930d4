"""Refresh responses other than success: only a dead refresh token kills a grant."""

from __future__ import annotations

import httpx
import pytest

from optin import (
    ClientRejected,
    GrantRevoked,
    InvalidRequest,
    Manager,
    Settings,
    State,
    UPSConnectionError,
)
from optin.secret import Secret
from optin.ups import UPSClient
from tests.helpers import authorize


def add_fault(sandbox_http: httpx.Client, **fault: object) -> None:
    sandbox_http.post(
        "/_sandbox/faults", json={"endpoint": "refresh", "count": 1, **fault}
    ).raise_for_status()


def authorized(manager: Manager, sandbox_http: httpx.Client) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    authorize(manager, sandbox_http, "A-1")


def test_other_400_keeps_grant(manager: Manager, sandbox_http: httpx.Client) -> None:
    authorized(manager, sandbox_http)
    add_fault(sandbox_http, status=400, message="Missing parameter: grant_type")
    with pytest.raises(InvalidRequest, match="stored tokens are kept"):
        manager.refresh("A-1", actor="job")
    assert manager.get_company("A-1").state is State.AUTHORIZED
    assert manager.store.count_grants("A-1") == 1
    assert manager.refresh("A-1", actor="job").state is State.AUTHORIZED


def test_dead_refresh_token_invalidates(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    authorized(manager, sandbox_http)
    add_fault(sandbox_http, status=400, message="Invalid Refresh Token")
    with pytest.raises(GrantRevoked, match="needs a new opt-in"):
        manager.refresh("A-1", actor="job")
    assert manager.get_company("A-1").state is State.INVALIDATED
    assert manager.store.count_grants("A-1") == 0


def test_sweep_stops_on_other_400(manager: Manager, sandbox_http: httpx.Client) -> None:
    for company_id in ("A-1", "B-2", "C-3"):
        manager.add_company(company_id, company_id, actor="ana")
        authorize(manager, sandbox_http, company_id)
    add_fault(sandbox_http, status=400, message="Missing parameter: grant_type")
    report = manager.refresh_all(actor="job")
    assert list(report.failed) == ["A-1"]
    assert report.invalidated == []
    assert report.skipped == ["B-2", "C-3"]
    assert manager.count_by_state()[State.AUTHORIZED.value] == 3


def test_401_keeps_grant(manager: Manager, sandbox_http: httpx.Client) -> None:
    authorized(manager, sandbox_http)
    add_fault(sandbox_http, status=401)
    with pytest.raises(ClientRejected, match="No company is at fault"):
        manager.refresh("A-1", actor="job")
    assert manager.store.count_grants("A-1") == 1


def test_undecodable_answer_is_toolkit_error(settings: Settings) -> None:
    """The sandbox never sends a corrupt gzip body, so a MockTransport does."""

    def corrupt(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all"
        )

    http = httpx.Client(
        base_url=settings.base_url, transport=httpx.MockTransport(corrupt)
    )
    client = UPSClient(settings, http=http)
    with pytest.raises(UPSConnectionError, match="DecodingError"):
        client.refresh(Secret("refresh-token-value"))
