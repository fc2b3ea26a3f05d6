"""Every exception class of ours, its base, and what the caller must do about it.

The classes live beside the code that raises them (a connector's beside the connector, the
buffer's in `buffer.base`), as the dependency rule wants; this docstring draws them as one tree,
like httpx's `_exceptions.py`. It imports nothing: importing every connector here would load
their client libraries (aiohttp, asyncpg), which the agent loads only for a configured source.
`tests/unit/test_errors.py` fails when a public exception class of ours is missing below.

What the caller must do (STYLE.md, habit 2):

- **transient**: retry with capped backoff; log the state change once, not every attempt.
- **config**: stop this component (the agent, at start or reload; one source, at run time),
  report it saying which key and what to do, keep the others running.
- **poison**: this one record or message can never go through as it is: set it aside with the
  reason (a dead letter, a rejected file, a refused request) and go on with the next.
- **bug**: nothing to handle; let it crash loudly (a connector's is logged with its traceback
  and retried, so one bad connector does not stop the agent).
- **answer**: a refusal to tell someone (a requester, the user at a terminal): say why and
  carry on.

::

    Exception
    ├── ConnectorError               connectors.base: base of what a connector raises on purpose
    │   ├── SourceUnavailable        transient: the runtime retries the source with backoff
    │   └── SourceConfigError        config: the runtime stops this source only, reports it
    ├── BufferFailure                buffer.base: base of the buffer's errors
    │   ├── BufferCorrupt            config: not a usable buffer file; the agent refuses to start
    │   ├── BufferLocked             config: another process holds the state dir; refuse, name it
    │   └── BufferUnavailable        transient: nothing changed (disk full, I/O, busy); retry
    │       ├── BufferFull           transient: no room; hold the records, pause the sources
    │       └── DiskFull             transient: SQLITE_FULL (buffer.sqlite.statements)
    ├── ConfigError                  config: config.loader; every problem as FILE:LINE: KEY
    ├── CredentialError              config: agent.credentials; a secret, key or cert unusable
    ├── MqttSessionError             agent.mqtt_session: base of the session's errors
    │   ├── NotConnected             transient: the link is down; keep the data, wait_connected()
    │   ├── ConnectionLost           transient: dropped before the PUBACK; re-send
    │   │   └── PubAckTimeout        transient: no PUBACK within puback_timeout_s; re-send
    │   ├── PacketTooLarge           poison: over the broker's maximum packet size (ValueError)
    │   ├── V5Only                   bug: an MQTT v5 property asked for on a 3.1.1 connection
    │   │                            (ValueError); nothing was sent
    │   └── SubscribeRefused         config: the broker refuses the subscription (SUBACK)
    ├── Refused                      answer: agent.signing; a request not executed (reason code)
    ├── StatusUnreadable             answer: agent.status_file; status.json cannot be read
    ├── HubToolFailure               answer: agent.cli.hub; a hub tool prints it, exits 1
    ├── DemoHubError                 answer: agent.demo.hub; the demo's hub cannot start (no
    │                                PostgreSQL, say): printed, exit 1
    ├── HubStartError                config: hub.run; a file the hub's config names is unusable
    │                                (key, password, CA, the dashboard's port): exit 2
    ├── StoreUnavailable             transient: hub.store; PostgreSQL failed a batch (nothing
    │                                of it committed, nothing acknowledged): retry with backoff
    ├── NoHistory                    answer: connectors.opcua.history; no backfill for the node
    ├── UntrustedCertificate         transient: connectors.opcua.trust; raised on as
    │                                SourceUnavailable, retried until the server is trusted
    ├── NotRegularFile               poison: connectors.mes_files.entries; the entry is refused
    ├── ValueError
    │   ├── UnmappableReading        poison: agent.mapping; the reading is set aside
    │   ├── ReplayStopped            transient: agent.replay; the link went down (`sent` so far)
    │   ├── CredentialUnavailable    config: connectors.credentials; wrapped as CredentialError
    │   │                            (hub) or SourceConfigError (a connector)
    │   ├── RowError                 poison: connectors.records; one record, its column named
    │   ├── FileUnreadable           poison: connectors.mes_files.records; the file set aside
    │   ├── CsvTableError            config: config.masterdata; a lookup file, reported by the
    │   │                            loader as a config problem
    │   ├── SchemaError              answer: events.compat; a published schema `schema check`
    │   │                            cannot read (the file and where in it; exit 2)
    │   ├── NotConvertible           poison: events.versions; an event the retired version
    │   │                            cannot say: no dual-published copy, counted in status
    │   ├── UnitError                config: config.units; reported by the loader
    │   ├── UcumError                config: config.ucum; text that is no UCUM expression (what
    │   │                            is wrong where), reported as a UnitError
    │   ├── ReplyFieldError          answer: agent.link.mqtt311; a 3.1.1 request's
    │   │                            response_topic or correlation_data unusable: refused
    │   └── LeanPathError            transient: connectors.opcua.fast_publish; never escapes it:
    │                                asyncua's generic decoder reads that response instead
    ├── LookupError
    │   └── AddressNotFound          config: connectors.opcua.addressing; that signal only fails,
    │                                the others run (health names it)
    └── FileExistsError
        └── CertificateExists        answer: connectors.opcua.certificates; never overwritten

Rules that hold for all of them: library errors are wrapped at the boundary with
`raise ... from error`, so the cause is kept; a message says what is wrong and what to do, in
the config's own terms, and never carries a secret or a payload. Classes whose name starts with
`_` are a module's private control flow and never leave it; they are not drawn here.
"""
