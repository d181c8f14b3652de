"""``python -m training.federated COMMAND``: the hospital federation's command line.

Model owner: ``certificates``, ``serve`` (the SuperLink), ``register`` (a hospital's key),
``run`` (a federated training run), ``contribution`` (each hospital's Data Shapley
value and payment share for a federated checkpoint). Hospital: ``keygen``, ``node`` (its SuperNode).
Everything on one machine: ``local``. ``python -m training.federated COMMAND --help``
lists each command's flags, each with its ``CRYPTO_DOCTOR_*`` variable.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from infra.settings import parse_settings
from training.federated.pki import make_hospital_key, make_server_certificates, pseudonym_for
from training.federated.processes import (
    FlowerError,
    SuperLinkFiles,
    flower_env,
    register,
    submit_run,
    superlink_command,
    supernode_command,
    write_connection,
)
from training.federated.settings import (
    CertificatesSettings,
    ContributionSettings,
    KeySettings,
    LocalSettings,
    NodeSettings,
    RegisterSettings,
    RunSettings,
    ServeSettings,
)
from training.mint import mint_passport

log = logging.getLogger("training.federated")


def certificates(argv: Sequence[str]) -> int:
    s = parse_settings(CertificatesSettings, argv, prog="training.federated certificates")
    ca, cert, _ = make_server_certificates(SuperLinkFiles(s.state).pki, list(s.hosts))
    print(f"wrote {cert} for {', '.join(s.hosts)}; give hospitals {ca}")
    return 0


def keygen(argv: Sequence[str]) -> int:
    s = parse_settings(KeySettings, argv, prog="training.federated keygen")
    public = make_hospital_key(s.key)
    print(f"private key {s.key} (keep it here); send {public} to the model owner")
    print(f"your pseudonym in the federation: {pseudonym_for(public)}")
    return 0


def serve(argv: Sequence[str]) -> int:
    s = parse_settings(ServeSettings, argv, prog="training.federated serve")
    files = SuperLinkFiles(s.state)
    if not (files.pki / "server.pem").is_file():
        raise FlowerError(
            f"no certificates in {files.pki}: run `python -m training.federated certificates` first"
        )
    write_connection(files.home, f"{_connect_host(s.host)}:{s.port}", files.pki / "ca.pem")
    command = superlink_command(files, s.host, s.port)
    os.execve(command[0], command, flower_env(files.home))


def register_hospital(argv: Sequence[str]) -> int:
    s = parse_settings(RegisterSettings, argv, prog="training.federated register")
    if s.public_key is None:
        raise FlowerError("--public-key is required")
    files = SuperLinkFiles(s.state)
    write_connection(files.home, s.superlink, files.pki / "ca.pem")
    pseudonym = s.pseudonym or pseudonym_for(s.public_key)
    node_id = register(files, s.public_key, pseudonym)
    print(f"registered {pseudonym} (node {node_id}) in {files.registry}")
    return 0


def node(argv: Sequence[str]) -> int:
    s = parse_settings(NodeSettings, argv, prog="training.federated node")
    if s.data_dir is None or not s.data_dir.is_dir():
        raise FlowerError(
            f"--data-dir must be the hospital's folder with yes/ and no/ (got {s.data_dir})"
        )
    command = supernode_command(
        superlink=s.superlink, root_cert=s.root_cert, key=s.key, data_dir=s.data_dir,
        clientappio_port=s.clientappio_port, simulate=s.simulate,
    )  # fmt: skip
    os.execve(command[0], command, flower_env(s.key.parent / "flwr-home"))


def run(argv: Sequence[str]) -> int:
    s = parse_settings(RunSettings, argv, prog="training.federated run")
    files = SuperLinkFiles(s.state)
    config = replace(
        s.config,
        out=str(Path(s.config.out).resolve()),
        eval_dir=str(Path(s.config.eval_dir).resolve()) if s.config.eval_dir else "",
        registry=str(files.registry.resolve()),
    )
    submit_run(files, config, sys.stdout, s.timeout_s)
    print(f"federated checkpoint: {config.out}")
    return mint_passport(Path(config.out)) if s.mint else 0


def local(argv: Sequence[str]) -> int:
    from training.federated.local import LocalFederation, LocalHospital
    from training.federated.sites import generate_eval, generate_site, site_profile

    s = parse_settings(LocalSettings, argv, prog="training.federated local")
    data = s.workdir / "data"
    hospitals = []
    for index in range(s.hospitals):
        folder = data / f"hospital-{index + 1}"
        generate_site(
            folder, site_profile(index), count=s.images_per_hospital, seed=s.data_seed * 100 + index
        )
        hospitals.append(LocalHospital(f"hospital-{index + 1}", folder))
    eval_dir = generate_eval(data / "eval", count=s.eval_images, seed=s.data_seed * 100 + 99)
    config = replace(
        s.config, out=str(Path(s.config.out).resolve()), eval_dir=str(eval_dir.resolve())
    )
    with LocalFederation(s.workdir / "processes", hospitals) as federation:
        log.info(
            "SuperLink on %s, %d SuperNodes; logs in %s",
            federation.address,
            len(hospitals),
            s.workdir / "processes" / "logs",
        )
        metrics = federation.run(config)
    ev = metrics["eval"]
    print(
        f"federated {config.strategy}{' + SecAgg+' if config.secagg else ''}, {config.rounds} rounds: "
        f"eval AUC {ev['auc']:.3f}, sensitivity {ev['sensitivity']:.3f}, specificity {ev['specificity']:.3f}, "
        f"ECE {ev['ece_after']:.3f}; checkpoint {config.out}"
    )
    return mint_passport(Path(config.out)) if s.mint else 0


def contribution(argv: Sequence[str]) -> int:
    from training.federated.contribution import ContributionError, measure

    s = parse_settings(ContributionSettings, argv, prog="training.federated contribution")
    try:
        record = measure(s.checkpoint, permutations=s.permutations, seed=s.seed)
    except ContributionError as exc:
        log.error("%s", exc)
        return 1
    if "refused" in record:
        log.warning("%s", record["refused"])
    print(f"{record['method']}; model version {record['model_version'][:16]}")
    print(f"{'hospital':<16} {'share':>7} {'Shapley':>9} {'loss-delta':>10} {'images':>7}")
    for name, h in sorted(record["hospitals"].items(), key=lambda kv: -kv[1]["share"]):
        shapley = "-" if h["shapley"] is None else f"{h['shapley']:+.4f}"
        tokens = "-" if h["loss_delta_tokens"] is None else f"{h['loss_delta_tokens']:+.4f}"
        print(f"{name:<16} {h['share']:>7.3f} {shapley:>9} {tokens:>10} {h['data_size']:>7}")
    return 0


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "certificates": certificates,
    "serve": serve,
    "register": register_hospital,
    "run": run,
    "keygen": keygen,
    "node": node,
    "local": local,
    "contribution": contribution,
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        print(f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args[0]](args[1:])
    except (FlowerError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
