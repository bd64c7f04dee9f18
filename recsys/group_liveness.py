"""Removing consumer-group members that died, as Kafka's coordinator does after session.timeout.ms.

The local broker (noida-db) never expires a member's session: a SIGKILLed instance keeps
its partitions until it comes back under the same id, so the survivors never take them
over. Each instance therefore touches `<state>/run/<group>/<instance>.alive` every second
from a daemon thread and, every half session timeout, removes (LeaveGroup by
group.instance.id) each static member whose file is older than the session timeout; the
coordinator then rebalances its partitions to the living. A member with no file is not
ours to judge and is left alone. On Apache Kafka the coordinator gets there first and
this finds nothing to do. It needs the instances to share the state folder.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import MemberToRemove
from kafka.errors import KafkaError

from recsys.io.kafka import bootstrap
from recsys.settings import Settings

log = logging.getLogger(__name__)


def silent_members(members: list[dict], alive_dir: Path, me: str, timeout_s: float, now: float) -> list[str]:
    """Static members (other than `me`) whose alive file has not been touched for longer than `timeout_s`."""
    out = []
    for member in members:
        instance = member.get("group_instance_id")
        if not instance or instance == me:
            continue
        try:
            age = now - (alive_dir / f"{instance}.alive").stat().st_mtime
        except FileNotFoundError:
            continue
        if age > timeout_s:
            out.append(instance)
    return out


class SilentMemberEviction:
    def __init__(self, s: Settings, group: str, instance_id: str, session_timeout_s: float) -> None:
        self.s, self.group, self.instance_id, self.session_timeout_s = s, group, instance_id, session_timeout_s
        self.dir = s.state_dir / "run" / group
        self.dir.mkdir(parents=True, exist_ok=True)
        self.own = self.dir / f"{instance_id}.alive"
        self.own.touch()  # before joining: a restarted instance is never taken for its dead self
        self._admin: KafkaAdminClient | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="member-liveness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        checked = time.monotonic()
        while not self._stop.wait(1.0):
            self.own.touch()
            if time.monotonic() - checked >= self.session_timeout_s / 2:
                checked = time.monotonic()
                try:
                    self.evict_silent()
                except (KafkaError, OSError) as e:
                    log.warning("could not check %s for silent members: %s", self.group, e)
                    self._close_admin()

    def evict_silent(self) -> list[str]:
        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=bootstrap(self.s), request_timeout_ms=5000)
        group = self._admin.describe_groups([self.group])[self.group]
        silent = silent_members(group.get("members") or [], self.dir, self.instance_id, self.session_timeout_s,
                                time.time())  # fmt: skip
        if silent:
            self._admin.remove_group_members(self.group, [MemberToRemove(group_instance_id=i) for i in silent])
            log.warning("removed members %s from %s: no heartbeat for over %.0f s", silent, self.group,
                        self.session_timeout_s)  # fmt: skip
        return silent

    def _close_admin(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            finally:
                self._admin = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_admin()
