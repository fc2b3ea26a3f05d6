"""Runs a documented walkthrough: the `console` blocks of a Markdown page, command by command,
each output compared with the documented one (tests/e2e/test_commissioning_walkthrough.py runs
docs/commissioning.md with it).

The page's convention (the part between `<!-- walkthrough: begin -->` and `<!-- walkthrough:
end -->`):

- A ```console block holds commands (`$ COMMAND`) each followed by its output (stdout and
  stderr as a terminal shows them). A command ending in `# exit N` must exit with N, any other
  with 0. A command runs under `bash -c` in the walkthrough's working directory.
- An HTML comment on the line just above a block says more about it:
  `<!-- walkthrough: write FILE -->` / `append FILE` before any block: its text is written to /
  appended to FILE (as the operator's editor would);
  `background`: the block's one command keeps running; its documented lines are waited for
  (any order, bounded); a later console block starting with `^C` sends it SIGINT and holds
  the lines it prints from then on;
  `background until CONDITION`: the walkthrough goes on once CONDITION (a check the caller
  names, e.g. "tail-subscribed") holds; the command ends by itself, and its exit code and
  output are checked at the next `<!-- walkthrough: wait -->` line;
  `retry`: each command is repeated (bounded) until its output matches: for a state the
  agent reaches a moment later (a status snapshot, a fleet line);
  `any-order`: the lines may come in any order (events from several batches);
  `install`: the `apt install` step, which the caller runs or skips (`Walkthrough.install`).
- Placeholders: the page shows fixed ports, paths and host names (`Substitution`s map them to
  the test's own, forward in commands and back in outputs); times, dates, "N s ago", "seq=N"
  and "pid N" compare as placeholders; runs of spaces compare as two; a 40-hex thumbprint in
  an output is bound to the real one at the same place and replaced in later commands.

A mismatch fails with the page's file:line of the command and a diff. `regenerate=True` runs
the same steps and rewrites the page's outputs (and thumbprints, exit codes) with what the
commands really printed, mapped back through the substitutions.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

BEGIN, END = "<!-- walkthrough: begin -->", "<!-- walkthrough: end -->"
_MARKER = re.compile(r"^<!-- walkthrough: (?P<words>.+?) -->$")
_EXIT = re.compile(r"\s+# exit (?P<code>\d+)$")
_THUMBPRINT = re.compile(r"\b[0-9A-F]{40}\b")
_NORMALIZERS = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "<date>"),
    (re.compile(r"\b\d+(?:\.\d+)? s ago\b"), "<n> s ago"),
    (re.compile(r"\bseq=\d+"), "seq=<n>"),
    (re.compile(r"\bpid \d+"), "pid <n>"),
    (_THUMBPRINT, "<thumbprint>"),
    (re.compile(r" {2,}"), "  "),
)
COMMAND_TIMEOUT_S = 60.0
WAIT_S = 30.0


@dataclass
class Command:
    text: str  # without the `$ ` and the `# exit N`
    line: int  # 0-based index of its `$ ` line in the page
    exit_code: int
    output: list[str]  # documented
    output_start: int  # page lines [output_start, output_end) hold the output
    output_end: int
    any_order: bool = False


@dataclass
class Block:
    language: str
    options: list[str]
    start: int  # 0-based index of the fence line
    body: list[str]
    commands: list[Command] = field(default_factory=list)

    @property
    def interrupt(self) -> bool:
        return bool(self.body) and self.body[0] == "^C"


def parse(page: list[str]) -> list[Block]:
    """The walkthrough's blocks, in page order (the part between BEGIN and END)."""
    try:
        first, last = page.index(BEGIN), page.index(END)
    except ValueError as error:
        raise AssertionError(f"the page needs the lines {BEGIN!r} and {END!r}") from error
    blocks: list[Block] = []
    index = first
    while index < last:
        line = page[index]
        standalone = _MARKER.match(line)
        if standalone and not page[index + 1].startswith("```"):
            blocks.append(Block("", standalone.group("words").split(), index, []))
        if not line.startswith("```") or line == "```":
            index += 1
            continue
        language = line[3:].strip()
        close = page.index("```", index + 1)
        marker = _MARKER.match(page[index - 1])
        options = marker.group("words").split() if marker else []
        block = Block(language, options, index, page[index + 1 : close])
        if language == "console":
            block.commands = _commands(page, index + 1, close)
            for command in block.commands:
                command.any_order = "any-order" in options
        if language == "console" or options:
            blocks.append(block)
        index = close + 1
    return blocks


