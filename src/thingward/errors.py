"""The exception tree of thingward; every door (CLI, REST API) maps these to its own error form.

ThingwardError
 ├── InvalidInputError        bad names, bad JSON, bad CSR: the caller must change the input
 │    ├── PolicyDocumentError  a policy document that does not parse or validate
 │    └── CsrError             a CSR that is malformed, badly signed, or carries a weak key
 ├── NotFoundError            the named thing, group, policy or certificate does not exist
 ├── ConflictError            it exists already, or the change would break a rule (cycle, depth)
 ├── EnrollmentRefusedError   a token that is unknown, used, expired or for another thing
 ├── ConfigError              a config file or data dir that cannot be used
 ├── PkiError                 the CA cannot be loaded or used (wrong passphrase, missing files)
 └── OtaError                 the OTA repository or its keys cannot be used (not initialised, keys missing)
"""

from __future__ import annotations


class ThingwardError(Exception):
    """Base of every error thingward raises on purpose."""


class InvalidInputError(ThingwardError):
    """Input that can never succeed as given; the message says what to change."""


class PolicyDocumentError(InvalidInputError):
    """A policy document that does not parse or does not validate."""


class CsrError(InvalidInputError):
    """A certificate signing request that cannot be accepted."""


class NotFoundError(ThingwardError):
    """The named object does not exist."""


class ConflictError(ThingwardError):
    """The object exists already, or the change breaks a structural rule."""


class EnrollmentRefusedError(ThingwardError):
    """An enrollment token that cannot be used. One message for every reason, to tell a prober nothing;
    `reason` is for the audit log only."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(ThingwardError):
    """A configuration or data directory that cannot be used."""


class PkiError(ThingwardError):
    """The certificate authority cannot be loaded or used."""


class OtaError(ThingwardError):
    """The OTA repository or its signing keys cannot be used."""
