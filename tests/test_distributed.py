"""Scale-out with torch.distributed (issue 15): real gloo processes on this machine.

Oracles: sums, maxima and the rescaling computed directly over all the data in one process;
a one-process run with the same seed and global batch, whose filters two processes must
reproduce (float64, where the one remaining difference, the order of the sums, is far below
the 1e-5 asked); an uninterrupted run, which a two-process run killed with SIGKILL and resumed
with one or two processes must end equal to.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

import deconvnet as dn
from deconvnet.cli import main
from deconvnet.config import apply_overrides
from deconvnet.distributed import LOCAL, Group, ProcessGroup

ENV = dict(os.environ, OMP_NUM_THREADS="1")  # two processes on two cores: one thread each


# ------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, fn, args, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = dn.distributed.init("cpu")
    try:
        queue.put((rank, fn(group, *args)))
    except BaseException as err:  # noqa: BLE001 - reported to the test
        queue.put((rank, err))
    finally:
        group.close()


def spawn(fn, *args, size: int = 2, timeout: float = 120.0) -> list:
    """``fn(group, *args)`` in ``size`` fresh processes joined by gloo; their results by rank."""
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, size, port, fn, args, queue)) for r in range(size)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=timeout) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for r in range(size):
        if isinstance(results[r], BaseException):
            raise AssertionError(f"rank {r} failed: {results[r]!r}")
    return [results[r] for r in range(size)]


def smooth_images(n: int, seed: int = 0, shape=(26, 24)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = gaussian_filter(rng.random(shape), 1.5)
        out.append((im - im.min()) / (im.max() - im.min()))
    return out


# ------------------------------------------------------------ reductions
def _reductions(group: Group, parts):
    """What each rank computes from its own part (rank r holds the arrays i with i % 2 == r)."""
    from deconvnet.preprocess import rescale_affine

    r = group.rank
    mine = torch.tensor([r + 1.0, -2.0 * r, 0.5], dtype=torch.float64)
    owned = [torch.as_tensor(a) if group.owns(i) else None for i, a in enumerate(parts)]
    return {
        "sum": group.sum(mine), "max": group.max(mine), "min": group.min(mine),
        "float32_sum": group.sum(mine.float()).dtype,
        "broadcast": group.broadcast(mine.clone(), src=1),
        "fetched": [group.fetch(owned, i, parts[i].shape, torch.float64, torch.device("cpu"))
                    for i in range(len(parts))],
        "from_main": group.from_main(float(r + 7)), "decide": group.decide(r == 0),
        "sum_floats": group.sum_floats(r, 2.5),
        "minmax": rescale_affine(owned, "minmax", group), "std": rescale_affine(owned, "std", group),
        "untouched": mine.tolist(),
    }


def test_reductions_of_two_processes_equal_the_sums_over_all_the_data():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((1, 5, 4)) * (i + 1) for i in range(5)]
    got = spawn(_reductions, parts)
    a, b = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64), torch.tensor([2.0, -2.0, 0.5], dtype=torch.float64)
    for rank, res in enumerate(got):
        assert torch.equal(res["sum"], a + b)
        assert torch.equal(res["max"], torch.maximum(a, b)) and torch.equal(res["min"], torch.minimum(a, b))
        assert res["float32_sum"] == torch.float32
        assert torch.equal(res["broadcast"], b)
        for i, t in enumerate(res["fetched"]):
            np.testing.assert_array_equal(t.numpy(), parts[i])
        assert res["from_main"] == 7.0 and res["decide"] is True
        assert res["sum_floats"] == [1.0, 5.0]
        assert res["untouched"] == [rank + 1.0, -2.0 * rank, 0.5]  # no collective writes into its input
        # the rescaling of the whole set, from numpy over all parts at once
        every = np.concatenate([p.ravel() for p in parts])
        lo, hi, mean = every.min(), every.max(), every.mean()
        scale = 2.0 / (hi - lo)
        np.testing.assert_allclose(res["minmax"], (scale, -scale * lo - 1.0 - (scale * (mean - lo) - 1.0)),
                                   rtol=1e-12)
        np.testing.assert_allclose(res["std"], (1 / every.std(), -mean / every.std()), rtol=1e-12)


def test_the_group_of_one_process_changes_nothing():
    t = torch.arange(3.0)
    assert LOCAL.sum(t) is t and LOCAL.max(t) is t and LOCAL.broadcast(t) is t and LOCAL.agree(t) is t
    assert LOCAL.mine([5, 2, 7]) == [5, 2, 7] and LOCAL.is_main and LOCAL.batchwide is None
    assert LOCAL.sum_floats(1, 2.5) == [1.0, 2.5] and LOCAL.decide(True) is True


@pytest.mark.parametrize("rank,size,reason,expect", [
    (0, 2, "[/pytorch/third_party/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1",
     "rank 0: rank 1 stopped during a sum (Connection closed by peer [127.0.0.1]:1)"),
    (1, 2, "Timed out waiting 600000ms for recv operation to complete",
     "rank 1: rank 0 stopped answering during a sum (Timed out waiting"),
    (2, 4, "Connection reset by peer", "rank 2: another rank (torchrun's report names it) stopped during a sum"),
])
def test_a_lost_rank_is_named_in_one_line(rank, size, reason, expect):
    msg = ProcessGroup(rank, size, rank, torch.device("cpu"))._lost("a sum", RuntimeError(reason + "\nmore"))
    assert msg.startswith(expect) and "\n" not in msg


# ---------------------------------------------- training: P processes = 1
TRAINING = {  # preset, overrides: every filter method and every solver decision that spans a batch
    "calibrated": ("calibrated", ["layer1.n_maps=4", "layer2.n_maps=10", "max_iter=30", "n_epochs=2"]),
    "fista-cg": ("fista", ["layer1.n_maps=4", "layer2.n_maps=10", "batch_size=3", "n_epochs=2", "tol=1e-2"]),
    "epoch-admm": ("calibrated", ["layer1.n_maps=4", "layer2.n_maps=10", "boundary=circular", "method=admm",
                                  "max_iter=20", "filter_every=epoch", "batch_size=3", "n_epochs=2"]),
}


def _training_config(name):
    preset, overrides = TRAINING[name]
    return apply_overrides(dn.preset(preset, 2), [*overrides, "max_side=32", "dtype=float64"])


def _fit(group: Group, names, images, holdout):
    out = {}
    for name in names:
        net = dn.DeconvNet(_training_config(name)).fit(images, holdout=holdout, group=group)
        out[name] = {"filters": [lay.filters_ for lay in net.layers_], "history": net.history_,
                     "chain": net.chain_affines_, "activity": [lay.map_activity_ for lay in net.layers_],
                     "lam": [lay.lam_ for lay in net.layers_], "drift": getattr(group, "drift", 0.0)}
    return out


def test_two_processes_learn_the_filters_of_one_process_with_the_same_global_batch():
    """7 images: batches of 1 (layer 1 of ``calibrated``: one rank codes a zero stand-in),
    2 and 3 (shares of 0 to 3 images); FISTA with density calibration and exact updates,
    FISTA to a tolerance with CG updates, ADMM with one exact update per epoch; held-out
    images scored at every epoch end."""
    images, holdout = smooth_images(7), smooth_images(2, seed=5)
    names = list(TRAINING)
    one = _fit(LOCAL, names, images, holdout)
    two = spawn(_fit, names, images, holdout)
    for name in names:
        ref = one[name]
        for rank, got in enumerate(two):
            got = got[name]
            assert got["drift"] == 0.0, f"{name}: rank {rank}'s filters moved away from rank 0's"
            for fa, fb in zip(got["filters"], ref["filters"], strict=True):
                torch.testing.assert_close(fa, fb, rtol=0, atol=1e-5)  # the bar; about 1e-13 here
            torch.testing.assert_close(got["filters"], two[0][name]["filters"], rtol=0, atol=0)  # one set for all
            np.testing.assert_allclose(got["chain"], ref["chain"], rtol=1e-10)
            np.testing.assert_allclose(got["lam"], ref["lam"], rtol=1e-10)
            for a, b in zip(got["activity"], ref["activity"], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10)
            for ha, hb in zip(got["history"], ref["history"], strict=True):
                for ra, rb in zip(ha, hb, strict=True):
                    for key in ("objective", "nonzero_fraction", "lam", "snr_db", "pixel_snr_db", "heldout_snr_db"):
                        np.testing.assert_allclose(getattr(ra, key), getattr(rb, key), rtol=1e-9, err_msg=key)
                    assert ra.active_maps == rb.active_maps


def _fit_masked(group: Group, names, images, masks):
    out = {}
    for name in names:
        net = dn.DeconvNet(_training_config(name)).fit(images, masks=masks, group=group)
        out[name] = {"filters": [lay.filters_ for lay in net.layers_], "history": net.history_,
                     "lam": [lay.lam_ for lay in net.layers_]}
    return out


def test_masks_travel_with_their_images_in_two_processes():
    """Training from incomplete images (issue 14): each process weighs its own images with their
    masks; the calibration gets the masks of the first images from their owners; ADMM chooses
    its masked split for the whole batch (two of the images have masks of all ones). Two
    processes learn the filters of one."""
    images = smooth_images(7)
    Y = dn.DeconvNet(_training_config("calibrated")).prepare(images)  # masks live in layer 1's input space
    masks = [np.random.default_rng(20 + i).random(y.shape[2:]) > 0.3 for i, y in enumerate(Y)]
    masks[0][:] = masks[3][:] = True
    names = ["calibrated", "epoch-admm"]
    one = _fit_masked(LOCAL, names, images, masks)
    two = spawn(_fit_masked, names, images, masks)
    for name in names:
        for got in two:
            for fa, fb in zip(got[name]["filters"], one[name]["filters"], strict=True):
                torch.testing.assert_close(fa, fb, rtol=0, atol=1e-5)
            np.testing.assert_allclose(got[name]["lam"], one[name]["lam"], rtol=1e-10)
            for ha, hb in zip(got[name]["history"], one[name]["history"], strict=True):
                for ra, rb in zip(ha, hb, strict=True):
                    for key in ("objective", "snr_db", "pixel_snr_db"):
                        np.testing.assert_allclose(getattr(ra, key), getattr(rb, key), rtol=1e-9, err_msg=key)


# ------------------------------------------------------ CLI: kill, resume
CLI = ["--layers", "2", "--epochs", "4", "--set", "layer1.n_maps=4", "--set", "layer2.n_maps=10",
       "--set", "batch_size=3", "--set", "max_iter=30", "--set", "dtype=float64", "--set", "max_side=32",
       "--no-report", "--quiet"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i, im in enumerate(smooth_images(6, seed=3, shape=(30, 28))):
        Image.fromarray((im * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    """The uninterrupted one-process run."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", str(photos), "--out", str(run), *CLI]) == 0
    return dn.DeconvNet.load(run)


