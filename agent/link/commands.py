"""Remote commands over MQTT v5 request/response: `{prefix}/{site}/{agent}/cmd/{command}`.

Why one module of ~890 lines: every command's handler is here beside the one bounded queue
and worker that run them and the parse boundary and reply-topic guard they all pass through,
so what an unsigned or hostile request can reach is visible in one file.

A requester publishes a JSON object to the command topic with the MQTT v5 Response Topic (and
usually Correlation Data) properties set (over MQTT 3.1.1, which has no properties: the JSON
fields ``response_topic`` and ``correlation_data``, base64, repeated in the answer's JSON;
`agent.link.mqtt311`); the answer goes to that Response Topic, with the same
Correlation Data, as JSON: ``{"ok": true, "command", "agent", "at", "result"}`` or ``{"ok":
false, "command", "agent", "at", "error": {"reason", "message"}}``.

Commands: read-only ``status`` (full detail), ``sources``, ``buffer``, ``config`` (secrets
redacted), ``ping``, ``dead-letters`` (a page: offset, limit); mutating ``replay`` (since,
until, types; or a seq range: first_seq, last_seq), ``retry`` (dead letters by seqs, by ids,
or all up to a limit), ``reload``, ``pause`` and ``resume`` (source). Mutating requests must
be signed (`agent.link.signing`) by a key the config allows for that command; read-only ones
may come unsigned if ``allow_unsigned_read_only``.

Invariants
----------
- Nothing a requester sends can crash the agent or starve forwarding. `offer` (the session's
  message callback, on the loop) does O(1) work: it checks the size, then puts the request on
  a bounded queue (``queue_size``); a full queue drops the request (reason ``overloaded``,
  counted, no answer: answering a flood would double it). One worker task takes requests at most
  ``rate_per_s`` per second (`agent.link.token_bucket`, ``burst``), so parsing, Ed25519
  verification and SQLite reads for commands take a bounded share of the loop.
- A payload over ``max_request_bytes`` is never kept: only the refusal is queued.
- Every refusal is answered (when the request has a Response Topic) with a reason code and a
  message saying what was wrong, counted per reason, and logged at most once per reason per
  minute. A request without a Response Topic is counted (``no_response_topic``) and not run.
- A response never goes to a topic with wildcards, to a `$` topic, or under any agent's
  events, status or command topics (`{prefix}/+/+/events|status|cmd`, compared with empty
  levels dropped: `response_topic_problem`). Such a request is counted and logged
  (``bad_response_topic``) and answered nowhere: there is no safe place to answer.
- `parse_request` is the parse boundary: any payload gives a bounded JSON object or
  ``malformed`` with a short reason (not UTF-8, not JSON, a number of more than 40 digits, NaN
  or infinity, nesting deeper than 32 levels); never a traceback.
- A command that raises is a bug: logged with its traceback, answered ``internal_error``; the
  worker goes on. Each command runs within ``_COMMAND_TIMEOUT_S``.
- Every answer fits the broker's Maximum Packet Size or says why not: ``status`` falls back to
  its reduced forms, ``dead-letters`` to shorter pages (``next_offset`` says where the next
  one starts, ``shortened`` that the page was cut to fit), anything else to a ``too_large``
  refusal. ``dead-letters`` and ``retry`` read at most ``MAX_DEAD_LETTER_SCAN`` dead letters
  per request, so neither can hold the loop for long however many there are.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from paho.mqtt.properties import Properties
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from agent.link.mqtt311 import (
    CORRELATION_FIELD,
    RESPONSE_TOPIC_FIELD,
    ReplyFieldError,
    encode_correlation,
    reply_in_payload,
)
from agent.link.mqtt_session import MqttSessionError, PacketTooLarge, PubAck
from agent.link.signing import Refused, RequestVerifier
from agent.link.status import (
    PRIORITY_NAMES,
    REDUCED_FORMS,
    buffer_status,
    config_fingerprint,
    reduced_status,
    snapshot,
    sources_status,
)
from agent.link.token_bucket import TokenBucket
from agent.service.reload_rules import reload_refusal
from buffer.base import DeadLetter
from config.commands import (
    MUTATING_COMMANDS,
    RAW_KEY_PREFIX,
    READ_ONLY_COMMANDS,
    CommandsSection,
    raw_public_key,
    read_public_key_file,
)
from config.loader import ConfigError, load_config
from config.schema import AgentConfig

if TYPE_CHECKING:
    from agent.view import AgentView, SourceView

CONTENT_TYPE = "application/json"
_COMMAND_TIMEOUT_S = 30.0
_LOG_EVERY_S = 60.0
_MAX_RESPONSE_TOPIC = 512
_MAX_NUMBER_DIGITS = 40  # a Unix time has 10; Python's int() would take 4,300 (slowly)
_MAX_NESTING = 32  # levels of arrays and objects in a request; commands need 3
# The level after `{prefix}/{site}/{agent}/` that starts a stream consumers decode.
_STREAM_LEVELS = frozenset({"events", "status", "cmd"})
# `response_topic`, `correlation_data`: a request over MQTT 3.1.1 (`agent.link.mqtt311`).
_REQUEST_FIELDS = frozenset(
    {"args", "ts", "nonce", "key_id", "sig", RESPONSE_TOPIC_FIELD, CORRELATION_FIELD}
)
_SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|private|credential", re.IGNORECASE)

_log = logging.getLogger(__name__)


# -- arguments of each command -------------------------------------------------------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(_Args):
    pass


EventTypeName = Annotated[str, Field(strict=True, pattern=r"^[a-z][a-z0-9_.]{0,63}$")]


# The most seqs one replay by seq range may name (the hub splits a larger gap).
MAX_REPLAY_SEQS = 1_000_000
SeqNumber = Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)]


class ReplayArgs(_Args):
    """Two forms: by time (`since`, `until`, `types`) or by seq range (`first_seq`,
    `last_seq`, both inclusive: the hub's gap healing), never both."""

    since: AwareDatetime | None = Field(
        default=None, description="replay events accepted at or after this time"
    )
    until: AwareDatetime | None = Field(default=None, description="... and before this time")
    types: Annotated[list[EventTypeName], Field(min_length=1, max_length=20)] | None = Field(
        default=None, description="event types, e.g. telemetry or telemetry.v1 (default: all)"
    )
    first_seq: SeqNumber | None = Field(default=None, description="replay seqs from this one")
    last_seq: SeqNumber | None = Field(default=None, description="... to this one (inclusive)")

    @model_validator(mode="after")
    def _one_form(self) -> ReplayArgs:
        by_seq = self.first_seq is not None or self.last_seq is not None
        if not by_seq:
            if self.since is None:
                raise ValueError("give since (a time range) or first_seq and last_seq")
            return self
        if self.first_seq is None or self.last_seq is None:
            raise ValueError("a replay by seq range needs both first_seq and last_seq")
        if self.since is not None or self.until is not None or self.types is not None:
            raise ValueError("first_seq/last_seq cannot be combined with since, until or types")
        if self.last_seq < self.first_seq:
            raise ValueError("last_seq must be at least first_seq")
        if self.last_seq - self.first_seq >= MAX_REPLAY_SEQS:
            raise ValueError(f"at most {MAX_REPLAY_SEQS} seqs per replay by seq range")
        return self


class SourceArgs(_Args):
    source: str = Field(strict=True, min_length=1, max_length=64)


# The most dead letters one `dead-letters` or `retry` request reads from the buffer (a page
# beyond it, or ids among later ones, are refused / not found: retry the first ones, then ask
# again), the most one page lists, and the most one `retry` names or moves.
MAX_DEAD_LETTER_SCAN = 10_000
MAX_DEAD_LETTER_PAGE = 200
MAX_RETRY = 1_000
_REASON_CHARS = 240  # a dead letter's reason as listed (the agent log has it in full)
EventId = Annotated[str, Field(strict=True, min_length=1, max_length=64)]


class DeadLettersArgs(_Args):
    offset: Annotated[int, Field(strict=True, ge=0)] = Field(
        default=0, description="skip this many (oldest first)"
    )
    limit: Annotated[int, Field(strict=True, ge=1, le=MAX_DEAD_LETTER_PAGE)] = Field(
        default=50, description="list at most this many"
    )

    @model_validator(mode="after")
    def _within_scan(self) -> DeadLettersArgs:
        if self.offset + self.limit > MAX_DEAD_LETTER_SCAN:
            raise ValueError(
                f"offset + limit may be at most {MAX_DEAD_LETTER_SCAN}: retry or drop the "
                "oldest dead letters to reach later ones"
            )
        return self


class RetryArgs(_Args):
    """Exactly one of `seqs`, `ids` or `all` (the oldest `limit` dead letters)."""

    seqs: Annotated[list[SeqNumber], Field(min_length=1, max_length=MAX_RETRY)] | None = None
    ids: Annotated[list[EventId], Field(min_length=1, max_length=MAX_RETRY)] | None = None
    all: bool = Field(default=False, strict=True, description="the oldest `limit` dead letters")
    limit: Annotated[int, Field(strict=True, ge=1, le=MAX_RETRY)] = Field(
        default=MAX_RETRY, description="with all: at most this many"
    )

    @model_validator(mode="after")
    def _one_form(self) -> RetryArgs:
        forms = [self.seqs is not None, self.ids is not None, self.all]
        if sum(forms) != 1:
            raise ValueError("give exactly one of seqs, ids or all = true")
        return self


# -- counters and the refusal log ------------------------------------------------------------


@dataclass(slots=True)
class CommandCounters:
    handled_total: collections.Counter[str] = field(default_factory=collections.Counter)
    refused_total: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "handled_total": dict(self.handled_total),
            "refused_total": dict(self.refused_total),
        }


