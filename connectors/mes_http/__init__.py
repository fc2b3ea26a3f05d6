"""An MES posts JSON events to an HTTP endpoint of the agent (webhook): each route's objects
become records. `config` holds the settings, `server` the HTTP layer (auth, limits, status
codes); the connector that maps payloads to readings sits on top of `server.WebhookServer`."""
