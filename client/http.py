"""HTTP client for a perkchain node's API (`/v1/...`).

`AsyncClient` speaks to one node over aiohttp; `Client` wraps it for scripts
that are not async. Successful answers are returned as the decoded JSON
documents the node sends. Failures are typed:

- a problem response (`application/problem+json`) raises an `ApiError`
  subclass chosen by its HTTP status, carrying the node's stable `code`;
- a node that cannot be reached, drops the connection or does not answer in
  time raises `NodeUnreachable`, an `OSError`.

Submissions of the same signed bytes are idempotent (the hash is the identity
of a transaction), so `submit` may safely retry when the node asks it to come
back later (503 or 429 with Retry-After), up to a bound.

This module depends on aiohttp and msgpack only, never on node code: it is
what an app talking to a remote node would ship.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgpack

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "NodeUnreachable",
    "NotFound",
    "Rejected",
    "TooLarge",
    "TooManyRequests",
    "Unavailable",
]

DEFAULT_TIMEOUT_S = 10.0
# How often, and for how long at most each time, submit honours Retry-After.
DEFAULT_SUBMIT_RETRIES = 3
MAX_RETRY_WAIT_S = 10.0
# A waited-for submission may legitimately take the node's whole wait timeout;
# the HTTP timeout must outlast it or the client would give up first.
WAIT_MARGIN_S = 5.0
# Without an explicit wait timeout the node waits up to its api.max_wait_s,
# 30 s unless configured otherwise.
NODE_DEFAULT_WAIT_S = 30.0
PROBLEM_TYPE = "application/problem+json"
MSGPACK_TYPE = "application/msgpack"
# The event that closes a stream; its data says why.
END_EVENT = "end"


# --- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """The node answered with an error (a problem document, or a bad reply)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        body: Any = None,
        title: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}" if detail else f"{status} {code}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.body = body
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the request itself is malformed."""


class NotFound(ApiError):
    """404: no such transaction, block, account or merchant."""


class Conflict(ApiError):
    """409: the request conflicts with the chain, e.g. a duplicate transaction."""


class TooLarge(ApiError):
    """413: the body is larger than the node accepts."""


class Rejected(ApiError):
    """422: the node refused the transaction; `code` says why."""


class TooManyRequests(ApiError):
    """429: rate limited; `retry_after` says when to come back."""


class Unavailable(ApiError):
    """503: the node cannot serve now (mempool full, syncing); see retry_after."""


class NodeUnreachable(OSError):
    """The node could not be reached, or the connection failed mid-request."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"node unreachable at {url}: {reason} (is a node running there? "
            "`perk devnet up` starts a local network; `--api` or PERK_API "
            "names the node)"
        )
        self.url = url
        self.reason = reason


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Rejected,
    429: TooManyRequests,
    503: Unavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def problem_error(status: int, body: Any, retry_after: float | None) -> ApiError:
    """The typed exception for an error response (problem document or not)."""
    cls = ERRORS_BY_STATUS.get(status, ApiError)
    if isinstance(body, dict):
        code = body.get("code") or f"http_{status}"
        detail = body.get("detail") or body.get("title") or ""
        title = body.get("title") or ""
    else:
        # Not a problem document: a proxy page, or a crash before the handler.
        code = f"http_{status}"
        detail = str(body or "")[:200]
        title = ""
    return cls(status, str(code), str(detail), body, str(title), retry_after)


# --- the async client -----------------------------------------------------------------


