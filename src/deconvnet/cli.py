"""The ``deconvnet`` command line: a thin shell over the library.

Commands (``deconvnet COMMAND --help`` for each):

- ``train IMAGES_DIR --preset calibrated --layers 3 --out RUN_DIR [--set KEY=VALUE ...]``;
  ``train --resume RUN_DIR`` continues an interrupted run from its checkpoint
- ``infer MODEL IMAGE... [--layer L] --out DIR``: maps as ``.npy`` plus a PNG per image and layer
- ``project MODEL --out DIR``: a PNG grid of pixel-space filters per layer
- ``reconstruct MODEL IMAGE --layer L --out FILE``: a PNG of the reconstruction; prints its SNR
- ``report RUN_DIR``: ``RUN_DIR/report.html``
- ``denoise MODEL IMAGE --sigma S [--layer L] --out FILE``: remove Gaussian noise (``S`` on the
  0-255 scale); ``--noise-sigma S`` adds seeded noise to a clean IMAGE and prints the PSNR and
  SSIM of the noisy input and of every layer's reconstruction (:mod:`deconvnet.restoration`);
  ``--paper`` infers as the paper did (layer by layer, each layer's own ``lam``)
- ``inpaint MODEL IMAGE --mask MASK [--layer L] --out FILE``: fill the pixels MASK marks 0
- ``demo [--out DIR]``: trains a 3-layer network on images shipped with scikit-image, writes
  the report and says where it is
- ``caltech DATA_DIR --train-per-class 15,30 --splits 5 --features dn1,dn2,dn12,sift --out DIR``:
  the paper's recognition protocol (:mod:`deconvnet.recognition.experiment`), resumable

``MODEL`` is a run folder or a model file. Errors are one line on stderr and exit status 2.

``train``, ``infer`` and ``caltech`` also run as several processes
(:mod:`deconvnet.distributed`): under ``torchrun ... -m deconvnet COMMAND ...``, or with
``--nproc N`` on one machine. Rank 0 prints and writes the shared files.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

__all__ = ["main"]


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _device(name: str):
    import torch  # noqa: PLC0415

    from .distributed import device_for  # noqa: PLC0415

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to torch here (use --device cpu or auto)")
    return str(device_for(name))  # under torchrun, each process its own GPU


def _quiet(*args, **kwargs) -> None:
    """``say`` of the processes other than rank 0."""


def _load(model, device="cpu"):
    from .network import DeconvNet  # noqa: PLC0415

    path = Path(model)
    if not path.exists():
        raise UserError(f"{model}: no such run folder or model file")
    return DeconvNet.load(path, device=device)


def _out_dir(out) -> Path:
    """The ``--out`` folder, created if needed; a one-line error when it cannot be."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the folder ({err.strerror or err})") from None
    return out


def _image_files(items: list[str], folders: bool = False) -> list[Path]:
    """The files ``items`` names; with ``folders``, a folder stands for its image files."""
    from .images import list_images  # noqa: PLC0415

    paths = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise UserError(f"{item}: no such file")
        if p.is_dir():
            if not folders:
                raise UserError(f"{item} is a folder; give image files")
            try:
                paths.extend(list_images(p))
            except ValueError as err:
                raise UserError(str(err)) from None
            continue
        paths.append(p)
    return paths


def _read_training_images(folder: Path, cfg, say):
    """The usable images of ``folder`` for layer 1 of ``cfg``; every skipped file is listed
    with ``say``. A one-line error when nothing is usable; when that is because every image
    that could be read is smaller than the layer-1 filters (plus the border the
    preprocessing removes), it names ``layer1.filter_size``."""
    from .images import read_folder  # noqa: PLC0415
    from .preprocess import CROP  # noqa: PLC0415

    s = cfg.layers[0].filter_size
    min_side = s + 2 * CROP[cfg.preprocess]
    try:
        data = read_folder(folder, cfg.color, cfg.max_side, min_side=min_side, filter_size=s)
    except ValueError as err:
        raise UserError(str(err)) from None
    for skip in data.skipped:
        say(f"skipped {skip.path}: {skip.reason}")
    if len(data):
        return data
    small = [skip.size for skip in data.skipped if skip.size is not None]
    if small:
        H, W = max(small, key=min)
        border = min_side - s
        after = f", {H - border}x{W - border} after preprocessing" if border and min(H, W) > border else ""
        which = "every image" if len(small) == len(data.skipped) else "every image that could be read"
        raise UserError(f"{folder}: layer1.filter_size={s} is larger than {which} (largest {H}x{W}{after})")
    raise UserError(f"{folder}: no usable images (see the skipped files above)" if data.skipped
                    else f"{folder}: no image files (.png, .jpg, .tif, ...)")


def _config(args):
    from .config import apply_overrides, load_config, preset  # noqa: PLC0415

    cfg = load_config(args.config) if args.config else preset(args.preset, args.layers)
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"n_epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.color is not None:
        overrides.append(f"color={args.color}")
    return apply_overrides(cfg, overrides)


