"""`perk wallet ...`: encrypted signing keys on this machine.

A wallet is a keystore file (client.keystore) named `<name>.json` in the
wallet folder: `--dir`, else $PERK_WALLET_DIR, else ~/.perk/wallets. The
password comes from `--password-file`, else $PERK_PASSWORD, else a prompt;
scripts use the first two, since a prompt needs a terminal.

Commands that sign (`perk transfer --wallet W ...`) find W the same way, or
take a path to a keystore file.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from pathlib import Path

from client.keys import Keypair
from client.keystore import (
    KeystoreError,
    load_keystore,
    read_keystore_info,
    save_keystore,
)
from node.cli_common import (
    EXIT_OK,
    CliError,
    Output,
    json_parent,
    print_table,
)

PASSWORD_ENV = "PERK_PASSWORD"
WALLET_DIR_ENV = "PERK_WALLET_DIR"
WALLET_SUFFIX = ".json"
# A wallet name becomes a file name: no separators, no leading dot.
_WALLET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def default_wallet_dir() -> Path:
    configured = os.environ.get(WALLET_DIR_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".perk" / "wallets"


def wallet_dir(args: argparse.Namespace) -> Path:
    given = getattr(args, "wallet_dir", None)
    return Path(given) if given else default_wallet_dir()


def check_wallet_name(name: str) -> str:
    if not _WALLET_NAME.fullmatch(name):
        raise CliError(
            f"invalid wallet name {name!r}: use up to 64 letters, digits, '_', "
            "'.' or '-', not starting with '.' or '-'"
        )
    return name


def wallet_path(args: argparse.Namespace, name: str) -> Path:
    """The keystore for `name`: a file path as given, else a wallet by name."""
    if os.sep in name or name.endswith(WALLET_SUFFIX):
        path = Path(name)
    else:
        path = wallet_dir(args) / (check_wallet_name(name) + WALLET_SUFFIX)
    if not path.is_file():
        raise CliError(f"no wallet {name!r} (looked for {path})")
    return path


def read_password(args: argparse.Namespace, confirm: bool = False) -> str:
    password_file = getattr(args, "password_file", None)
    if password_file:
        try:
            text = Path(password_file).read_text()
        except OSError as exc:
            raise CliError(
                f"cannot read password file {password_file}: {exc.strerror}"
            ) from None
        # Files written by editors and `echo` end with a newline; it is no
        # part of the password.
        return text.rstrip("\r\n")
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin.isatty():
        raise CliError(
            f"no password: set ${PASSWORD_ENV} or use --password-file "
            "(no terminal to prompt on)"
        )
    password = getpass.getpass("Wallet password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise CliError("the passwords do not match")
    return password


def load_signer(args: argparse.Namespace) -> Keypair:
    """The key named by --wallet, decrypted with the password."""
    path = wallet_path(args, args.wallet)
    password = read_password(args)
    try:
        return load_keystore(path, password)
    except KeystoreError as exc:
        raise CliError(f"cannot open wallet {args.wallet!r}: {exc}") from None


def add_password_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"read the wallet password from FILE (else ${PASSWORD_ENV} or a prompt)",
    )


def add_wallet_dir_option(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument(
        flag,
        dest="wallet_dir",
        metavar="DIR",
        help=f"wallet folder (default: ${WALLET_DIR_ENV} or ~/.perk/wallets)",
    )


# --- commands -------------------------------------------------------------------------


def create_wallet(args: argparse.Namespace, out: Output) -> int:
    name = check_wallet_name(args.name)
    folder = wallet_dir(args)
    path = folder / (name + WALLET_SUFFIX)
    if path.exists():
        raise CliError(f"wallet {name!r} already exists at {path}")
    password = read_password(args, confirm=True)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    keypair = Keypair.generate()
    try:
        save_keystore(path, keypair, password, name)
    except (KeystoreError, ValueError) as exc:
        raise CliError(f"cannot create wallet: {exc}") from None
    doc = {"name": name, "address": keypair.address, "path": str(path)}
    out.emit(doc)
    return EXIT_OK


def show_wallet(args: argparse.Namespace, out: Output) -> int:
    path = wallet_path(args, args.name)
    try:
        info = read_keystore_info(path)
    except (KeystoreError, OSError) as exc:
        raise CliError(f"cannot read wallet {args.name!r}: {exc}") from None
    out.emit({"name": info["name"], "address": info["address"], "path": str(path)})
    return EXIT_OK


def list_wallets(args: argparse.Namespace, out: Output) -> int:
    folder = wallet_dir(args)
    rows = []
    if folder.is_dir():
        for path in sorted(folder.glob("*" + WALLET_SUFFIX)):
            try:
                info = read_keystore_info(path)
            except (KeystoreError, OSError):
                # Another JSON file in the folder is not an error worth failing
                # the whole listing for.
                continue
            rows.append(
                {
                    "name": path.name[: -len(WALLET_SUFFIX)],
                    "address": info["address"],
                    "label": info["name"],
                }
            )

    def human() -> None:
        if rows:
            print_table(rows, ["name", "address"])
        else:
            print(f"no wallets in {folder}")

    out.emit({"dir": str(folder), "wallets": rows}, human)
    return EXIT_OK


def add_wallet_parsers(commands: argparse._SubParsersAction) -> None:
    wallet = commands.add_parser(
        "wallet", help="create and list signing keys", parents=[json_parent()]
    )
    sub = wallet.add_subparsers(dest="wallet_command", metavar="COMMAND")
    sub.required = True

    create = sub.add_parser(
        "create", help="create a new encrypted key", parents=[json_parent()]
    )
    create.add_argument("--name", required=True, help="wallet name (file name)")
    add_wallet_dir_option(create, "--dir")
    add_password_file_option(create)
    create.set_defaults(handler=create_wallet)

    show = sub.add_parser(
        "show", help="show a wallet's address", parents=[json_parent()]
    )
    show.add_argument("name", help="wallet name or keystore path")
    add_wallet_dir_option(show, "--dir")
    show.set_defaults(handler=show_wallet)

    listing = sub.add_parser("list", help="list wallets", parents=[json_parent()])
    add_wallet_dir_option(listing, "--dir")
    listing.set_defaults(handler=list_wallets)
