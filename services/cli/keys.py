"""`stepaudio keys new ID [--role user|admin|metrics]`: a new API key and its config entry.

The key is printed once; the controller is configured only with its SHA-256 (the entry).
"""

from __future__ import annotations

import argparse
import json

from services.controller.auth import key_entry, new_api_key


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="API keys for the controller")
    commands = parser.add_subparsers(dest="keys_command", required=True)
    new = commands.add_parser("new", help="print a new key and its CONTROLLER_AUTH__KEYS entry")
    new.add_argument("id", help="the key's name (1..64 of A-Z a-z 0-9 _ . -)")
    new.add_argument("--role", choices=("user", "admin", "metrics"), default="user")
    new.set_defaults(func=_new)


def _new(args: argparse.Namespace) -> int:
    key = new_api_key()
    print(f"key (shown once, give it to the client): {key}")
    print("entry (add it to the JSON list in CONTROLLER_AUTH__KEYS or the keys file):")
    print(json.dumps(key_entry(args.id, key, args.role)))
    return 0