def train_run(images_dir, out, cfg, *, device="cpu", progress=True, report=True, preset_name=None,
              command=None, say=print, checkpoint_every: float = 120.0, holdout_dir=None, group=None):
    """Train ``cfg`` on the usable images of ``images_dir`` and fill the run folder ``out``;
    the images of ``holdout_dir`` (not trained on) are scored at every epoch end.

    ``config.json`` and ``run.json`` (the image list) are written before training starts and
    the resumable state goes to ``out/checkpoint`` (see :mod:`deconvnet.checkpoint`), so an
    interrupted run continues with :func:`resume_run`.

    ``group``: the processes of a ``torchrun`` job (:func:`deconvnet.distributed.init`); every
    one reads the images and trains on its share, rank 0 alone prints and writes the run
    folder's files (the checkpoint's map files are written by each). Under ``torchrun
    --max-restarts``, a restarted job continues from the checkpoint.
    """
    from ._files import atomic_write_text  # noqa: PLC0415
    from .distributed import LOCAL, restarted  # noqa: PLC0415
    from .model_io import software_versions  # noqa: PLC0415

    group = LOCAL if group is None else group
    say = say if group.is_main else _quiet
    folder, out = Path(images_dir), Path(out)
    if (out / "checkpoint").exists() and restarted() and (out / "run.json").exists():
        return resume_run(out, device=device, progress=progress, report=report, say=say,
                          checkpoint_every=checkpoint_every, group=group)
    if (out / "checkpoint").exists():
        raise UserError(f"{out} holds an unfinished run; continue it with `deconvnet train --resume {out}` "
                        "(or choose another --out)")
    if (out / "model.json").exists():
        raise UserError(f"{out} already holds a trained model; choose another --out (or delete it)")
    group.barrier()  # every process has looked before rank 0 writes anything
    images = _read_training_images(folder, cfg, say)
    holdout = None if holdout_dir is None else _read_training_images(Path(holdout_dir), cfg, say)
    info = {"status": "training", "images": str(folder.resolve()), "n_images": len(images),
            "files": [str(p.resolve()) for p in images.paths],
            "skipped": [[str(skip.path), skip.reason] for skip in images.skipped],
            "device": str(device), "preset": preset_name, "command": command, "versions": software_versions()}
    if group.size > 1:
        info["processes"] = group.size
    if holdout is not None:
        info["holdout_files"] = [str(p.resolve()) for p in holdout.paths]
    if group.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{out}: cannot create the run folder ({err.strerror or err})") from None
        atomic_write_text(out / "config.json", cfg.to_json() + "\n")
        atomic_write_text(out / "run.json", json.dumps(info, indent=2))
    procs = f" in {group.size} processes" if group.size > 1 else ""
    say(f"training {len(cfg.layers)} layer(s) on {len(images)} image(s) from {folder} on {device}{procs}")
    return _train(out, cfg, images, info, device=device, progress=progress, report=report, say=say,
                  checkpoint_every=checkpoint_every, holdout=holdout, group=group)


def resume_run(out, *, device=None, progress=True, report=True, say=print, checkpoint_every: float = 120.0,
               group=None):
    """Continue the interrupted run in ``out`` from its checkpoint: same configuration, same
    images (read again from the files ``run.json`` lists). ``group``: as :func:`train_run`;
    the number of processes may differ from the interrupted run's."""
    from .config import ConfigError, NetConfig  # noqa: PLC0415
    from .distributed import LOCAL, device_for  # noqa: PLC0415
    from .images import ImageReadError, read_images  # noqa: PLC0415

    group = LOCAL if group is None else group
    say = say if group.is_main else _quiet
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"--resume {out}: no such run folder")
    from ._files import remove_stale_temporaries  # noqa: PLC0415

    if group.is_main:
        remove_stale_temporaries(out)  # a kill -9 in the middle of an atomic write
    try:
        cfg = NetConfig.from_dict(json.loads((out / "config.json").read_text()))
        info = json.loads((out / "run.json").read_text())
        files = [Path(f) for f in info["files"]]
        held_files = [Path(f) for f in info["holdout_files"]] if "holdout_files" in info else None
        complete = info.get("status") == "complete" and (out / "model.json").exists()
    except FileNotFoundError as err:
        raise UserError(f"--resume {out}: {Path(err.filename).name} is missing; this is not a run folder "
                        "started by `deconvnet train`") from None
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as err:
        raise UserError(f"--resume {out}: its config.json or run.json is damaged ({err})") from None
    if complete:  # stopped while tidying up: finish that
        from .checkpoint import Checkpoint  # noqa: PLC0415

        if not group.is_main:
            return None
        Checkpoint(out / "checkpoint").remove()
        if report and not (out / "report.html").exists():
            from .report import write_report  # noqa: PLC0415

            say(f"report: {write_report(out)}")
        say(f"{out}: this run is already complete; model in {out / 'model.safetensors'}")
        return None
    if not (out / "checkpoint" / "state.safetensors").exists():
        say(f"{out}: no checkpoint yet; starting the training from the beginning")
    try:
        images = read_images(files, cfg.color, cfg.max_side)  # exactly as train_run read them
    except ImageReadError as err:  # the run needs exactly these images
        raise UserError(f"--resume {out}: training image {err.path} cannot be read any more ({err.reason})") from None
    except ValueError as err:
        raise UserError(f"--resume {out}: {err}") from None
    holdout = None
    if held_files is not None:
        try:
            holdout = read_images(held_files, cfg.color, cfg.max_side)
        except ImageReadError as err:
            raise UserError(f"--resume {out}: held-out image {err.path} cannot be read any more ({err.reason})") \
                from None
    device = str(device_for(device or info.get("device", "cpu")))
    info = dict(info, processes=group.size) if group.size > 1 else {k: v for k, v in info.items() if k != "processes"}
    procs = f" in {group.size} processes" if group.size > 1 else ""
    say(f"resuming {out}: {len(cfg.layers)} layer(s) on {len(images)} image(s) on {device}{procs}")
    return _train(out, cfg, images, info, device=device, progress=progress, report=report, say=say,
                  checkpoint_every=checkpoint_every, holdout=holdout, group=group)


