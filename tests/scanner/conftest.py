"""The home lab (camera, hub, clean host, scanner) in network namespaces, built once per test session and
torn down at its end, even when tests fail. In CI (CI=true) an unusable `ip netns` fails the lab tests; on
a laptop without root they are skipped with the reason."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.netns import HomeLab, Lab, build_home_lab, netns_unusable_reason, remove_leftovers


@pytest.fixture(scope="session")
def home_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeLab]:
    reason = netns_unusable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the scanner lab needs network namespaces: {reason}")
        pytest.skip(f"the scanner lab needs network namespaces: {reason}")
    remove_leftovers()
    workdir = tmp_path_factory.mktemp("scanner-lab")
    with Lab(workdir) as lab:
        yield build_home_lab(lab)
