"""Onboarding mode of a device: the provisioning service on its access point, the secure session with
the app (X25519 bound to the label's proof of possession, AES-GCM), the window that closes by itself,
and the Wi-Fi backends. The protocol is described in docs/onboarding.md."""
