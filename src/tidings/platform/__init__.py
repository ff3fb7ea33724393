"""The sending side: conversations, webhook configurations, the outbox and
the dispatcher that delivers every event to every subscriber."""
