"""``make demo``: the whole service on this machine, without Docker, end to end.

Redis (the configured ``OARMORPH_REDIS_URL``, else the one at 127.0.0.1:6379 when it answers, else a
``redis-server`` started here), a Celery worker and the API (uvicorn) are started as child processes; a full-size
phantom patient (or ``--ct``, your own series) is posted over HTTP with a fresh API key; the job is polled with a
progress bar; the RTSTRUCT, the job document and a QA sheet (contours over orthogonal slices, per-OAR volumes)
are saved in ``--out``; everything started is stopped again, also on Ctrl-C.

The model is the default bundle (``models/phantom_proposed_cpu``, the shipped phantom model). Where it is not
there yet, an untrained cascade (about the identity: the atlas carried over as it is) is exported so the chain
still runs, and the demo says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
DEMO_SEED, DEMO_INDEX = 2026, 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:
        return False


def service_env(
    tag: str, folder: Path, redis_url: str, bundle: str, bundles: dict[str, Path], api_keys: str, **extra: str
) -> dict[str, str]:
    """The environment of the worker and API processes started here (demo and benchmark): this environment less
    its own OARMORPH_ settings, then Redis, key prefix and queues named by ``tag``, storage under ``folder``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OARMORPH_") or k == "OARMORPH_BUNDLES_DIR"}
    env.update(
        {
            "OARMORPH_REDIS_URL": redis_url,
            "OARMORPH_KEY_PREFIX": tag,
            "OARMORPH_QUEUE": tag,
            "OARMORPH_CALLBACK_QUEUE": f"{tag}.callbacks",
            "OARMORPH_DATA_DIR": str((folder / "data").resolve()),
            "OARMORPH_DEFAULT_BUNDLE": bundle,
            "OARMORPH_BUNDLES": json.dumps({k: str(v.resolve()) for k, v in bundles.items()}),
            "OARMORPH_API_KEYS": api_keys,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def _say(text: str) -> None:
    typer.secho(text, fg=typer.colors.CYAN)


class _Children:
    """Child processes in their own process groups, stopped in reverse order (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
        handle = log.open("ab")
        proc = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            _say(f"stopped {name}")
        self.procs.clear()


def _redis(out: Path, children: _Children) -> str:
    configured = os.environ.get("OARMORPH_REDIS_URL")
    if configured:
        if not redis_answers(configured):
            raise typer.BadParameter(f"OARMORPH_REDIS_URL={configured} does not answer")
        _say(f"Redis: the configured {configured}")
        return configured
    if redis_answers("redis://127.0.0.1:6379/0"):
        _say("Redis: the one at 127.0.0.1:6379 (demo keys and queue of their own)")
        return "redis://127.0.0.1:6379/0"
    exe = shutil.which("redis-server")
    if exe is None:
        raise typer.BadParameter(
            "no Redis: install redis-server (apt-get install redis-server) or set OARMORPH_REDIS_URL"
        )
    port = free_port()
    folder = out / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "yes"]
    children.start("redis-server", args, dict(os.environ), folder / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: redis_answers(url), 20, "redis-server")
    _say(f"Redis: started redis-server on port {port} (append-only file in {folder})")
    return url


def _wait(check, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def _bundle(out: Path) -> tuple[str, dict[str, Path], bool]:
    """(bundle name, extra bundles, trained?)"""
    from service.settings import get_settings

    settings = get_settings()
    if settings.default_bundle in settings.bundle_dirs():
        return settings.default_bundle, {}, True
    target = out / "model" / "untrained"
    if not (target / "model.onnx").is_file():
        typer.secho(
            f"note: the bundle {settings.default_bundle} is not there (models/ holds no trained phantom model yet): "
            "exporting an untrained cascade, about the identity registration, so that the chain runs",
            fg=typer.colors.YELLOW,
        )
        try:
            import dataclasses

            import torch

            from model_export.export import export_model
            from training.train import TrainConfig, build_model
        except ImportError as exc:
            raise typer.BadParameter(f"no model to run and no torch to export one ({exc})") from None
        oars = json.loads((REPO / "bundles" / "phantom" / "bundle.json").read_text())["oars"]
        cfg = TrainConfig(name="untrained", oars=oars, image_shape=(32, 32, 32), model={"net_shape": [16, 16, 16]})
        torch.manual_seed(0)
        ckpt = out / "model" / "untrained.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": build_model(cfg).state_dict(), "config": dataclasses.asdict(cfg), "atlas_case": None}
        torch.save({**state, "state": {"step": 0, "best": 0.0, "history": []}}, ckpt)
        export_model(ckpt, REPO / "bundles" / "phantom", target, name="untrained", version="0.0.0", log=lambda m: None)
    return "untrained", {"untrained": target}, False


def _patient(out: Path) -> tuple[Path, Path | None]:
    """A full-size phantom patient (cached in out/): its DICOM folder and its true labels."""
    from phantom.cohort import case_id, generate_patient, write_patient

    folder = out / "patient" / case_id(DEMO_SEED, DEMO_INDEX)
    if not (folder / "ct").is_dir():
        _say("generating a full-size phantom patient (512 x 512, 150-250 slices; about a minute)")
        start = time.perf_counter()
        case = generate_patient(DEMO_INDEX, DEMO_SEED, "full")
        write_patient(case, out / "patient", DEMO_SEED, DEMO_INDEX, "full")
        _say(f"  {case.ct.geometry.shape} voxels in {time.perf_counter() - start:.0f} s")
    return folder / "ct", folder / "labels"


def _bar(percent: int, stage: str, status: str, seconds: float) -> str:
    filled = round(percent / 100 * 30)
    return f"\r[{'#' * filled}{'.' * (30 - filled)}] {percent:3d}% {status:<9} {stage:<14} {seconds:5.1f} s"


def _qa_sheet(ct_dir: Path, rtstruct: Path, job: dict, path: Path, dice: dict | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anatomy.catalogue import BY_NAME
    from imaging.dicom_ct import read_ct_series
    from imaging.preview import orthogonal_panels
    from imaging.rtstruct import CtReference, read_rtstruct

    ct = read_ct_series(ct_dir)
    rois = read_rtstruct(rtstruct, CtReference.from_volume(ct)).rois
    masks = {n: (r.mask, BY_NAME[n].color if n in BY_NAME else (255, 255, 0)) for n, r in rois.items() if r.mask.any()}
    union = np.zeros(ct.geometry.shape, bool)
    for name in ("Brainstem", "Parotid_L", "Parotid_R", "Bone_Mandible", "SpinalCord"):
        if name in masks:
            union |= masks[name][0].astype(bool)
    centre = [int(np.mean(ax)) for ax in np.nonzero(union)] if union.any() else None
    flip = ct.geometry.direction[8] > 0  # k runs to the head: draw it upwards
    panels = orthogonal_panels(ct.array, geometry=ct.geometry, masks=masks, centre_kji=centre, window=(-200, 300))
    fig = plt.figure(figsize=(20, 11), facecolor="black")
    for n, panel in enumerate(panels):
        ax = fig.add_subplot(2, 3, n + 1)
        ax.axis("off")
        origin = "lower" if (flip and n > 0) else "upper"
        ax.imshow(panel.image, cmap="gray", vmin=-200, vmax=300, aspect=panel.aspect, origin=origin)
        for _, (mask, colour) in panel.masks.items():
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=[tuple(c / 255 for c in colour)], linewidths=0.8)
        ax.set_title(panel.title, color="white")
    qa = job.get("qa") or {}
    oars = qa.get("oars", {})
    names = list(oars)
    ax = fig.add_subplot(2, 1, 2)
    volumes = [max(oars[n]["volume_cc"], 1e-3) for n in names]
    ax.bar(range(len(names)), volumes, color=[tuple(c / 255 for c in BY_NAME[n].color) for n in names])
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    labels = [f"{n}\nDice {dice[n]:.2f}" if dice and n in dice else n for n in names]
    ax.set_xticklabels(labels, rotation=90, fontsize=7, color="white")
    ax.set_ylabel("volume (cc)", color="white")
    ax.tick_params(colors="white")
    ax.set_facecolor("black")
    title = (
        f"oarmorph {job['model']['name']} {job['model']['version']}: {qa.get('contoured', 0)}/{qa.get('oar_count', 0)} "
        f"OARs contoured, folded fraction {qa.get('folded_fraction', 0):.1e}, "
        f"{sum(job.get('seconds', {}).values()):.1f} s"
    )
    fig.suptitle(title, color="white")
    fig.tight_layout()
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def _dice(ct_dir: Path, rtstruct: Path, labels: Path) -> dict[str, float]:
    from imaging.dicom_ct import read_ct_series
    from imaging.io import read_volume
    from imaging.rtstruct import CtReference, read_rtstruct

    ct = read_ct_series(ct_dir)
    rois = read_rtstruct(rtstruct, CtReference.from_volume(ct)).rois
    out = {}
    for name, roi in rois.items():
        truth_path = labels / f"{name}.nii.gz"
        if truth_path.is_file():
            truth = read_volume(truth_path).array.astype(bool)
            if truth.any():
                mask = roi.mask.astype(bool)
                out[name] = round(2.0 * float((mask & truth).sum()) / float(mask.sum() + truth.sum()), 4)
    return out


def run_service_demo(out: Path, ct: Path | None = None) -> dict:
    import httpx

    from service.security import new_key

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    children = _Children()
    with ExitStack() as stack:
        stack.callback(children.stop)
        redis_url = _redis(out, children)
        bundle, bundles, trained = _bundle(out)
        key, entry = new_key("demo")
        port = free_port()
        env = service_env("oarmorph-demo", out, redis_url, bundle, bundles, entry.line())
        bin_dir = Path(sys.executable).parent
        celery = [str(bin_dir / "celery"), "-A", "service.worker", "worker", "--pool", "prefork", "--concurrency", "1"]
        celery += ["--loglevel", "INFO", "--without-mingle", "--without-gossip", "--hostname", "demo@%h"]
        children.start("the worker", celery, env, out / "worker.log")
        uvicorn = [str(bin_dir / "uvicorn"), "service.app:app", "--host", "127.0.0.1", "--port", str(port)]
        children.start("the API", uvicorn, env, out / "api.log")
        base = f"http://127.0.0.1:{port}"
        api = stack.enter_context(httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=120))
        _say(f"API at {base}; waiting for the worker to load the model ({bundle})")

        def ready():
            try:
                return api.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 300, "the API and a worker with the model loaded", 0.5)
        labels = None
        if ct is None:
            ct, labels = _patient(out)
        source = Path(ct)
        if source.is_file() and source.suffix.lower() == ".zip":
            body = {"content": source.read_bytes(), "headers": {"Content-Type": "application/zip"}}
        else:
            files = sorted(p for p in source.rglob("*") if p.is_file())
            body = {
                "files": [("files", (f"{n:05d}.dcm", p.read_bytes(), "application/dicom")) for n, p in enumerate(files)]
            }
        _say(f"posting {source} to {base}/v1/jobs")
        posted = api.post("/v1/jobs", **body)
        if posted.status_code not in (200, 202):
            raise typer.BadParameter(f"the API refused the series: {posted.json()}")
        job = posted.json()
        size = job["input"]
        _say(f"{posted.status_code}: job {job['id']} ({size['slices']} slices of {size['rows']}x{size['columns']})")
        start = time.perf_counter()
        while job["status"] in ("queued", "running"):
            time.sleep(0.25)
            job = api.get(f"/v1/jobs/{job['id']}").json()
            sys.stdout.write(_bar(job["percent"], job.get("stage") or "", job["status"], time.perf_counter() - start))
            sys.stdout.flush()
        sys.stdout.write("\n")
        (out / "job.json").write_text(json.dumps(job, indent=2))
        if job["status"] != "succeeded":
            raise typer.BadParameter(f"the job {job['status']}: [{job.get('code')}] {job.get('detail')}")
        rtstruct = out / "rtstruct.dcm"
        rtstruct.write_bytes(api.get(f"/v1/jobs/{job['id']}/rtstruct").content)
        api.delete(f"/v1/jobs/{job['id']}")  # purged (its copies are in out/): a next demo makes a new job
        dice = _dice(Path(ct), rtstruct, labels) if labels is not None and labels.is_dir() else None
        sheet = _qa_sheet(Path(ct), rtstruct, job, out / "qa_sheet.png", dice)
        summary = {
            "job": job["id"],
            "model": job["model"],
            "trained_model": trained,
            "seconds": job["seconds"],
            "end_to_end_s": round(time.perf_counter() - start, 2),
            "rtstruct": str(rtstruct),
            "qa_sheet": str(sheet),
            "dice": dice,
            "mean_dice": round(float(np.mean(list(dice.values()))), 4) if dice else None,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in job["seconds"].items())
        _say(f"succeeded: {job['qa']['contoured']}/{job['qa']['oar_count']} OARs contoured ({stages})")
        if dice:
            _say(f"Dice against the phantom's true OARs: mean {summary['mean_dice']:.3f} over {len(dice)} OARs")
        _say(f"wrote {rtstruct}, {sheet}, {out / 'job.json'}, {out / 'summary.json'}")
        return summary
