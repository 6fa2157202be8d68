"""Map search over HTTP: a Nominatim or Photon server answers the free-text queries read on signs.

Public instances are opt-in (`map_url` has no default): nominatim.openstreetmap.org allows at most one
request per second from a client that names itself in its User-Agent, so every request waits on a
`RateLimiter`, repeated queries are answered from an LRU cache, and transient failures (network,
timeouts, 429, 5xx) are retried with backoff before the tool is reported unavailable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx

from navig.orchestrator.settings import Settings
from navig.orchestrator.tools import text
from navig.orchestrator.tools.base import Place, ToolUnavailable

log = logging.getLogger("navig.tools.http_map")

PUBLIC_URLS = {"nominatim": "https://nominatim.openstreetmap.org", "photon": "https://photon.komoot.io"}
MAX_QUERIES = 4  # one request per OCR line; a photo with many lines must not flood the server
_OSM_TYPES = {"N": "node", "W": "way", "R": "relation"}  # Photon's short forms


class RateLimiter:
    """Spaces calls to `wait()` by at least `min_interval_s`, however many coroutines call at once.

    Each caller reserves the next free slot under a lock, so N concurrent callers leave after
    0, i, 2i, ... seconds. Usable from successive event loops (the lock is rebound to the running one).
    """

    def __init__(self, min_interval_s: float) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.min_interval_s = min_interval_s
        self._next = float("-inf")  # loop.time() before which no call may leave
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        if self.min_interval_s <= 0:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            self._loop, self._lock = loop, asyncio.Lock()
        async with self._lock:
            delay = self._next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = loop.time() + self.min_interval_s


class HttpMapSearch:
    """Shared machinery of the HTTP backends; subclasses say which URL to ask and how to read it."""

    name: ClassVar[str]
    default_min_interval_s: ClassVar[float] = 0.0
    max_request_limit: ClassVar[int] = 50

    def __init__(
        self,
        base_url: str,
        *,
        user_agent: str,
        timeout_s: float = 10.0,
        retries: int = 3,
        min_interval_s: float | None = None,
        cache_size: int = 1024,
        max_queries: int = MAX_QUERIES,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        """`rate_limiter`: pass one limiter to several instances that talk to the same server."""
        self.base_url = base_url.rstrip("/")
        self.user_agent = user_agent
        self.timeout_s = timeout_s
        self.retries = retries
        self.cache_size = cache_size
        self.max_queries = max_queries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        interval = self.default_min_interval_s if min_interval_s is None else min_interval_s
        self.rate_limiter = rate_limiter or RateLimiter(interval)
        self._cache: OrderedDict[str, tuple[int, tuple[Place, ...]]] = OrderedDict()  # key -> (limit, places)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> HttpMapSearch:
        if not settings.map_url:
            raise ValueError(
                f"map_backend={cls.name!r} needs map_url (NAVIG_MAP_URL), the base URL of a {cls.name} "
                f"server; the public one is {PUBLIC_URLS[cls.name]} (mind its usage policy)"
            )
        if not settings.map_url.startswith(("http://", "https://")):
            raise ValueError(f"map_url must be an http(s) URL, got {settings.map_url!r}")
        options: dict[str, Any] = {
            "user_agent": settings.map_user_agent,
            "timeout_s": settings.map_timeout_s,
            "retries": settings.map_retries,
            "min_interval_s": settings.map_min_interval_s,
            "cache_size": settings.map_cache_size,
        }
        return cls(settings.map_url, **(options | overrides))

    # --- MapSearch -------------------------------------------------------------------------------

    async def search(self, lines: Sequence[str], limit: int = 5) -> list[Place]:
        """Candidates for all queries of the photo, deduplicated by OSM id, best first.

        Raises `ToolUnavailable` only when every query failed; a partial answer is still evidence.
        """
        queries = text.queries(lines)[: self.max_queries]
        if not queries or limit <= 0:
            return []
        answers = await asyncio.gather(*(self._lookup(q, limit) for q in queries), return_exceptions=True)
        best: dict[str, Place] = {}
        errors: list[ToolUnavailable] = []
        for answer in answers:
            if isinstance(answer, ToolUnavailable):
                errors.append(answer)
                continue
            if isinstance(answer, BaseException):
                raise answer
            for place in answer:
                kept = best.get(place.source)
                if kept is None or place.score > kept.score:
                    best[place.source] = place
        if errors and len(errors) == len(answers):
            raise errors[0]
        for error in errors:
            log.warning("%s: one query failed, answering with the others: %s", self.name, error)
        return sorted(best.values(), key=lambda p: p.score, reverse=True)[:limit]

    async def aclose(self) -> None:
        """Closes the connection pool (only the current loop's; one left on a dead loop is dropped)."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()
        self._client_loop = None

    # --- subclass hooks --------------------------------------------------------------------------

    def _request(self, query: str, limit: int) -> tuple[str, dict[str, str | int]]:
        raise NotImplementedError

    def _parse(self, payload: Any, query: str) -> list[Place]:
        raise NotImplementedError

    # --- internals -------------------------------------------------------------------------------

    async def _lookup(self, query: str, limit: int) -> tuple[Place, ...]:
        """One query's places, from the cache when an answer at least `limit` long (or complete) is there."""
        limit = min(limit, self.max_request_limit)
        key = " ".join(query.casefold().split())
        cached = self._cache.get(key)
        if cached is not None and (cached[0] >= limit or len(cached[1]) < cached[0]):
            self._cache.move_to_end(key)
            return tuple(_rematch(p, query) for p in cached[1][:limit])
        payload = await self._get_json(*self._request(query, limit))
        try:
            places = tuple(self._parse(payload, query))
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            raise ToolUnavailable(f"{self.name}: unexpected answer shape for {query!r}: {exc!r}") from exc
        if self.cache_size > 0:
            self._cache[key] = (limit, places)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return places

    def _http(self) -> httpx.AsyncClient:
        """The instance's client, created in (and bound to) the running loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"},
                follow_redirects=True,
            )
            self._client_loop = loop
        return self._client

    async def _get_json(self, url: str, params: dict[str, str | int]) -> Any:
        """GET with rate limiting and retries; the decoded JSON body or `ToolUnavailable`."""
        problem, retry_after = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt, retry_after))
            retry_after = None
            client = self._http()  # before the slot: building a client takes tens of ms the first time
            await self.rate_limiter.wait()
            try:
                response = await client.get(url, params=params)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            except httpx.HTTPError as exc:  # bad URL, unsupported protocol: retrying cannot help
                raise ToolUnavailable(f"{self.name} at {url}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}"
                retry_after = _seconds(response.headers.get("Retry-After"))
                continue
            if response.status_code != 200:
                raise ToolUnavailable(
                    f"{self.name} at {url}: HTTP {response.status_code} {_excerpt(response.text)}"
                )
            try:
                return response.json()
            except ValueError as exc:
                raise ToolUnavailable(
                    f"{self.name} at {url}: malformed JSON answer: {_excerpt(response.text)}"
                ) from exc
        raise ToolUnavailable(f"{self.name} at {url}: {problem} after {self.retries + 1} attempt(s)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff, or the server's Retry-After when longer; both capped."""
        backoff = self.backoff_s * 2 ** (attempt - 1)
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.max_backoff_s)


