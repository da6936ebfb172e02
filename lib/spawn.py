"""Start a program by the C library's `posix_spawn`, with Python's global lock released while it starts.

`os.posix_spawn` (and Popen's fork) keep the global lock until the child has called exec. On a loaded
machine the child waits for a core first: a sync's 400 starts held the lock for 0.3 s of a 1.2 s run on a
quiet 2-core machine and 1.4 s of 2.4 s on a busy one, while no other thread of ours could run
(bench/README.md). Called through ctypes, which releases the lock for the call, other threads go on.

Only where the C library is glibc 2.26 or later (it has POSIX_SPAWN_SETSID and reports a failed exec as
posix_spawn's result); elsewhere, or when anything here is missing, `available()` is False and the caller
uses `os.posix_spawn`.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

# glibc's <spawn.h>.
_SETSIGDEF = 0x04
_SETSID = 0x80
# Room for glibc's opaque types (posix_spawnattr_t is 336 bytes, posix_spawn_file_actions_t 80 and
# sigset_t 128 on 64-bit Linux); only libc's own functions touch them.
_OPAQUE = 1024


def _glibc() -> ctypes.CDLL | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # type: ignore[union-attr]
        if name != "glibc" or tuple(int(part) for part in version.split(".")[:2]) < (2, 26):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        for symbol in ("posix_spawn", "posix_spawnattr_init", "posix_spawnattr_setflags",
                       "posix_spawnattr_setsigdefault", "posix_spawn_file_actions_init",
                       "posix_spawn_file_actions_addopen", "posix_spawn_file_actions_adddup2",
                       "posix_spawn_file_actions_destroy", "sigemptyset", "sigaddset"):
            getattr(libc, symbol)
        return libc
    except (AttributeError, OSError, ValueError, TypeError):  # not glibc, no confstr, a symbol missing
        return None


_libc = _glibc()
_attrs: dict[tuple[int, ...], ctypes.Array[ctypes.c_char]] = {}  # signals set to default -> ready attributes


def available() -> bool:
    return _libc is not None


def _attributes(default_signals: tuple[int, ...]) -> ctypes.Array[ctypes.c_char]:
    """Spawn attributes (a session of its own, `default_signals` at their defaults), made once and only read
    by posix_spawn after that, so threads share them."""
    assert _libc is not None
    if default_signals not in _attrs:
        attr = ctypes.create_string_buffer(_OPAQUE)
        signals = ctypes.create_string_buffer(_OPAQUE)
        failed = _libc.posix_spawnattr_init(attr)  # the error number itself, as every posix_spawn* call returns
        if failed:
            raise OSError(failed, os.strerror(failed))
        if _libc.sigemptyset(signals):  # -1 and errno, as signal functions do
            raise OSError(ctypes.get_errno(), "sigemptyset failed")
        for signum in default_signals:
            if _libc.sigaddset(signals, signum):
                raise OSError(ctypes.get_errno(), f"sigaddset({signum}) failed")
        for failed in (_libc.posix_spawnattr_setsigdefault(attr, signals),
                       _libc.posix_spawnattr_setflags(attr, ctypes.c_short(_SETSIGDEF | _SETSID))):
            if failed:
                raise OSError(failed, os.strerror(failed))
        _attrs[default_signals] = attr
    return _attrs[default_signals]


def _entry(item: tuple[str, str]) -> bytes:
    """`KEY=value` as C wants it, checked as os.posix_spawn checks it."""
    key, value = os.fsencode(item[0]), os.fsencode(item[1])
    if not key or b"=" in key[1:]:  # as os.posix_spawn: a leading `=` passes (Windows-style names)
        raise ValueError("illegal environment variable name")
    if b"\0" in key or b"\0" in value:
        raise ValueError("embedded null byte")
    return key + b"=" + value


_entries: dict[tuple[str, str], bytes] = {}  # an env's entries, encoded: the same env serves a run's every git
_ENTRIES_KEPT = 4096


def spawn(program: str, args: Sequence[str], env: dict[str, str], stdout: int, stderr: int,
          default_signals: tuple[int, ...], stdin: str = os.devnull) -> int:
    """The pid of `program` started with `args` and only `env`, in a session of its own, stdin `stdin` (opened
    read-only), stdout and stderr the descriptors given (they may be the same), `default_signals` at their
    defaults. OSError as os.posix_spawn raises it when it cannot start (not found, not executable, ...)."""
    assert _libc is not None
    attr = _attributes(default_signals)
    words = [os.fsencode(arg) for arg in args]
    if any(b"\0" in word for word in words):  # C would cut it there: os.posix_spawn says so too
        raise ValueError("embedded null byte")
    if len(_entries) > _ENTRIES_KEPT:  # each step's own marker is new: keep the cache bounded
        _entries.clear()
    entries = [_entries.get(item) or _entries.setdefault(item, _entry(item)) for item in env.items()]
    argv = (ctypes.c_char_p * (len(words) + 1))(*words, None)
    envp = (ctypes.c_char_p * (len(entries) + 1))(*entries, None)
    actions = ctypes.create_string_buffer(_OPAQUE)
    failed = _libc.posix_spawn_file_actions_init(actions)
    if failed:
        raise OSError(failed, os.strerror(failed))
    try:
        for failed in (_libc.posix_spawn_file_actions_addopen(actions, 0, os.fsencode(stdin), os.O_RDONLY, 0),
                       _libc.posix_spawn_file_actions_adddup2(actions, stdout, 1),
                       _libc.posix_spawn_file_actions_adddup2(actions, stderr, 2)):
            if failed:
                raise OSError(failed, os.strerror(failed))
        pid = ctypes.c_int()
        failed = _libc.posix_spawn(ctypes.byref(pid), os.fsencode(program), actions, attr, argv, envp)
        if failed:
            raise OSError(failed, os.strerror(failed), program)
        return pid.value
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)