class _RefusalLog:
    """Logs a refusal reason at most once per minute, with how many were not logged."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: collections.Counter[str] = collections.Counter()

    def note(self, reason: str, command: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < _LOG_EVERY_S:
            self._quiet[reason] += 1
            return
        self._last[reason] = now
        more = self._quiet.pop(reason, 0)
        suffix = f" ({more} more refused for this reason in the last minute)" if more else ""
        _log.warning("command %r refused (%s): %s%s", command[:64], reason, message, suffix)


@dataclass(frozen=True, slots=True)
class _Request:
    command: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    refused: Refused | None = None
    reply_in_payload: bool = False  # MQTT 3.1.1: reply fields in the JSON (agent.link.mqtt311)


# -- the server ------------------------------------------------------------------------------


class CommandServer:
    """Answers command requests for one agent; see the module docstring."""

    def __init__(
        self, agent: AgentView, settings: CommandsSection, verifier: RequestVerifier
    ) -> None:
        self._agent = agent
        self._settings = settings
        self._verifier = verifier
        self._root = agent.topic_root
        self.topic_filter = f"{self._root}/cmd/+"
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(settings.queue_size)
        self._bucket = TokenBucket(settings.rate_per_s, settings.burst)
        self._refusals = _RefusalLog()
        self.counters = CommandCounters()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "status": self._status,
            "sources": self._sources,
            "buffer": self._buffer,
            "config": self._config,
            "ping": self._ping,
            "dead-letters": self._dead_letters,
            "replay": self._replay,
            "retry": self._retry,
            "reload": self._reload,
            "pause": self._pause,
            "resume": self._resume,
        }

    def replace_settings(self, settings: CommandsSection, verifier: RequestVerifier) -> None:
        """Take new keys and limits after a reload (the queue keeps its size until restart)."""
        self._settings = settings
        self._verifier = verifier
        self._bucket = TokenBucket(settings.rate_per_s, settings.burst)

    # -- intake: the session's on_message callback, on the loop; O(1) ----------------------

    def offer(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        prefix = f"{self._root}/cmd/"
        if not topic.startswith(prefix):
            return
        command = topic[len(prefix):]
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        request = _Request(
            command=command,
            payload=payload,
            response_topic=response_topic if isinstance(response_topic, str) else None,
            correlation_data=bytes(correlation) if correlation is not None else None,
        )
        if len(payload) > self._settings.max_request_bytes:
            request = _Request(
                command, b"", request.response_topic, request.correlation_data,
                Refused(
                    "too_large",
                    f"request is {len(payload)} bytes; the limit is "
                    f"{self._settings.max_request_bytes} bytes",
                ),
            )
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            self._count_refusal(
                command, Refused("overloaded", "command queue full; request dropped unanswered")
            )

    # -- the worker -----------------------------------------------------------------------

    async def run(self) -> None:
        """Handle requests until cancelled, at most `rate_per_s` a second."""
        while True:
            request = await self._queue.get()
            await self._bucket.acquire()
            try:
                await self._handle(request)
            except Exception:  # a bug here must not stop the command server
                _log.exception("command %r: unexpected failure", request.command[:64])

    async def _handle(self, request: _Request) -> None:
        command = request.command
        if request.response_topic is None and request.refused is None:
            request = _reply_fields_from_payload(request)
        response_topic = request.response_topic
        if response_topic is None:
            self._count_refusal(
                command, Refused(
                    "no_response_topic", "request has no MQTT v5 Response Topic (nor, over "
                    f"MQTT 3.1.1, a {RESPONSE_TOPIC_FIELD!r} field)",
                )
            )
            return
        problem = self._response_topic_problem(response_topic)
        if problem is not None:
            self._count_refusal(command, Refused("bad_response_topic", problem))
            return
        try:
            if request.refused is not None:
                raise request.refused
            result = await self._execute(command, request.payload)
        except Refused as refused:
            self._count_refusal(command, refused)
            self._respond(request, {"ok": False, "error": {
                "reason": refused.reason, "message": refused.message}})
            return
        except Exception:
            _log.exception("command %r failed", command)
            self.counters.refused_total["internal_error"] += 1
            self._respond(request, {"ok": False, "error": {
                "reason": "internal_error", "message": "the command failed; see the agent log"}})
            return
        self.counters.handled_total[command] += 1
        self._respond(request, {"ok": True, "result": result})

    async def _execute(self, command: str, payload: bytes) -> Any:
        handler = self._handlers.get(command)
        if handler is None:
            known = ", ".join((*READ_ONLY_COMMANDS, *MUTATING_COMMANDS))
            raise Refused("unknown_command", f"unknown command {command[:64]!r}; known: {known}")
        request = parse_request(payload)
        signed = any(name in request for name in ("sig", "key_id", "nonce", "ts"))
        if command in MUTATING_COMMANDS or signed or not self._settings.allow_unsigned_read_only:
            key_id = self._verifier.verify(command, request)
            if command in MUTATING_COMMANDS:
                _log.info("command %s accepted, signed by key %r", command, key_id)
        args = request.get("args", {})
        try:
            async with asyncio.timeout(_COMMAND_TIMEOUT_S):
                return await handler(args)
        except TimeoutError as error:
            raise Refused(
                "timeout", f"{command} did not finish in {_COMMAND_TIMEOUT_S:g} s"
            ) from error

    def _response_topic_problem(self, topic: str) -> str | None:
        return response_topic_problem(topic, self._agent.config.hub.topic_prefix)

    def _respond(self, request: _Request, body: dict[str, Any]) -> None:
        assert request.response_topic is not None
        document = {
            "ok": body["ok"],
            "command": request.command[:64],
            "agent": f"{self._agent.config.agent.site}/{self._agent.config.agent.id}",
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **{key: value for key, value in body.items() if key != "ok"},
        }
        correlation = request.correlation_data
        if request.reply_in_payload or self._agent.session.mqtt311:
            if correlation is not None:
                document[CORRELATION_FIELD] = encode_correlation(correlation)
            correlation = None
        for answer in _answers_smallest_last(document, self._agent.topic_root):
            payload = json.dumps(answer, separators=(",", ":"), default=str).encode()
            try:
                future = self._agent.session.publish(
                    request.response_topic,
                    payload,
                    qos=1,
                    content_type=CONTENT_TYPE,
                    correlation_data=correlation,
                )
            except PacketTooLarge:
                continue  # the next, smaller answer
            except MqttSessionError as error:
                self.counters.refused_total["response_not_sent"] += 1
                _log.debug("response to %s not sent: %s", request.command[:64], error)
                return
            future.add_done_callback(_ignore_outcome)
            return
        self.counters.refused_total["response_not_sent"] += 1
        _log.debug("response to %s not sent: too large even as a refusal", request.command[:64])

    def _count_refusal(self, command: str, refused: Refused) -> None:
        self.counters.refused_total[refused.reason] += 1
        self._refusals.note(refused.reason, command, refused.message)

    # -- the commands ----------------------------------------------------------------------

    async def _status(self, args: dict[str, Any]) -> Any:
        _parse_args(NoArgs, args)
        return await snapshot(self._agent)

    async def _sources(self, args: dict[str, Any]) -> Any:
        _parse_args(NoArgs, args)
        return sources_status(self._agent)

    async def _buffer(self, args: dict[str, Any]) -> Any:
        _parse_args(NoArgs, args)
        return await buffer_status(self._agent)

    async def _config(self, args: dict[str, Any]) -> Any:
        _parse_args(NoArgs, args)
        return redacted(self._agent.config.model_dump(mode="json"))

    async def _ping(self, args: dict[str, Any]) -> Any:
        _parse_args(NoArgs, args)
        return {"pong": True, "uptime_s": round(time.time() - self._agent.started_at, 1)}

    async def _replay(self, args: dict[str, Any]) -> Any:
        parsed = _parse_args(ReplayArgs, args)
        if parsed.first_seq is not None and parsed.last_seq is not None:
            return await self._replay_seqs(parsed.first_seq, parsed.last_seq)
        assert parsed.since is not None  # ReplayArgs: one form or the other
        until = parsed.until or datetime.now(UTC)
        if until <= parsed.since:
            raise Refused("bad_args", "args.until must be after args.since")
        try:
            replayed = await self._agent.replay(
                since=parsed.since.timestamp(),
                until=until.timestamp(),
                types=tuple(parsed.types) if parsed.types else None,
            )
        except ValueError as error:
            raise Refused("bad_args", str(error)) from error
        return {"replayed": replayed, "since": parsed.since.isoformat(),
                "until": until.isoformat(), "types": parsed.types}

    async def _replay_seqs(self, first: int, last: int) -> Any:
        """Replay by seq range: what was sent, and what of the range the buffer holds
        otherwise (`Buffer.holdings`: pending, dead letters, gone, not accepted), so the hub
        can record exactly what it will never get."""
        try:
            return await self._agent.replay_seqs(first, last)
        except ValueError as error:
            raise Refused("bad_args", str(error)) from error

    async def _dead_letters(self, args: dict[str, Any]) -> Any:
        """One page of the dead letters, oldest first (bodies left out, reasons shortened)."""
        parsed = _parse_args(DeadLettersArgs, args)
        end = parsed.offset + parsed.limit
        letters = await self._agent.buffer.dead_letters(end + 1)
        total = (await self._agent.buffer.stats()).dead_letters
        page = letters[parsed.offset:end]
        more = len(letters) > end
        return {
            "total": total,
            "offset": parsed.offset,
            "letters": [dead_letter_entry(letter) for letter in page],
            "next_offset": end if more else None,
        }

    async def _retry(self, args: dict[str, Any]) -> Any:
        """Dead letters back in the queue, forwarded while the agent runs (`AgentView.
        retry_dead_letters`). Records set aside before they were accepted (no seq: a reading
        or MES record the pipeline could not take) are never retried: they are named
        `not_retryable`. Seqs or ids not among the oldest `MAX_DEAD_LETTER_SCAN` dead letters
        are named `not_found` (at most 20 of each list are named; `..._total` counts them)."""
        parsed = _parse_args(RetryArgs, args)
        letters = await self._agent.buffer.dead_letters(
            parsed.limit if parsed.all else MAX_DEAD_LETTER_SCAN
        )
        not_retryable: list[str] = []
        not_found: list[str | int] = []
        seqs: list[int] = []
        if parsed.all:
            seqs = [letter.seq for letter in letters if letter.seq is not None]
            not_retryable = [letter.id for letter in letters if letter.seq is None]
        elif parsed.seqs is not None:
            held = {letter.seq for letter in letters}
            for seq in sorted(set(parsed.seqs)):
                (seqs if seq in held else not_found).append(seq)
        else:
            assert parsed.ids is not None  # RetryArgs: exactly one form
            by_id = {letter.id: letter for letter in letters}
            for wanted in dict.fromkeys(parsed.ids):
                letter = by_id.get(wanted)
                if letter is None:
                    not_found.append(wanted)
                elif letter.seq is None:
                    not_retryable.append(wanted)
                else:
                    seqs.append(letter.seq)
        moved, dropped = (0, 0)
        if seqs:
            moved, dropped = await self._agent.retry_dead_letters(seqs)
        remaining = (await self._agent.buffer.stats()).dead_letters
        if moved:
            _log.info("%d dead letter(s) queued again remotely", moved)
        return {
            "retried": moved,
            "dropped": dropped,  # their id was accepted again since: already delivered or due
            "not_retryable": not_retryable[:20],
            "not_retryable_total": len(not_retryable),
            "not_found": not_found[:20],
            "not_found_total": len(not_found),
            "dead_letters_left": remaining,
        }

    async def _reload(self, args: dict[str, Any]) -> Any:
        _parse_args(NoArgs, args)
        outcome = await self._agent.request_reload()
        if not outcome.ok:
            raise Refused("invalid_config", outcome.message)
        return {"reloaded": True, "message": outcome.message,
                "config_fingerprint": self._agent.config_fingerprint}

    async def _pause(self, args: dict[str, Any]) -> Any:
        parsed = _parse_args(SourceArgs, args)
        runner = self._runner(parsed.source)
        changed = await runner.pause()
        self._agent.status.changed()
        return {"source": parsed.source, "state": runner.state, "changed": changed}

    async def _resume(self, args: dict[str, Any]) -> Any:
        parsed = _parse_args(SourceArgs, args)
        runner = self._runner(parsed.source)
        changed = runner.resume()
        self._agent.status.changed()
        return {"source": parsed.source, "state": runner.state, "changed": changed}

    def _runner(self, name: str) -> SourceView:
        for runner in self._agent.sources:
            if runner.connector.name == name:
                return runner
        names = ", ".join(runner.connector.name for runner in self._agent.sources)
        raise Refused("bad_args", f"no source {name!r}; sources: {names}")


def dead_letter_entry(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as `dead-letters` lists it: times in RFC 3339, reason shortened."""
    reason = letter.reason
    if len(reason) > _REASON_CHARS:
        reason = reason[: _REASON_CHARS - 3] + "..."
    return {
        "seq": letter.seq,
        "id": letter.id,
        "type": letter.kind,
        "class": PRIORITY_NAMES.get(letter.priority, str(letter.priority)),
        "bytes": letter.size,
        "accepted_at": _iso_time(letter.accepted_at),
        "dead_at": _iso_time(letter.dead_at),
        "reason": reason,
        "retryable": letter.seq is not None,
    }


