"""Shared fixtures: a real AF_UNIX datagram receiver with SO_PASSCRED."""

import os
import re
import select
import shutil
import socket
import struct
import tempfile
import time
from typing import List, NamedTuple, Optional

import pytest

import leakscope
from leakscope import _client

# The LS1 grammar as the client emits it (canonical field order).
MARKER_RE = re.compile(
    r"\ALS1 (?P<phase>begin|end) (?P<task>[A-Za-z0-9_.:/@-]{1,128})"
    r"(?: job=(?P<job>[!-~]{1,64}))?"
    r"(?: tid=(?P<tid>[1-9][0-9]{0,9}))?"
    r"(?: status=(?P<status>ok|error))?"
    r"(?: blocks=(?P<blocks>0|-?[1-9][0-9]{0,12}))?\Z"
)

_UCRED = struct.Struct("iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


class Marker(NamedTuple):
    text: str
    phase: str
    task: str
    job: Optional[str]
    tid: Optional[int]
    status: Optional[str]
    blocks: Optional[int]
    pid: int
    uid: int
    gid: int


def parse_marker(text: str, pid: int = -1, uid: int = -1, gid: int = -1) -> Marker:
    m = MARKER_RE.match(text)
    assert m, "not a valid LS1 marker: %r" % text
    tid = int(m.group("tid")) if m.group("tid") else None
    assert tid is None or tid <= 0xFFFFFFFF
    if m.group("phase") == "begin":
        assert m.group("status") is None and m.group("blocks") is None, text
    blocks = int(m.group("blocks")) if m.group("blocks") else None
    return Marker(text, m.group("phase"), m.group("task"), m.group("job"), tid,
                  m.group("status"), blocks, pid, uid, gid)


class Receiver:
    """Stands in for the agent: bound SOCK_DGRAM socket with SO_PASSCRED."""

    def __init__(self, path: str, rcvbuf: Optional[int] = None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(path)

    def recv(self, timeout: float = 5.0) -> Marker:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, "no marker received within %ss" % timeout
        data, ancdata, flags, _ = self.sock.recvmsg(
            _client.MAX_DATAGRAM + 1, socket.CMSG_SPACE(_UCRED.size)
        )
        assert not flags & socket.MSG_TRUNC
        assert len(data) <= _client.MAX_DATAGRAM
        creds = [d for (lvl, typ, d) in ancdata
                 if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS]
        assert creds, "no SCM_CREDENTIALS on the datagram"
        pid, uid, gid = _UCRED.unpack(creds[0][: _UCRED.size])
        return parse_marker(data.decode("ascii"), pid, uid, gid)

    def recv_n(self, n: int, timeout: float = 10.0) -> List[Marker]:
        deadline = time.monotonic() + timeout
        return [self.recv(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def drain(self) -> List[Marker]:
        out = []
        while select.select([self.sock], [], [], 0)[0]:
            out.append(self.recv(0))
        return out

    def assert_empty(self, wait: float = 0.2) -> None:
        ready, _, _ = select.select([self.sock], [], [], wait)
        assert not ready, "unexpected marker: %r" % (self.recv(0),)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sockdir():
    # sun_path is limited to 108 bytes: keep it short, not under tmp_path.
    d = tempfile.mkdtemp(prefix="ls-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def receiver(sockdir):
    r = Receiver(os.path.join(sockdir, "tasks.sock"))
    leakscope.configure(socket_path=r.path)
    try:
        yield r
    finally:
        leakscope.configure(None)
        r.close()


@pytest.fixture(autouse=True)
def _no_leaked_config(monkeypatch):
    # Each test starts from "env var or default" with no stray env var.
    monkeypatch.delenv(leakscope.ENV_SOCKET, raising=False)
    leakscope.configure(None)
    yield
    leakscope.configure(None)