def _train(out: Path, cfg, images, info, *, device, progress, report, say, checkpoint_every, holdout=None,
           group=None):
    from ._files import atomic_write_text  # noqa: PLC0415
    from .checkpoint import Checkpoint, CheckpointError  # noqa: PLC0415
    from .network import DeconvNet  # noqa: PLC0415

    net = DeconvNet(cfg, device=device, progress=progress)
    t0 = time.perf_counter()
    try:
        net.fit(images, checkpoint=out / "checkpoint", checkpoint_every=checkpoint_every, holdout=holdout,
                group=group)
    except CheckpointError as err:
        raise UserError(str(err)) from None
    except KeyboardInterrupt:
        say(f"interrupted; continue with `deconvnet train --resume {out}`")
        raise
    if group is not None and not group.is_main:
        return net  # rank 0 writes the model, the history and the report
    seconds = time.perf_counter() - t0
    net.save(out)  # then the files that say the run is complete, then the checkpoint goes
    history = [[vars(r) for r in records] for records in net.history_]
    atomic_write_text(out / "history.json", json.dumps({"layers": history, "seconds": net.seconds_}, indent=2))
    info = dict(info, status="complete", seconds=seconds)
    atomic_write_text(out / "run.json", json.dumps(info, indent=2))
    Checkpoint(out / "checkpoint").remove()
    say(f"trained in {seconds:.1f} s (" + ", ".join(f"layer {i}: {s:.1f} s" for i, s in enumerate(net.seconds_, 1))
        + f"); model in {out / 'model.safetensors'}")
    if report:
        from .report import write_report  # noqa: PLC0415

        path = write_report(out)
        say(f"report: {path}")
    return net


# ------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    if args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every {args.checkpoint_every}: must be a number of seconds >= 0")
    if args.resume:
        if args.images or args.config or args.set or args.out or args.holdout:
            raise UserError("--resume RUN_DIR takes the images and settings from RUN_DIR; give no IMAGES_DIR, "
                            "--config, --set, --out or --holdout with it")
        resume_run(args.resume, device=_device(args.device) if args.device else None, progress=not args.quiet,
                   report=not args.no_report, checkpoint_every=args.checkpoint_every, group=args.group)
        return 0
    if not args.images:
        raise UserError("train needs IMAGES_DIR (or --resume RUN_DIR)")
    cfg = _config(args)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.images).resolve().name}-{args.preset}"
    train_run(args.images, out, cfg, device=_device(args.device or "cpu"), progress=not args.quiet,
              report=not args.no_report, preset_name=None if args.config else args.preset,
              command=" ".join(["deconvnet", *sys.argv[1:]]), checkpoint_every=args.checkpoint_every,
              holdout_dir=args.holdout, group=args.group)
    return 0


def cmd_infer(args) -> int:
    import torch  # noqa: PLC0415

    from .plotting import save_image  # noqa: PLC0415
    from .viz import tile_filters  # noqa: PLC0415

    group = args.group
    net = _load(args.model, _device(args.device))
    files = _image_files(args.images, folders=True)
    layers = [net.check_layer(args.layer)] if args.layer is not None else list(range(1, net.n_layers + 1))
    out = _out_dir(args.out)
    from ._files import atomic_write_bytes  # noqa: PLC0415

    for path in [files[i] for i in group.mine(range(len(files)))]:  # this process's share
        maps = net.infer([path], layers=max(layers))
        for L in layers:
            z = maps[L - 1][0].detach().cpu()
            buf = io.BytesIO()
            np.save(buf, z.numpy())
            npy = atomic_write_bytes(out / f"{path.stem}.layer{L}.npy", buf.getvalue())
            save_image(tile_filters(z[:, None]), out / f"{path.stem}.layer{L}.png", zoom=2, vmin=0, vmax=1)
            nz = float((z != 0).to(torch.float64).mean())
            print(f"{path.name}: layer {L} maps {tuple(z.shape)}, non-zero {nz:.4f} -> {npy}")
    group.barrier()  # every share is written
    return 0


def cmd_project(args) -> int:
    import torch  # noqa: PLC0415

    from .plotting import save_filter_grid  # noqa: PLC0415

    net = _load(args.model, _device(args.device))
    out = _out_dir(args.out)
    layers = [net.check_layer(args.layer)] if args.layer is not None else range(1, net.n_layers + 1)
    for L in layers:
        P = net.project(L)
        if args.sort == "activity":
            P = P[torch.as_tensor(net.map_order(L), device=P.device)]
        path = save_filter_grid(P, out / f"layer{L}.png", zoom=args.zoom)
        print(f"layer {L}: {P.shape[0]} pixel-space filters of {P.shape[-1]}x{P.shape[-1]} -> {path}")
    return 0


def cmd_reconstruct(args) -> int:
    from .network import snr_db  # noqa: PLC0415
    from .plotting import save_image  # noqa: PLC0415
    from .viz import signed_to_unit  # noqa: PLC0415

    net = _load(args.model, _device(args.device))
    (path,) = _image_files([args.image])
    L = net.check_layer(args.layer)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the reconstruction is written as PNG; give a .png file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    recon, target = net.reconstruct([path], L)
    r = recon[0].detach().cpu().numpy()
    save_image(signed_to_unit(r), out, vmin=0, vmax=1)
    print(f"{path.name}: reconstruction from layer {L}, SNR {snr_db(target[0].cpu(), recon[0].cpu()):.2f} dB "
          f"(in the preprocessed space) -> {out}")
    return 0


#: suffixes the restoration commands write (lossless formats PIL writes).
RESTORED_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")


def _check_out_file(out) -> Path:
    out = Path(out)
    if out.suffix.lower() not in RESTORED_SUFFIXES:
        raise UserError(f"--out {out}: give a file name ending in {', '.join(RESTORED_SUFFIXES)} (a lossless image)")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name")
    return out


def _write_restored(path: Path, x: np.ndarray) -> Path:
    """``(H, W)`` or ``(H, W, 3)`` in [0, 1] as an 8-bit grey or RGB image file, atomically."""
    from PIL import Image  # noqa: PLC0415

    from ._files import atomic_write_bytes  # noqa: PLC0415

    a = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    fmt = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}[path.suffix.lower()]
    Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB").save(buf, format=fmt)
    return atomic_write_bytes(path, buf.getvalue())


