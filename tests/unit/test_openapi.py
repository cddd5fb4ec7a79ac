"""The OpenAPI documents stay true to the route tables: every route documented, every documented path routed."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.core.result import Err

from services.catalog import app as catalog
from services.catalog.openapi import OPENAPI as CATALOG
from services.httpbin import app as httpbin
from services.httpbin.openapi import OPENAPI as HTTPBIN
from services.web import app as web
from services.web.openapi import OPENAPI as WEB

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def canonical(path: str) -> str:
    """One spelling for path parameters: OpenAPI {x}, Flask <int:x>, aiohttp {x:regex}, Tornado (regex).
    Parameters may nest brackets ({name:[a-z]{1,64}}), so they are skipped by depth, not by a regex."""
    out, depth = [], 0
    for char in path:
        if char in "{<(":
            if depth == 0:
                out.append("{}")
            depth += 1
        elif char in "}>)" and depth:
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


def routed(service: str) -> set[str]:
    if service == "catalog":
        return {canonical(catalog.PREFIX + p) for p, _ in catalog.ROUTES}
    if service == "web":
        return {canonical(web.PREFIX + p) for p, *_ in web.ROUTES}
    return {canonical(httpbin.PREFIX + p) for _, p, _ in httpbin.ROUTES}


@pytest.mark.parametrize(("service", "document"), [("catalog", CATALOG), ("web", WEB), ("httpbin", HTTPBIN)])
def test_every_route_is_documented_and_every_documented_path_is_routed(service, document):
    documented = {canonical(p) for p in document["paths"]}
    served = routed(service) - {canonical(f"/{service}/openapi.json"), canonical(f"/{service}/anything/{{}}")}
    assert served == documented


@pytest.mark.parametrize("document", [CATALOG, WEB, HTTPBIN], ids=["catalog", "web", "httpbin"])
def test_documents_are_valid_openapi_31(document):
    assert document["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(document)  # validates against the OpenAPI 3.1 meta-schema
    results = list(schema.get_all_operations())
    failed = [result for result in results if isinstance(result, Err)]  # an operation schemathesis cannot load
    assert not failed, failed
    assert len(results) == sum(len([m for m in item if m in METHODS]) for item in document["paths"].values())
