"""What the gateway keeps of conversations: stored Responses, conversations and their items, stored chat
completions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base, utc_now


class StoredResponse(Base):
    """A Responses API answer kept for `previous_response_id`, retrieval and `input_items`. A chain is
    read in two queries: the response, then its ancestors by id."""

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(primary_key=True)  # resp_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # Whose it is: only the same key reads, continues or deletes it (None: the master key, or no keys).
    api_key_id: Mapped[str | None]
    previous_response_id: Mapped[str | None]
    ancestors: Mapped[list[str]]  # the chain before it, oldest first (its previous response last)
    session_id: Mapped[str | None]  # the session its turns run under (agent_sessions/)
    input_items: Mapped[Any]  # its own input, as Responses items with ids (not the instructions)
    response: Mapped[Any]  # the Response object as the client got it
    # A background response's (gateway/background.py): its status (None for any other), and while it is
    # queued or in progress, the lease the replica running it renews.
    status: Mapped[str | None]
    lease_until: Mapped[datetime | None] = mapped_column(index=True)  # replicas look for lapsed ones
    lease_token: Mapped[str | None]  # whose lease it is: a replica whose run was taken over writes no more
    # The request as sent, so that another replica runs it again once the lease of the one running it
    # lapsed; and how many times one did (a request that brings its replicas down is not run forever).
    request: Mapped[Any | None]
    takeovers: Mapped[int] = mapped_column(default=0, server_default="0")


class Conversation(Base):
    """A Conversations API conversation: its items are rows of `conversation_items`. Kept until deleted
    (as at OpenAI, no retention applies)."""

    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(primary_key=True)  # conv_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    api_key_id: Mapped[str | None]  # whose it is, as for stored responses
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")  # `metadata` is the declarative base's
    # While a Responses turn runs in it: the turn's lease (gateway/conversation_lease.py), renewed as it
    # runs, so a replica that dies mid-turn holds the conversation no longer than one lease.
    lock_token: Mapped[str | None]
    locked_until: Mapped[datetime | None]


class ConversationItem(Base):
    """One item of a conversation, in the order `seq` gives. Keyed by (conversation, item id), so a write
    retried after an outage lands once; `seq` is the writing replica's clock in microseconds x 1000 plus
    the item's place in its batch, so items keep their order whichever write lands first."""

    __tablename__ = "conversation_items"
    __table_args__ = (Index("ix_conversation_items_conversation_id_seq", "conversation_id", "seq"),)

    conversation_id: Mapped[str] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(primary_key=True)  # msg_..., fc_..., fco_...
    seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    item: Mapped[Any]  # the Responses item, as stored input (a message's content may be a string)


class StoredChatCompletion(Base):
    """A chat completion asked to be stored (`store: true`, gateway/stored_completions.py): the answer, the
    messages that asked for it, and the request's settings, for distillation and evaluations."""

    __tablename__ = "chat_completions"
    __table_args__ = (Index("ix_chat_completions_api_key_id_created_at", "api_key_id", "created_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # chatcmpl-...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    api_key_id: Mapped[str | None]  # whose it is (None: the master key, or no keys)
    request_id: Mapped[str]  # the gateway's, as in the outcome row
    model: Mapped[str]  # the model that answered
    request_model: Mapped[str]  # what the request named (a route group, say)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    messages: Mapped[Any]  # the request's messages
    settings: Mapped[Any]  # the request's other fields (temperature, tools, ...), as sent
    completion: Mapped[Any]  # the ChatCompletion as the client got it
