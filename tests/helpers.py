"""Synthetic Oxford-IIIT-Pet-shaped data and a Range-capable HTTP server for tests."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import hashlib
import http.server
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from petseg.config import AugmentConfig, Params, PrepareConfig, parse_params

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"  # real photos bundled with the repository: every test that needs real data reads these
BREEDS = (("Persian", 1, 1), ("beagle", 2, 2))  # (breed, class id, species id: 1 cat, 2 dog)


def draw_sample(rng: random.Random, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """A 'pet' (bright ellipse) on a dark noisy background, and its trimap with a boundary ring."""
    noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 60, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    trimap = Image.new("L", (width, height), 2)
    box = (
        rng.randint(2, width // 4),
        rng.randint(2, height // 4),
        rng.randint(3 * width // 4, width - 3),
        rng.randint(3 * height // 4, height - 3),
    )
    ImageDraw.Draw(image).ellipse(box, fill=(rng.randint(180, 255), rng.randint(120, 200), 60))
    draw = ImageDraw.Draw(trimap)
    draw.ellipse(box, fill=1)
    draw.ellipse(box, outline=3, width=2)
    return image, trimap


def make_tree(root: Path, per_breed: int = 12, test_per_breed: int = 4, seed: int = 0) -> dict[str, list[str]]:
    """Write ``root/images`` and ``root/annotations`` in the official layout; return the list names."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"trainval": [], "test": []}
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for breed, class_id, species in BREEDS:
        for i in range(1, per_breed + test_per_breed + 1):
            name = f"{breed}_{i}"
            image, trimap = draw_sample(rng, rng.randint(60, 110), rng.randint(60, 110))
            image.save(root / "images" / f"{name}.jpg", quality=92)
            trimap.save(root / "annotations" / "trimaps" / f"{name}.png")
            split = "trainval" if i <= per_breed else "test"
            lists[split].append(name)
            lines[split].append(f"{name} {class_id} {species} {i}")
    for split, split_lines in lines.items():
        header = "#Image CLASS-ID SPECIES BREED ID\n"
        (root / "annotations" / f"{split}.txt").write_text(header + "\n".join(split_lines) + "\n")
    return lists


def pack(root: Path, out_dir: Path) -> dict[str, str]:
    """Pack ``root/images`` and ``root/annotations`` like the official archives; return their sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for top in ("images", "annotations"):
        archive = out_dir / f"{top}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(root / top, arcname=top)
        digests[archive.name] = hashlib.sha256(archive.read_bytes()).hexdigest()
    return digests


def add_member(archive: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> None:
    """Rewrite a .tar.gz with one extra (possibly hostile) member."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for member, content in members:
            tar.addfile(member, io.BytesIO(content) if content is not None else None)
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


class RangeServer:
    """Serves a directory on 127.0.0.1 with HTTP Range support and optional dropped connections."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.requests: list[dict] = []
        self.drop_after: int | None = None  # bytes sent before cutting the connection
        self.drops_left = 0
        self.endless = False  # a lying server: zeros without end and without a Content-Length
        self.resume_from_zero = False  # a lying server: answers a Range request with the whole file as a 206
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                path = server.directory / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
                self.end_headers()

            def do_GET(self):
                path = server.directory / self.path.lstrip("/")
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if server.endless:
                    self.send_response(200)
                    self.end_headers()
                    with contextlib.suppress(OSError):  # until the client hangs up
                        while True:
                            self.wfile.write(bytes(65536))
                    return
                start = 0
                if (rng := self.headers.get("Range")) and server.resume_from_zero:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
                elif rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.drops_left > 0 and server.drop_after is not None:
                    server.drops_left -= 1
                    self.wfile.write(body[: server.drop_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_trained(src: Path, dst: Path) -> Path:
    """Copy a trained project without its resume points: only the train stage reads ``*.last.pt``, and the
    ResNet34-UNet's is 290 MB, which a dozen copies per test run would spend on disk."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.last.pt"))
    return dst


def run_stage(module: str, cwd: Path, *args: str, env: dict | None = None, timeout: int = 600):
    """Run ``python -m stages.<module>`` in ``cwd`` the way DVC does."""
    full_env = os.environ | {"PYTHONPATH": str(REPO), "PETSEG_PROGRESS": "0"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", f"stages.{module}", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY_PARAMS = {
    "prepare": {"image_size": 32},
    "train": {
        "common": {"validate_every": 1},
        "unet": {"base_channels": 4, "epochs": 2, "batch_size": 8, "lr": 0.003, "warmup_epochs": 0},
        "res34": {"epochs": 1, "batch_size": 8, "lr": 0.003, "warmup_epochs": 0},
    },
    "infer": {"limit": 6, "grid_rows": 2},
    "resources": {"workers": 2, "num_workers": 0, "threads": 1, "checkpoint_minutes": 0, "eval_batch_size": 8},
}


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@functools.cache
def shipped_params_file() -> Path:
    """params.yaml as git has it staged (`git add` a change to test it), not the workspace's copy, which
    `dvc exp run -S` rewrites; the workspace's copy outside a git checkout."""
    try:
        staged = subprocess.run(
            ["git", "show", ":params.yaml"], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return REPO / "params.yaml"
    folder = Path(tempfile.mkdtemp(prefix="petseg-shipped-params-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "params.yaml").write_text(staged)
    return folder / "params.yaml"


def shipped_params() -> dict:
    """The shipped params.yaml: the only place a default lives."""
    return yaml.safe_load(shipped_params_file().read_text())


def tiny_params(overrides: dict | None = None) -> dict:
    """Every key of params.yaml, with TINY_PARAMS and ``overrides`` on top."""
    return deep_merge(deep_merge(shipped_params(), TINY_PARAMS), overrides or {})


def make_params(overrides: dict | None = None) -> Params:
    return parse_params(tiny_params(overrides))


def prepare_config(**changes) -> PrepareConfig:
    """The shipped prepare section with ``changes``."""
    return dataclasses.replace(parse_params(shipped_params()).prepare, **changes)


def augment_config(**changes) -> AugmentConfig:
    """The shipped augmentation settings with ``changes``."""
    return dataclasses.replace(parse_params(shipped_params()).train.common.augment, **changes)


def write_params(directory: Path, overrides: dict) -> None:
    (directory / "params.yaml").write_text(yaml.safe_dump(tiny_params(overrides)))
