"""API keys, stored hashed: only ``KEY_ID:SALT:SHA256(SALT || KEY)`` entries are configured, never a key itself.

A key is a random 32-byte secret (``oarmorph apikey`` makes one and prints its entry); a salted SHA-256 suffices
for secrets of that entropy (no dictionary to attack) and keeps checking a key cheap on every request. The key
id is what a job records as its owner and what logs name; each key sees only its own jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_BYTES = 32
SALT_BYTES = 16
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class ApiKeyConfigError(ValueError):
    code = "API_KEYS_INVALID"


@dataclass(frozen=True)
class ApiKeyEntry:
    key_id: str
    salt: bytes
    digest: bytes

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(hash_key(key, self.salt), self.digest)

    def line(self) -> str:
        return f"{self.key_id}:{self.salt.hex()}:{self.digest.hex()}"


def hash_key(key: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + key.encode("utf-8")).digest()


def new_key(key_id: str) -> tuple[str, ApiKeyEntry]:
    """A fresh key and the entry to configure for it (the key is shown once, the entry stored)."""
    if not key_id or not set(key_id) <= _ID_CHARS:
        raise ApiKeyConfigError(f"key id {key_id!r}: letters, digits, '_', '-', '.' only")
    key = secrets.token_urlsafe(KEY_BYTES)
    salt = secrets.token_bytes(SALT_BYTES)
    return key, ApiKeyEntry(key_id, salt, hash_key(key, salt))


def parse_entries(text: str) -> list[ApiKeyEntry]:
    """Entries separated by commas or new lines; ``#`` starts a comment."""
    entries = []
    for raw in text.replace(",", "\n").splitlines():
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _ID_CHARS:
            raise ApiKeyConfigError("an API key entry is not KEY_ID:SALT_HEX:SHA256_HEX")
        try:
            salt, digest = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
        except ValueError:
            raise ApiKeyConfigError(f"API key entry {parts[0]!r}: salt and digest must be hex") from None
        if len(digest) != hashlib.sha256().digest_size or not salt:
            raise ApiKeyConfigError(f"API key entry {parts[0]!r}: the digest must be a SHA-256 and the salt non-empty")
        entries.append(ApiKeyEntry(parts[0], salt, digest))
    ids = [e.key_id for e in entries]
    if len(set(ids)) != len(ids):
        raise ApiKeyConfigError("API key ids must be unique")
    return entries


class ApiKeys:
    """The configured keys (environment and file); ``identify(key)`` is the key id or None."""

    def __init__(self, entries: list[ApiKeyEntry]) -> None:
        self.entries = entries

    @classmethod
    def from_settings(cls, api_keys: str, api_keys_file: Path | None) -> ApiKeys:
        entries = parse_entries(api_keys)
        if api_keys_file is not None:
            entries += parse_entries(Path(api_keys_file).read_text())
        ids = [e.key_id for e in entries]
        if len(set(ids)) != len(ids):
            raise ApiKeyConfigError("API key ids must be unique across the environment and the file")
        return cls(entries)

    def identify(self, key: str | None) -> str | None:
        if not key:
            return None
        found = None
        for entry in self.entries:  # every entry is compared: the time taken says nothing about which matched
            if entry.matches(key) and found is None:
                found = entry.key_id
        return found