class NominatimSearch(HttpMapSearch):
    """OpenStreetMap's geocoder (`/search`, jsonv2). Its `importance` ranks places across queries."""

    name = "nominatim"
    default_min_interval_s = 1.0  # https://operations.osmfoundation.org/policies/nominatim/
    max_request_limit = 40  # the server's own cap

    def _request(self, query: str, limit: int) -> tuple[str, dict[str, str | int]]:
        params: dict[str, str | int] = {
            "q": query,
            "format": "jsonv2",
            "addressdetails": 1,
            "limit": limit,
            "accept-language": "en",
        }
        return f"{self.base_url}/search", params

    def _parse(self, payload: Any, query: str) -> list[Place]:
        if not isinstance(payload, list):
            raise ToolUnavailable(f"{self.name}: expected a JSON list, got {type(payload).__name__}")
        places = []
        for rank, item in enumerate(payload):
            coords = _coords(item.get("lat"), item.get("lon"))
            if coords is None:
                continue
            address = item.get("address") or {}
            name = item.get("name") or str(item.get("display_name", "")).split(",")[0].strip()
            importance = _number(item.get("importance"))
            score = importance if importance is not None else 1.0 / (1 + rank)
            places.append(
                Place(
                    name=name,
                    country_code=str(address.get("country_code", "")).upper(),
                    latitude=coords[0],
                    longitude=coords[1],
                    score=min(max(score, 0.0), 1.0),
                    matched=query,
                    admin1=address.get("state") or address.get("province") or address.get("region") or "",
                    source=_source(
                        self.name, item.get("osm_type"), item.get("osm_id"), item.get("place_id"), coords
                    ),
                )
            )
        return places


