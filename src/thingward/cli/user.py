"""`thingward user ...`: people, their user groups, and the things shared with those groups."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.table import Table

from thingward.accounts import sharing
from thingward.accounts.service import Accounts, UserInfo, user_by_email
from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.errors import InvalidInputError
from thingward.platform import Platform, cli_actor
from thingward.registry import things

app = typer.Typer(help="People who use the app: accounts, user groups, sharing things.", no_args_is_help=True)
group_app = typer.Typer(help="User groups (a household, a support team): things are shared with them.")
app.add_typer(group_app, name="group")


def _accounts(platform: Platform) -> Accounts:
    return Accounts.for_platform(platform)


@app.command("add")
@handle_errors
def add(
    email: str,
    admin: Annotated[bool, typer.Option("--admin", help="An operator: sees every thing and the admin pages.")] = False,
    name: Annotated[str, typer.Option("--name", help="The person's name (shown in the app).")] = "",
    password_env: Annotated[
        str | None,
        typer.Option(
            "--password-env",
            help="Take the password from this environment variable instead of generating one "
            "(it must pass the password policy).",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an account. Without --password-env a random password is printed once and must be changed
    at the first sign-in. There are no default accounts: this is how the first admin is made."""
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            raise InvalidInputError(f"--password-env {password_env}: that environment variable is not set or empty")
    platform = open_platform(data_dir)
    info, generated = _accounts(platform).create_user(cli_actor(), email, password, name=name, admin=admin)
    data: dict[str, Any] = {**info.to_dict(), "password": generated}

    def human() -> None:
        console.print(f"created {'admin ' if admin else ''}[bold]{info.email}[/bold]")
        if generated:
            console.print("password (shown once; to be changed at the first sign-in):")
            console.print(f"  [bold]{generated}[/bold]", soft_wrap=True)
        if admin:
            console.print("2FA is required for admins: they set it up at their first sign-in.")

    emit(as_json, data, human)