def assert_filters_equal(run, ref):
    got = dn.DeconvNet.load(run)
    for a, b in zip(got.layers_, ref.layers_, strict=True):
        torch.testing.assert_close(a.filters_, b.filters_, rtol=0, atol=1e-5)


def _pid_of(token: str, rank: int, timeout: float = 60.0) -> int:
    """The worker of rank ``rank`` among the processes whose environment holds ``token``."""
    want = {f"DISTTEST={token}".encode(), f"RANK={rank}".encode()}
    t0 = time.time()
    while time.time() - t0 < timeout:
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    env = set((d / "environ").read_bytes().split(b"\0"))
                except OSError:
                    continue
                if want <= env:
                    return int(d.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank}")


def _start_and_kill(cmd, run: Path, *, rank: int | None):
    """Start ``cmd``; once a checkpoint state is on disk, SIGKILL the worker of ``rank`` (or,
    ``None``, every process of the job at once, as a power cut would). Returns the process."""
    token = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, env=dict(ENV, DISTTEST=token), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    state = run / "checkpoint" / "state.safetensors"
    while not state.exists() and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1].decode()
    if rank is None:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(_pid_of(token, rank), signal.SIGKILL)
    proc.wait(timeout=120)
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker's pid in /proc")
def test_a_rank_killed_stops_the_job_with_one_line_and_a_resume_with_one_process_ends_equal(photos, reference,
                                                                                            tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "deconvnet", "train", str(photos), "--out", str(run), "--checkpoint-every", "0",
           "--nproc", "2", *CLI]
    proc = _start_and_kill(cmd, run, rank=1)
    err = proc.stderr.read().decode()
    assert proc.returncode == 2
    assert err.count("\n") == 1 and err.startswith("deconvnet: error: rank 1 (pid ") and "SIGKILL" in err, err
    assert not (run / "model.json").exists()
    assert main(["train", "--resume", str(run), "--checkpoint-every", "0", "--quiet", "--no-report"]) == 0
    assert_filters_equal(run, reference)
    assert not (run / "checkpoint").exists() and not list(run.rglob("*.tmp"))


