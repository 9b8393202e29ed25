"""The errors of the accounts domain, under thingward's tree (`thingward.errors`).

ThingwardError
 ├── InvalidInputError
 │    └── WeakPasswordError       a password the policy refuses; `problems` says why, one line each
 ├── AuthenticationError          a wrong password or second factor for a sensitive change
 ├── InvalidTokenError            a reset link, invitation or API token that is unknown, used or expired
 ├── PermissionDeniedError        authenticated, but not allowed (an API token without the scope)
 └── SignUpClosedError            sign-up needs an invitation
Messages tell a prober nothing about which check failed; the audit log holds the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from thingward.errors import InvalidInputError, ThingwardError


class WeakPasswordError(InvalidInputError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("password refused: " + "; ".join(problems))
        self.problems = tuple(problems)


class AuthenticationError(ThingwardError):
    """The password or the code given to confirm a change is wrong."""


class InvalidTokenError(ThingwardError):
    """One message for unknown, used and expired tokens."""


class PermissionDeniedError(ThingwardError):
    """The caller is known but may not do this."""


class SignUpClosedError(ThingwardError):
    """Sign-up is by invitation and no valid invitation was given."""