def _sigma_arg(text, name: str) -> float | None:
    """A noise level on the 0-255 scale from the command line, checked before any work."""
    from .restoration import check_sigma  # noqa: PLC0415

    if text is None:
        return None
    try:
        return check_sigma(text, name)
    except ValueError:
        raise UserError(f"{name} {text}: give the noise's standard deviation on the 0-255 scale, a finite "
                        "number >= 0 (e.g. 25)") from None


def _read_one(path: Path, color: str) -> np.ndarray:
    from .images import ImageReadError, load_image  # noqa: PLC0415

    try:
        return load_image(path, color)
    except ImageReadError as err:
        raise UserError(str(err)) from None


def _layers_arg(net, layer) -> int:
    if layer is None:
        return 1
    try:
        return net.check_layer(layer)
    except ValueError as err:
        raise UserError(f"--layer {layer}: this model has layers 1 to {net.n_layers}") from err


def _settings(args, task: str):
    """The recipe of ``task`` (``"denoise"`` or ``"inpaint"``) with the options given."""
    from .restoration import recipe_settings  # noqa: PLC0415

    try:
        given = {"lam_factor": args.lam_factor, "copies": args.copies, "scales": args.scales,
                 "adaptive": args.adaptive, "wiener": args.wiener}
        return recipe_settings(task, two_pass=args.two_pass, **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise UserError(str(err)) from None


def _for_layer(settings, args, L: int):
    """``settings`` for a reconstruction from layer ``L``: the recipe's several scales are for
    layer 1; above it one scale, unless ``--scales`` asked for more (then a one-line error)."""
    if L == 1 or settings.scales == 1:
        return settings
    if args.scales is not None:
        raise UserError(f"--scales {args.scales}: several scales restore from layer 1 only, not layer {L}")
    return replace(settings, scales=1)


def cmd_denoise(args) -> int:
    """Denoise one image; with ``--noise-sigma``, add noise to a clean image first and score
    every layer's reconstruction."""
    from .restoration import restore, second_stage  # noqa: PLC0415

    sigma = _sigma_arg(args.sigma, "--sigma")
    noise = _sigma_arg(args.noise_sigma, "--noise-sigma")
    if args.paper and sigma is not None:
        raise UserError("--paper uses every layer's own lam, not the noise level: leave out --sigma")
    if sigma is None and noise is None and not args.paper:
        raise UserError("denoise needs --sigma S (the noise level of IMAGE, 0-255 scale), or --noise-sigma S "
                        "to add noise to a clean IMAGE, or --paper")
    if sigma is None and not args.paper:
        sigma = noise
    settings = _settings(args, "denoise")
    if args.paper:  # the paper's protocol: layer by layer, each layer's own lam, the image alone
        if (args.copies is not None or args.lam_factor is not None or args.two_pass or args.scales is not None
                or args.adaptive is not None or args.wiener is not None):
            raise UserError("--paper is the paper's protocol: leave out --copies, --lam-factor, --scales, "
                            "--adaptive, --wiener and --two-pass")
        settings = replace(settings, inference="layerwise", copies=1, scales=1, wiener=0)
    weight = "each layer's own lam (the paper's protocol)" if args.paper else f"sigma {sigma:g}"
    out = _check_out_file(args.out)
    (path,) = _image_files([args.image])
    model = Path(args.model)
    if not model.exists():
        raise UserError(f"{args.model}: no such run folder or model file")
    net = _load(args.model, _device(args.device))
    L = _layers_arg(net, args.layer)
    x = _read_one(path, net.config.color)  # (C, H, W) in [0, 1]
    if noise is None:
        (res,) = restore(net, [_hwc(x)], sigma=None if args.paper else sigma / 255.0, layers=(L,),
                         settings=_for_layer(settings, args, L))
        _write_restored(out, _hwc(res[L]))
        print(f"{path.name}: denoised from layer {L} ({weight}) -> {out}")
        return 0
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: PLC0415

    rng = np.random.default_rng(args.seed)
    clean = _hwc(x)
    noisy = clean + rng.standard_normal(clean.shape) * (noise / 255.0)
    layers = list(range(1, net.n_layers + 1))
    s_noise = None if args.paper else sigma / 255.0
    _for_layer(settings, args, L)  # a --scales that cannot be used is refused before any work
    first = replace(settings, wiener=0)  # each layer's own result; the Wiener stage's rows below
    (res,) = restore(net, [noisy], sigma=s_noise, layers=(1,), settings=first)  # layer 1 as --layer 1 gives it
    if len(layers) > 1:
        (up,) = restore(net, [noisy], sigma=s_noise, layers=layers[1:], settings=replace(first, scales=1))
        res |= up
    channel = None if clean.ndim == 2 else 2

    def score(est):
        return (peak_signal_noise_ratio(clean, est, data_range=1.0),
                structural_similarity(clean, est, data_range=1.0, channel_axis=channel))

    rows = [("noisy input", *score(noisy), _write_restored(out.with_name(f"{out.stem}.noisy{out.suffix}"), noisy))]
    wiener = settings.wiener > 0 and s_noise is not None
    for k in layers:
        est = _hwc(res[k])
        name = out.with_name(f"{out.stem}.layer{k}{out.suffix}")
        rows.append((f"layer {k}", *score(est), _write_restored(out if k == L and not wiener else name, est)))
        if wiener:  # what denoise --sigma gives: the layer's result, then the Wiener stage with it as the pilot
            est = _hwc(second_stage(_chw(noisy), res[k], s_noise, settings))
            name = out.with_name(f"{out.stem}.layer{k}.wiener{out.suffix}")
            rows.append((f"layer {k} + Wiener", *score(est), _write_restored(out if k == L else name, est)))
    print(f"{path.name}: Gaussian noise of sigma {noise:g} (0-255 scale, seed {args.seed}), denoised with {weight}")
    print(f"{'':<18} {'PSNR dB':>8} {'SSIM':>6}  file")
    for name, p, s_, f in rows:
        print(f"{name:<18} {p:8.2f} {s_:6.3f}  {f}")
    return 0


def cmd_tune(args) -> int:
    """Tune a model's layer 1 for denoising on clean photos (:mod:`deconvnet.tuning`); resumes
    a tuning that ``--out`` already holds."""
    import dataclasses  # noqa: PLC0415

    from .images import read_folder  # noqa: PLC0415
    from .tuning import TuneSettings, tune_for_denoising  # noqa: PLC0415

    sigmas = tuple(_sigma_arg(t.strip(), "--sigmas") for t in str(args.sigmas).split(","))
    if any(s_ <= 0 for s_ in sigmas):
        raise UserError(f"--sigmas {args.sigmas}: noise levels > 0 on the 0-255 scale, comma-separated (e.g. 15,25,50)")
    try:
        st = TuneSettings(steps=args.steps, patch=args.patch, batch=args.batch, sigmas=tuple(s_ / 255 for s_ in sigmas),
                          scales=args.scales, lr=args.lr, seed=args.seed, copies=args.copies)
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.save_every < 1:
        raise UserError(f"--save-every {args.save_every}: give a number of steps >= 1")
    folder = Path(args.images)
    if not folder.is_dir():
        raise UserError(f"{args.images}: no such folder of clean photos")
    out = _out_dir(args.out)
    described = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(st).items() if k != "steps"}
    done = 0
    if (out / "model.json").exists():  # resume the tuning this folder holds
        net = _load(out, _device(args.device))
        tuning = net.tuning_ or {}
        if not tuning:
            raise UserError(f"--out {out}: holds a model that was not tuned (MODEL itself?); the tuned model needs "
                            "a folder of its own")
        stored = tuning.get("settings")  # tunings saved before 'copies' existed had one copy
        if not isinstance(stored, dict) or {"copies": 1, **stored} != described:
            raise UserError(f"--out {out}: holds a model not tuned with these settings; choose another --out")
        done = int(tuning.get("steps", 0))
    else:
        net = _load(args.model, _device(args.device))
    if done >= st.steps:
        print(f"{out}: already tuned for {done} steps (--steps {st.steps}); nothing to do")
        return 0
    say = _quiet if args.quiet else print
    data = read_folder(folder, net.config.color, None, min_side=st.patch)
    if not len(data):
        raise UserError(f"{folder}: no image of at least {st.patch}x{st.patch} pixels")
    history = list((net.tuning_ or {}).get("history", [])) if done else []

    def save(step: int) -> None:
        net.tuning_ = {"settings": described, "steps": step, "history": history,
                       "images": str(folder.resolve()), "from_model": str(Path(args.model).resolve())}
        net.save(out)

    def on_record(rec) -> None:
        history.append(dataclasses.asdict(rec))
        say(f"step {rec.step}/{st.steps}: restored PSNR {rec.psnr_db:.2f} dB (noise "
            f"{'/'.join(f'{s_ * 255:g}' for s_ in st.sigmas)}), exponent {rec.lam_exponent:.3f}, "
            f"{rec.seconds_per_step:.2f} s/step")
        if rec.step % args.save_every == 0 or rec.step == st.steps:
            save(rec.step)

    say(f"tuning layer 1 of {args.model} for denoising on {len(data)} image(s) from {folder}"
        + (f", from step {done}" if done else ""))
    t0 = time.perf_counter()
    tune_for_denoising(net, data, replace(st, steps=st.steps - done), start_step=done, on_record=on_record)
    print(f"tuned {st.steps - done} steps in {time.perf_counter() - t0:.0f} s; model in {out / 'model.safetensors'}")
    return 0


