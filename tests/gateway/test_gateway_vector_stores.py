"""Vector stores and the Responses API's file_search tool over a real socket with the openai SDK: files
uploaded, chunked and embedded in the gateway (all-MiniLM-L6-v2, offline), searched by meaning and by
keyword, filtered by attributes; file batches; the file_search tool's excerpts reaching the model and
its `file_search_call` item, whole and streamed; a stopped replica's ingestion taken over; another key's
store a 404; a database outage a 503; bad input a clear 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, update

from storage.keys import KeyStore
from storage.vector_stores import STORES, VectorStoreStore
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres

DOCS = {
    "tides.txt": "Tides are the rise and fall of sea levels, caused by the gravitational pull of the Moon and "
                 "the Sun on the oceans. Spring tides come at full and new moon.",
    "bread.md": "# Sourdough\n\nMix flour, water, salt and a starter; let the dough rise overnight in a cool "
                "place, shape it, then bake in a hot oven at 250 degrees for forty minutes.",
    "python.txt": "A Python list comprehension builds a list from an iterable: [x * x for x in range(10) if x % 2]. "
                  "It reads left to right, like a for loop with an optional condition.",
}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    raw = gateway_config(tmp_path_factory.mktemp("vector_stores"), [model_entry("up", upstream_processes[0].api_base)])
    with running_gateway(raw) as gateway:
        yield gateway


def upload(client: openai.OpenAI, docs: dict[str, str]) -> dict[str, str]:
    return {name: client.files.create(file=(name, text.encode()), purpose="assistants").id for name, text in docs.items()}


def completed_store(client: openai.OpenAI, file_ids: list[str], **options: object) -> str:
    store = client.vector_stores.create(name="kb", file_ids=file_ids, **options)  # type: ignore[arg-type]
    wait_until(lambda: client.vector_stores.retrieve(store.id).status == "completed", what="files ingested")
    return store.id


def test_files_are_ingested_searched_listed_and_removed(gw: Gateway) -> None:
    with gw.openai() as client:
        ids = upload(client, DOCS)
        store = client.vector_stores.create(name="kb", file_ids=list(ids.values()), metadata={"team": "docs"})
        assert store.status in ("in_progress", "completed") and store.file_counts.total == 3
        store_id = completed_store(client, [])  # an empty store completes at once
        assert client.vector_stores.retrieve(store_id).file_counts.total == 0
        wait_until(lambda: client.vector_stores.retrieve(store.id).status == "completed", what="ingested")
        done = client.vector_stores.retrieve(store.id)
        assert done.file_counts.completed == 3 and done.usage_bytes == sum(len(t.encode()) for t in DOCS.values())

        # By meaning: no word of the question is in the tides file but "sea".
        found = client.vector_stores.search(store.id, query="why does the ocean go up and down?")
        assert found.data[0].filename == "tides.txt" and 0 < found.data[0].score <= 1
        assert found.data[0].content[0].text == DOCS["tides.txt"]
        assert [r.score for r in found.data] == sorted((r.score for r in found.data), reverse=True)
        # By keyword alone, a word only one file has.
        keyword = client.vector_stores.search(store.id, query="sourdough", ranking_options={
            "hybrid_search": {"embedding_weight": 0, "text_weight": 1}})  # type: ignore[typeddict-unknown-key]
        assert [r.filename for r in keyword.data] == ["bread.md"]
        assert client.vector_stores.search(store.id, query="bake", max_num_results=1).data[0].filename == "bread.md"
        strict = client.vector_stores.search(store.id, query="bake bread", ranking_options={"score_threshold": 0.99})
        assert strict.data == []

        # Files one at a time, as the SDK's helpers add them, polled by the header they read.
        added = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=(
            "orbits.md", b"Rockets reach orbit by going sideways fast enough to keep missing the Earth."))
        assert added.status == "completed" and added.chunking_strategy.type == "static"  # type: ignore[union-attr]
        assert client.vector_stores.search(store.id, query="rockets in orbit").data[0].filename == "orbits.md"
        listed = client.vector_stores.files.list(store.id)
        assert sorted(f.id for f in listed) == sorted([*ids.values(), added.id])
        content = client.vector_stores.files.content(file_id=ids["python.txt"], vector_store_id=store.id)
        assert "".join(part.text or "" for part in content) == DOCS["python.txt"]

        renamed = client.vector_stores.update(store.id, name="renamed", metadata={"team": "ops"})
        assert renamed.name == "renamed" and renamed.metadata == {"team": "ops"}
        assert store.id in [s.id for s in client.vector_stores.list()]

        removed = client.vector_stores.files.delete(file_id=ids["tides.txt"], vector_store_id=store.id)
        assert removed.deleted
        after = client.vector_stores.search(store.id, query="why does the ocean go up and down?")
        assert "tides.txt" not in [r.filename for r in after.data]
        assert client.files.retrieve(ids["tides.txt"]).id == ids["tides.txt"]  # the file itself stays
        # Deleting the file itself takes it out of every store, as at OpenAI.
        assert client.files.delete(ids["bread.md"]).deleted
        assert ids["bread.md"] not in [f.id for f in client.vector_stores.files.list(store.id)]
        assert "bread.md" not in [r.filename for r in client.vector_stores.search(store.id, query="sourdough").data]
        assert client.vector_stores.delete(store.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.retrieve(store.id)


def test_attributes_filter_the_search(gw: Gateway) -> None:
    with gw.openai() as client:
        store_id = completed_store(client, [])
        for name, year, team in (("a.txt", 2023, "docs"), ("b.txt", 2024, "docs"), ("c.txt", 2025, "ops")):
            (file_id,) = upload(client, {name: f"The release notes of {year}: faster search and better caching."}).values()
            client.vector_stores.files.create_and_poll(file_id=file_id, vector_store_id=store_id,
                                                       attributes={"year": year, "team": team, "public": year > 2023})

        def names(filters: dict) -> list[str]:
            return sorted(r.filename for r in client.vector_stores.search(store_id, query="release notes",
                                                                          filters=filters).data)  # type: ignore[arg-type]

        assert names({"type": "eq", "key": "team", "value": "docs"}) == ["a.txt", "b.txt"]
        assert names({"type": "gte", "key": "year", "value": 2024}) == ["b.txt", "c.txt"]
        assert names({"type": "and", "filters": [{"type": "eq", "key": "public", "value": True},
                                                 {"type": "ne", "key": "team", "value": "ops"}]}) == ["b.txt"]
        assert names({"type": "or", "filters": [{"type": "in", "key": "team", "value": ["ops"]},
                                                {"type": "lt", "key": "year", "value": 2024}]}) == ["a.txt", "c.txt"]
        assert names({"type": "gt", "key": "team", "value": 3}) == []  # a string is not ordered against a number


def test_file_batches_are_ingested_and_cancelled(gw: Gateway) -> None:
    with gw.openai() as client:
        store_id = completed_store(client, [])
        ids = list(upload(client, {f"note{i}.txt": f"Note {i} about topic {i}." for i in range(4)}).values())
        batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=store_id, file_ids=ids,
                                                                  attributes={"kind": "note"})
        assert batch.status == "completed" and batch.file_counts.completed == 4
        listed = client.vector_stores.file_batches.list_files(batch_id=batch.id, vector_store_id=store_id)
        assert sorted(f.id for f in listed) == sorted(ids) and all(f.attributes == {"kind": "note"} for f in listed)
        # A batch cancelled before its files are done: those still in progress are cancelled.
        (big,) = upload(client, {"big.txt": "word " * 40_000}).values()
        slow = client.vector_stores.file_batches.create(vector_store_id=store_id, file_ids=[big])
        cancelled = client.vector_stores.file_batches.cancel(batch_id=slow.id, vector_store_id=store_id)
        assert cancelled.status in ("cancelled", "completed")  # completed if it was quicker than the cancel
        if cancelled.status == "cancelled":
            assert client.vector_stores.files.retrieve(file_id=big, vector_store_id=store_id).status == "cancelled"
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.file_batches.retrieve(batch_id="vsfb_nope", vector_store_id=store_id)


def test_a_file_that_is_not_text_fails_with_the_reason(gw: Gateway) -> None:
    with gw.openai() as client:
        store_id = completed_store(client, [])
        file_id = client.files.create(file=("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"), purpose="assistants").id
        failed = client.vector_stores.files.create_and_poll(file_id=file_id, vector_store_id=store_id)
        assert failed.status == "failed" and failed.last_error is not None
        assert failed.last_error.code == "unsupported_file" and "image.png" in failed.last_error.message
        assert client.vector_stores.retrieve(store_id).file_counts.failed == 1


def test_file_search_gives_the_model_the_excerpts(gw: Gateway, upstreams: tuple[UpstreamProcess, ...]) -> None:
    with gw.openai() as client:
        store_id = completed_store(client, list(upload(client, DOCS).values()))
        tool = {"type": "file_search", "vector_store_ids": [store_id], "max_num_results": 2}
        response = client.responses.create(model="up", input="How long does the bread bake?", tools=[tool],
                                           include=["file_search_call.results"], instructions="Be brief.")
        search, message = response.output[0], response.output[1]
        assert search.type == "file_search_call" and search.status == "completed"
        assert search.queries == ["How long does the bread bake?"]
        assert search.results is not None and search.results[0].filename == "bread.md"
        assert len(search.results) <= 2 and message.type == "message" and response.output_text
        system = upstreams[0].stats()["bodies"][-1]["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("Be brief.")
        assert DOCS["bread.md"] in system["content"] and 'file="bread.md"' in system["content"]
        assert "tools" not in upstreams[0].stats()["bodies"][-1]  # the search is not offered to the model

        # Without `include`, no results in the item; continued by id, the chain's search item is skipped.
        plain = client.responses.create(model="up", input="And the tides?", tools=[tool],
                                        previous_response_id=response.id)
        assert plain.output[0].type == "file_search_call" and plain.output[0].results is None
        assert DOCS["tides.txt"] in upstreams[0].stats()["bodies"][-1]["messages"][0]["content"]
        kept = client.responses.retrieve(plain.id)
        assert kept.output[0].type == "file_search_call"
        # tool_choice "none" does not search; naming file_search searches, as does "required".
        quiet = client.responses.create(model="up", input="Hello", tools=[tool], tool_choice="none")
        assert [item.type for item in quiet.output] == ["message"]
        for choice in ({"type": "file_search"}, "required"):
            forced = client.responses.create(model="up", input="Hello", tools=[tool], tool_choice=choice)  # type: ignore[arg-type]
            assert [item.type for item in forced.output] == ["file_search_call", "message"]


def test_file_search_streams_its_item_first(gw: Gateway) -> None:
    with gw.openai() as client:
        store_id = completed_store(client, list(upload(client, DOCS).values()))
        tool = {"type": "file_search", "vector_store_ids": [store_id]}
        with client.responses.stream(model="up", input="What is a list comprehension?", tools=[tool]) as stream:
            events = list(stream)
            final = stream.get_final_response()
        kinds = [event.type for event in events]
        assert kinds[:7] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.file_search_call.in_progress", "response.file_search_call.searching",
                             "response.file_search_call.completed", "response.output_item.done"]
        assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
        text_index = next(e.output_index for e in events if e.type == "response.output_text.delta")
        assert text_index == 1 and final.output[0].type == "file_search_call"


def test_an_ingestion_cut_by_a_shutdown_is_taken_over(upstreams: tuple[UpstreamProcess, ...],
                                                        tmp_path: Path) -> None:
    """Nothing accepted is lost: a gateway that stops mid-file lets the file's lease go, and the next one
    to start on the same database ingests it from the start."""
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)])
    with running_gateway(raw) as gw, gw.openai() as client:
        store_id = completed_store(client, [])
        (file_id,) = upload(client, {"long.txt": "word " * 15_000 + "and at the very end a lighthouse"}).values()
        client.vector_stores.files.create(file_id=file_id, vector_store_id=store_id)
    left = VectorStoreStore(gw.storage_url).get_file(store_id, file_id)
    assert left is not None and left["status"] == "in_progress" and left["lease_until"] <= datetime.now(UTC)
    with running_gateway(raw) as again, again.openai() as client:
        wait_until(lambda: client.vector_stores.files.retrieve(file_id=file_id, vector_store_id=store_id).status
                   == "completed", timeout=120, what="taken over and ingested")
        found = client.vector_stores.search(store_id, query="lighthouse", max_num_results=1)
        assert "lighthouse" in found.data[0].content[0].text


def test_bad_input_is_a_clear_4xx(gw: Gateway) -> None:
    with gw.openai() as client, gw.http() as http:
        store_id = completed_store(client, [])
        (file_id,) = upload(client, {"x.txt": "x"}).values()
        cases = [
            ("/v1/vector_stores", {"name": 3}, 400, "name"),
            ("/v1/vector_stores", {"colour": "red"}, 400, "colour"),
            ("/v1/vector_stores", {"expires_after": {"anchor": "created_at", "days": 2}}, 400, "expires_after"),
            ("/v1/vector_stores", {"file_ids": ["file-nope"]}, 404, "file_ids"),
            ("/v1/vector_stores", {"chunking_strategy": {"type": "static", "static": {
                "max_chunk_size_tokens": 100, "chunk_overlap_tokens": 80}}}, 400, "chunking_strategy"),
            (f"/v1/vector_stores/{store_id}/files", {"file_id": file_id, "attributes": {"k": [1]}}, 400, "attributes"),
            (f"/v1/vector_stores/{store_id}/search", {"query": ""}, 400, "query"),
            (f"/v1/vector_stores/{store_id}/search", {"query": "q", "max_num_results": 51}, 400, "max_num_results"),
            (f"/v1/vector_stores/{store_id}/search", {"query": "q", "rewrite_query": True}, 400, "rewrite_query"),
            (f"/v1/vector_stores/{store_id}/search", {"query": "q", "filters": {"type": "like"}}, 400, "filters"),
            (f"/v1/vector_stores/{store_id}/search", {"query": "q", "ranking_options": {
                "hybrid_search": {"embedding_weight": 0, "text_weight": 0}}}, 400, "ranking_options.hybrid_search"),
            (f"/v1/vector_stores/{store_id}/file_batches", {"file_ids": []}, 400, "file_ids"),
            ("/v1/vector_stores/vs_nope/search", {"query": "q"}, 404, None),
            ("/v1/responses", {"model": "up", "input": "q", "tools": [{"type": "file_search"}]}, 400,
             "tools[0].vector_store_ids"),
            ("/v1/responses", {"model": "up", "input": "q", "tools": [
                {"type": "file_search", "vector_store_ids": ["vs_nope"]}]}, 404, None),
        ]
        for path, body, status, param in cases:
            answer = http.post(path, json=body)
            assert answer.status_code == status, (path, body, answer.text)
            error = answer.json()["error"]
            assert error["message"] and error["param"] == param, (path, body, error)
        assert http.post("/v1/vector_stores", content=b"{not json").status_code == 400
        assert http.get(f"/v1/vector_stores/{store_id}/files", params={"filter": "done"}).status_code == 400


def test_an_expired_store_is_listed_but_not_searched(gw: Gateway) -> None:
    with gw.openai() as client:
        store_id = completed_store(client, list(upload(client, {"old.txt": "old news"}).values()),
                                   expires_after={"anchor": "last_active_at", "days": 1})
        assert client.vector_stores.search(store_id, query="news").data  # a search keeps it active
        kept = client.vector_stores.retrieve(store_id)
        assert kept.expires_after is not None and kept.expires_at == (kept.last_active_at or 0) + 86_400
        engine = create_engine(gw.storage_url)
        with engine.begin() as connection:
            connection.execute(update(STORES).values(last_active_at=datetime.now(UTC) - timedelta(days=2)))
        engine.dispose()
        assert client.vector_stores.retrieve(store_id).status == "expired"
        with pytest.raises(openai.BadRequestError, match="expired"):
            client.vector_stores.search(store_id, query="news")


def test_a_key_sees_only_its_own_stores(upstream_processes: tuple, tmp_path: Path) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstream_processes[0].api_base)], auth={"require_keys": True})
    with running_gateway(raw) as gw:
        keys = KeyStore(gw.storage_url)
        _, first = keys.create("a")
        _, second = keys.create("b")
        with gw.openai(api_key=first) as a, gw.openai(api_key=second) as b:
            store_id = completed_store(a, list(upload(a, {"mine.txt": "my secret plans"}).values()))
            for call in (lambda: b.vector_stores.retrieve(store_id), lambda: b.vector_stores.delete(store_id),
                         lambda: b.vector_stores.search(store_id, query="plans"),
                         lambda: b.vector_stores.files.list(store_id),
                         lambda: b.responses.create(model="up", input="plans?", tools=[
                             {"type": "file_search", "vector_store_ids": [store_id]}])):
                with pytest.raises(openai.NotFoundError):
                    call()
            (theirs,) = upload(b, {"theirs.txt": "x"}).values()
            with pytest.raises(openai.NotFoundError):  # nor add another key's file to one's own store
                a.vector_stores.files.create(file_id=theirs, vector_store_id=store_id)
            assert [s.id for s in b.vector_stores.list()] == []
            assert [s.id for s in a.vector_stores.list()] == [store_id]


def test_on_postgresql_and_through_its_outage(upstreams: tuple[UpstreamProcess, ...], tmp_path: Path,
                                             cluster: ThrowawayPostgres) -> None:
    """The same store on PostgreSQL; with the database down, the store's calls are a 503 naming it, and
    they work again once it is back."""
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)], storage_url=cluster.url)
    with running_gateway(raw) as gw, gw.openai() as client:
        store_id = completed_store(client, list(upload(client, DOCS).values()))
        assert client.vector_stores.search(store_id, query="tides").data[0].filename == "tides.txt"
        cluster.stop("immediate")
        try:
            with gw.http() as http:
                answer = http.post(f"/v1/vector_stores/{store_id}/search", json={"query": "tides"})
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "vector_store_unavailable"
        finally:
            cluster.start()
        found = wait_until(lambda: _search_or_none(client, store_id), what="searching again")
        assert found.data[0].filename == "tides.txt"


def _search_or_none(client: openai.OpenAI, store_id: str) -> Any:
    try:
        return client.vector_stores.search(store_id, query="tides")
    except (openai.APIStatusError, httpx.HTTPError):
        return None


def test_a_store_embedded_by_a_model_of_the_gateway(upstreams: tuple[UpstreamProcess, ...], tmp_path: Path) -> None:
    """`vector_stores.embedding_model`: chunks and queries go to that embeddings model as /v1/embeddings
    requests from the store's key (each an outcome row), `auto` chunks are OpenAI's 800 / 400 tokens, a
    refusal fails the file with the model's reason, and a store outlives a gateway that no longer serves
    its embedder only as a clear 400."""
    from tests.gateway.test_gateway_embeddings import embedding_model

    models = [model_entry("up", upstreams[0].api_base), embedding_model("emb", upstreams[0].api_base)]
    raw = gateway_config(tmp_path, models, vector_stores={"embedding_model": "emb"})
    with running_gateway(raw) as gw, gw.openai() as client:
        text = "Lighthouses guide ships along dangerous coasts at night."
        store_id = completed_store(client, list(upload(client, {"coast.txt": text}).values()))
        (listed,) = client.vector_stores.files.list(store_id)
        assert listed.chunking_strategy.static.max_chunk_size_tokens == 800  # type: ignore[union-attr]
        sent = [body for body in upstreams[0].stats()["bodies"] if body.get("model") == "emb"]
        assert sent[-1]["input"] == [text]
        found = client.vector_stores.search(store_id, query="What guides ships?")
        assert found.data[0].filename == "coast.txt"
        assert upstreams[0].stats()["bodies"][-1]["input"] == ["What guides ships?"]
        rows = [row for row in gw.rows() if row["endpoint"] == "embedding"]
        assert len(rows) == 2 and {row["model"] for row in rows} == {"emb"}  # the chunk, then the query

        upstreams[0].set_fail(500)
        try:
            (broken,) = upload(client, {"broken.txt": "never embedded"}).values()
            failed = client.vector_stores.files.create_and_poll(file_id=broken, vector_store_id=store_id)
        finally:
            upstreams[0].set_fail(None)
        assert failed.status == "failed" and failed.last_error is not None
        assert failed.last_error.code == "server_error" and "emb answered 5" in failed.last_error.message

    raw["vector_stores"] = {}  # restarted on the built-in encoder: the store keeps its embedder
    with running_gateway(raw) as gw, gw.http() as http:
        answer = http.post(f"/v1/vector_stores/{store_id}/search", json={"query": "ships"})
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "vector_store_embedder_unavailable"


def test_the_embedder_must_be_an_embeddings_model(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_settings

    raw = gateway_config(tmp_path, [model_entry("up", "http://127.0.0.1:1/v1")], vector_stores={"embedding_model": "up"})
    with pytest.raises(ConfigError, match="vector_stores.embedding_model"):
        parse_settings(raw)


def test_an_answer_naming_a_searched_file_cites_it(gw: Gateway) -> None:
    """The model is asked to name the files it uses; each mention of one the search gave it carries a
    `file_citation` annotation, whole and streamed (the mock model answers exactly `[answer:...]`)."""
    with gw.openai() as client:
        ids = upload(client, DOCS)
        store_id = completed_store(client, list(ids.values()))
        tool = {"type": "file_search", "vector_store_ids": [store_id]}
        question = "How long does sourdough bake? [answer:bread.md]"
        whole = client.responses.create(model="up", input=question, tools=[tool])
        (part,) = whole.output[1].content  # type: ignore[union-attr]
        assert part.text == "bread.md" and [a.model_dump() for a in part.annotations] == [  # type: ignore[union-attr]
            {"type": "file_citation", "file_id": ids["bread.md"], "filename": "bread.md", "index": 8}]
        with client.responses.stream(model="up", input=question, tools=[tool]) as stream:
            added = [e for e in stream if e.type == "response.output_text.annotation.added"]
            final = stream.get_final_response()
        assert [e.annotation.model_dump() for e in added] == [  # type: ignore[attr-defined]
            {"type": "file_citation", "file_id": ids["bread.md"], "filename": "bread.md", "index": 8}]
        assert final.output[1].content[0].annotations[0].file_id == ids["bread.md"]  # type: ignore[union-attr]
        uncited = client.responses.create(model="up", input="[answer:nothing]", tools=[tool])
        assert uncited.output[1].content[0].annotations == []  # type: ignore[union-attr]
