"""SQLAlchemy 2 typed models: outcomes, feedback, API keys and their teams, stored Responses, conversations,
files, batches, vector stores, video jobs, webhooks and the admin audit log, one module a concept. Portable across
SQLite and PostgreSQL. Importing the package registers every table on `Base.metadata` (Alembic's storage/migrations/env.py reads it)."""

from storage.models.audit import AuditLog
from storage.models.base import JSON_DOC, NAMING_CONVENTION, Base, UTCDateTime, new_id, utc_now
from storage.models.files import (
    Batch,
    BatchRecord,
    StoredFile,
    VectorStore,
    VectorStoreChunk,
    VectorStoreFile,
)
from storage.models.keys import ApiKey
from storage.models.outcomes import Feedback, Outcome, UsageRollup
from storage.models.responses import Conversation, ConversationItem, StoredChatCompletion, StoredResponse
from storage.models.teams import Team
from storage.models.videos import VideoJob
from storage.models.webhooks import WebhookDelivery, WebhookEndpoint

__all__ = [
    "ApiKey",
    "AuditLog",
    "Base",
    "Batch",
    "BatchRecord",
    "Conversation",
    "ConversationItem",
    "Feedback",
    "JSON_DOC",
    "NAMING_CONVENTION",
    "Outcome",
    "StoredChatCompletion",
    "StoredFile",
    "StoredResponse",
    "Team",
    "UTCDateTime",
    "UsageRollup",
    "VectorStore",
    "VectorStoreChunk",
    "VectorStoreFile",
    "VideoJob",
    "WebhookDelivery",
    "WebhookEndpoint",
    "new_id",
    "utc_now",
]
