"""`thingward ota ...`: over-the-air updates: signing keys, the TUF repository, publishing, advisories."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from thingward.cli.common import DataDir, JsonFlag, console, emit, err_console, handle_errors, open_platform
from thingward.errors import InvalidInputError
from thingward.ota import delta, firmware, rollout, trust
from thingward.ota.job_protocol import FINAL_STATES
from thingward.ota.keys import Pkcs11Key, create_key_set
from thingward.ota.repository import OtaRepository
from thingward.platform import cli_actor
from thingward.registry import device_state

app = typer.Typer(help="Over-the-air updates: firmware, advisories, rollouts.", no_args_is_help=True)
advisory_app = typer.Typer(help="Firmware advisories: which versions of a model are weak.", no_args_is_help=True)
keys_app = typer.Typer(help="OTA signing keys: the offline root keys and the online keys.", no_args_is_help=True)
root_app = typer.Typer(help="The OTA repository's root of trust.", no_args_is_help=True)
delta_app = typer.Typer(help="Binary deltas between firmware images, signed as targets.", no_args_is_help=True)
app.add_typer(advisory_app, name="advisory")
app.add_typer(keys_app, name="keys")
app.add_typer(root_app, name="root")
app.add_typer(delta_app, name="delta")

PassphraseEnv = Annotated[
    str,
    typer.Option(
        "--passphrase-env",
        help="Name of an environment variable holding the root keys' passphrase (never the passphrase itself).",
    ),
]


def _passphrase(env_name: str) -> bytes | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise InvalidInputError(f"the passphrase is read from ${env_name}, which is not set or empty")
    return value.encode()


def _pkcs11_key(spec: str, module: str, token: str) -> Pkcs11Key:
    role, _, key_id = spec.partition(":")
    if not key_id.isdigit() or not module or not token:
        raise InvalidInputError(
            f"--pkcs11 {spec!r}: give ROLE:KEY_ID (e.g. timestamp:2) with --pkcs11-module and --pkcs11-token"
        )
    return Pkcs11Key(role, module, token, int(key_id))


def _repository(data_dir: Path | None) -> OtaRepository:
    platform = open_platform(data_dir)
    return OtaRepository.for_data_dir(platform.settings.data_dir)


@keys_app.command("init")
@handle_errors
def keys_init(
    out: Annotated[Path, typer.Option("--out", help="A new directory for the keys (refused if not empty).")],
    root_keys: Annotated[int, typer.Option("--root-keys", help="How many root keys to make.")] = 3,
    threshold: Annotated[int, typer.Option("--threshold", help="How many root keys must sign a root.")] = 2,
    passphrase_env: PassphraseEnv = "",
    pkcs11: Annotated[
        list[str] | None,
        typer.Option(
            "--pkcs11",
            help="ROLE:KEY_ID: use the EC P-256 key with this CKA_ID in the token for an online role "
            "(repeatable; PIN from $THINGWARD_OTA_PKCS11_PIN).",
        ),
    ] = None,
    pkcs11_module: Annotated[str, typer.Option(help="The PKCS#11 module (.so) for --pkcs11.")] = "",
    pkcs11_token: Annotated[str, typer.Option(help="The token label for --pkcs11.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Make the root keys (keep OUT/root offline) and the online targets/snapshot/timestamp keys (OUT/online)."""
    token_keys = tuple(_pkcs11_key(spec, pkcs11_module, pkcs11_token) for spec in pkcs11 or ())
    key_set = create_key_set(out, root_keys, threshold, _passphrase(passphrase_env), token_keys)
    emit(
        as_json,
        {
            "out": str(out),
            "root_threshold": key_set.root_threshold,
            "root_keys": [k.keyid for k in key_set.root_keys],
            "online_keys": {role: k.keyid for role, k in key_set.online_keys.items()},
            "next": f"thingward ota init --keys {out}, then move {out / 'root'} offline",
        },
    )


