"""The OpenAPI document the node serves: a valid OpenAPI 3.1 description that
names every route the node serves (a route added without a description fails
here), and whose schemas the node's real answers match.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from jsonschema import Draft202012Validator, ValidationError
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from client import builders
from node.openapi import API_CODES, TX_CODES, build_document
from state.codes import Code
from tests.node_helpers import C1, C2, CHAIN, MERCHANT, Harness, running_node


@pytest.fixture
async def api(tmp_path):
    async with running_node(tmp_path) as harness:
        yield harness


def schema_checker(doc: dict):
    """check(name, instance): validate against components/schemas/<name>."""
    registry = Registry().with_resource(
        "urn:perk-api", Resource.from_contents(doc, default_specification=DRAFT202012)
    )

    def check(name: str, instance: object) -> None:
        schema = {"$ref": f"urn:perk-api#/components/schemas/{name}"}
        Draft202012Validator(schema, registry=registry).validate(instance)

    return check


async def test_document_is_valid_openapi_31(api: Harness):
    reply = await api.get("/v1/openapi.json")
    assert reply.status == 200
    doc = reply.doc
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    validate(build_document())  # with the default limits too


async def test_every_served_route_is_described(api: Harness):
    doc = (await api.get("/v1/openapi.json")).doc
    routes = api.node.api_runner.app.router.routes()
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in routes
        if route.method != "HEAD"
    }
    # HEAD is described once, in the document's introduction: every GET route
    # but the streams answers it.
    heads = {route.resource.canonical for route in routes if route.method == "HEAD"}
    gets = {path for method, path in served if method == "get"}
    assert heads == {path for path in gets if not path.startswith("/v1/stream/")}
    described = {
        (method, path)
        for path, operations in doc["paths"].items()
        for method in operations
        if method != "parameters"
    }
    assert served - described == set(), "served but not described"
    assert described - served == set(), "described but not served"

    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert "500" in op["responses"] and "429" in op["responses"]


def test_every_problem_code_has_a_status_and_description():
    assert set(TX_CODES) == set(Code) - {Code.OK}
    assert all(400 <= status < 600 for status, _ in API_CODES.values())


async def test_answers_match_their_schemas(api: Harness):
    doc = (await api.get("/v1/openapi.json")).doc
    check = schema_checker(doc)

    check("Status", (await api.get("/v1/status")).doc)
    pending = await api.submit(api.award(C1, 5000))
    check("Pending", pending.doc)
    tx_path = f"/v1/transactions/{pending.doc['hash']}"
    check("TransactionStatus", (await api.get(tx_path)).doc)
    expired = await api.submit(api.award(C1, 5, expires_at=api.exp - 3600))
    check("Problem", expired.doc)
    rejected = await api.get(f"/v1/transactions/{expired.doc['hash']}")
    assert (rejected.doc["status"], rejected.doc["code"]) == ("rejected", "expired")
    check("TransactionStatus", rejected.doc)

    waiting = asyncio.create_task(
        api.submit(builders.transfer(C2, CHAIN, api.exp, C1.address, 1), "?wait=true")
    )
    await api.wait_pending(2)
    api.produce_block()
    check("Problem", (await waiting).doc)  # insufficient_balance, from the ledger
    committed = asyncio.create_task(api.submit(api.award(C2, 700), "?wait=true"))
    await api.wait_pending(1)
    api.produce_block()
    check("Committed", (await committed).doc)

    committed_status = (await api.get(tx_path)).doc
    assert committed_status["status"] == "committed"
    check("TransactionStatus", committed_status)
    check("Block", (await api.get("/v1/blocks/latest")).doc)
    check("Block", (await api.get("/v1/blocks/1")).doc)
    check("Account", (await api.get(f"/v1/accounts/{C1.address}?limit=1")).doc)
    check("Merchant", (await api.get(f"/v1/merchants/{MERCHANT.address}")).doc)
    check("Validators", (await api.get("/v1/validators")).doc)
    check("Health", (await api.get("/healthz")).doc)
    check("Ready", (await api.get("/readyz")).doc)
    batch = await api.call(
        "POST",
        "/v1/transactions/batch",
        json_body={"txs": [api.award(C1, 10).hex(), "00"]},
    )
    check("BatchResult", batch.doc)
    for path in ("/v1/nope", "/v1/blocks/x", "/v1/accounts/perk1x"):
        check("Problem", (await api.get(path)).doc)


async def test_stream_events_match_their_schemas(api: Harness):
    check = schema_checker((await api.get("/v1/openapi.json")).doc)
    async with (
        api.session.get(api.url + "/v1/stream/blocks") as blocks,
        api.session.get(f"{api.url}/v1/stream/accounts/{C1.address}") as account,
    ):
        await api.submit(api.award(C1, 1000))
        api.produce_block()
        for stream, name in ((blocks, "BlockEvent"), (account, "AccountEvent")):
            line = b""
            while not line.startswith(b"data: "):
                line = await asyncio.wait_for(stream.content.readline(), 5)
            check(name, json.loads(line[len(b"data: ") :]))


@pytest.mark.parametrize("max_batch", [1, 2000])
def test_document_reflects_limits(max_batch: int):
    doc = build_document(max_batch, 1 << 20)
    batch = doc["components"]["schemas"]["BatchRequest"]["properties"]["txs"]
    assert batch["maxItems"] == max_batch


def test_codes_description_lists_every_code():
    problem = build_document()["components"]["schemas"]["Problem"]
    description = problem["properties"]["code"]["description"]
    for code in [*API_CODES, *(c.slug for c in TX_CODES)]:
        assert f"`{code}`" in description


def test_submit_request_schema_is_strict():
    check = schema_checker(build_document())
    check("SubmitRequest", {"tx": "00ff"})
    with pytest.raises(ValidationError, match="Additional properties"):
        check("SubmitRequest", {"tx": "00", "memo": "x"})
    raw = builders.award_purchase(MERCHANT, CHAIN, 10**9, C1.address, "o", 1)
    check("SubmitRequest", {"tx": raw.hex()})
