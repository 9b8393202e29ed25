"""The platform's side of onboarding: claim tokens that bind a new device to the person setting it up,
and enrollment with such a token (docs/onboarding.md)."""