@app.command("init")
@handle_errors
def init_repository(
    keys: Annotated[Path, typer.Option("--keys", help="The directory made by 'thingward ota keys init'.")],
    passphrase_env: PassphraseEnv = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create the data dir's TUF repository: root.json signed by the root threshold; online keys installed."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        repo = trust.initialise_repository(
            session, cli_actor(), platform.settings.data_dir, keys, _passphrase(passphrase_env)
        )
    root = repo.root()
    emit(
        as_json,
        {
            "repository": str(repo.path),
            "root_version": root.signed.version,
            "root_expires": root.signed.expires.isoformat(),
            "device_trust_anchor": str(repo.metadata_dir / "1.root.json"),
        },
    )


@root_app.command("rotate")
@handle_errors
def rotate_root(
    old_keys: Annotated[Path, typer.Option("--old-keys", help="Key directory holding the current root keys.")],
    new_keys: Annotated[Path, typer.Option("--new-keys", help="Key directory from 'ota keys init' with new keys.")],
    old_passphrase_env: Annotated[str, typer.Option(help="Env variable with the old root keys' passphrase.")] = "",
    new_passphrase_env: Annotated[str, typer.Option(help="Env variable with the new root keys' passphrase.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Sign a new root with a threshold of the old and of the new root keys; the new online keys take over."""
    platform = open_platform(data_dir)
    repo = OtaRepository.for_data_dir(platform.settings.data_dir)
    with platform.db.session() as session:
        root = trust.rotate_root(
            session,
            cli_actor(),
            repo,
            old_keys,
            new_keys,
            _passphrase(old_passphrase_env),
            _passphrase(new_passphrase_env),
        )
    emit(
        as_json,
        {
            "root_version": root.signed.version,
            "root_threshold": root.signed.roles["root"].threshold,
            "root_keys": sorted(root.signed.roles["root"].keyids),
        },
    )


@app.command("refresh")
@handle_errors
def refresh(
    force: Annotated[bool, typer.Option("--force", help="Re-sign targets, snapshot and timestamp now.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-sign online metadata that is near expiry (the running server does this by itself)."""
    repo = _repository(data_dir)
    roles = repo.refresh(force=("targets",) if force else ())
    emit(as_json, {"re_signed": roles, "timestamp_expires": repo.timestamp().signed.expires.isoformat()})


@app.command("publish")
@handle_errors
def publish(
    image: Annotated[Path, typer.Argument(help="The firmware image file.")],
    model: Annotated[str, typer.Option("--model", help="The device model it is for.")],
    version: Annotated[str, typer.Option("--version", help="Its version; must beat every published one.")],
    min_version: Annotated[
        str | None, typer.Option("--min-version", help="The oldest version that may update to it directly.")
    ] = None,
    delta_bases: Annotated[
        int,
        typer.Option(
            "--delta-bases", help="Sign deltas to it from this many newest earlier versions (0: none).", min=0
        ),
    ] = delta.DELTA_BASES,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Store IMAGE by its hash and sign it as a TUF target with its model, version and minimum version.

    Deltas from the newest earlier versions are signed too, when they save enough (see 'ota delta make')."""
    platform = open_platform(data_dir)
    repo = OtaRepository.for_data_dir(platform.settings.data_dir)
    with platform.db.session() as session:
        published = firmware.publish_image(session, repo, cli_actor(), image, model, version, min_version)
    # The image is published (and committed) whatever happens to its deltas.
    with (
        contextlib.nullcontext() if as_json else err_console.status("making deltas ..."),
        platform.db.session() as session,
    ):
        deltas = delta.make_deltas(session, repo, cli_actor(), model, published.version, delta_bases)

    def human() -> None:
        console.print(f"published {published.target_path}: {published.length} bytes, sha256 {published.sha256}")
        for d in deltas.made:
            console.print(f"  delta from {d.from_version}: {d.length} bytes ({d.share:.1%} of the image), {d.path}")
        for skipped in deltas.skipped:
            console.print(f"  no delta from {skipped.from_version}: {skipped.reason}", markup=False)

    emit(as_json, {**published.to_dict(), **deltas.to_dict()}, human)


@delta_app.command("make")
@handle_errors
def make_delta(
    model: Annotated[str, typer.Option("--model", help="The device model.")],
    from_version: Annotated[str, typer.Option("--from", help="The published version devices run now.")],
    to_version: Annotated[str, typer.Option("--to", help="The published version they update to.")],
    max_bytes: Annotated[
        int, typer.Option("--max-bytes", help="Refuse images larger than this (bsdiff needs ~17x in memory).", min=1)
    ] = delta.MAX_DELTA_IMAGE_BYTES,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Sign a bsdiff4 delta from one published image to a newer one (skipped if it would not save enough)."""
    platform = open_platform(data_dir)
    repo = OtaRepository.for_data_dir(platform.settings.data_dir)
    with (
        contextlib.nullcontext() if as_json else err_console.status(f"diffing {model} {from_version} -> {to_version}"),
        platform.db.session() as session,
    ):
        result = delta.make_delta(session, repo, cli_actor(), model, from_version, to_version, max_bytes)
    if isinstance(result, delta.Delta):
        emit(as_json, {"made": True, **result.to_dict(), "share": round(result.share, 4)})
    else:
        emit(as_json, {"made": False, **result.to_dict()})


@app.command("list")
@handle_errors
def list_images(
    model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """List published firmware: models and versions."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        images = firmware.list_images(session, model)
    deltas = delta.list_deltas(OtaRepository.for_data_dir(platform.settings.data_dir), model)

    def human() -> None:
        table = Table("model", "version", "min version", "bytes", "sha256", "published")
        for i in images:
            table.add_row(
                i.model, i.version, i.min_version or "", str(i.length), i.sha256[:16], i.published_at.isoformat()
            )
        console.print(table)
        if deltas:
            table = Table("model", "from", "to", "bytes", "share of full", "delta target", title="deltas")
            for d in deltas:
                table.add_row(d.model, d.from_version, d.target_version, str(d.length), f"{d.share:.1%}", d.path)
            console.print(table)

    emit(as_json, {"images": [i.to_dict() for i in images], "deltas": [d.to_dict() for d in deltas]}, human)


@advisory_app.command("add")
@handle_errors
def add_advisory(
    advisory_id: Annotated[str, typer.Option("--id", help="The advisory's id, e.g. CVE-2026-1234.")],
    model: Annotated[str, typer.Option("--model", help="The device model it concerns.")],
    affected: Annotated[
        str, typer.Option("--affected", help="Affected versions as a range, e.g. '<1.4.2' or '>=1.0,<1.4.2'.")
    ],
    severity: Annotated[str, typer.Option(help="critical, high, medium or low.")] = "high",
    summary: Annotated[str, typer.Option(help="One line on the weakness.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a firmware advisory; the audit flags every device reporting an affected version."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        advisory = device_state.add_advisory(session, cli_actor(), advisory_id, model, affected, severity, summary)
    emit(as_json, advisory.to_dict())


@advisory_app.command("list")
@handle_errors
def list_advisories(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List firmware advisories."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        advisories = device_state.list_advisories(session)

    def human() -> None:
        table = Table("id", "model", "affected", "severity", "summary")
        for a in advisories:
            table.add_row(a.advisory_id, a.model, a.affected, a.severity, a.summary)
        console.print(table)

    emit(as_json, {"advisories": [a.to_dict() for a in advisories]}, human)


@advisory_app.command("remove")
@handle_errors
def remove_advisory(advisory_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Remove a firmware advisory (for one registered in error; a fixed fleet clears its findings by itself)."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        device_state.remove_advisory(session, cli_actor(), advisory_id)
    emit(as_json, {"removed": advisory_id})


@advisory_app.command("devices")
@handle_errors
def devices(advisory_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List the devices whose latest report names an affected firmware version."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        advisory = device_state.get_advisory(session, advisory_id)
        affected = device_state.affected_devices(advisory, device_state.latest_reports(session))

    def human() -> None:
        table = Table("thing", "model", "version", title=f"{advisory_id}: affected {advisory.affected}")
        for d in affected:
            table.add_row(d.thing, d.model, d.version)
        console.print(table)

    emit(as_json, {"advisory": advisory.to_dict(), "devices": [d.to_dict() for d in affected]}, human)


# -- rollouts -------------------------------------------------------------------------------------------

rollout_app = typer.Typer(
    help="Rollout campaigns: a published version sent to devices in waves, with a rate and abort rules.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")
WATCH_LIMIT_SECONDS = 24 * 3600


def _waves(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInputError(f"--waves {text!r}: give cumulative percentages such as 1,10,50,100") from None


def _rollout_table(summary: rollout.CampaignSummary) -> Group:
    title = f"rollout {summary.id}: {summary.model} {summary.version}"
    if summary.advisory_id:
        title += f" (fixes {summary.advisory_id})"
    head = Table.grid(padding=(0, 2))
    head.add_row("state", f"[bold]{summary.state}[/bold]" + (f"  {summary.reason}" if summary.reason else ""))
    head.add_row(
        "rules",
        f"{summary.options.max_per_minute}/min, abort at {summary.options.abort_failure_percent}% failed after "
        f"{summary.options.abort_min_finished} finished, timeout {summary.options.timeout_seconds} s, "
        f"{summary.options.retries} retries",
    )
    waves = Table("wave", "share", "devices", "progress", "succeeded", "failed", "in progress", "queued", title=title)
    for entry in summary.wave_counts():
        states: dict[str, int] = entry["states"]  # type: ignore[assignment]
        size = int(str(entry["devices"]))
        done = sum(n for state, n in states.items() if state in FINAL_STATES)
        failed = sum(states.get(s, 0) for s in ("failed", "timed_out", "rejected"))
        marker = " <" if int(str(entry["wave"])) == summary.current_wave + 1 and summary.state == "running" else ""
        waves.add_row(
            f"{entry['wave']}{marker}",
            f"{entry['percent']}%",
            str(size),
            ProgressBar(total=max(size, 1), completed=done, width=24),
            str(states.get("succeeded", 0)),
            str(failed),
            str(states.get("in_progress", 0)),
            str(states.get("queued", 0)),
        )
    counts = ", ".join(f"{n} {state}" for state, n in summary.counts.items() if n)
    return Group(head, waves, f"{summary.total} devices: {counts}")


def _jobs_table(summary: rollout.CampaignSummary) -> Table:
    table = Table("thing", "wave", "state", "attempt", "from", "reason")
    for job in summary.jobs:
        state = job.state + (f" ({job.substate})" if job.substate else "")
        if job.state == "queued" and job.released_at is not None:
            state += " (sent)"
        table.add_row(job.thing, str(job.wave + 1), state, str(job.attempt), job.from_version or "", job.reason)
    return table


@rollout_app.command("create")
@handle_errors
def rollout_create(
    model: Annotated[str | None, typer.Option("--model", help="The device model.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="The published version to send.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="The devices of this group and its sub-groups.")] = None,
    fix: Annotated[
        str | None,
        typer.Option("--fix", help="An advisory id: its affected devices, to the first version that fixes it."),
    ] = None,
    waves: Annotated[str, typer.Option("--waves", help="Cumulative percentages of the devices per wave.")] = ",".join(
        map(str, rollout.RolloutOptions().waves)
    ),
    max_per_minute: Annotated[int, typer.Option("--max-per-minute", help="Job documents sent per minute.")] = (
        rollout.RolloutOptions().max_per_minute
    ),
    abort_failure_percent: Annotated[
        int, typer.Option("--abort-failure-percent", help="Abort when this share of finished devices failed.")
    ] = rollout.RolloutOptions().abort_failure_percent,
    abort_min_finished: Annotated[
        int, typer.Option("--abort-min-finished", help="...once at least this many devices finished.")
    ] = rollout.RolloutOptions().abort_min_finished,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds a device has for its job.")] = (
        rollout.RolloutOptions().timeout_seconds
    ),
    retries: Annotated[int, typer.Option("--retries", help="Extra attempts for a failed or timed-out device.")] = (
        rollout.RolloutOptions().retries
    ),
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Start a campaign: --model M --version V --group G, or --fix ADVISORY_ID (optionally within --group).

    `thingward serve` runs it: waves start when the previous one finished and the abort rule holds.
    """
    options = rollout.RolloutOptions(
        _waves(waves), max_per_minute, abort_failure_percent, abort_min_finished, timeout, retries
    )
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        if fix is not None:
            if model is not None or version is not None:
                raise InvalidInputError("--fix chooses the model and version itself: leave out --model and --version")
            created = rollout.create_fix_rollout(session, cli_actor(), fix, options, group)
        else:
            if model is None or version is None or group is None:
                raise InvalidInputError("give --model, --version and --group (or --fix ADVISORY_ID)")
            created = rollout.create_rollout(session, cli_actor(), model, version, group, options)

    def human() -> None:
        console.print(
            f"rollout {created.id}: {created.model} {created.version} to {created.total} devices in waves of "
            f"{', '.join(map(str, created.wave_sizes))}; 'thingward ota rollout show {created.id} --watch' follows it"
        )
        for reason, names in created.skipped.items():
            console.print(f"  skipped {len(names)}: {reason}", markup=False, highlight=False)

    emit(as_json, created.to_dict(), human)


@rollout_app.command("list")
@handle_errors
def rollout_list(
    active: Annotated[bool, typer.Option("--active", help="Only running and paused rollouts.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """List rollouts, newest first."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        campaigns = rollout.list_rollouts(session, active)

    def human() -> None:
        table = Table("id", "model", "version", "target", "state", "devices", "succeeded", "failed", "created")
        for c in campaigns:
            failed = sum(c.counts.get(s, 0) for s in ("failed", "timed_out", "rejected"))
            target = f"group {c.group}" if c.group else ""
            target = f"{target} fix {c.advisory_id}".strip() if c.advisory_id else target
            table.add_row(
                str(c.id),
                c.model,
                c.version,
                target,
                c.state,
                str(c.total),
                str(c.counts.get("succeeded", 0)),
                str(failed),
                c.created_at.isoformat(timespec="seconds"),
            )
        console.print(table)

    emit(as_json, {"rollouts": [c.to_dict() for c in campaigns]}, human)


@rollout_app.command("show")
@handle_errors
def rollout_show(
    campaign_id: Annotated[int, typer.Argument(help="The rollout's id.")],
    jobs: Annotated[bool, typer.Option("--jobs", help="List every device's job too.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the rollout until it ends (Ctrl-C stops).")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a rollout's progress: per wave, per state, and (--jobs, --json) per device."""
    platform = open_platform(data_dir)

    def load() -> rollout.CampaignSummary:
        with platform.db.read() as session:
            return rollout.get_rollout(session, campaign_id)

    summary = load()
    if watch and not as_json:
        started = time.monotonic()
        with Live(_rollout_table(summary), console=console, refresh_per_second=2) as live:
            while not _settled(summary) and time.monotonic() - started < WATCH_LIMIT_SECONDS:
                time.sleep(1.0)
                summary = load()
                live.update(_rollout_table(summary))

    def human() -> None:
        if not watch:
            console.print(_rollout_table(summary))
        if jobs:
            console.print(_jobs_table(summary))

    emit(as_json, summary.to_dict(with_jobs=True), human)


def _settled(summary: rollout.CampaignSummary) -> bool:
    return summary.state not in {"running", "paused"} and not summary.counts.get("in_progress")


def _operator_action(action: str, campaign_id: int, data_dir: Path | None, as_json: bool) -> None:
    functions = {
        "pause": rollout.pause_rollout,
        "resume": rollout.resume_rollout,
        "cancel": rollout.cancel_rollout,
    }
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        summary = functions[action](session, cli_actor(), campaign_id)
    emit(as_json, summary.to_dict())


@rollout_app.command("pause")
@handle_errors
def rollout_pause(campaign_id: int, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Stop sending new jobs; devices already on theirs finish."""
    _operator_action("pause", campaign_id, data_dir, as_json)


@rollout_app.command("resume")
@handle_errors
def rollout_resume(campaign_id: int, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Carry on with a paused rollout."""
    _operator_action("resume", campaign_id, data_dir, as_json)


@rollout_app.command("cancel")
@handle_errors
def rollout_cancel(campaign_id: int, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """End a rollout: queued jobs are canceled (devices holding one are told); running ones finish."""
    _operator_action("cancel", campaign_id, data_dir, as_json)