def _iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def response_topic_problem(topic: str, topic_prefix: str) -> str | None:
    """Why an answer must not go to `topic`, or None if it may.

    An answer may go only where it cannot land in a stream that consumers decode: never on a
    topic with wildcards, NUL or a `$` level, and never on any agent's events (and below),
    status (and below) or command topics under `topic_prefix`. The topic is compared as a
    subscriber filter would see it, with empty levels dropped (`{root}//events/x` and
    `{root}/events/` are refused like `{root}/events/x`) and case kept (MQTT compares exactly).
    """
    if not topic or len(topic) > _MAX_RESPONSE_TOPIC:
        return f"response topic must be 1 to {_MAX_RESPONSE_TOPIC} characters"
    if "+" in topic or "#" in topic or "\x00" in topic:
        return "response topic must not hold wildcards (+, #) or NUL"
    levels = [level for level in topic.split("/") if level]
    if not levels or topic.startswith("$") or levels[0].startswith("$"):
        return "response topic must not start with $ or be only slashes"
    prefix = topic_prefix.split("/")
    under_prefix = levels[: len(prefix)] == prefix
    stream = len(levels) > len(prefix) + 2 and levels[len(prefix) + 2] in _STREAM_LEVELS
    if under_prefix and stream:
        return (
            f"response topic must not be under an agent's events, status or cmd topics "
            f"({topic_prefix}/+/+/events, .../status, .../cmd)"
        )
    return None