def test_torchrun_two_processes_write_one_run_equal_to_one_process(photos, reference, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "deconvnet", "train", str(photos), "--out", str(run), *CLI]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_filters_equal(run, reference)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "history.json", "model.json",
                                                     "model.safetensors", "run.json"]
    assert res.stdout.count("trained in ") == 1  # rank 0 alone speaks
    import json

    assert json.loads((run / "run.json").read_text())["processes"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a process group")
def test_a_two_process_run_killed_at_once_resumes_with_two_processes_to_the_same_filters(photos, reference,
                                                                                         tmp_path):
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "deconvnet", "train"]
    _start_and_kill([*launch, str(photos), "--out", str(run), "--checkpoint-every", "0", *CLI], run, rank=None)
    res = subprocess.run([*launch, "--resume", str(run), "--quiet", "--no-report"], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_filters_equal(run, reference)


def test_infer_over_a_folder_in_two_processes_writes_what_one_process_writes(photos, reference, tmp_path):
    model = tmp_path / "model"
    reference.save(model)
    assert main(["infer", str(model), str(photos), "--layer", "2", "--out", str(tmp_path / "one")]) == 0
    res = subprocess.run([sys.executable, "-m", "deconvnet", "infer", str(model), str(photos), "--layer", "2",
                          "--out", str(tmp_path / "two"), "--nproc", "2"], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(one) == 12
    assert res.stdout.count("layer 2 maps") == 6  # each image once, by its owner
    for name in one:
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(tmp_path / "two" / name), np.load(tmp_path / "one" / name),
                                       rtol=0, atol=1e-12)


def test_commands_that_run_in_one_process_are_refused_under_torchrun(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("deconvnet: error: report runs in one process; start it without torchrun (torchrun runs "
                   "train, infer, caltech)\n")
    monkeypatch.delenv("RANK")
    assert main(["train", str(tmp_path), "--nproc", "0"]) == 2
    assert "--nproc 0: give a number of processes >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_caltech_in_two_processes_gives_the_results_of_one(tmp_path):
    from test_recognition import TINY_NET, write_dataset

    root = write_dataset(tmp_path / "data", per_class=8, side=32)
    args = ["caltech", str(root), "--train-per-class", "4", "--test-per-class", "4", "--splits", "1",
            "--features", "dn1", "--network-images", "3", "--max-side", "32", "--words", "8", "--quiet",
            *[a for s in TINY_NET for a in ("--set", s)], "--set", "dtype=float64"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    res = subprocess.run([sys.executable, "-m", "deconvnet", *args, "--out", str(tmp_path / "two"), "--nproc", "2"],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    import json

    a, b = (json.loads((tmp_path / d / "results.json").read_text())["results"] for d in ("one", "two"))
    assert a["dn1"]["4"]["splits"] == b["dn1"]["4"]["splits"]


@pytest.mark.parametrize("value,expect", [(None, 600.0), ("30", 30.0), ("0.5", 0.5), ("0", None), ("soon", None),
                                          ("-3", None), ("nan", None)])
def test_the_collective_timeout_comes_from_the_environment(monkeypatch, value, expect):
    from deconvnet.distributed import timeout_seconds

    if value is None:
        monkeypatch.delenv("DECONVNET_DIST_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("DECONVNET_DIST_TIMEOUT", value)
    if expect is None:
        with pytest.raises(ValueError, match="DECONVNET_DIST_TIMEOUT=.*give a number of seconds > 0"):
            timeout_seconds()
    else:
        assert timeout_seconds() == expect


@pytest.mark.parametrize("argv,expect", [
    (["train", "d", "--nproc", "2", "--quiet"], ["train", "d", "--quiet"]),
    (["train", "--nproc=3", "d"], ["train", "d"]),
    (["infer", "m", "x.png", "--out", "o"], ["infer", "m", "x.png", "--out", "o"]),
])
def test_the_launcher_runs_the_command_without_its_nproc(argv, expect):
    from deconvnet.cli import _without_nproc

    assert _without_nproc(argv) == expect
