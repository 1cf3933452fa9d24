"""A real ``main_pretrain.py`` process stopped by SIGTERM or Ctrl-C (SIGINT) saves a checkpoint
of the step it was on and exits with 128 + the signal number and a message; resuming from that
checkpoint ends bit for bit where the uninterrupted run ends, with solo-learn's torchvision loader
and with DALI CIFAR (CPU backend). SIGKILL in the middle of a checkpoint write leaves no partial
``.ckpt``, and the run resumes from the last complete one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from conftest import requires_solo
from solo_runs import (
    DALI_CIFAR_CONFIG,
    DALI_PARTIAL_EPOCHS,
    TWO_EPOCHS,
    assert_same_training_state,
    load_checkpoint,
    main_pretrain_command,
    run_env,
    run_main_pretrain,
    tail,
)

pytestmark = [requires_solo, pytest.mark.solo, pytest.mark.slow]

N = 3  # steps per epoch of TWO_EPOCHS
COMMON = list(TWO_EPOCHS)

# A callback (loaded through Lightning's callback entry points, in the training process) that
# holds the run at the end of step $CUECO_HOLD_AT until a signal has arrived, so the test's
# signal lands at a known step.
HOLD_MODULE = """
import os, time
from pathlib import Path
from lightning.pytorch import Callback

class Hold(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(os.environ["CUECO_HOLD_AT"]):
            Path(os.environ["CUECO_HOLD_FILE"]).touch()
            deadline = time.time() + 120
            while not trainer.received_sigterm and time.time() < deadline:
                time.sleep(0.02)

def factory():
    return [Hold()] if os.environ.get("CUECO_HOLD_AT") else []
"""


def _plugin_path(dest: Path) -> str:
    """A folder with the hold callback and the dist-info that registers it with Lightning."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "cueco_hold.py").write_text(HOLD_MODULE)
    info = dest / "cueco_hold-0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cueco-hold\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[lightning.pytorch.callbacks_factory]\ncueco_hold = cueco_hold:factory\n"
    )
    return str(dest)


