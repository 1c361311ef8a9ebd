"""The bid path's CPU savings change no answer: each shortcut against the work it skips."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.routing import Match

from hammerlock.api.app import create_app
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.security import pan
from hammerlock.settings import Settings
from tests.strategies import separated_card_numbers

# -- PAN scan: the pre-check only skips text in which the full scan finds nothing -------------

_DIGITISH = st.text(st.sampled_from("0123456789 --xa"), max_size=120)


@given(st.one_of(_DIGITISH, st.text(max_size=120)))
@example("4242 4242 4242 4242")
@example("4242-4242-4242-4242")
@example("ref 12 4242 4242 4242 4242")
@example("424242424242")  # 12 digits: the shortest run the pre-check lets through
@example("42424242424")  # 11 digits: skipped, and the full scan agrees
@example("4242 42424 24242")
@example("4242  4242 4242 4242")
def test_pre_check_agrees_with_the_full_scan(text: str) -> None:
    assert pan.find_pans(text) == list(pan._scan_pan_spans(text))
    if pan._LONG_RUN_RE.search(text) is None:
        assert list(pan._scan_pan_spans(text)) == []


@given(st.text(st.sampled_from("ab_/:"), max_size=20), separated_card_numbers())
def test_card_numbers_still_found_after_the_pre_check(prefix: str, card: str) -> None:
    assert pan.contains_pan(prefix + card)
    assert pan.find_pans(prefix + card) == list(pan._scan_pan_spans(prefix + card))


# -- routing: the routers' order is not observable ------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> object:
    data = tmp_path_factory.mktemp("route-order")
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite+aiosqlite:///{data / 'unused.db'}",
        api_key_pepper="test-pepper-not-secret",  # type: ignore[arg-type]
    )
    return create_app(Container(settings, clock=FixedClock(), background=False))


def _sample_paths(path_format: str) -> list[str]:
    """Concrete paths the route serves, with and without a trailing slash."""
    filled = re.sub(r"\{[^}]+\}", "lot_abcdefgh12", path_format)
    return [filled, filled + "/"]


def test_no_path_is_served_by_two_routers(app: object) -> None:
    """Then trying the routers in any order picks the same route (and the same 405 / redirect)."""
    routers = [r for r in app.router.routes if hasattr(r, "original_router")]  # type: ignore[attr-defined]
    assert len(routers) >= 10
    for i, router in enumerate(routers):
        for route in router.original_router.routes:
            if not isinstance(route, APIRoute):
                continue
            for path in _sample_paths(route.path_format):
                for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
                    for j, other in enumerate(routers):
                        if j == i:
                            continue
                        for candidate in other.original_router.routes:
                            match, _ = candidate.matches(dict(scope))
                            assert match is Match.NONE, (route.path, candidate.path, method)


def test_bids_route_is_tried_first(app: object) -> None:
    first = next(r for r in app.router.routes if hasattr(r, "original_router"))  # type: ignore[attr-defined]
    assert "/v1/lots/{lot_id}/bids" in {r.path for r in first.original_router.routes}


def test_spec_lists_paths_in_the_documented_order(app: object) -> None:
    paths = list(app.openapi()["paths"])  # type: ignore[attr-defined]
    assert paths.index("/healthz") == 0
    assert paths.index("/v1/keys") < paths.index("/v1/ledger/accounts") < paths.index("/v1/lots")
    assert paths.index("/v1/lots") < paths.index("/v1/orders/{order_id}")
    assert paths.index("/v1/bidders") < paths.index("/v1/lots")
