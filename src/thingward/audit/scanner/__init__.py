"""The LAN scanner: TCP connect scan, service identification, TLS checks, UDP probes for SSDP/mDNS/CoAP and
bounded default-credential probes, for the home or lab network the user names (see `targets`)."""

from thingward.audit.scanner.credentials import Credential, load_credentials
from thingward.audit.scanner.engine import ScanOptions, run_scan
from thingward.audit.scanner.logins import LoginPolicy
from thingward.audit.scanner.model import HostResult, PortResult, ScanReport, TlsInfo, WeakCredential
from thingward.audit.scanner.targets import parse_ports, parse_targets

__all__ = [
    "Credential",
    "HostResult",
    "LoginPolicy",
    "PortResult",
    "ScanOptions",
    "ScanReport",
    "TlsInfo",
    "WeakCredential",
    "load_credentials",
    "parse_ports",
    "parse_targets",
    "run_scan",
]