def _start(
    solo_root: Path,
    workdir: Path,
    train: Path,
    overrides: list[str],
    env: dict[str, str],
    config_name: str = "cueco.yaml",
) -> subprocess.Popen:
    """The command of ``solo_runs.run_main_pretrain``, started without waiting."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        main_pretrain_command(solo_root, workdir, train, overrides, config_name),
        cwd=workdir,
        env={**run_env(solo_root, workdir), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop_at(
    solo_root: Path,
    tmp_path: Path,
    train: Path,
    overrides: list[str],
    step: int,
    signum: int,
    config_name: str = "cueco.yaml",
) -> Path:
    """Runs in ``tmp_path/run`` until the end of ``step``, sends ``signum`` there, checks the
    exit status, the message and the step checkpoint, and returns that checkpoint."""
    hold = tmp_path / "holding"
    env = {
        "PYTHONPATH": os.pathsep.join(
            [_plugin_path(tmp_path / "plugin")] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
        "CUECO_HOLD_AT": str(step),
        "CUECO_HOLD_FILE": str(hold),
    }
    run = _start(solo_root, tmp_path / "run", train, overrides, env, config_name)
    deadline = time.time() + 300
    while not hold.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert hold.exists(), run.communicate()[0][-4000:]
    run.send_signal(signum)
    output = run.communicate(timeout=300)[0]

    assert run.returncode == 128 + signum, output[-4000:]
    name = signal.Signals(signum).name
    assert f"CueCo: stopped by {name} after step {step}" in output, output[-4000:]
    (saved,) = [p for p in _run_folder_files(tmp_path / "run") if p.suffix == ".ckpt"]
    assert saved.name.endswith(f"-step={step}.ckpt") and f"saved {saved}" in output
    assert load_checkpoint(saved)["global_step"] == step
    return saved


def _run_folder_files(workdir: Path) -> list[Path]:
    return sorted((workdir / "trained_models" / "cueco").glob("*/*"))


@pytest.fixture(scope="module")
def small_train(shared_datasets: Path) -> Path:
    return shared_datasets / "cifar10-folder-small" / "train"


@pytest.fixture(scope="module")
def uninterrupted(two_epoch_run: dict) -> dict:
    """The final checkpoint of the two-epoch run, never interrupted."""
    return load_checkpoint(two_epoch_run["checkpoints"][-1])


def test_sigint_saves_the_current_step_and_exits_nonzero(
    solo_root: Path, small_train: Path, tmp_path: Path
) -> None:
    # the same handler as SIGTERM's (resumed below): only the signal differs
    _stop_at(solo_root, tmp_path, small_train, COMMON, 2, signal.SIGINT)


def test_sigterm_saves_the_current_step_exits_nonzero_and_resume_equals_uninterrupted_run(
    solo_root: Path, small_train: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    saved = _stop_at(solo_root, tmp_path, small_train, COMMON, 4, signal.SIGTERM)
    resumed = run_main_pretrain(
        solo_root, tmp_path / "run", small_train, [*COMMON, f"resume_from_checkpoint='{saved}'"]
    )
    assert resumed.returncode == 0, tail(resumed)
    # the resumed run continues in the interrupted run's folder; its step checkpoint is replaced
    (final,) = [p for p in saved.parent.iterdir() if p.suffix == ".ckpt"]
    assert final.name.endswith("-ep=1.ckpt")
    assert_same_training_state(load_checkpoint(final), uninterrupted)


def test_dali_cifar_run_stopped_mid_epoch_resumes_bit_for_bit(
    solo_root: Path, small_cifar_npz: Path, dali_cifar_run: dict, tmp_path: Path
) -> None:
    # issue 17's partial-epoch run (3 of 5 batches an epoch, 3 epochs) stopped after step 4 =
    # the second batch of epoch 1: the resumed run starts epoch 1's permutation at its third
    # batch and goes on, as the uninterrupted run (conftest.dali_cifar_run) did
    overrides = list(DALI_PARTIAL_EPOCHS)
    saved = _stop_at(
        solo_root, tmp_path, small_cifar_npz, overrides, 4, signal.SIGTERM, DALI_CIFAR_CONFIG
    )
    resumed = run_main_pretrain(
        solo_root,
        tmp_path / "run",
        small_cifar_npz,
        [*overrides, f"resume_from_checkpoint='{saved}'"],
        config_name=DALI_CIFAR_CONFIG,
    )
    assert resumed.returncode == 0, tail(resumed)
    assert "cannot skip" not in resumed.stdout  # the loader starts at the batch itself
    (final,) = [p for p in saved.parent.iterdir() if p.suffix == ".ckpt"]
    assert final.name.endswith("-ep=2.ckpt")
    assert_same_training_state(load_checkpoint(final), dali_cifar_run["final"])


def test_sigkill_while_a_checkpoint_is_written_leaves_no_partial_ckpt_and_resume_works(
    solo_root: Path, small_train: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "run"
    # a large queue makes each checkpoint large (about 0.25 GB), so its write takes a while
    overrides = [*COMMON, "method_kwargs.queue_size=200000", "auto_resume.enabled=True"]
    run = _start(solo_root, workdir, small_train, overrides, {})
    first: list[Path] = []
    deadline = time.time() + 300
    while run.poll() is None and time.time() < deadline:
        files = _run_folder_files(workdir)
        first = first or [p for p in files if p.name.endswith("-ep=0.ckpt")]
        if first and any("-ep=1" in p.name for p in files):
            run.send_signal(signal.SIGKILL)  # the epoch-1 checkpoint is being written
            break
        time.sleep(0.001)
    output = run.communicate(timeout=60)[0]
    assert run.returncode == -signal.SIGKILL, output[-4000:]

    files = _run_folder_files(workdir)
    partial = [p for p in files if "-ep=1" in p.name]
    assert partial and all(p.name.endswith(".ckpt.part") for p in partial), files
    assert not zipfile.is_zipfile(partial[0])  # the kill did land during the write
    checkpoints = [p for p in files if p.suffix == ".ckpt"]
    assert checkpoints == first, files  # only the complete epoch-0 checkpoint is a .ckpt
    assert load_checkpoint(first[0])["global_step"] == N

    again = run_main_pretrain(solo_root, workdir, small_train, overrides)
    assert again.returncode == 0, tail(again)
    assert f"{first[0].name}" in again.stdout  # named as the checkpoint resumed from
    files = _run_folder_files(workdir)
    assert not [p for p in files if p.name.endswith(".part")], files
    (final,) = [p for p in files if p.suffix == ".ckpt"]
    assert final.parent == first[0].parent and load_checkpoint(final)["global_step"] == 2 * N