class AsyncClient:
    """One node's API. Use as `async with AsyncClient(url) as api: ...`."""

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        submit_retries: int = DEFAULT_SUBMIT_RETRIES,
        max_retry_wait: float = MAX_RETRY_WAIT_S,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"API URL must start with http:// or https://: {base_url}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.submit_retries = submit_retries
        self.max_retry_wait = max_retry_wait
        self._session: aiohttp.ClientSession | None = None
        self.stream_end_reason: str | None = None

    async def __aenter__(self) -> AsyncClient:
        self.open_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json"}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- reads ---

    async def status(self) -> dict:
        return await self.request("GET", "/v1/status")

    async def tx(self, tx_hash: str | bytes) -> dict:
        if isinstance(tx_hash, bytes):
            tx_hash = tx_hash.hex()
        return await self.request("GET", f"/v1/transactions/{segment(tx_hash)}")

    async def block(self, height: int | str = "latest") -> dict:
        if height != "latest" and (type(height) is not int or height < 1):
            raise ValueError(f"block height must be >= 1 or 'latest', not {height!r}")
        return await self.request("GET", f"/v1/blocks/{height}")

    async def raw_block(self, height: int) -> tuple[bytes, bytes, bytes]:
        """The canonical bytes of the block at `height`, its commit and its
        receipts."""
        if type(height) is not int or height < 1:
            raise ValueError(f"block height must be >= 1, not {height!r}")
        doc = await self.request("GET", f"/v1/blocks/{height}/raw")
        return (
            bytes.fromhex(doc["block"]),
            bytes.fromhex(doc["commit"]),
            bytes.fromhex(doc["receipts"]),
        )

    async def evidence(self) -> dict:
        return await self.request("GET", "/v1/evidence")

    async def account(
        self, address: str, limit: int | None = None, cursor: str | None = None
    ) -> dict:
        params: dict[str, str] = {}
        if limit is not None:
            params["limit"] = str(limit)
        if cursor is not None:
            params["cursor"] = cursor
        path = f"/v1/accounts/{segment(address)}"
        return await self.request("GET", path, params=params)

    async def merchant(self, address: str) -> dict:
        return await self.request("GET", f"/v1/merchants/{segment(address)}")

    async def validators(self) -> dict:
        return await self.request("GET", "/v1/validators")

    # --- submissions ---

    async def submit(
        self, raw: bytes, wait: bool = False, timeout: float | None = None
    ) -> dict:
        """Submit one signed transaction; with `wait`, until it is final or the
        node's wait `timeout` passes (202 and status "pending" then)."""
        return await self.submit_with_retries(
            "/v1/transactions",
            self.wait_params(wait, timeout),
            json_body={"tx": bytes(raw).hex()},
            http_timeout=self.submit_timeout(wait, timeout),
        )

    async def submit_batch(self, raws: list[bytes]) -> dict:
        """Submit many signed transactions in one request, as a msgpack array.

        The node answers once each is admitted or refused (`results`, in
        order); it does not wait for blocks. Follow finality with `tx(hash)`
        or `stream_blocks()`.
        """
        body = msgpack.packb([bytes(r) for r in raws], use_bin_type=True)
        return await self.submit_with_retries(
            "/v1/transactions/batch", {}, data=body, content_type=MSGPACK_TYPE
        )

    def wait_params(self, wait: bool, timeout: float | None) -> dict[str, str]:
        params = {}
        if wait:
            params["wait"] = "true"
            if timeout is not None:
                # The node takes seconds with at most three decimals.
                params["timeout"] = f"{max(timeout, 0.001):.3f}".rstrip("0").rstrip(".")
        return params

    def submit_timeout(self, wait: bool, timeout: float | None) -> float:
        if not wait:
            return self.timeout
        node_wait = timeout if timeout is not None else NODE_DEFAULT_WAIT_S
        return max(self.timeout, node_wait + WAIT_MARGIN_S)

    async def submit_with_retries(self, path: str, params: dict, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await self.request("POST", path, params=params, **kwargs)
            except (Unavailable, TooManyRequests) as exc:
                # Only a node that says when to come back is retried; the same
                # bytes resubmitted can never apply twice.
                if exc.retry_after is None or attempt >= self.submit_retries:
                    raise
                attempt += 1
                await asyncio.sleep(min(exc.retry_after, self.max_retry_wait))

    # --- blocks as they commit ---

    async def stream_blocks(self) -> AsyncIterator[dict]:
        """Blocks as the node commits them (server-sent events), from now on.

        Each item is the decoded `data` of one block event (height, hash,
        time_ms, txs). The stream ends when the node closes it, after setting
        `stream_end_reason` when the node said why.
        """
        headers = {"Accept": "text/event-stream"}
        url = self.base_url + "/v1/stream/blocks"
        session = self.open_session()
        # A quiet chain sends nothing for a while: only connecting is timed.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        try:
            async with session.get(url, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    raise await self.error_from(response)
                async for name, data in read_events(response.content):
                    if name == END_EVENT:
                        # The node ends the stream on shutdown, or when this
                        # reader fell too far behind; `reason` says which.
                        self.stream_end_reason = data.get("reason")
                        return
                    yield data
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise NodeUnreachable(url, describe(exc)) from None
        except TimeoutError:
            raise NodeUnreachable(url, f"no answer within {self.timeout:g}s") from None

    # --- plumbing ---

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        http_timeout: float | None = None,
    ) -> Any:
        url = self.base_url + path
        session = self.open_session()
        headers = {"Content-Type": content_type} if content_type else None
        timeout = aiohttp.ClientTimeout(total=http_timeout or self.timeout)
        try:
            async with session.request(
                method,
                url,
                params=params or None,
                json=json_body,
                data=data,
                headers=headers,
                timeout=timeout,
            ) as response:
                if response.status >= 400:
                    raise await self.error_from(response)
                return await self.read_json(response)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise NodeUnreachable(url, describe(exc)) from None
        except TimeoutError:
            raise NodeUnreachable(
                url, f"no answer within {http_timeout or self.timeout:g}s"
            ) from None

    async def read_json(self, response: aiohttp.ClientResponse) -> Any:
        text = await response.text()
        try:
            return json.loads(text) if text else {}
        except ValueError:
            raise ApiError(
                response.status, "bad_response", "the node's answer is not JSON", text
            ) from None

    async def error_from(self, response: aiohttp.ClientResponse) -> ApiError:
        text = await response.text()
        body: Any = text
        try:
            body = json.loads(text)
        except ValueError:
            pass
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return problem_error(response.status, body, retry_after)


def segment(text: str) -> str:
    """`text` as one path segment: a '/' or '?' in it cannot change the route."""
    return urllib.parse.quote(str(text), safe="")


def describe(exc: BaseException) -> str:
    """A short reason for a connection failure, without aiohttp's wrapping."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error) or "connection failed"
        return f"cannot connect to {exc.host}:{exc.port}: {reason}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


async def read_events(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, dict]]:
    """Parse a text/event-stream body into (event name, decoded data) pairs."""
    name, data_lines = "message", []
    async for raw_line in content:
        line = raw_line.decode("utf-8").rstrip("\r\n")
        if not line:
            # A blank line dispatches the event gathered so far.
            if data_lines:
                yield name, decode_event_data("\n".join(data_lines))
            name, data_lines = "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: the node's keep-alive
        field_name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field_name == "event":
            name = value
        elif field_name == "data":
            data_lines.append(value)
    if data_lines:
        yield name, decode_event_data("\n".join(data_lines))


def decode_event_data(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {"data": text}
    return value if isinstance(value, dict) else {"data": value}


# --- the synchronous wrapper ----------------------------------------------------------


class Client:
    """Blocking access for scripts: each call runs on a private event loop.

    Not for use inside a running event loop (use AsyncClient there).
    """

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT_S, **kw: Any):
        self._loop = asyncio.new_event_loop()
        self._api = AsyncClient(base_url, timeout=timeout, **kw)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self._api.close())
        self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    def status(self) -> dict:
        return self._run(self._api.status())

    def submit(self, raw: bytes, wait: bool = False, timeout: float | None = None):
        return self._run(self._api.submit(raw, wait, timeout))

    def submit_batch(self, raws: list[bytes]) -> dict:
        return self._run(self._api.submit_batch(raws))

    def tx(self, tx_hash: str | bytes) -> dict:
        return self._run(self._api.tx(tx_hash))

    def block(self, height: int | str = "latest") -> dict:
        return self._run(self._api.block(height))

    def raw_block(self, height: int) -> tuple[bytes, bytes, bytes]:
        return self._run(self._api.raw_block(height))

    def evidence(self) -> dict:
        return self._run(self._api.evidence())

    def account(
        self, address: str, limit: int | None = None, cursor: str | None = None
    ) -> dict:
        return self._run(self._api.account(address, limit, cursor))

    def merchant(self, address: str) -> dict:
        return self._run(self._api.merchant(address))

    def validators(self) -> dict:
        return self._run(self._api.validators())

    def stream_blocks(self) -> Iterator[dict]:
        events = self._api.stream_blocks()
        try:
            while True:
                try:
                    yield self._run(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())
