"""Nominatim and Photon backends against a real HTTP server on loopback serving recorded-format answers."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from navig.orchestrator.settings import load_settings
from navig.orchestrator.tools.base import Place, ToolUnavailable
from navig.orchestrator.tools.http_map import (
    HttpMapSearch,
    NominatimSearch,
    PhotonSearch,
    RateLimiter,
    http_map_search,
)

pytestmark = pytest.mark.timeout(30)


def _nominatim(osm_id: int, name: str, cc: str, state: str, lat: float, lon: float, **extra: Any) -> dict:
    """One jsonv2 result as Nominatim spells it (coordinates are strings)."""
    return {
        "place_id": osm_id * 7,
        "licence": "Data © OpenStreetMap contributors, ODbL 1.0. http://osm.org/copyright",
        "osm_type": "relation",
        "osm_id": osm_id,
        "lat": str(lat),
        "lon": str(lon),
        "category": "boundary",
        "type": "administrative",
        "place_rank": 16,
        "addresstype": "city",
        "name": name,
        "display_name": f"{name}, {state}, {cc}",
        "address": {"city": name, "state": state, "country": cc, "country_code": cc.lower()},
        "boundingbox": [str(lat - 0.1), str(lat + 0.1), str(lon - 0.1), str(lon + 0.1)],
        **extra,
    }


FRANKFURT = [
    _nominatim(62400, "Frankfurt am Main", "DE", "Hesse", 50.1106444, 8.6820917, importance=0.7708),
    _nominatim(62723, "Frankfurt (Oder)", "DE", "Brandenburg", 52.3412273, 14.549452, importance=0.5881),
]
LEON = [  # no importance field: the score falls back to the rank
    _nominatim(344985, "León", "ES", "Castile and León", 42.5987263, -5.5670959),
    _nominatim(1401453, "León", "MX", "Guanajuato", 21.1218598, -101.6823804),
]
GUANAJUATO = [
    _nominatim(1401453, "León", "MX", "Guanajuato", 21.1218598, -101.6823804, importance=0.9),
    _nominatim(2340636, "Guanajuato", "MX", "Guanajuato", 21.0185, -101.2591, importance=0.6),
]
PHOTON_LEON = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-5.5670959, 42.5987263]},
            "properties": {"osm_type": "R", "osm_id": 344985, "osm_key": "place", "osm_value": "city",
                           "name": "León", "country": "Spain", "countrycode": "ES",
                           "state": "Castile and León", "type": "city"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-101.6823804, 21.1218598]},
            "properties": {"osm_type": "N", "osm_id": 253116, "osm_key": "place", "osm_value": "city",
                           "name": "León", "country": "Mexico", "countrycode": "mx",
                           "state": "Guanajuato", "city": "León", "type": "city"},
        },
    ],
}  # fmt: skip


@dataclass
class Seen:
    at: float  # time.monotonic() when the server read the request
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeMap:
    """Canned answers per query `q` (a script of (status, body, headers), the last one repeats)."""

    url: str = ""
    answers: dict[str, list[tuple[int, Any, dict[str, str]]]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    delay_s: float = 0.0

    def answer(self, q: str, *script: tuple[Any, ...]) -> None:
        """`script`: (status, body) or (status, body, headers) per request, in order."""
        self.answers[q] = [(s[0], s[1], s[2] if len(s) > 2 else {}) for s in script]

    def next_answer(self, path: str, q: str) -> tuple[int, Any, dict[str, str]]:
        script = self.answers.get(q)
        if not script:  # nothing found, in the backend's own format
            return 200, {"type": "FeatureCollection", "features": []} if path == "/api" else [], {}
        return script.pop(0) if len(script) > 1 else script[0]


@pytest.fixture
def fake_map() -> Iterator[FakeMap]:
    fake = FakeMap()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            params = {k: v[0] for k, v in parse_qs(url.query).items()}
            with lock:
                fake.requests.append(Seen(time.monotonic(), url.path, params, dict(self.headers)))
                status, body, headers = fake.next_answer(url.path, params.get("q", ""))
            if fake.delay_s:
                time.sleep(fake.delay_s)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _backend(backend: str, url: str | None, **settings: Any) -> HttpMapSearch:
    """A backend with test-sized backoff; no spacing between requests unless the test asks."""
    settings = {"map_min_interval_s": 0.0, **settings}
    search = http_map_search(load_settings(map_backend=backend, map_url=url, **settings))
    search.backoff_s = 0.01
    return search


def _search(search: HttpMapSearch, *batches: Sequence[str], limit: int = 5) -> list[list[Place]]:
    """Runs the searches one after the other in one event loop, then closes the client."""

    async def go() -> list[list[Place]]:
        try:
            return [await search.search(lines, limit) for lines in batches]
        finally:
            await search.aclose()

    return asyncio.run(go())


def test_nominatim_namesakes_are_separate_places(fake_map: FakeMap) -> None:
    fake_map.answer("Frankfurt", (200, FRANKFURT))
    search = _backend("nominatim", fake_map.url + "/")
    assert isinstance(search, NominatimSearch) and search.name == "nominatim"
    [places] = _search(search, ["Frankfurt 12 km"])

    assert [p.name for p in places] == ["Frankfurt am Main", "Frankfurt (Oder)"]
    main, oder = places
    assert main == Place(
        name="Frankfurt am Main",
        country_code="DE",
        latitude=50.1106444,
        longitude=8.6820917,
        score=0.7708,
        matched="Frankfurt",
        admin1="Hesse",
        population=0,
        source="nominatim:relation/62400",
    )
    assert (oder.country_code, oder.admin1, oder.source) == ("DE", "Brandenburg", "nominatim:relation/62723")
    assert oder.score == pytest.approx(0.5881)

    [request] = fake_map.requests
    assert request.path == "/search"
    assert request.params == {
        "q": "Frankfurt",
        "format": "jsonv2",
        "addressdetails": "1",
        "limit": "5",
        "accept-language": "en",
    }


def test_nominatim_rank_score_merge_dedupe_and_limit(fake_map: FakeMap) -> None:
    fake_map.answer("León", (200, LEON))
    fake_map.answer("Guanajuato", (200, GUANAJUATO))
    search = _backend("nominatim", fake_map.url)
    [places, again] = _search(search, ["León 5 km", "Guanajuato"], ["León 5 km", "Guanajuato"], limit=5)

    # ES León ranks first in its query (1/(1+0)); MX León comes from both queries, once, best score kept.
    by_source = {p.source: p for p in places}
    assert len(places) == len(by_source) == 3
    assert [p.score for p in places] == sorted((p.score for p in places), reverse=True)
    es, mx = by_source["nominatim:relation/344985"], by_source["nominatim:relation/1401453"]
    assert (es.name, es.country_code, es.score, es.matched) == ("León", "ES", 1.0, "León")
    assert (mx.name, mx.country_code, mx.score, mx.matched) == ("León", "MX", 0.9, "Guanajuato")
    assert again == places
    assert len(fake_map.requests) == 2  # the second search was answered from the cache

    search = _backend("nominatim", fake_map.url)
    [top2] = _search(search, ["León 5 km", "Guanajuato"], limit=2)
    assert [p.source for p in top2] == ["nominatim:relation/344985", "nominatim:relation/1401453"]


def test_photon_parsing(fake_map: FakeMap) -> None:
    fake_map.answer("León", (200, PHOTON_LEON))
    search = _backend("photon", fake_map.url)
    assert isinstance(search, PhotonSearch) and search.name == "photon"
    [places] = _search(search, ["León"], limit=3)

    es, mx = places
    assert es == Place(
        "León", "ES", 42.5987263, -5.5670959, 1.0, "León", "Castile and León", 0, "photon:relation/344985"
    )
    assert (mx.country_code, mx.latitude, mx.longitude) == ("MX", 21.1218598, -101.6823804)
    assert (mx.score, mx.admin1, mx.source) == (0.5, "Guanajuato", "photon:node/253116")
    [request] = fake_map.requests
    assert (request.path, request.params) == ("/api", {"q": "León", "limit": "3"})


def test_rate_limiter_spaces_concurrent_requests(fake_map: FakeMap) -> None:
    """Every request of concurrent searches goes through the limiter, which releases them one
    interval apart on the event loop's clock (its own schedule, not arrival times at a busy server)."""
    search = _backend("nominatim", fake_map.url, map_min_interval_s=0.2)
    towns = ["Bremen", "Hamburg", "Lübeck", "Kiel", "Rostock"]
    released: list[float] = []
    wait = search.rate_limiter.wait

    async def recorded_wait() -> None:
        await wait()
        released.append(asyncio.get_running_loop().time())

    search.rate_limiter.wait = recorded_wait  # type: ignore[method-assign]

    async def go() -> list[list[Place]]:
        try:
            return await asyncio.gather(*(search.search([town]) for town in towns))
        finally:
            await search.aclose()

    asyncio.run(go())
    assert len(fake_map.requests) == len(released) == 5
    gaps = [b - a for a, b in itertools.pairwise(released)]
    assert min(gaps) >= 0.2 - 1e-3, gaps  # the loop may wake a clock tick early


