"""`thingward-tuf-client`: the device's TUF client behind the CLI protocol of the TUF conformance suite.

    thingward-tuf-client --metadata-dir D init ROOT_JSON
    thingward-tuf-client --metadata-dir D --metadata-url U refresh
    thingward-tuf-client --metadata-dir D --metadata-url U --target-name P --target-base-url T --target-dir O download

Exit 0 on success and 1 on any failure; trusted metadata is kept in D as `root.json`, `timestamp.json`,
`snapshot.json`, `targets.json`. `--ca-certificate` pins HTTPS to the platform CA, as the device does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater, UpdaterConfig

from thingward.device.update import HttpFetcher
from thingward.pki.files import write_atomic

app = typer.Typer(
    name="thingward-tuf-client",
    help="TUF client (python-tuf ngclient) with the conformance suite's CLI: init, refresh, download.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class _Options:
    metadata_dir: Path
    metadata_url: str | None
    target_name: str | None
    target_base_url: str | None
    target_dir: Path | None
    ca_certificate: Path | None
    as_json: bool


_options = _Options()


@app.callback()
def main(
    metadata_dir: Annotated[Path, typer.Option("--metadata-dir", help="Where trusted metadata is kept.")],
    metadata_url: Annotated[str | None, typer.Option("--metadata-url", help="Base URL of the metadata.")] = None,
    target_name: Annotated[str | None, typer.Option("--target-name", help="The TUF target path to fetch.")] = None,
    target_base_url: Annotated[str | None, typer.Option("--target-base-url", help="Base URL of targets.")] = None,
    target_dir: Annotated[Path | None, typer.Option("--target-dir", help="Where verified targets go.")] = None,
    ca_certificate: Annotated[
        Path | None, typer.Option("--ca-certificate", help="Trust only this CA for HTTPS (the platform CA).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")] = False,
) -> None:
    _options.metadata_dir = metadata_dir
    _options.metadata_url = metadata_url
    _options.target_name = target_name
    _options.target_base_url = target_base_url
    _options.target_dir = target_dir
    _options.ca_certificate = ca_certificate
    _options.as_json = as_json


def _done(result: dict[str, Any]) -> None:
    if _options.as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(" ".join(f"{k}={v}" for k, v in result.items()))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    if _options.as_json:
        sys.stdout.write(json.dumps({"error": message}) + "\n")
    return typer.Exit(1)


def _require(value: str | Path | None, option: str) -> str:
    if value is None:
        raise _fail(f"{option} is required for this command")
    return str(value)


def _updater(fetcher: HttpFetcher) -> Updater:
    return Updater(
        metadata_dir=str(_options.metadata_dir),
        metadata_base_url=_require(_options.metadata_url, "--metadata-url"),
        target_dir=str(_options.target_dir) if _options.target_dir else None,
        target_base_url=_options.target_base_url,
        fetcher=fetcher,
        config=UpdaterConfig(app_user_agent="thingward-tuf-client"),
        bootstrap=None,  # the root.json given to `init`, as advanced by verified rotations since
    )


@app.command("init")
def init(trusted_root: Annotated[Path, typer.Argument(help="The initial trusted root.json.")]) -> None:
    """Trust TRUSTED_ROOT: it becomes METADATA_DIR/root.json. Nothing is fetched."""
    try:
        data = trusted_root.read_bytes()
        Metadata.from_bytes(data)
    except (OSError, ValueError) as e:
        raise _fail(f"{trusted_root} is not a readable root.json: {e}") from None
    write_atomic(_options.metadata_dir / "root.json", data)
    _done({"initialised": str(_options.metadata_dir)})


@app.command("refresh")
def refresh() -> None:
    """Update the top-level metadata by the TUF client workflow."""
    fetcher = HttpFetcher(_options.ca_certificate)
    try:
        updater = _updater(fetcher)
        updater.refresh()
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError, ValueError) as e:
        raise _fail(f"refresh failed ({type(e).__name__}): {e}") from None
    finally:
        fetcher.close()
    _done({"refreshed": str(_options.metadata_dir)})


@app.command("download")
def download() -> None:
    """Refresh, then fetch and verify one target into the target dir (kept if already there and valid)."""
    name = _require(_options.target_name, "--target-name")
    _require(_options.target_dir, "--target-dir")
    _require(_options.target_base_url, "--target-base-url")
    fetcher = HttpFetcher(_options.ca_certificate)
    try:
        updater = _updater(fetcher)
        updater.refresh()
        info = updater.get_targetinfo(name)
        if info is None:
            raise _fail(f"no signed target named {name!r}")
        path = updater.find_cached_target(info)
        cached = path is not None
        if path is None:
            path = updater.download_target(info)
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError, ValueError) as e:
        raise _fail(f"download failed ({type(e).__name__}): {e}") from None
    finally:
        fetcher.close()
    _done({"target": name, "path": path, "cached": cached})


if __name__ == "__main__":
    app()