def _chw(x: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` -> ``(C, H, W)``."""
    return x[None] if x.ndim == 2 else np.moveaxis(x, 2, 0)


def _hwc(x: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` (grey) or ``(H, W, C)``."""
    return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, 2)


def cmd_inpaint(args) -> int:
    """Fill the pixels of IMAGE that MASK marks missing (0)."""
    from .restoration import restore  # noqa: PLC0415

    sigma = _sigma_arg(args.sigma, "--sigma")
    if args.adaptive is not None:
        raise UserError("--adaptive is denoise's (the second pass codes images without missing pixels): leave it out")
    if args.wiener is not None:
        raise UserError("--wiener is denoise's (the Wiener stage filters images without missing pixels): leave it out")
    settings = _settings(args, "inpaint")
    out = _check_out_file(args.out)
    (path,) = _image_files([args.image])
    (mpath,) = _image_files([args.mask])
    if not Path(args.model).exists():
        raise UserError(f"{args.model}: no such run folder or model file")
    x = _read_one(path, "gray")
    m = _read_one(mpath, "gray")[0]
    if m.shape != x.shape[1:]:
        raise UserError(f"--mask {mpath}: {m.shape[0]}x{m.shape[1]} pixels, the image is {x.shape[1]}x{x.shape[2]}; "
                        "the mask must have the image's size")
    known = m > 0
    if not known.any():
        raise UserError(f"--mask {mpath}: every pixel is 0 (missing); nothing to restore from (non-zero = known)")
    net = _load(args.model, _device(args.device))
    L = _layers_arg(net, args.layer)
    img = _hwc(_read_one(path, net.config.color))
    (res,) = restore(net, [img], sigma=None if not sigma else sigma / 255.0, masks=[known.astype(np.float64)],
                     layers=(L,), settings=_for_layer(settings, args, L))
    _write_restored(out, _hwc(res[L]))
    print(f"{path.name}: {int((~known).sum())} of {known.size} pixels missing ({100 * (~known).mean():.1f}%), "
          f"filled from layer {L} -> {out}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report  # noqa: PLC0415

    run = Path(args.run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: no such run folder")
    path = write_report(run, images=args.images or None)
    print(f"report: {path}")
    return 0


DEMO_IMAGES = ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "astronaut", "coffee",
               "chelsea", "rocket")
#: the demo's changes to the preset ``calibrated``: fewer epochs, so that it ends in about a minute
#: on 2 cores (README, "Quick start").
DEMO_SETTINGS = ("layer1.n_epochs=6", "layer2.n_epochs=4", "layer3.n_epochs=4", "layer2.batch_size=4",
                 "layer3.batch_size=4")


def cmd_demo(args) -> int:
    """Train on scikit-image's sample photos (shipped with it, no download)."""
    from skimage import data  # noqa: PLC0415
    from skimage.util import img_as_float  # noqa: PLC0415

    from ._files import atomic_write_bytes  # noqa: PLC0415
    from .config import apply_overrides, preset  # noqa: PLC0415
    from .plotting import png_bytes  # noqa: PLC0415

    out = Path(args.out)
    if (out / "model.json").exists():
        raise UserError(f"{out} already holds a trained model; choose another --out (or delete it)")
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    from skimage.color import rgb2gray  # noqa: PLC0415
    from skimage.transform import resize  # noqa: PLC0415

    for name in DEMO_IMAGES:
        im = img_as_float(getattr(data, name)())
        if im.ndim == 3:
            im = rgb2gray(im[..., :3])
        side = min(im.shape)
        top, left = (im.shape[0] - side) // 2, (im.shape[1] - side) // 2
        im = resize(im[top:top + side, left:left + side], (args.size, args.size), anti_aliasing=True)
        atomic_write_bytes(folder / f"{name}.png", png_bytes(im, vmin=0, vmax=1))
    cfg = apply_overrides(preset("calibrated", 3), list(DEMO_SETTINGS) + ["layer3.n_maps=" + str(args.maps3)]
                          + list(args.set or []))
    print(f"deconvnet demo: {len(DEMO_IMAGES)} scikit-image photos, {args.size}x{args.size} grey, "
          f"preset calibrated (3 layers; {', '.join(DEMO_SETTINGS)})")
    train_run(folder, out, cfg, device=_device(args.device), progress=not args.quiet, preset_name="calibrated",
              command="deconvnet demo")
    print(f"open {(out / 'report.html').resolve()} in a browser to see what each layer learned")
    return 0


def _counts(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{name} {text}: give whole numbers separated by commas, e.g. 15,30") from None
    if not values or min(values) < 1:
        raise UserError(f"{name} {text}: give positive whole numbers separated by commas, e.g. 15,30")
    return values


def cmd_caltech(args) -> int:
    """The recognition protocol on a class-per-folder dataset."""
    from .recognition.experiment import FEATURE_NAMES, ProtocolConfig, run_protocol  # noqa: PLC0415

    root = Path(args.data_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (give the folder of class folders, e.g. 101_ObjectCategories)")
    features = tuple(f.strip() for f in args.features.split(",") if f.strip())
    bad = [f for f in features if f not in FEATURE_NAMES]
    if bad or not features:
        raise UserError(f"--features {args.features}: choose from {','.join(FEATURE_NAMES)}")
    cfg = ProtocolConfig(train_per_class=_counts(args.train_per_class, "--train-per-class"), n_splits=args.splits,
                         n_test=args.test_per_class, features=features, network_images=args.network_images,
                         preset=args.preset, net_settings=tuple(args.set or ()), max_side=args.max_side,
                         infer_max_iter=None if args.infer_iters == "own" else _counts(args.infer_iters, "--infer-iters"),
                         pool=args.pool, n_words=args.words, C=args.C, seed=args.seed,
                         exclude=() if args.keep_background else ProtocolConfig.exclude)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    doc = run_protocol(root, out, cfg, device=_device(args.device), progress=not args.quiet, group=args.group)
    if doc is None:  # a process other than rank 0: its share of the maps is in the cache
        return 0
    print((out / "results.md").read_text(), end="")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}; report: {(out / 'report.html').resolve()} "
          f"({doc['timing']['total_seconds']:.0f} s)")
    return 0


# ------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract: ``deconvnet: error: ...``, exit status 2
    (sub-command parsers are made of the same class)."""

    def error(self, message: str):
        self.exit(2, f"deconvnet: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from . import __version__  # noqa: PLC0415
    from .config import PRESETS  # noqa: PLC0415

    ap = _Parser(prog="deconvnet", description="Deconvolutional Networks (Zeiler et al. 2010): "
                 "learn, look at and use hierarchical convolutional sparse codes of images.")
    ap.add_argument("--version", action="version", version=f"deconvnet {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def device(p):
        p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                       help="where to compute (auto: cuda when available)")

    def nproc(p):
        p.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="run as N processes on this machine (torch.distributed; as torchrun --standalone "
                            "--nproc_per_node N -m deconvnet ...); default 1")

    p = sub.add_parser("train", help="train a network on a folder of images")
    p.add_argument("images", metavar="IMAGES_DIR", nargs="?")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--checkpoint-every", type=float, default=120.0, metavar="SECONDS",
                   help="seconds between checkpoints within an epoch (default 120; every epoch end "
                        "writes one too)")
    p.add_argument("--preset", default="calibrated", choices=sorted(PRESETS),
                   help="calibrated (default: layers that learn), zeiler2010 (the 2010 toolbox), fista, "
                        "denoise (a layer 1 for deconvnet denoise / inpaint)")
    p.add_argument("--layers", type=int, default=None, help="number of layers (default 3; 1 for preset denoise)")
    p.add_argument("--config", metavar="FILE", help="a JSON configuration (as RUN_DIR/config.json) instead of a preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field: a network field (color=rgb), a field of every layer (lam=2) "
                        "or of one layer (layer2.p=1); repeatable")
    p.add_argument("--epochs", type=int, help="epochs per layer (shortcut for --set n_epochs=N)")
    p.add_argument("--seed", type=int, help="random seed (shortcut for --set seed=N)")
    p.add_argument("--color", choices=["gray", "rgb"], help="shortcut for --set color=...")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/IMAGES_DIR-PRESET)")
    p.add_argument("--holdout", metavar="DIR", help="images not trained on, scored at every epoch end "
                   "(history.json: heldout_snr_db)")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=None,
                   help="where to compute (default cpu; with --resume, the run's device)")
    nproc(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("infer", help="feature maps of images (.npy and .png)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders of them")
    p.add_argument("--layer", type=int, help="only this layer (default: every layer)")
    p.add_argument("--out", required=True, metavar="DIR")
    device(p)
    nproc(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("project", help="pixel-space filters of every layer as PNG grids")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--layer", type=int, help="only this layer")
    p.add_argument("--zoom", type=int, default=6, help="pixels per filter pixel (default 6)")
    p.add_argument("--sort", choices=["index", "activity"], default="index",
                   help="tile order: map index, or most active in training first")
    device(p)
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("reconstruct", help="reconstruct an image from one layer's maps")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--out", required=True, metavar="FILE.png")
    device(p)
    p.set_defaults(func=cmd_reconstruct)

    def restoring(p):
        p.add_argument("--layer", type=int, default=None, help="reconstruct from this layer's maps (default 1)")
        p.add_argument("--lam-factor", type=float, default=None, metavar="C",
                       help="c in lam = c / sigma_y at layer 1 (default: deconvnet.restoration.LAM_FACTOR)")
        p.add_argument("--copies", type=int, default=None, metavar="N",
                       help="average the results of N of the 8 flips/transpositions of the image (1-8; N times "
                            "slower than 1; default: denoise 1, after which the Wiener stage leaves nothing for "
                            "more copies to gain; inpaint 8)")
        p.add_argument("--scales", type=int, default=None, metavar="J",
                       help="code with layer 1's filters at J scales at once (1-4; default: the recipe's, "
                            "deconvnet.restoration.DENOISE_RECIPE; layer 1 only)")
        p.add_argument("--adaptive", type=float, default=None, metavar="A",
                       help="denoise: code layer 1 a second time with l1 weights raised up to 1+A times where the "
                            "first pass found no structure (default 0 = off; twice slower)")
        p.add_argument("--wiener", type=int, default=None, metavar="N",
                       help="denoise: passes of the second stage, empirical Wiener filtering of 8x8 DCT patches "
                            "with the network's result as the pilot (default: the recipe's 3; 0 = off)")
        p.add_argument("--two-pass", action="store_true",
                       help="take the low frequencies from a first estimate (twice slower)")
        device(p)

    p = sub.add_parser("denoise", help="remove Gaussian noise from an image (sigma on the 0-255 scale)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--sigma", default=None, metavar="S",
                   help="standard deviation of the noise in IMAGE on the 0-255 scale (e.g. 25), whatever the "
                        "file's bit depth; with --noise-sigma, default that value")
    p.add_argument("--noise-sigma", default=None, metavar="S",
                   help="IMAGE is clean: add Gaussian noise of this standard deviation (0-255 scale, seeded), "
                        "denoise it, and print PSNR and SSIM of the noisy input and of every layer's "
                        "reconstruction; writes FILE (from --layer) and FILE's stem .noisy / .layerN beside it")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise of --noise-sigma (default 0)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's protocol: maps inferred layer by layer with each layer's own trained lam "
                        "(no noise-aware weight; --sigma not used), the image alone; with --noise-sigma, "
                        "layer 2 beats layer 1 as in the paper (README, Restoration)")
    p.add_argument("--out", required=True, metavar="FILE", help="the denoised image (.png, .tif or .bmp)")
    restoring(p)
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("inpaint", help="fill the missing pixels of an image")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--mask", required=True, metavar="MASK",
                   help="an image file of IMAGE's size: non-zero = known pixel, 0 (black) = missing")
    p.add_argument("--sigma", default=None, metavar="S", help="noise on the known pixels, 0-255 scale (default none)")
    p.add_argument("--out", required=True, metavar="FILE", help="the restored image (.png, .tif or .bmp)")
    restoring(p)
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("tune", help="tune a trained layer 1 for denoising on clean photos (noise is added)")
    p.add_argument("model", metavar="MODEL", help="a trained model (e.g. of --preset denoise)")
    p.add_argument("images", metavar="IMAGES_DIR", help="clean photos (not the ones you will score on)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="the tuned model (saved every --save-every steps; run again to resume)")
    p.add_argument("--steps", type=int, default=2400, help="Adam steps (default 2400, about 1 s each on 2 cores)")
    p.add_argument("--sigmas", default="15,25,50", metavar="S,S,...",
                   help="noise levels on the 0-255 scale, one per batch in turn (default 15,25,50)")
    p.add_argument("--scales", type=int, default=2, help="scales coded jointly, as denoise --scales (default 2)")
    p.add_argument("--patch", type=int, default=48, help="side of the training patches (default 48)")
    p.add_argument("--batch", type=int, default=8, help="patches per step (default 8)")
    p.add_argument("--copies", type=int, default=1,
                   help="tune the mean of this many flips and transpositions of each patch, as denoise restores "
                        "(1 to 8; default 1; the time per step grows with it)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's step size (default 0.003)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patches and the noise (default 0)")
    p.add_argument("--save-every", type=int, default=50, metavar="N", help="steps between saves (default 50)")
    p.add_argument("--quiet", action="store_true")
    device(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="write RUN_DIR/report.html")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="images to reconstruct (default: 3 training images)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="train on scikit-image's sample photos and write a report (about a minute on 2 cores)")
    p.add_argument("--out", default="deconvnet-demo", metavar="DIR", help="run folder (default ./deconvnet-demo)")
    p.add_argument("--size", type=int, default=64, help="side of the square grey demo images (default 64)")
    p.add_argument("--maps3", type=int, default=150, help="layer-3 maps (default 150, as the paper)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, as in train")
    p.add_argument("--quiet", action="store_true")
    device(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("caltech", help="the paper's Caltech-101 protocol on a class-per-folder dataset "
                       "(DN and SIFT features, spatial pyramid, kernel SVM)")
    p.add_argument("data_dir", metavar="DATA_DIR", help="<DATA_DIR>/<class>/<image>, e.g. 101_ObjectCategories")
    p.add_argument("--train-per-class", default="15,30", metavar="N,N", help="training images per class (default 15,30)")
    p.add_argument("--test-per-class", type=int, default=50, metavar="N", help="at most N test images per class "
                   "(default 50)")
    p.add_argument("--splits", type=int, default=5, help="random splits (default 5)")
    p.add_argument("--features", default="dn1,dn2,dn12,sift", metavar="F,F",
                   help="dn1, dn2, dn12 (layers 1+2 stacked), sift (default all four)")
    p.add_argument("--out", default="caltech-results", metavar="RESULTS_DIR",
                   help="results folder (default ./caltech-results); an interrupted run resumes there")
    p.add_argument("--network-images", type=int, default=20, metavar="N",
                   help="images the DN is trained on, spread over the classes and in every split's training "
                        "part (default 20)")
    p.add_argument("--preset", default="calibrated", choices=sorted(PRESETS), help="the DN's preset (2 layers)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the DN, as in train")
    p.add_argument("--max-side", type=int, default=150, help="longer side of every image in pixels (default 150)")
    p.add_argument("--infer-iters", default="30,10", metavar="N,N",
                   help="caps on the solver's iterations per layer when inferring the dataset's maps (default "
                        "30,10; own: the layers' own, as in training)")
    p.add_argument("--pool", default="abs_avg", choices=["avg", "abs_avg", "max", "max_abs"],
                   help="pooling of the maps over each 4x4 cell (default abs_avg: mean |z|; avg is the 2010 "
                        "toolbox's)")
    p.add_argument("--words", type=int, default=200, help="codebook size (default 200)")
    p.add_argument("--C", type=float, default=10.0, help="SVM regularisation (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the network images (default 0)")
    p.add_argument("--keep-background", action="store_true", help="keep the BACKGROUND_Google class")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    device(p)
    nproc(p)
    p.set_defaults(func=cmd_caltech)
    return ap


#: the commands that run as several processes (``torchrun`` or ``--nproc``).
DISTRIBUTED_COMMANDS = ("train", "infer", "caltech")


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _join(args):
    """The process group of this command: one process, or, under ``torchrun``, the job's
    (gloo on the CPU, NCCL with ``--device cuda``)."""
    from .distributed import LOCAL, init, launched, stop_on_sigterm  # noqa: PLC0415

    if not launched():
        return LOCAL
    if args.command not in DISTRIBUTED_COMMANDS:
        raise UserError(f"{args.command} runs in one process; start it without torchrun "
                        f"(torchrun runs {', '.join(DISTRIBUTED_COMMANDS)})")
    if getattr(args, "nproc", 1) != 1:
        raise UserError("--nproc starts the processes itself; give it without torchrun (or torchrun without it)")
    device = getattr(args, "device", None)
    if device is None and getattr(args, "resume", None):  # the run's own device
        try:
            device = json.loads((Path(args.resume) / "run.json").read_text()).get("device", "cpu")
        except (OSError, ValueError, AttributeError):
            device = "cpu"
    stop_on_sigterm()
    return init(_device(device or "cpu"))


def _say_error(err: BaseException, group) -> None:
    """The one line of a failed command; with several processes, prefixed by the rank, and
    said by rank 0 alone for the errors every process meets alike (a bad setting, a damaged
    checkpoint, maps that diverged, which every rank learns from the batch's sums)."""
    import os  # noqa: PLC0415

    from .checkpoint import CheckpointError  # noqa: PLC0415
    from .distributed import LAUNCHER_ENV, RankFailure  # noqa: PLC0415
    from .train import DivergenceError  # noqa: PLC0415

    msg = str(err) if not isinstance(err, OSError) or not err.filename else \
        f"{err.filename}: {err.strerror or err}"
    if group.size > 1:
        if not group.is_main and isinstance(err, (UserError, CheckpointError, DivergenceError)):
            return
        if isinstance(err, RankFailure) and os.environ.get(LAUNCHER_ENV):
            return  # the launcher names the process that failed
        if not msg.startswith(f"rank {group.rank}:"):
            msg = f"rank {group.rank}: {msg}"
    print(f"deconvnet: error: {msg}", file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of the ``deconvnet`` command; returns the exit status."""
    from .distributed import Terminated  # noqa: PLC0415

    try:
        return _main(argv)
    except Terminated:  # SIGTERM while an error was being reported: that report stands
        return 143


def _main(argv=None) -> int:
    import os  # noqa: PLC0415

    from .distributed import LAUNCHER_ENV, LOCAL, RankFailure, Terminated, default_sigterm, launch, launched  # noqa: PLC0415
    from .runtime import configure  # noqa: PLC0415

    ap = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    configure()  # the process-wide settings of an entry point (deconvnet.runtime)
    group = LOCAL
    try:
        n = getattr(args, "nproc", 1)
        if n < 1:
            raise UserError(f"--nproc {n}: give a number of processes >= 1")
        if n > 1 and not launched():
            return launch(n, _without_nproc(argv))
        group = _join(args)
        args.group = group
        return args.func(args)
    except KeyboardInterrupt:
        print("deconvnet: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        if group.is_main and not os.environ.get(LAUNCHER_ENV):
            print(f"deconvnet: error: rank {group.rank}: stopped by torchrun, which stops every process when one "
                  "fails (its report names it)", file=sys.stderr)
        return 143
    except (UserError, ValueError, RuntimeError, OSError, ArithmeticError, RankFailure) as err:
        _say_error(err, group)
        return 2
    finally:
        default_sigterm()
        group.close()


if __name__ == "__main__":
    sys.exit(main())
