"""Which group members count as dead: static members whose alive file went stale (never us, never unknown ones)."""

import os

from recsys.group_liveness import silent_members


def test_only_other_static_members_with_a_stale_alive_file_are_silent(tmp_path):
    now = 1_000_000.0
    for name, age in (("fresh", 2.0), ("stale", 30.0), ("me", 60.0)):
        (tmp_path / f"{name}.alive").touch()
        os.utime(tmp_path / f"{name}.alive", (now - age, now - age))
    members = [{"group_instance_id": n} for n in ("fresh", "stale", "me", "no-file")] + [{"group_instance_id": None}]
    assert silent_members(members, tmp_path, me="me", timeout_s=6.0, now=now) == ["stale"]
