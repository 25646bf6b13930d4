"""An old link never cancels a newer opt-in, whatever order steps run in."""

from __future__ import annotations

import httpx

from optin import Manager, Settings, State
from optin.signin import sign_in
from tests.helpers import MovableClock, create_user


def test_stale_expiry_keeps_new_link(
    settings: Settings, sandbox_http: httpx.Client
) -> None:
    clock = MovableClock()
    with Manager(settings, clock=clock) as manager:
        manager.add_company("A-1", "Alpha", actor="ana")
        manager.begin_opt_in("A-1", actor="ana")
        clock.advance(settings.link_lifetime + 60)
        read_early = manager.store.expired_pending()
        # Between the sweep's read and its write, an analyst issues a new link.
        newer = manager.begin_opt_in("A-1", actor="ana")
        manager.store.expired_pending = lambda: read_early  # type: ignore[method-assign]
        expired = manager.expire_links(actor="job")
        assert expired == []
        assert manager.get_company("A-1").state is State.PENDING
        login = create_user(sandbox_http)
        callback = sign_in(sandbox_http, newer.url, login, "pw-Start-1")
        result = manager.complete_opt_in(callback, actor="ana")
    assert result.outcome == "authorized"


def test_expiry_sweep_cancels_to_origin(
    settings: Settings, sandbox_http: httpx.Client
) -> None:
    clock = MovableClock()
    with Manager(settings, clock=clock) as manager:
        manager.add_company("A-1", "Alpha", actor="ana")
        manager.begin_opt_in("A-1", actor="ana")
        clock.advance(settings.link_lifetime + 60)
        assert manager.expire_links(actor="job") == ["A-1"]
        company = manager.get_company("A-1")
        last = manager.get_history("A-1")[-1]
    assert company.state is State.UNAUTHORIZED
    assert last.actor == "job"
    assert last.reason == "the authorization link expired"
