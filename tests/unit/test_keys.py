"""API keys as values: format, parsing, keyed hashing, and reprs that never show a secret."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from hammerlock.security import keys as keys_module
from hammerlock.security.keys import (
    KEY_PREFIX,
    ApiKey,
    ParsedKey,
    format_key,
    hash_secret,
    new_key_id,
    new_principal_id,
    new_secret,
    parse_key,
    secret_matches,
)
from hammerlock.security.permissions import Role
from hammerlock.security.service import CreatedKey
from hammerlock.settings import Settings

PEPPER = b"pepper-for-tests"
SHORT_ID = "abcdefghij012345"


def test_a_formatted_key_parses_back() -> None:
    key_id, secret = new_key_id(), new_secret()
    presented = format_key(key_id, secret)
    assert presented.startswith(KEY_PREFIX)
    assert presented == f"hl_{key_id.removeprefix('key_')}_{secret}"
    assert parse_key(presented) == ParsedKey(key_id=key_id, secret=secret)


def test_generated_values_have_their_shape_and_are_fresh() -> None:
    ids = {new_key_id() for _ in range(200)}
    assert len(ids) == 200
    for key_id in ids:
        assert len(key_id) == 20
        assert key_id.startswith("key_")
        assert key_id[4:].isalnum()
        assert key_id[4:] == key_id[4:].lower()
    assert new_principal_id().startswith("prn_")
    secrets_ = {new_secret() for _ in range(200)}
    assert len(secrets_) == 200
    assert all(len(s) >= 43 for s in secrets_)  # 32 random bytes, URL-safe base64


def test_a_secret_may_contain_underscores() -> None:
    """token_urlsafe uses '_' and '-': only the first '_' after the id splits."""
    parsed = parse_key(f"hl_{SHORT_ID}_a_b-c_")
    assert parsed == ParsedKey(key_id=f"key_{SHORT_ID}", secret="a_b-c_")


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "hl_",
        "hl__secret",
        f"hl_{SHORT_ID}",
        f"hl_{SHORT_ID}_",
        f"hl_{SHORT_ID}secret",
        f"HL_{SHORT_ID}_secret",
        f"xx_{SHORT_ID}_secret",
        f"{SHORT_ID}_secret",
        f"hl_{SHORT_ID[:-1]}_secret",  # id too short
        f"hl_{SHORT_ID}x_secret",  # id too long
        f"hl_{SHORT_ID.upper()}_secret",  # ids are lower case
        "hl_abcdefghij01234!_secret",
        "hl_abcdefghij01234\u00e9_secret",
        "hl_abcdefghij０１２３４５_secret",  # full-width digits  # noqa: RUF001
        f"hl_{SHORT_ID}_" + "s" * 200,  # over the length cap
        f" hl_{SHORT_ID}_secret",
    ],
)
def test_parse_key_rejects_malformed_keys(presented: str) -> None:
    assert parse_key(presented) is None


def test_parse_key_length_cap_is_200() -> None:
    head = f"hl_{SHORT_ID}_"
    assert parse_key(head + "s" * (200 - len(head))) is not None
    assert parse_key(head + "s" * (201 - len(head))) is None


def test_hash_secret_is_hmac_sha256_with_the_pepper() -> None:
    expected = hmac.new(PEPPER, b"s3cret", hashlib.sha256).hexdigest()
    assert hash_secret(PEPPER, "s3cret") == expected
    assert len(expected) == 64
    assert hash_secret(b"another pepper", "s3cret") != expected
    assert hash_secret(PEPPER, "s3cret!") != expected
    assert hashlib.sha256(b"s3cret").hexdigest() != expected  # keyed, not a plain hash


def test_secret_matches() -> None:
    stored = hash_secret(PEPPER, "s3cret")
    assert secret_matches(PEPPER, "s3cret", stored)
    assert not secret_matches(PEPPER, "s3cre", stored)
    assert not secret_matches(PEPPER, "s3cret ", stored)
    assert not secret_matches(b"other", "s3cret", stored)
    assert not secret_matches(PEPPER, "s3cret", stored.upper())
    assert not secret_matches(PEPPER, "s3cret", "")
    assert not secret_matches(PEPPER, "", stored)


def test_secret_matches_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    stored = hash_secret(PEPPER, "s3cret")
    assert secret_matches(PEPPER, "s3cret", stored)
    assert not secret_matches(PEPPER, "nope", stored)
    assert seen == [(stored, stored), (hash_secret(PEPPER, "nope"), stored)]


def test_reprs_never_show_a_secret() -> None:
    secret = new_secret()
    parsed = parse_key(format_key(new_key_id(), secret))
    assert parsed is not None
    for text in (repr(parsed), str(parsed), f"{parsed}", f"{parsed!r}", f"{[parsed]}"):
        assert secret not in text
        assert parsed.key_id in text  # the id is not a secret, and helps debugging
    plaintext = format_key("key_" + SHORT_ID, secret)
    api_key = ApiKey(
        id="key_" + SHORT_ID,
        principal_id="prn_x",
        role=Role.ADMIN,
        name="n",
        created_us=0,
        expires_us=None,
        revoked_us=None,
        created_by="tests",
    )
    created = CreatedKey(key=api_key, plaintext=plaintext)
    for text in (repr(created), str(created), f"{created}", f"{created!r}", f"{ {'k': created} }"):
        assert secret not in text
        assert plaintext not in text
    assert created.plaintext == plaintext  # still there for the one time it is shown


def test_settings_never_show_the_pepper(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_key_pepper="very-secret-pepper")  # type: ignore[arg-type]
    for text in (
        repr(settings),
        str(settings),
        f"{settings.api_key_pepper}",
        repr(settings.api_key_pepper),
    ):
        assert "very-secret-pepper" not in text
    assert settings.model_dump_json().find("very-secret-pepper") == -1
    assert settings.api_key_pepper is not None
    assert settings.api_key_pepper.get_secret_value() == "very-secret-pepper"


@pytest.mark.parametrize(
    ("now_us", "expires_us", "revoked_us", "usable"),
    [
        (100, None, None, True),
        (100, 101, None, True),
        (100, 100, None, False),  # expiry is exclusive
        (100, 99, None, False),
        (100, None, 100, False),
        (100, None, 101, False),  # stamped by a clock ahead of ours: revoked all the same
        (100, 200, 50, False),
    ],
)
def test_usable_at(
    now_us: int, expires_us: int | None, revoked_us: int | None, usable: bool
) -> None:
    key = ApiKey("key_x", "prn_x", Role.BIDDER, "n", 0, expires_us, revoked_us, "tests")
    assert key.usable_at(now_us) is usable