def test_rate_limiter_alone() -> None:
    async def go() -> list[float]:
        limiter, loop, seen = RateLimiter(0.05), asyncio.get_running_loop(), []

        async def one() -> None:
            await limiter.wait()
            seen.append(loop.time())

        await asyncio.gather(*(one() for _ in range(4)))
        return seen

    seen = asyncio.run(go())
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(seen)), seen
    with pytest.raises(ValueError):
        RateLimiter(-1)


def test_retries_on_503_then_success(fake_map: FakeMap) -> None:
    fake_map.answer("Frankfurt", (503, {"error": "busy"}), (503, b"<html>busy</html>"), (200, FRANKFURT))
    search = _backend("nominatim", fake_map.url, map_retries=3)
    [places] = _search(search, ["Frankfurt"])
    assert len(places) == 2
    assert len(fake_map.requests) == 3


def test_429_honours_retry_after(fake_map: FakeMap) -> None:
    fake_map.answer("Frankfurt", (429, {"error": "slow down"}, {"Retry-After": "0.3"}), (200, FRANKFURT))
    search = _backend("nominatim", fake_map.url)
    [places] = _search(search, ["Frankfurt"])
    assert len(places) == 2
    first, second = fake_map.requests
    assert second.at - first.at >= 0.28  # the backoff alone would be 0.01 s


