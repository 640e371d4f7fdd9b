"""`fedmllm-certs`: the federation's CA, the CSR flow, renewal, revocation and the demo mode."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from shared.cli import Parser, argv_or_sys, config_error, run_command
from shared.errors import CertificateError
from shared.pki.authority import CA_DAYS, LEAF_DAYS
from shared.pki.central import create_federation
from shared.pki.crl import CRL_FILE, REASONS
from shared.pki.identity import CLIENT_ROLES
from shared.pki.issuance import Destination, Issuance, renew, revoke_name, sign_request
from shared.pki.registry import IssuanceRegistry
from shared.pki.request import create_request

CENTRAL_NOTE = (
    "demo mode: every private key is made here, in {out}; in production each silo makes its own "
    "key (fedmllm-certs request) and the admin signs its request (fedmllm-certs sign)"
)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _central(argv: list[str]) -> None:
    parser = Parser(
        prog="fedmllm-certs",
        description="Demo mode: make the CA and every key and certificate in one directory "
        "(rerun to add silos; existing keys are kept). For a real federation use the "
        "subcommands: init, request, sign, renew, revoke, list (fedmllm-certs init -h, ...).",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the PEM files")
    _add_hosts(parser)
    parser.add_argument("--silos", default="", help="comma-separated silo names (their identity)")
    parser.add_argument("--admins", default="admin", help="comma-separated admin names")
    _add_days(parser, ca=True)
    args = parser.parse_args(argv)
    print(CENTRAL_NOTE.format(out=args.out))
    notes = create_federation(
        args.out,
        hosts=_split(args.hosts),
        silos=_split(args.silos),
        admins=_split(args.admins),
        days=args.days,
        ca_days=args.ca_days,
    )
    print("\n".join([*notes, f"certificates in {args.out}"]))


def _add_hosts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hosts",
        default="localhost,127.0.0.1",
        help="comma-separated DNS names / IPs the coordinator is reached at (its SANs); a "
        "changed list re-issues the coordinator's certificate",
    )


def _add_days(parser: argparse.ArgumentParser, *, ca: bool = False) -> None:
    parser.add_argument("--days", type=int, default=LEAF_DAYS, help="validity of new certificates")
    if ca:
        parser.add_argument("--ca-days", type=int, default=CA_DAYS, help="validity of a new CA")


def _add_destination(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator-address",
        help="HOST:PORT written in the bundle (default: the coordinator certificate's first "
        "host, port 50051)",
    )
    parser.add_argument("--out", type=Path, help="bundle directory (default: PKI/bundles/NAME)")


def _destination(args: argparse.Namespace) -> Destination:
    return Destination(bundle_dir=args.out, address=args.coordinator_address)


def _report(issuance: Issuance, verb: str) -> None:
    record = issuance.record
    print(
        "\n".join(
            [
                *issuance.notes,
                f"{verb} {record.name} ({record.role}): serial {record.serial:x}, valid until "
                f"{record.not_after:%Y-%m-%d}, public-key fingerprint "
                f"{record.public_key_fingerprint}",
                issuance.bundle.next_step(),
            ]
        )
    )


def _init(args: argparse.Namespace) -> None:
    notes = create_federation(
        args.ca_dir,
        hosts=_split(args.hosts),
        silos=[],
        admins=[],
        days=args.days,
        ca_days=args.ca_days,
    )
    print(
        "\n".join(
            [
                *notes,
                f"CA and coordinator certificate in {args.ca_dir}; next: copy coordinator.pem, "
                "coordinator.key and ca.pem to the coordinator host, keep ca.key offline, and "
                f"sign each request with fedmllm-certs sign --ca-dir {args.ca_dir}",
            ]
        )
    )


def _request(args: argparse.Namespace) -> None:
    made = create_request(name=args.name, out=args.out)
    state = "made" if made.new_key else "kept the existing"
    print(
        f"{state} key {made.key} (mode 0600; it never leaves this host), public-key fingerprint "
        f"{made.public_key_fingerprint}\n"
        f"next: send {made.csr} to the federation's admin and confirm the fingerprint with them"
    )


def _sign(args: argparse.Namespace) -> None:
    issued = sign_request(
        args.ca_dir, args.request, role=args.role, days=args.days, to=_destination(args)
    )
    _report(issued, "signed")


def _renew(args: argparse.Namespace) -> None:
    _report(renew(args.ca_dir, name=args.name, days=args.days, to=_destination(args)), "renewed")


def _revoke(args: argparse.Namespace) -> None:
    for record in revoke_name(args.ca_dir, name=args.name, reason=args.reason):
        print(f"revoked {record.name}: serial {record.serial:x}, fingerprint {record.fingerprint}")
    print(
        f"next: copy {args.ca_dir / CRL_FILE} to the coordinator (its --crl) and to any other "
        f"verifier; a running coordinator cuts {args.name} off at once with "
        f"fedmllm-admin revoke --silo {args.name}"
    )


def _list(args: argparse.Namespace) -> None:
    for r in IssuanceRegistry(ca_dir=args.ca_dir).records():
        print(
            f"{r.name}\t{r.role}\t{r.serial:x}\t{r.not_after:%Y-%m-%d}\t{r.status}\t{r.fingerprint}"
        )


_COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], None]]] = {
    "init": ("admin: create the CA and the coordinator's certificate", _init),
    "request": ("silo or admin: make your key and a signing request", _request),
    "sign": ("admin: certify a request and write the recipient's bundle", _sign),
    "renew": ("admin: re-issue a certificate for the same key", _renew),
    "revoke": ("admin: revoke a name's certificates and rewrite crl.pem", _revoke),
    "list": ("admin: every certificate issued, with its status", _list),
}


def _subcommands() -> argparse.ArgumentParser:
    parser = Parser(prog="fedmllm-certs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, (help_text, handler) in _COMMANDS.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        parsers[name].set_defaults(handler=handler)
        if name != "request":
            parsers[name].add_argument(
                "--ca-dir", type=Path, required=True, help="the PKI directory"
            )
    _add_hosts(parsers["init"])
    _add_days(parsers["init"], ca=True)
    parsers["request"].add_argument("--name", required=True, help="your identity, e.g. hospital-a")
    parsers["request"].add_argument("--out", type=Path, required=True, help="where your key stays")
    parsers["sign"].add_argument("--role", required=True, choices=list(CLIENT_ROLES))
    parsers["sign"].add_argument("request", type=Path, help="the NAME.csr received")
    parsers["renew"].add_argument("--name", required=True)
    for name in ("sign", "renew"):
        _add_days(parsers[name])
        _add_destination(parsers[name])
    parsers["revoke"].add_argument("--name", required=True)
    parsers["revoke"].add_argument("--reason", choices=REASONS, default="unspecified")
    return parser


def _main(args_list: list[str]) -> int:
    try:
        if args_list and args_list[0] in _COMMANDS:
            args = _subcommands().parse_args(args_list)
            args.handler(args)
        else:
            _central(args_list)
    except CertificateError as exc:
        raise config_error(str(exc)) from None
    except OSError as exc:
        raise config_error(f"{exc.filename or 'a file'}: {exc.strerror or exc}") from None
    return 0


def main(argv: list[str] | None = None) -> None:
    """Exit 0 done, 2 usage, 4 refused (the message says why and what to do)."""
    run_command("fedmllm-certs", _main, argv_or_sys(argv))