def _commands(page: list[str], start: int, end: int) -> list[Command]:
    commands: list[Command] = []
    for index in range(start, end):
        line = page[index]
        if line.startswith("$ "):
            if commands:
                commands[-1].output_end = index
            text = line[2:]
            code = _EXIT.search(text)
            commands.append(
                Command(
                    _EXIT.sub("", text),
                    index,
                    int(code.group("code")) if code else 0,
                    [],
                    index + 1,
                    end,
                )
            )
        elif commands:
            commands[-1].output.append(line)
    return commands


@dataclass(frozen=True)
class Substitution:
    """`shown` on the page is `real` in the test: a port, a path, a host name."""

    shown: str
    real: str


def _replace(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in sorted(pairs, key=lambda pair: -len(pair[0])):
        if old.isdigit():
            text = re.sub(rf"(?<!\d){old}(?!\d)", new, text)
        else:
            text = text.replace(old, new)
    return text


def normalize(line: str) -> str:
    for pattern, placeholder in _NORMALIZERS:
        line = pattern.sub(placeholder, line)
    return line.rstrip()


class WalkthroughMismatch(AssertionError):
    pass


class Walkthrough:
    """One run of a page's walkthrough in `workdir`, with `edge-agent` from `bin_dir`."""

    def __init__(
        self,
        page: Path,
        workdir: Path,
        bin_dir: Path,
        substitutions: list[Substitution],
        *,
        regenerate: bool = False,
        install: Callable[[Command], Awaitable[Path | None]] | None = None,
        conditions: dict[str, Callable[[], bool]] | None = None,
    ) -> None:
        self.page = page
        self.lines = page.read_text().splitlines()
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.substitutions = list(substitutions)
        self.regenerate = regenerate
        self.install = install
        self.conditions = dict(conditions or {})
        self.pending: list[_Background] = []  # `background until`: checked at `wait`
        self.thumbprints: dict[str, str] = {}  # shown -> real
        self.recent: list[str] = []  # real thumbprints in the order outputs showed them
        self.rewrites: list[tuple[int, int, list[str]]] = []  # regenerate: [start, end) -> lines
        self.background: list[_Background] = []
        self.ran = 0
        self.started = time.monotonic()

    # --- what the test sees -------------------------------------------------------------------

    async def run(self) -> None:
        try:
            for block in parse(self.lines):
                await self._block(block)
        finally:
            for process in self.background + self.pending:
                await process.kill()
            if self.regenerate:
                self._write_page()

    def _log(self, command: Command, code: int | None) -> None:
        """Progress, for `pytest -s` and a failure's captured output."""
        elapsed = time.monotonic() - self.started
        print(
            f"walkthrough {elapsed:5.1f} s  {self.where(command.line)}  exit {code}  "
            f"$ {command.text}",
            flush=True,
        )

    def where(self, line: int) -> str:
        return f"{self.page}:{line + 1}"

    # --- one block ----------------------------------------------------------------------------

    async def _block(self, block: Block) -> None:
        if block.options[:1] in (["write"], ["append"]):
            target = self.workdir / _replace(block.options[1], self._forward())
            text = _replace("\n".join(block.body) + "\n", self._forward())
            with target.open("a" if block.options[0] == "append" else "w") as file:
                file.write(text)
            return
        if "install" in block.options:
            if self.install is not None:
                for command in block.commands:
                    self.bin_dir = await self.install(command) or self.bin_dir
            return
        if block.options == ["wait"]:
            await self._wait(block)
            return
        if block.interrupt:
            await self._interrupt(block)
            return
        if "background" in block.options:
            if len(block.commands) != 1:
                raise AssertionError(
                    f"{self.where(block.start)}: a background block holds one command"
                )
            if block.options[1:2] == ["until"]:
                await self._start_pending(block.commands[0], block.options[2])
            else:
                await self._start_background(block.commands[0])
            return
        for command in block.commands:
            await self._foreground(command, retry="retry" in block.options)

    async def _foreground(self, command: Command, *, retry: bool) -> None:
        deadline = time.monotonic() + WAIT_S
        previous: list[str] | None = None
        while True:
            code, output = await self._execute(command)
            problem = self._compare(command, code, output)
            if problem is None or not retry or time.monotonic() > deadline:
                break
            settled = list(map(normalize, output))
            if self.regenerate and code == command.exit_code and settled == previous:
                break  # a new page: the state no longer changes
            previous = settled
            await asyncio.sleep(0.5)
        self._settle(command, code, output, problem)

    async def _execute(self, command: Command) -> tuple[int, list[str]]:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            self._forward_text(command),
            cwd=self.workdir,
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                out, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(
                f"{self.where(command.line)}: `{command.text}` did not end "
                f"within {COMMAND_TIMEOUT_S} s"
            ) from None
        self.ran += 1
        assert process.returncode is not None
        self._log(command, process.returncode)
        return process.returncode, self._back(out.decode()).splitlines()

    # --- background commands and ^C -----------------------------------------------------------

    async def _spawn(self, command: Command) -> _Background:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            f"exec {self._forward_text(command)}",
            cwd=self.workdir,
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.ran += 1
        self._log(command, None)
        return _Background(command, process)

    async def _start_pending(self, command: Command, condition: str) -> None:
        """Runs on its own (e.g. `tail --count N`) once `condition` holds; checked at `wait`."""
        running = await self._spawn(command)
        self.pending.append(running)
        ready = self.conditions[condition]
        deadline = time.monotonic() + WAIT_S
        while not ready():
            if time.monotonic() > deadline or running.process.returncode is not None:
                await running.kill()
                raise AssertionError(
                    f"{self.where(command.line)}: `{command.text}`: not {condition} within "
                    f"{WAIT_S} s" + _diff(command.output, self._back_lines(running.lines))
                )
            await asyncio.sleep(0.1)

    async def _wait(self, block: Block) -> None:
        """The `background until` commands end by themselves: wait, then compare."""
        while self.pending:
            running = self.pending.pop(0)
            command = running.command
            try:
                async with asyncio.timeout(WAIT_S):
                    await running.process.wait()
                    await running.reader
            except TimeoutError:
                await running.kill()
                raise AssertionError(
                    f"{self.where(command.line)}: `{command.text}` did not "
                    f"end within {WAIT_S} s (waited at {self.where(block.start)})"
                    + _diff(command.output, self._back_lines(running.lines))
                ) from None
            code = running.process.returncode
            assert code is not None
            output = self._back_lines(running.lines)
            self._settle(command, code, output, self._compare(command, code, output))

    async def _start_background(self, command: Command) -> None:
        running = await self._spawn(command)
        process = running.process
        self.background.append(running)
        wanted = Counter(normalize(line) for line in command.output)
        deadline = time.monotonic() + WAIT_S
        quiet_since, count = time.monotonic(), 0
        while time.monotonic() < deadline and process.returncode is None:
            seen = Counter(normalize(line) for line in self._back_lines(running.lines))
            if not wanted - seen and not self.regenerate:
                break
            if len(running.lines) != count:
                quiet_since, count = time.monotonic(), len(running.lines)
            elif self.regenerate and count and time.monotonic() - quiet_since > 3.0:
                break  # a new page: what it prints once it runs
            await asyncio.sleep(0.1)
        shown = self._back_lines(running.lines)
        running.shown = len(shown)
        problem = None
        if Counter(map(normalize, shown)) != wanted:
            problem = "its output (in any order) differs from the documented one" + _diff(
                sorted(command.output, key=normalize), sorted(shown, key=normalize)
            )
        if process.returncode is not None:
            problem = f"it ended (exit {process.returncode}) instead of running on" + (
                _diff(command.output, shown)
            )
        self._settle_lines(command, shown, problem)

    async def _interrupt(self, block: Block) -> None:
        if not self.background:
            raise AssertionError(
                f"{self.where(block.start)}: ^C but nothing runs in the background"
            )
        running = self.background.pop()
        if running.process.returncode is None:
            running.process.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(WAIT_S):
                await running.process.wait()
                await running.reader
        except TimeoutError:
            await running.kill()
            raise AssertionError(
                f"{self.where(block.start)}: `{running.command.text}` did not "
                f"stop within {WAIT_S} s of SIGINT"
            ) from None
        expected = block.body[1:]
        actual = self._back_lines(running.lines)[running.shown :]
        problem = None
        if running.process.returncode != 0:
            problem = f"it exited with {running.process.returncode} after SIGINT, not 0"
        elif list(map(normalize, actual)) != list(map(normalize, expected)):
            problem = "what it printed after SIGINT differs" + _diff(expected, actual)
        self._note(actual)
        if self.regenerate:
            self.rewrites.append((block.start + 2, block.start + 1 + len(block.body), actual))
        elif problem is not None:
            raise self._mismatch(block.start, f"`{running.command.text}` (^C)", problem)

    # --- comparing ----------------------------------------------------------------------------

    def _compare(self, command: Command, code: int, output: list[str]) -> str | None:
        if code != command.exit_code:
            return f"it exited with {code}, the page says {command.exit_code}" + _diff(
                command.output, output
            )
        if command.any_order:
            if sorted(map(normalize, output)) != sorted(map(normalize, command.output)):
                return "its output (in any order) differs from the documented one" + _diff(
                    sorted(command.output, key=normalize), sorted(output, key=normalize)
                )
        elif list(map(normalize, output)) != list(map(normalize, command.output)):
            return "its output differs from the documented one" + _diff(command.output, output)
        return None

    def _settle(self, command: Command, code: int, output: list[str], problem: str | None) -> None:
        if problem is None:
            self._bind(command.output, output, command)
        if self.regenerate:
            text = self._forward_thumbprints(command.text)
            self.rewrites.append(
                (
                    command.line,
                    command.line + 1,
                    [f"$ {text}" + (f"  # exit {code}" if code else "")],
                )
            )
            self._settle_lines(command, output, None)
        elif problem is not None:
            raise self._mismatch(command.line, f"`{command.text}`", problem)

    def _settle_lines(self, command: Command, output: list[str], problem: str | None) -> None:
        self._note(output)
        if self.regenerate:
            self._bind(command.output, output, command, strict=False)
            self.rewrites.append((command.output_start, command.output_end, output))
        elif problem is not None:
            raise self._mismatch(command.line, f"`{command.text}`", problem)
        else:
            self._bind(command.output, output, command)

    def _bind(
        self, shown: list[str], real: list[str], command: Command, *, strict: bool = True
    ) -> None:
        """Pair the thumbprints of matching lines: the page's -> the real one."""
        for shown_line, real_line in zip(shown, real, strict=False):
            pairs = zip(
                _THUMBPRINT.findall(shown_line), _THUMBPRINT.findall(real_line), strict=False
            )
            for old, new in pairs:
                if self.thumbprints.setdefault(old, new) != new and strict:
                    raise self._mismatch(
                        command.line,
                        f"`{command.text}`",
                        (
                            f"thumbprint {old} on the page stood for {self.thumbprints[old]} "
                            f"earlier, here for {new}"
                        ),
                    )
                if self.regenerate:
                    self.thumbprints[old] = new

    def _note(self, real: list[str]) -> None:
        """The real thumbprints, most recently shown last (for a new page's commands)."""
        for line in real:
            for found in _THUMBPRINT.findall(line):
                if found in self.recent:
                    self.recent.remove(found)
                self.recent.append(found)

    def _mismatch(self, line: int, what: str, problem: str) -> WalkthroughMismatch:
        return WalkthroughMismatch(
            f"{self.where(line)}: {what}: {problem}\n(times, dates, 'N s ago', seq=N, pid N, "
            "thumbprints and runs of spaces compare as placeholders; if the new output is right, "
            "regenerate the page: WALKTHROUGH_REGENERATE=1 .venv/bin/pytest "
            "tests/e2e/test_commissioning_walkthrough.py -p no:randomly -n 0, and review its diff)"
        )

    # --- substitutions ------------------------------------------------------------------------

    def _forward(self) -> list[tuple[str, str]]:
        return [(s.shown, s.real) for s in self.substitutions]

    def _forward_thumbprints(self, text: str) -> str:
        def real(match: re.Match[str]) -> str:
            if match[0] not in self.thumbprints and self.regenerate and self.recent:
                # A new page: the thumbprint a command uses is the one shown last.
                self.thumbprints[match[0]] = self.recent[-1]
            return self.thumbprints.get(match[0], match[0])

        return _THUMBPRINT.sub(real, text)

    def _forward_text(self, command: Command) -> str:
        return _replace(self._forward_thumbprints(command.text), self._forward())

    def _back(self, text: str) -> str:
        return _replace(text, [(s.real, s.shown) for s in self.substitutions])

    def _back_lines(self, lines: list[str]) -> list[str]:
        return [self._back(line) for line in lines]

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def _write_page(self) -> None:
        lines = list(self.lines)
        # Bottom up; at one line, a replaced command line before the insertion in front of it.
        for start, end, new in sorted(self.rewrites, key=lambda r: (r[0], r[1]), reverse=True):
            lines[start:end] = new
        self.page.write_text("\n".join(lines) + "\n")


class _Background:
    def __init__(self, command: Command, process: asyncio.subprocess.Process) -> None:
        self.command = command
        self.process = process
        self.lines: list[str] = []
        self.shown = 0
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.reader.cancel()


def _diff(expected: list[str], actual: list[str]) -> str:
    lines = difflib.unified_diff(expected, actual, "documented", "actual", lineterm="", n=2)
    return ":\n" + "\n".join(lines)
