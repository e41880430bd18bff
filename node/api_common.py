"""What every HTTP handler of the node shares: the node behind the app, the
answer in the format the client asked for, and strict query parameters.

node.api (transactions, blocks, accounts, streams) and node.api_loyalty (the
program, settlement and analytics) both build on these, so a document is
rendered the same way whichever module serves it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web

from node import views
from node.views import JSON, MSGPACK

if TYPE_CHECKING:
    from node.service import Node

NODE = web.AppKey("node", object)
CSV = "text/csv"


def node_of(request: web.Request) -> Node:
    return request.app[NODE]  # type: ignore[return-value]


def query(request: web.Request, *allowed: str) -> dict[str, str]:
    return views.check_query(request.query.items(), allowed)


def reply(
    request: web.Request,
    doc: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """`doc` as JSON, or as msgpack when the client's Accept prefers it."""
    if views.prefers_msgpack(request.headers.get("Accept", "")):
        body, content_type = msgpack.packb(doc, use_bin_type=True), MSGPACK
    else:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        body, content_type = text.encode(), JSON
    response = web.Response(
        status=status, body=body, content_type=content_type, headers=headers
    )
    response.headers["Vary"] = "Accept"
    return response


def wants_csv(request: web.Request, params: dict[str, str]) -> bool:
    """True for `?format=csv`, or with no `format` when Accept names text/csv
    ahead of JSON (spreadsheets and BI connectors often send only that)."""
    chosen = params.get("format")
    if chosen is not None:
        if chosen not in ("json", "csv"):
            raise views.bad_param("format", "expected json or csv")
        return chosen == "csv"
    best_csv, best_json = views.preference(request.headers.get("Accept", ""), [CSV])
    return best_csv > 0 and best_csv > best_json


def csv_reply(
    header: list[str], rows: Iterable[list[Any]], filename: str
) -> web.Response:
    """A CSV document (RFC 4180, CRLF line ends, UTF-8) offered as a download."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    response = web.Response(
        body=out.getvalue().encode(),
        content_type=CSV,
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
    response.headers["Vary"] = "Accept"
    return response
