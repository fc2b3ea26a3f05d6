"""The agent's own read-only web server (issue 20): Prometheus `/metrics` and the status page.

- `agent.web.server`: the aiohttp server, its auth and TLS, its lifecycle in the runtime;
- `agent.web.metrics`: the collector that reads the agent's counters at each scrape;
- `agent.web.page`: the status page (HTML and inline SVG, no JavaScript);
- `agent.web.history`: last values, state changes and the 24 h ring file behind the plots.

Configured by `[web]` (`config.observability`), off by default. It sees the agent only as an
`agent.view.AgentView`, like the status publisher and the command server.
"""

from agent.web.server import WebServer

__all__ = ["WebServer"]