@app.command("list")
@handle_errors
def list_(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List accounts with their role, 2FA and state."""
    users = _accounts(open_platform(data_dir)).list_users()

    def human() -> None:
        table = Table("email", "name", "admin", "2FA", "state", "groups")
        for u in users:
            state = "disabled" if u.disabled else ("must change password" if u.must_change_password else "active")
            table.add_row(
                u.email,
                u.display_name,
                "yes" if u.is_admin else "",
                "on" if u.totp_enabled else "off",
                state,
                ", ".join(u.groups),
            )
        console.print(table)

    emit(as_json, {"users": [u.to_dict() for u in users]}, human)


@app.command("show")
@handle_errors
def show(email: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """One account: role, 2FA, groups, live sessions, API tokens (never a secret)."""
    accounts = _accounts(open_platform(data_dir))
    info = accounts.get_user(email)
    sessions = accounts.list_sessions(info.id)
    tokens = accounts.list_api_tokens(info.id)
    data: dict[str, Any] = {
        **info.to_dict(),
        "requirements": list(accounts.requirements(info)),
        "recovery_codes_left": accounts.recovery_codes_left(info.id) if info.totp_enabled else None,
        "sessions": [
            {
                "id": s.id,
                "created_at": s.created_at.isoformat(),
                "last_seen_at": s.last_seen_at.isoformat(),
                "ip": s.ip,
                "user_agent": s.user_agent,
            }
            for s in sessions
        ],
        "api_tokens": [
            {
                "id": t.id,
                "name": t.name,
                "scopes": list(t.scopes),
                "expires_at": t.expires_at.isoformat(),
                "revoked": t.revoked,
            }
            for t in tokens
        ],
    }
    emit(as_json, data)


def _state(info: UserInfo) -> dict[str, Any]:
    return {"email": info.email, "admin": info.is_admin, "disabled": info.disabled}


@app.command("disable")
@handle_errors
def disable(
    email: str,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the account again instead.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Disable an account: its sessions end at once and its API tokens stop working."""
    info = _accounts(open_platform(data_dir)).set_disabled(cli_actor(), email, not enable)
    emit(as_json, _state(info))


@app.command("admin")
@handle_errors
def admin(
    email: str,
    revoke: Annotated[bool, typer.Option("--revoke", help="Take admin away instead.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Make an account an admin (or not): a change of privilege ends its sessions."""
    info = _accounts(open_platform(data_dir)).set_admin(cli_actor(), email, not revoke)
    emit(as_json, _state(info))


@app.command("unlock")
@handle_errors
def unlock(email: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Lift a lockout after failed sign-ins (a password reset lifts it too)."""
    was_locked = _accounts(open_platform(data_dir)).unlock(cli_actor(), email)
    emit(as_json, {"email": email, "was_locked": was_locked})


@app.command("reset-password")
@handle_errors
def reset_password(email: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Set a new random password (printed once, to be changed at the next sign-in) for someone who cannot
    use the mailed reset link. Ends their sessions and lifts a lockout."""
    password = _accounts(open_platform(data_dir)).admin_reset_password(cli_actor(), email)

    def human() -> None:
        console.print(f"new password for [bold]{email}[/bold] (shown once; to be changed at the next sign-in):")
        console.print(f"  [bold]{password}[/bold]", soft_wrap=True)

    emit(as_json, {"email": email, "password": password}, human)


@app.command("reset-2fa")
@handle_errors
def reset_2fa(email: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Turn 2FA off for someone who lost both the phone and the recovery codes (check who they are first).
    Ends their sessions; they enrol again at the next sign-in."""
    _accounts(open_platform(data_dir)).admin_reset_totp(cli_actor(), email)
    emit(as_json, {"email": email, "totp_enabled": False})


@app.command("invite")
@handle_errors
def invite(email: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Invite someone to sign up (for [accounts] signup = "invite"): mails the link if [smtp] is set, and
    prints it once."""
    platform = open_platform(data_dir)
    token = _accounts(platform).invite(cli_actor(), email)
    link = f"{platform.settings.accounts.public_url}/signup?invite={token}"
    emit(
        as_json,
        {"email": email, "invite_link": link, "expires_in_seconds": platform.settings.accounts.invite_ttl_seconds},
    )


@group_app.command("add")
@handle_errors
def group_add(
    name: str,
    description: Annotated[str, typer.Option(help='What the group is ("the Smith household").')] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a user group."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        sharing.add_user_group(session, cli_actor(), name, description)
    emit(as_json, {"name": name, "description": description})


@group_app.command("list")
@handle_errors
def group_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List user groups with their members."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        rows: list[dict[str, Any]] = [
            {"name": g.name, "description": g.description, "members": sharing.group_members(session, g.name)}
            for g in sharing.list_user_groups(session)
        ]

    def human() -> None:
        table = Table("name", "members", "description")
        for r in rows:
            table.add_row(r["name"], ", ".join(r["members"]) or "-", r["description"])
        console.print(table)

    emit(as_json, {"groups": rows}, human)


@group_app.command("member")
@handle_errors
def group_member(
    group: str,
    email: str,
    remove: Annotated[bool, typer.Option("--remove", help="Take the person out of the group instead.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Put a person into a user group (they see what is shared with it), or take them out."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        user = user_by_email(session, email)
        if remove:
            sharing.remove_member(session, cli_actor(), group, user)
        else:
            sharing.add_member(session, cli_actor(), group, user)
    emit(as_json, {"group": group, "email": user.email, "member": not remove})


@app.command("share")
@handle_errors
def share(
    thing: str,
    group: str,
    role: Annotated[str, typer.Option("--role", help="owner (see and control) or viewer (see only).")] = "viewer",
    remove: Annotated[bool, typer.Option("--remove", help="Stop sharing the thing with the group.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Share a thing with a user group (never with one person), or stop sharing it."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        if remove:
            sharing.unshare_thing(session, cli_actor(), thing, group)
        else:
            sharing.share_thing(session, cli_actor(), thing, group, role)
        shares = sharing.shares_of(session, things.get_thing(session, thing))
    emit(as_json, {"thing": thing, "shared_with": [{"group": g, "role": r} for g, r in shares]})
