"""`/v1/vector_stores`: OpenAI's vector store routes, as its SDKs call them (gateway/vector_stores.py
does the work). A file's or a batch's answer while it is `in_progress` carries `openai-poll-after-ms`,
the header the SDKs' `*_and_poll` helpers wait by."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway.vector_stores import VectorStores, file_object

POLL_AFTER_MS = "200"  # an ingestion takes from a fraction of a second to minutes


def _stores(request: Request) -> VectorStores:
    return request.app.state.pitstop.vector_stores


async def _key(request: Request) -> str | None:
    return (await request.app.state.pitstop.auth.authenticate(request.headers)).key_id


async def _body(request: Request) -> object:
    return await read_json(request, request.app.state.pitstop.settings.server.max_body_bytes)


def _answer(body: dict) -> Response:
    headers = {"openai-poll-after-ms": POLL_AFTER_MS} if body.get("status") == "in_progress" else None
    return SafeJSONResponse(body, headers=headers)


async def create_store(request: Request) -> Response:
    key_id = await _key(request)
    return _answer(await _stores(request).create(await _body(request), key_id))


async def list_stores(request: Request) -> Response:
    return _answer(await _stores(request).page(await _key(request), request.query_params))


async def retrieve_store(request: Request) -> Response:
    stores, key_id = _stores(request), await _key(request)
    return _answer(await stores.describe(await stores.owned(request.path_params["store_id"], key_id)))


async def modify_store(request: Request) -> Response:
    key_id = await _key(request)
    return _answer(await _stores(request).modify(request.path_params["store_id"], await _body(request), key_id))


async def delete_store(request: Request) -> Response:
    return _answer(await _stores(request).delete(request.path_params["store_id"], await _key(request)))


async def search(request: Request) -> Response:
    key_id = await _key(request)
    return _answer(await _stores(request).search_request(request.path_params["store_id"], await _body(request), key_id))


async def add_file(request: Request) -> Response:
    key_id = await _key(request)
    return _answer(await _stores(request).add_file(request.path_params["store_id"], await _body(request), key_id))


async def list_files(request: Request) -> Response:
    key_id = await _key(request)
    return _answer(await _stores(request).file_page(request.path_params["store_id"], request.query_params, key_id))


async def retrieve_file(request: Request) -> Response:
    params, key_id = request.path_params, await _key(request)
    return _answer(file_object(await _stores(request).owned_file(params["store_id"], params["file_id"], key_id)))


async def update_file(request: Request) -> Response:
    params, key_id = request.path_params, await _key(request)
    return _answer(await _stores(request).update_file(params["store_id"], params["file_id"], await _body(request),
                                                      key_id))


async def delete_file(request: Request) -> Response:
    params, key_id = request.path_params, await _key(request)
    return _answer(await _stores(request).remove_file(params["store_id"], params["file_id"], key_id))


async def file_content(request: Request) -> Response:
    params, key_id = request.path_params, await _key(request)
    return _answer(await _stores(request).file_content(params["store_id"], params["file_id"], key_id))


async def create_batch(request: Request) -> Response:
    key_id = await _key(request)
    return _answer(await _stores(request).create_batch(request.path_params["store_id"], await _body(request), key_id))


async def retrieve_batch(request: Request) -> Response:
    params, key_id = request.path_params, await _key(request)
    return _answer(await _stores(request).get_batch(params["store_id"], params["batch_id"], key_id))


async def cancel_batch(request: Request) -> Response:
    params, key_id = request.path_params, await _key(request)
    return _answer(await _stores(request).cancel_batch(params["store_id"], params["batch_id"], key_id))


async def batch_files(request: Request) -> Response:
    params, key_id = request.path_params, await _key(request)
    stores = _stores(request)
    await stores.get_batch(params["store_id"], params["batch_id"], key_id)
    return _answer(await stores.file_page(params["store_id"], request.query_params, key_id, params["batch_id"]))


_STORE = "/v1/vector_stores/{store_id}"
ROUTES = [
    Route("/v1/vector_stores", create_store, methods=["POST"]),
    Route("/v1/vector_stores", list_stores, methods=["GET"]),
    Route(_STORE, retrieve_store, methods=["GET"]),
    Route(_STORE, modify_store, methods=["POST"]),
    Route(_STORE, delete_store, methods=["DELETE"]),
    Route(f"{_STORE}/search", search, methods=["POST"]),
    Route(f"{_STORE}/files", add_file, methods=["POST"]),
    Route(f"{_STORE}/files", list_files, methods=["GET"]),
    Route(f"{_STORE}/files/{{file_id}}", retrieve_file, methods=["GET"]),
    Route(f"{_STORE}/files/{{file_id}}", update_file, methods=["POST"]),
    Route(f"{_STORE}/files/{{file_id}}", delete_file, methods=["DELETE"]),
    Route(f"{_STORE}/files/{{file_id}}/content", file_content, methods=["GET"]),
    Route(f"{_STORE}/file_batches", create_batch, methods=["POST"]),
    Route(f"{_STORE}/file_batches/{{batch_id}}", retrieve_batch, methods=["GET"]),
    Route(f"{_STORE}/file_batches/{{batch_id}}/cancel", cancel_batch, methods=["POST"]),
    Route(f"{_STORE}/file_batches/{{batch_id}}/files", batch_files, methods=["GET"]),
]
