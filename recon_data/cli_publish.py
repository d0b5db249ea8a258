"""`recon card` and `recon publish`: write a version's dataset card, publish it to the Hugging Face Hub.

Mounted by cli.py (its commands are added to the top-level app). Run alone as
`python -m recon_data.cli_publish ...` with the same error handling. This module parses arguments and
prints; the work is in cards.py and publish.py. It never prints or stores the HF token.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import typer

from .errors import ReconError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Dataset cards and Hugging Face Hub publishing.")

StoreOpt = typer.Option(None, "--store", show_default=False,
                        help="Store dir or URL, e.g. s3://bucket/prefix (default: $RECON_STORE, else recon-store).")
LicenseOpt = typer.Option(None, "--license", help="License id for the card header (default: the manifest's "
                          "extra.license, else 'other').", show_default=False)
TemplatesOpt = typer.Option(None, "--templates", help="Template directory to find the sources of user templates "
                            "(repeatable; the pipeline's templates_dirs are tried too).")


def _store(path: str | None):
    from .store import Store, default_store_root

    return Store(path or default_store_root())


@app.command()
def card(
    ref: str = typer.Argument(..., help="Dataset version: NAME (latest) or NAME@V.", show_default=False),
    out: Path | None = typer.Option(None, "--out", help="Write the card here instead of printing it."),
    store: str | None = StoreOpt,
    license: str | None = LicenseOpt,
    template: Path | None = typer.Option(None, "--template", help="Your own card template (sandboxed Jinja); "
                                         "it may include the built-in partials."),
    templates: list[Path] | None = TemplatesOpt,
) -> None:
    """Render the Hugging Face dataset card (README.md with YAML header) for a dataset version."""
    from .cards import render_card

    text = render_card(_store(store), ref, license=license, template=template, template_dirs=templates or [])
    if out is None:
        sys.stdout.write(text)
        return
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ReconError(f"cannot write card to {out}: {err.strerror or err}") from None
    typer.echo(f"wrote card for {ref} to {out}")


@app.command()
def publish(
    ref: str = typer.Argument(..., help="Dataset version: NAME (latest) or NAME@V.", show_default=False),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo ORG/NAME (created if missing).",
                                show_default=False),
    private: bool = typer.Option(False, "--private", help="Create the repo private (only when it is created)."),
    dry_run: Path | None = typer.Option(None, "--dry-run", help="Write exactly the folder that would be "
                                        "uploaded to DIR and stop.", metavar="DIR"),
    store: str | None = StoreOpt,
    license: str | None = LicenseOpt,
    templates: list[Path] | None = TemplatesOpt,
) -> None:
    """Publish a dataset version (card + Parquet shards) to a Hub dataset repo. The token comes from
    HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another Hub. An unchanged version uploads nothing."""
    from .publish import publish as do_publish

    r = do_publish(_store(store), ref, repo_id, private=private, dry_run_dir=dry_run, license=license,
                   template_dirs=templates or [])
    if r["status"] == "dry-run":
        typer.echo(f"dry run: wrote {len(r['files'])} file(s) for {r['ref']} to {r['folder']} "
                   f"(nothing uploaded); load it with datasets.load_dataset('{r['folder']}')")
        for f in r["files"]:
            typer.echo(f"  {f['path']}  {f['bytes']} bytes  sha256 {f['sha256']}")
    elif r["status"] == "up to date":
        typer.echo(f"{r['ref']} is up to date on {r['url']} (revision {r['revision']}); nothing uploaded")
    else:
        typer.echo(f"published {r['ref']} to {r['url']}: {len(r['uploaded'])} file(s) uploaded, "
                   f"{len(r['deleted'])} stale file(s) removed")
        typer.echo(f"revision {r['revision']}")
    if r["status"] != "dry-run":
        typer.echo(f"record: {r['record']}")


def main() -> None:
    try:
        app()
    except ReconError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
