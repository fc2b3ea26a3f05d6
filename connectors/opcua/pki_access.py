"""Who may read and write the agent's OPC UA files: the service user, and checks by mode bits.

Under the package the agent runs as a system user (the unit's `User=`), while an operator runs
`edge-agent certs create` and `check-config` as root. These helpers let the CLI give the files
to that user and tell, without becoming it, whether it can use them.

Invariants:
- `FileOwner` names a user by uid, gid and every group it is a member of; nothing here changes
  a file (the writers in `certificates` and `trust` chown what they create to a `FileOwner`).
- `access_problem` decides as the kernel does from the mode bits alone: root may do anything;
  otherwise exactly one class applies (owner, else group, else other), every folder on the way
  needs search (x) permission, the file itself read (r), a folder to write into w and x.
  POSIX ACLs and read-only mounts are not looked at (the unit's `ReadWritePaths=` covers the
  mount side; see packaging/README.md).
- A problem is one sentence naming the path that blocks, its owner and mode, and the command
  that fixes it; no file content is ever read here.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FileOwner:
    """A user the agent's files belong to (typically the service user)."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def named(cls, name: str) -> FileOwner | None:
        """The user `name` from the system's user database, or None when there is none."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid)),
        )

    @classmethod
    def current(cls) -> FileOwner:
        """The user this process runs as (its effective ids and groups)."""
        uid, gid = os.geteuid(), os.getegid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name=name, uid=uid, gid=gid, groups=frozenset({gid, *os.getgroups()}))

    @property
    def group_name(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)

    def chown(self, path: Path) -> None:
        """Give `path` (never a symlink's target) to this user and its primary group."""
        os.chown(path, self.uid, self.gid, follow_symlinks=False)


def access_problem(path: Path, owner: FileOwner, *, write: bool = False) -> str | None:
    """Why `owner` cannot read `path` (a file), or with `write`, cannot create files in `path`
    (a folder; the nearest existing ancestor when it does not exist yet); None when it can."""
    if owner.uid == 0:
        return None
    target = path.absolute()
    if write:
        while missing(target) and target != target.parent:
            target = target.parent
    for folder in reversed(target.parents):
        if not _allows(folder, owner, "x"):
            return _blocked(folder, owner, "cannot enter", "x", path)
    wanted = "wx" if write else "r"
    if not _allows(target, owner, wanted):
        return _blocked(target, owner, "cannot write in" if write else "cannot read", wanted, path)
    return None


def describe_mode(path: Path) -> str:
    """`owner root:edge-agent, mode 0640` (or why it cannot be looked at) for a message."""
    try:
        info = path.lstat()
    except OSError as error:
        return error.strerror or "cannot be looked at"
    owner = f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)}"
    return f"owner {owner}, mode {info.st_mode & 0o7777:04o}"


def missing(path: Path) -> bool:
    """Whether `path` does not exist (one that cannot be looked at exists, as far as we know)."""
    try:
        path.lstat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


_BITS = {"r": stat.S_IRUSR, "w": stat.S_IWUSR, "x": stat.S_IXUSR}


def _owned_by(path: Path, owner: FileOwner) -> bool:
    try:
        return path.stat().st_uid == owner.uid
    except OSError:
        return False


def _allows(path: Path, owner: FileOwner, wanted: str) -> bool:
    """Whether the mode bits of `path` give `owner` every permission in `wanted` ("r", "wx")."""
    try:
        info = path.stat()
    except OSError:
        return False
    if info.st_uid == owner.uid:
        shift = 0
    elif info.st_gid in owner.groups:
        shift = 3
    else:
        shift = 6
    bits = sum(_BITS[letter] for letter in wanted) >> shift
    return info.st_mode & bits == bits


def _blocked(where: Path, owner: FileOwner, action: str, wanted: str, path: Path) -> str:
    """The problem sentence, with the least change that lets `owner` through `where`."""
    if _owned_by(where, owner):
        fix = f"chmod u+{wanted} {where}"
    else:
        fix = f"chgrp {owner.group_name} {where} && chmod g+{wanted} {where}"
    below = "" if where == path.absolute() else f" (on the way to {path})"
    return f"{owner.name} {action} {where}{below}: {describe_mode(where)}; as root, run: {fix}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


__all__ = ["FileOwner", "access_problem", "describe_mode", "missing"]