def _reply_fields_from_payload(request: _Request) -> _Request:
    """A request without a Response Topic property (MQTT 3.1.1): its reply fields from the
    JSON (`agent.link.mqtt311`); unchanged when it has none or is not a usable request (the
    refusal then has nowhere to go)."""
    try:
        topic, correlation = reply_in_payload(parse_request(request.payload))
    except (Refused, ReplyFieldError):
        return request
    if topic is None:
        return request
    return dataclasses.replace(
        request, response_topic=topic, correlation_data=correlation, reply_in_payload=True
    )


def parse_request(payload: bytes) -> dict[str, Any]:
    """The request object; an empty payload is `{}`. Refused("malformed") says what is wrong.

    This is the parse boundary: whatever the bytes, it returns a plain JSON object of bounded
    shape (no number over `_MAX_NUMBER_DIGITS` digits, no NaN or infinity, at most
    `_MAX_NESTING` levels of arrays and objects) or raises `Refused`, never anything else.
    """
    if not payload.strip():
        return {}
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Refused(
            "malformed", f"payload is not UTF-8 JSON (invalid byte at offset {error.start})"
        ) from error
    try:
        document = json.loads(
            text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
        )
    except json.JSONDecodeError as error:
        raise Refused(
            "malformed",
            f"payload is not JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from error
    except RecursionError as error:
        raise Refused("malformed", "payload JSON is nested too deeply") from error
    except ValueError as error:  # no other ValueError is expected; never a traceback per request
        raise Refused("malformed", f"payload is not usable JSON: {str(error)[:80]}") from error
    _check_nesting(document)
    if not isinstance(document, dict):
        raise Refused(
            "malformed", f"payload must be a JSON object, got {_json_type(document)}"
        )
    unknown = sorted(set(document) - _REQUEST_FIELDS)
    if unknown:
        raise Refused(
            "malformed",
            f"unknown field(s) {', '.join(repr(name)[:40] for name in unknown[:5])}; "
            f"a request may hold {', '.join(sorted(_REQUEST_FIELDS))}",
        )
    args = document.get("args", {})
    if not isinstance(args, dict):
        raise Refused("malformed", f"args must be a JSON object, got {_json_type(args)}")
    return document


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_NUMBER_DIGITS:
        raise Refused(
            "malformed",
            f"a number in the payload has {len(text.lstrip('-'))} digits; at most "
            f"{_MAX_NUMBER_DIGITS} are accepted",
        )
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Refused("malformed", f"a number in the payload is too large ({text[:20]}...)")
    return value


def _no_constant(text: str) -> float:
    raise Refused("malformed", f"{text} is not a JSON number")


def _check_nesting(document: Any) -> None:
    """Refuse arrays and objects nested deeper than `_MAX_NESTING` (iteratively: the check
    itself must not recurse)."""
    pending: list[tuple[dict[str, Any] | list[Any], int]] = []
    if isinstance(document, dict | list):
        pending.append((document, 1))
    while pending:
        container, depth = pending.pop()
        if depth > _MAX_NESTING:
            raise Refused(
                "malformed", f"payload JSON is nested more than {_MAX_NESTING} levels deep"
            )
        children = container.values() if isinstance(container, dict) else container
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


_ArgsModel = TypeVar("_ArgsModel", bound=BaseModel)


def _parse_args(model: type[_ArgsModel], args: dict[str, Any]) -> _ArgsModel:
    try:
        return model.model_validate(args)
    except ValidationError as error:
        problems = []
        for detail in error.errors()[:5]:
            where = ".".join(str(part) for part in ("args", *detail["loc"]))
            problems.append(f"{where}: {detail['msg']}")
        raise Refused("bad_args", "; ".join(problems)) from error


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def redacted(value: Any, key: str = "") -> Any:
    """`value` with every secret-looking key's value replaced (passwords, tokens, ...)."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) and v is not None else redacted(v, k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(item, key) for item in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, _, rest = value.partition("://")
        userinfo, _, host = rest.rpartition("@")
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}" if userinfo else value
    return value


def _ignore_outcome(future: asyncio.Future[PubAck]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a lost response is the requester's timeout


# -- wiring the mutating commands to the runtime ---------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    ok: bool
    message: str


def build_verifier(config: AgentConfig) -> RequestVerifier:
    """The request verifier for `config`; a key file that cannot be read now (it was checked
    when the config was loaded) is logged and left out, so requests signed with it are refused."""
    settings = config.commands
    keys: dict[str, bytes] = {}
    for name, spec in settings.keys.items():
        try:
            if spec.startswith(RAW_KEY_PREFIX):
                keys[name] = raw_public_key(spec, name)
            else:
                keys[name] = read_public_key_file(Path(spec), name)
        except ValueError as error:
            _log.error("commands.keys.%s unusable: %s; requests signed with it are refused",
                       name, error)
    return RequestVerifier(
        keys=keys,
        allow={command: set(names) for command, names in settings.allow.items()},
        target=f"{config.agent.site}/{config.agent.id}",
        max_skew_s=settings.max_skew_s,
        nonce_cache_size=settings.nonce_cache_size,
    )


async def reload_config(agent: AgentView) -> ReloadOutcome:
    """Re-read and validate the config file. An invalid file is refused and the running config
    kept. A valid one is handed to `agent.reload_hook` (the process's reload path, the one
    SIGHUP takes: it restarts the pipeline with the new config after this answer went out).

    Without a hook (an `Agent` run on its own): `[commands]` (keys, allow lists, limits) is
    applied in place; the site, agent id and topic prefix cannot change without a restart; any
    other section that changed is named as needing a restart."""
    path = agent.config_path
    if path is None:
        return ReloadOutcome(False, "the agent was started without a config file path")
    try:
        new = await asyncio.to_thread(load_config, path)
    except ConfigError as error:
        problems = "; ".join(problem.format() for problem in error.problems[:10])
        _log.warning("reload refused, running config kept: %s", problems)
        return ReloadOutcome(False, f"invalid config, running config kept: {problems}")
    if agent.reload_hook is not None:
        # What the reload path would refuse (agent.service), refused here, so the answer
        # never says "reloading" for a config that will not be applied.
        refusal = reload_refusal(agent.config, new)
        if refusal is not None:
            return ReloadOutcome(False, refusal)
        # After this step: the answer is handed to paho (in the same step, see `_handle`)
        # before the reload can stop this generation's hub session.
        asyncio.get_running_loop().call_soon(agent.reload_hook)
        _log.info("reload requested remotely: %s is valid, reloading", path)
        return ReloadOutcome(True, "config valid; reloading (sources and hub session restart)")
    old = agent.config
    if (new.agent.site, new.agent.id, new.hub.topic_prefix) != (
        old.agent.site, old.agent.id, old.hub.topic_prefix
    ):
        return ReloadOutcome(
            False, "agent.site, agent.id and hub.topic_prefix cannot change on reload; restart"
        )
    changed = [name for name in type(old).model_fields if getattr(new, name) != getattr(old, name)]
    if "commands" in changed:
        agent.commands.replace_settings(new.commands, build_verifier(new))
        agent.config = old.model_copy(update={"commands": new.commands})
        agent.config_fingerprint = config_fingerprint(agent.config)
        agent.status.changed()
    restart = [name for name in changed if name != "commands"]
    parts = ["applied: commands" if "commands" in changed else "no change to apply"]
    if restart:
        parts.append(f"changed, needs a restart to apply: {', '.join(restart)}")
    message = "; ".join(parts)
    _log.info("config reloaded from %s: %s", path, message)
    return ReloadOutcome(True, message)


def _answers_smallest_last(document: dict[str, Any], topic_root: str) -> Iterator[dict[str, Any]]:
    """The answer, then smaller ones for a broker whose Maximum Packet Size it exceeds: a
    `status` result in its reduced forms (`agent.link.status.reduced_status`), and last a refusal
    that says why and what to ask for instead."""
    yield document
    result = document.get("result")
    if document.get("ok") and document.get("command") == "status" and isinstance(result, dict):
        for form in REDUCED_FORMS:
            reduced = reduced_status(result, form, details=f"{topic_root}/cmd/sources")
            yield {**document, "result": reduced}
    if document.get("ok") and document.get("command") == "dead-letters" and isinstance(
        result, dict
    ):
        letters: list[Any] = result["letters"]
        size = len(letters) // 2
        while size >= 1:  # shorter pages: the next one starts where this one ends
            yield {**document, "result": {
                **result, "letters": letters[:size], "shortened": True,
                "next_offset": result["offset"] + size,
            }}
            size //= 2
    yield {
        key: document[key] for key in ("command", "agent", "at") if key in document
    } | {
        "ok": False,
        "error": {
            "reason": "too_large",
            "message": "the answer exceeds the broker's maximum packet size; ask for "
            "'sources' or 'buffer' on their own (or a smaller page)",
        },
    }
