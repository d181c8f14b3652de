"""A whole federation on one machine, as real processes on 127.0.0.1: demo, tests, benchmark.

One SuperLink (TLS, SuperNode authentication) and one SuperNode per hospital, each with its
own key, its own data folder and its own FLWR_HOME; then ``flwr run``. Exactly what hospitals
on other hosts run, minus the network between them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from infra.net import free_port
from training.federated.pki import make_hospital_key, make_server_certificates
from training.federated.processes import (
    FlowerError,
    SuperLinkFiles,
    clean,
    flower_env,
    register,
    start,
    stop,
    submit_run,
    superlink_command,
    supernode_command,
    wait_for_port,
    write_connection,
)
from training.federated.protocol import RunConfig

log = logging.getLogger("training.federated")


@dataclass
class LocalHospital:
    name: str
    data_dir: Path
    simulate: str = "none"
    #: False: the node starts with a key the federation never registered (it is refused)
    registered: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def log_path(self, workdir: Path) -> Path:
        return workdir / "logs" / f"{self.name}.log"


class LocalFederation:
    def __init__(self, workdir: Path, hospitals: list[LocalHospital]) -> None:
        self.workdir = Path(workdir)
        self.files = SuperLinkFiles(self.workdir / "model-owner")
        self.hospitals = hospitals
        self.port = 0
        self.superlink: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        clean(self.workdir / "model-owner")
        clean(self.workdir / "hospitals")
        make_server_certificates(self.files.pki, ["127.0.0.1", "localhost"])
        self.port = free_port()
        write_connection(self.files.home, self.address, self.files.pki / "ca.pem")
        self.superlink = start(
            superlink_command(self.files, "127.0.0.1", self.port),
            flower_env(self.files.home),
            self.workdir / "logs" / "superlink.log",
        )
        wait_for_port("127.0.0.1", self.port, 60, self.superlink)
        for hospital in self.hospitals:
            key = self.workdir / "hospitals" / hospital.name / "node.key"
            public = make_hospital_key(key)
            if hospital.registered:
                register(self.files, public, hospital.name)
            self.start_node(hospital)

    def start_node(self, hospital: LocalHospital) -> None:
        home = self.workdir / "hospitals" / hospital.name
        hospital.process = start(
            supernode_command(
                superlink=self.address,
                root_cert=self.files.pki / "ca.pem",
                key=home / "node.key",
                data_dir=hospital.data_dir,
                clientappio_port=free_port(),
                simulate=hospital.simulate,
            ),
            self._node_env(home / "flwr-home"),
            hospital.log_path(self.workdir),
        )

    def _node_env(self, home: Path) -> dict[str, str]:
        """A SuperNode's environment: its share of this host's cores for torch.

        Every hospital here shares one machine. Each ClientApp would otherwise start as many
        OpenMP threads as there are cores, and N of them spinning on the same cores made a
        round many times slower (measured: 8 ClientApps on 2 cores took over 50 CPU seconds
        each for 3 s of training). A caller's own ``OMP_NUM_THREADS`` wins.
        """
        env = flower_env(home)
        threads = str(max(1, (os.cpu_count() or 1) // max(1, len(self.hospitals))))
        env.setdefault("OMP_NUM_THREADS", threads)
        env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
        return env

    def kill(self, name: str) -> None:
        """SIGKILL a hospital's SuperNode and its ClientApp (a dropout)."""
        for hospital in self.hospitals:
            if hospital.name == name and hospital.process is not None:
                os.killpg(hospital.process.pid, 9)
                hospital.process.wait()

    def run(self, run: RunConfig, timeout: float = 3600) -> dict[str, Any]:
        """Submit ``run`` (its registry filled in); return the metrics record it wrote."""
        run = replace(run, registry=str(self.files.registry.resolve()))
        with (self.workdir / "logs" / "run.log").open("a") as handle:
            submit_run(self.files, run, handle, timeout)
        metrics_path = Path(run.out).with_suffix("").with_name(Path(run.out).stem + ".metrics.json")
        metrics: dict[str, Any] = json.loads(metrics_path.read_text())
        return metrics

    def stop(self) -> None:
        for hospital in self.hospitals:
            if hospital.process is not None:
                stop(hospital.process)
        if self.superlink is not None:
            stop(self.superlink)

    def node_log(self, name: str) -> str:
        for hospital in self.hospitals:
            if hospital.name == name:
                path = hospital.log_path(self.workdir)
                return path.read_text(errors="replace") if path.exists() else ""
        raise FlowerError(f"no hospital {name!r}")
