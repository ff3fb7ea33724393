"""The platform's tables: tenants, conversations, webhook configurations and
the delivery log (events, deliveries, attempts).

Times that the dispatcher compares on its hot path (``next_attempt_at``,
heartbeats) are float epoch seconds: cheap to compare and identical on both
engines. Times that people read are aware UTC datetimes.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from tidings.store.metadata import metadata
from tidings.store.types import Id, UTCDateTime


organizations = Table(
    "organizations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Only a hash is kept; the key itself is shown once, when it is created.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # "org" or "provider"
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=True),  # null for a provider key
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # The key's first characters, to tell keys apart in a list (null for keys made before it was kept).
    Column("key_prefix", String(16), nullable=True),
    # Updated at most once a minute per key, not on every request.
    Column("last_used_at", UTCDateTime, nullable=True),
    # A revoked key opens nothing; its row stays for the record.
    Column("revoked_at", UTCDateTime, nullable=True),
)

# The dashboard's sign-ins: the cookie holds a random id, the table only its
# SHA-256; revoking the key or signing out ends the session.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("api_key_id", Id, ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", Float, nullable=False),
)

provider_organizations = Table(
    "provider_organizations",
    metadata,
    Column("api_key_id", Id, ForeignKey("api_keys.id"), primary_key=True),
    Column("org_id", Id, ForeignKey("organizations.id"), primary_key=True),
)

businesses = Table(
    "businesses",
    metadata,
    Column("id", String(24), primary_key=True),  # 24 hexadecimal characters
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("city", String(200), nullable=False, server_default=""),
    Column("zipcode", String(32), nullable=False, server_default=""),
    Column("country", String(64), nullable=False, server_default=""),
    Column("formatted_address", String(500), nullable=False, server_default=""),
)

custom_channels = Table(
    "custom_channels",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("icon", String(2000), nullable=False, server_default=""),
    Column("is_readonly", Boolean, nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False),
    Column("business_id", String(24), ForeignKey("businesses.id"), nullable=False),
    Column("messaging_partner", String(64), nullable=False),
    Column("custom_channel_id", String(24), ForeignKey("custom_channels.id"), nullable=True),
    Column("external_conversation_id", String(500), nullable=True),
    Column("consumer_name", String(500), nullable=True),
    Column("consumer_img", String(2000), nullable=True),
    Column("consumer_phone_number", String(32), nullable=True),
    Column("consumer_email", String(320), nullable=True),
    Column("is_read", Boolean, nullable=False, server_default=text("false")),
    Column("status", String(32), nullable=False),
    Column("issues", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("first_message_date", UTCDateTime, nullable=True),
    Column("has_one_user_message", Boolean, nullable=False, server_default=text("false")),
    Column("is_expired", Boolean, nullable=False, server_default=text("false")),
    Column("is_solved", Boolean, nullable=False, server_default=text("false")),
    Column("is_automated", Boolean, nullable=False, server_default=text("false")),
    Column("assigned_user_id", String(24), nullable=True),
    Column("last_message_id", Id, nullable=True),
    UniqueConstraint("custom_channel_id", "external_conversation_id", name="uq_conversations_external"),
    Index("ix_conversations_org_id_id", "org_id", "id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("conversation_id", Id, ForeignKey("conversations.id"), nullable=False),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False),
    Column("date", UTCDateTime, nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("sender_type", String(64), nullable=False),
    Column("sender_label", String(500), nullable=False),
    Column("status", String(32), nullable=False),
    Column("is_deleted", Boolean, nullable=False, server_default=text("false")),
    Column("is_automated", Boolean, nullable=False, server_default=text("false")),
    Column("content", Text, nullable=False),
    Column("user_id", String(24), nullable=True),
    Column("custom_channel_id", String(24), ForeignKey("custom_channels.id"), nullable=True),
    Column("external_message_id", String(500), nullable=True),
    UniqueConstraint("custom_channel_id", "external_message_id", name="uq_messages_external"),
    Index("ix_messages_conversation_id_id", "conversation_id", "id"),
)

webhook_configs = Table(
    "webhook_configs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("custom_headers", JSON, nullable=False),
    Column("ordering", String(16), nullable=False, server_default="conversation"),
    # The HMAC secret (whsec_...); during a rotation the previous one keeps
    # signing until it expires.
    # Both are encrypted at rest (tidings.platform.secrets), hence the width.
    Column("secret", String(500), nullable=False),
    Column("previous_secret", String(500), nullable=True),
    Column("previous_secret_expires_at", Float, nullable=True),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("paused_reason", String(500), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Deleted, and kept only until none of its deliveries is being sent
    # (tidings.platform.deliveries.actions).
    Column("deleted_at", UTCDateTime, nullable=True),
    # One live configuration per organization and event type (CONTRACT.md section 3).
    Index("uq_webhook_configs_org_event", "org_id", "event_type", unique=True,
          postgresql_where=text("deleted_at IS NULL"), sqlite_where=text("deleted_at IS NULL")),
)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("conversation_id", Id, nullable=True),
    Column("message_id", Id, nullable=True),
    # Rendered once when the event is created; every attempt sends these bytes.
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_events_org_id_event_type_id", "org_id", "event_type", "id"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", Id, ForeignKey("events.id"), nullable=False),
    Column("webhook_config_id", Id, ForeignKey("webhook_configs.id"), nullable=False),
    Column("org_id", Id, ForeignKey("organizations.id"), nullable=False),
    # The Standard Webhooks id: random, so that it is unique across databases,
    # and the same on every attempt of this delivery.
    Column("webhook_id", String(40), nullable=False, unique=True),
    # The Ed25519 signature of the body, made once with the event.
    Column("signature", String(100), nullable=False),
    Column("conversation_id", Id, nullable=True),
    Column("sequence", Integer, nullable=True),  # within (configuration, conversation)
    # pending -> delivering -> delivered | failed; delivering -> pending (retry)
    Column("status", String(16), nullable=False),
    Column("attempt_count", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", Float, nullable=False),
    Column("worker_id", String(64), nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", String(1000), nullable=True),
    Column("is_tryout", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'"),
          sqlite_where=text("status = 'pending'")),
    Index("ix_deliveries_config_status_id", "webhook_config_id", "status", "id"),
    # Ordered delivery: a conversation's head and its next queued delivery are
    # index seeks, however many of its deliveries are already finished.
    Index("ix_deliveries_order", "webhook_config_id", "conversation_id", "status", "sequence"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("response_excerpt", String(2000), nullable=True),
    Column("error", String(1000), nullable=True),
    Column("request_headers", JSON, nullable=False),
    Column("worker_id", String(64), nullable=True),
)

# Workers prove they are alive; a delivery held by a worker whose heartbeat
# stopped is handed back (stalled work is found by heartbeat, not by age).
workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

delivery_sequences = Table(
    "delivery_sequences",
    metadata,
    Column("webhook_config_id", Id, ForeignKey("webhook_configs.id"), primary_key=True),
    Column("conversation_id", Id, primary_key=True),
    Column("last_sequence", Integer, nullable=False),
)
