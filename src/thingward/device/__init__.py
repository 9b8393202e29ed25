"""The device side: enroll with a CSR, connect with mTLS, publish, receive commands, simulate cameras."""

from thingward.device.client import Device, DeviceConnectError
from thingward.device.enroll import EnrolledIdentity, enroll

__all__ = ["Device", "DeviceConnectError", "EnrolledIdentity", "enroll"]