@pytest.mark.parametrize("status", [400, 403, 404])
def test_other_4xx_is_not_retried(fake_map: FakeMap, status: int) -> None:
    fake_map.answer("Frankfurt", (status, {"error": "nope"}))
    search = _backend("nominatim", fake_map.url, map_retries=3)
    with pytest.raises(ToolUnavailable, match=rf"nominatim at .*/search: HTTP {status}"):
        _search(search, ["Frankfurt"])
    assert len(fake_map.requests) == 1


def test_retries_exhausted_on_5xx(fake_map: FakeMap) -> None:
    fake_map.answer("Frankfurt", (502, b"bad gateway"))
    search = _backend("photon", fake_map.url, map_retries=2)
    with pytest.raises(ToolUnavailable, match=r"photon at .*/api: HTTP 502 after 3 attempt"):
        _search(search, ["Frankfurt"])
    assert len(fake_map.requests) == 3


def test_server_down_is_unavailable_quickly() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    search = _backend("nominatim", url, map_retries=2)
    with pytest.raises(ToolUnavailable, match=rf"nominatim at {url}/search: ConnectError.* after 3 attempt"):
        _search(search, ["Frankfurt"])


def test_timeout_is_retried_then_unavailable(fake_map: FakeMap) -> None:
    fake_map.delay_s = 0.5
    search = _backend("nominatim", fake_map.url, map_retries=1, map_timeout_s=0.1)
    with pytest.raises(ToolUnavailable, match=r"ReadTimeout.* after 2 attempt"):
        _search(search, ["Frankfurt"])
    assert len(fake_map.requests) == 2


