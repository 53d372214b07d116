"""The JWT-bearer grant's assertion (RFC 7523): a service account's key, read and signed.

It owns finding out whether the optional `jwt` extra (PyJWT with
`cryptography`) is installed, without importing it, so that one message
names the extra wherever a pipeline asks for `oauth2_jwt_bearer` without it
(`etl validate` warns, `etl run` fails with exit 2); reading a service-account
JSON key file (Google's: `client_email`, `private_key`, `token_uri`); and
signing the assertion RS256. PyJWT is imported only here and only when a
run uses the grant.

The private key is a secret from the moment it is read: it is registered
with the log's redaction filter, every error about it names the file or the
key, never its text, and no exception chain carries it (`from None`).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import log
from runner.errors import ConfigError
from runner.model import OAuth2JwtBearer

__all__ = ["INSTALL_JWT", "ServiceAccount", "missing_jwt_library", "require_jwt_library", "service_account"]

INSTALL_JWT = "pip install 'etl-runner[jwt]'"
ASSERTION_LIFETIME = 3600  # RFC 7523 leaves it to the server; Google refuses more than one hour
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
WHAT = "the oauth2_jwt_bearer auth"


def jwt_installed() -> bool:
    """Whether PyJWT and cryptography can be imported; found without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("jwt", "cryptography"))


def missing_jwt_library(what: str = WHAT) -> str | None:
    """The one-line message for `what` when the `jwt` extra is missing, else None."""
    if jwt_installed():
        return None
    return f"{what} needs PyJWT with cryptography: {INSTALL_JWT}"


def require_jwt_library(what: str = WHAT) -> None:
    """Raise ConfigError (exit 2) naming the extra when it is missing, before anything imports it."""
    message = missing_jwt_library(what)
    if message is not None:
        raise _config_error(message)


def _config_error(message: str) -> ConfigError:
    error = ConfigError(message)
    error.message = message  # no line of the file is wrong: the message alone, with no `<config>:1:1:`
    return error


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """Who signs and where the assertion goes; `key` is the loaded private key, never printed."""

    client_email: str
    token_url: str
    key: Any  # a cryptography RSAPrivateKey

    def __repr__(self) -> str:
        return f"ServiceAccount(client_email={self.client_email!r}, token_url={self.token_url!r}, key='***')"

    def assertion(self, *, scopes: tuple[str, ...], subject: str | None, now: float) -> str:
        """A signed assertion valid from `now` for ASSERTION_LIFETIME seconds (registered as a secret)."""
        import jwt  # the optional extra: checked by require_jwt_library before any run gets here

        issued = int(now)
        claims: dict[str, Any] = {
            "iss": self.client_email, "aud": self.token_url, "iat": issued, "exp": issued + ASSERTION_LIFETIME,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        if subject:
            claims["sub"] = subject
        signed = jwt.encode(claims, self.key, algorithm="RS256")
        log.add_secrets([signed])
        return signed


def service_account(config: OAuth2JwtBearer) -> ServiceAccount:
    """The account of `config`: its key file read, or its three keys; the private key loaded."""
    require_jwt_library()
    if config.credentials_file is not None:
        email, pem, token_url = _read_key_file(config.credentials_file)
    else:
        assert config.client_email and config.private_key and config.token_url, "the schema requires them"
        email, pem, token_url = config.client_email, config.private_key.reveal(), config.token_url
    log.add_secrets([pem, *(line for line in pem.splitlines() if not line.startswith("-----"))])
    where = f"the private_key of {config.credentials_file}" if config.credentials_file else "auth.private_key"
    return ServiceAccount(email, token_url, _load_key(pem, where))


def _read_key_file(file: str) -> tuple[str, str, str]:
    """client_email, private_key and token_uri of a service-account JSON key file."""
    where = f"auth.credentials_file {file}"
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise _config_error(f"{where}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    except (UnicodeDecodeError, ValueError):
        # from None, and no excerpt: the text around a JSON error may be the private key
        raise _config_error(f"{where}: not a JSON service-account key file") from None
    keys = ("client_email", "private_key", "token_uri")
    found = {key: data.get(key) for key in keys} if isinstance(data, dict) else {}
    missing = [key for key in keys if not (isinstance(found.get(key), str) and found[key])]
    if missing:
        raise _config_error(
            f"{where}: a service-account key file needs client_email, private_key and token_uri"
            f" (missing or not text: {', '.join(missing)})"
        )
    return str(found["client_email"]), str(found["private_key"]), str(found["token_uri"])


def _load_key(pem: str, where: str) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _config_error(f"{where} is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise _config_error(f"{where} is not an RSA key; RS256 needs one")
    return key
