"""The update protocol's keys and version order (recsys/protocol.py): what readers of `model-updates` rely on."""

from datetime import UTC, datetime

import pytest

from recsys import protocol
from recsys.protocol import ForgetMessage, ModelMessage, UpdateKey, VectorUpdate


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (ModelMessage(model_version="m20260101T000000000000", path="/m"), UpdateKey("MODEL")),
        (VectorUpdate(model_version="m20260101T000000000000", kind="user", id="u1"), UpdateKey("UP", "user", "u1")),
        (
            VectorUpdate(model_version="m20260101T000000000000", kind="item", id="sku:42:red"),
            UpdateKey("UP", "item", "sku:42:red"),
        ),
        (ForgetMessage(user_id="p:ab:cd"), UpdateKey("FORGET", id="p:ab:cd")),
    ],
)
def test_parse_key_reads_back_what_key_of_wrote_even_ids_with_colons(message, expected):
    assert protocol.parse_key(protocol.key_of(message)) == expected


def test_parse_key_tells_user_ups_from_item_ups_and_the_rest():
    user, item = protocol.parse_key(protocol.up_key("user", "u")), protocol.parse_key(protocol.up_key("item", "u"))
    assert user.is_up() and user.is_up("user") and not user.is_up("item")
    assert item.is_up("item") and not item.is_up("user")
    assert not protocol.parse_key(protocol.MODEL_KEY).is_up() and not protocol.parse_key(b"FORGET:u").is_up()


def test_a_challengers_up_keys_name_its_version_so_compaction_keeps_both_models_ups_of_a_user():
    version = "m20260102T000000000000-neumf"
    champion, challenger = protocol.up_key("user", "p:ab"), protocol.up_key("user", "p:ab", version)
    assert champion != challenger and protocol.tombstone("user", "p:ab", version) == (challenger, None)
    assert protocol.parse_key(challenger) == UpdateKey("UP", "user", "p:ab", version)
    assert protocol.parse_key(champion) == UpdateKey("UP", "user", "p:ab")
    key, value = protocol.encode_up(version, "item", "sku:1", [1.0], None, {}, {}, None, [], version)
    assert key == protocol.up_key("item", "sku:1", version) and protocol.decode(value) == VectorUpdate(
        model_version=version, kind="item", id="sku:1", vector=[1.0]
    )


@pytest.mark.parametrize(
    "key", [b"UP:u1", b"UP:shop:u1", b"FORGET:", b"MODELS", b"events:0:12", b"", b"UP@v1:user:u", b"UP@:user:u"]
)
def test_parse_key_refuses_keys_the_protocol_does_not_make(key):
    with pytest.raises(ValueError, match="not a model-updates key"):
        protocol.parse_key(key)


def test_oldest_is_the_earliest_creation_time_whatever_the_recommender_suffix():
    early = protocol.new_version(datetime(2026, 1, 1, 3, tzinfo=UTC), model="zz_last_by_name")
    late = protocol.new_version(datetime(2026, 1, 2, 3, tzinfo=UTC), model="aa_first_by_name")
    later = protocol.new_version(datetime(2026, 1, 3, tzinfo=UTC))
    assert protocol.oldest([later, late, early]) == early
    assert protocol.oldest({late: [], later: []}) == late  # a dict of held versions, as the follower keeps


def test_oldest_refuses_a_string_that_is_not_a_model_version():
    # As strings "garbage" would sort first and be taken for the oldest.
    with pytest.raises(ValueError, match="not a model version"):
        protocol.oldest(["m20260101T000000000000", "garbage"])