@pytest.mark.parametrize("body", [b"<html>not json</html>", {"error": "not a list"}])
def test_malformed_answer_is_unavailable(fake_map: FakeMap, body: Any) -> None:
    fake_map.answer("Frankfurt", (200, body))
    search = _backend("nominatim", fake_map.url)
    with pytest.raises(ToolUnavailable, match="nominatim"):
        _search(search, ["Frankfurt"])
    assert len(fake_map.requests) == 1


def test_partial_failure_keeps_the_other_answers(fake_map: FakeMap) -> None:
    fake_map.answer("Frankfurt", (200, FRANKFURT))
    fake_map.answer("Guanajuato", (404, {"error": "nope"}))
    search = _backend("nominatim", fake_map.url)
    [places] = _search(search, ["Frankfurt", "Guanajuato"])
    assert {p.name for p in places} == {"Frankfurt am Main", "Frankfurt (Oder)"}


def test_cache_answers_repeated_queries(fake_map: FakeMap) -> None:
    fake_map.answer("Frankfurt", (200, FRANKFURT))
    search = _backend("nominatim", fake_map.url)
    first, second = _search(search, ["Frankfurt"], ["FRANKFURT  km"], limit=5)
    assert first == [*_search(search, ["Frankfurt"])[0]]  # a new event loop reuses the same cache
    assert len(fake_map.requests) == 1
    assert [p.source for p in second] == [p.source for p in first]
    assert {p.matched for p in second} == {"FRANKFURT"}

    uncached = _backend("nominatim", fake_map.url, map_cache_size=0)
    _search(uncached, ["Frankfurt"], ["Frankfurt"])
    assert len(fake_map.requests) == 3


def test_cache_is_bounded(fake_map: FakeMap) -> None:
    search = _backend("photon", fake_map.url, map_cache_size=2)
    _search(search, ["Bremen"], ["Hamburg"], ["Kiel"], ["Kiel"], ["Hamburg"], ["Bremen"])
    assert [r.params["q"] for r in fake_map.requests] == ["Bremen", "Hamburg", "Kiel", "Bremen"]


def test_user_agent_is_sent(fake_map: FakeMap) -> None:
    search = _backend("photon", fake_map.url, map_user_agent="navig-test/1.0 (ops@example.org)")
    _search(search, ["Frankfurt"])
    [request] = fake_map.requests
    assert request.headers["User-Agent"] == "navig-test/1.0 (ops@example.org)"


def test_no_query_means_no_request(fake_map: FakeMap) -> None:
    search = _backend("nominatim", fake_map.url)
    assert _search(search, [], ["12 km", "A 5"]) == [[], []]
    assert fake_map.requests == []


def test_factory() -> None:
    with pytest.raises(ValueError, match=r"needs map_url.*https://nominatim\.openstreetmap\.org"):
        http_map_search(load_settings(map_backend="nominatim"))
    with pytest.raises(ValueError, match=r"https://photon\.komoot\.io"):
        http_map_search(load_settings(map_backend="photon"))
    with pytest.raises(ValueError, match="not an HTTP backend"):
        http_map_search(load_settings(map_backend="gazetteer", map_url="http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="http"):
        http_map_search(load_settings(map_backend="photon", map_url="127.0.0.1:9"))

    nominatim = http_map_search(load_settings(map_backend="nominatim", map_url="http://127.0.0.1:9/"))
    assert isinstance(nominatim, NominatimSearch)
    assert nominatim.base_url == "http://127.0.0.1:9"
    assert nominatim.rate_limiter.min_interval_s == 1.0  # Nominatim's usage policy by default
    photon = http_map_search(load_settings(map_backend="photon", map_url="http://127.0.0.1:9", map_retries=0))
    assert isinstance(photon, PhotonSearch)
    assert (photon.rate_limiter.min_interval_s, photon.retries) == (0.0, 0)