class PhotonSearch(HttpMapSearch):
    """Komoot's Photon (`/api`, GeoJSON). It gives no importance, so the score is the rank."""

    name = "photon"

    def _request(self, query: str, limit: int) -> tuple[str, dict[str, str | int]]:
        return f"{self.base_url}/api", {"q": query, "limit": limit}

    def _parse(self, payload: Any, query: str) -> list[Place]:
        features = payload.get("features") if isinstance(payload, dict) else None
        if not isinstance(features, list):
            raise ToolUnavailable(f"{self.name}: expected a GeoJSON FeatureCollection")
        places = []
        for rank, feature in enumerate(features):
            props = feature.get("properties") or {}
            lonlat = (feature.get("geometry") or {}).get("coordinates") or [None, None]
            coords = _coords(lonlat[1], lonlat[0]) if len(lonlat) >= 2 else None
            if coords is None:
                continue
            places.append(
                Place(
                    name=props.get("name") or props.get("city") or "",
                    country_code=str(props.get("countrycode", "")).upper(),
                    latitude=coords[0],
                    longitude=coords[1],
                    score=1.0 / (1 + rank),
                    matched=query,
                    admin1=props.get("state") or "",
                    source=_source(self.name, props.get("osm_type"), props.get("osm_id"), None, coords),
                )
            )
        return places


def http_map_search(settings: Settings) -> HttpMapSearch:
    """The HTTP `MapSearch` backend `settings.map_backend` names; `ValueError` without `map_url`."""
    backends: dict[str, type[HttpMapSearch]] = {"nominatim": NominatimSearch, "photon": PhotonSearch}
    backend = backends.get(settings.map_backend)
    if backend is None:
        raise ValueError(f"map_backend={settings.map_backend!r} is not an HTTP backend (nominatim, photon)")
    return backend.from_settings(settings)


def _rematch(place: Place, query: str) -> Place:
    """A cached place answers another spelling of the same query ("BERLIN" after "Berlin")."""
    if place.matched == query:
        return place
    return dataclasses.replace(place, matched=query)


def _source(backend: str, osm_type: Any, osm_id: Any, place_id: Any, coords: tuple[float, float]) -> str:
    """The OSM object id, which tells namesakes apart; else the server's place id; else the position."""
    if osm_type and osm_id is not None:
        return f"{backend}:{_OSM_TYPES.get(str(osm_type), str(osm_type))}/{osm_id}"
    if place_id is not None:
        return f"{backend}:place/{place_id}"
    return f"{backend}:{coords[0]:.5f},{coords[1]:.5f}"


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _coords(lat: Any, lon: Any) -> tuple[float, float] | None:
    lat_f, lon_f = _number(lat), _number(lon)
    if lat_f is None or lon_f is None or not (-90 <= lat_f <= 90 and -180 <= lon_f <= 180):
        return None
    return lat_f, lon_f


def _seconds(retry_after: str | None) -> float | None:
    """A numeric Retry-After; the HTTP-date form is rare and falls back to plain backoff."""
    value = _number(retry_after)
    return value if value is not None and value >= 0 else None


def _excerpt(body: str, size: int = 200) -> str:
    body = " ".join(body.split())
    return body if len(body) <= size else body[:size] + "..."
