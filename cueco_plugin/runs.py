"""Run management for CueCo runs under stock solo-learn ``main_pretrain.py``: a checkpoint folder
per run, atomic checkpoints, a checkpoint and a non-zero exit status on SIGTERM/SIGINT, exact
mid-epoch resume, and an auto-resume that takes only a checkpoint of the same config.

``CueCo.configure_callbacks()`` returns :func:`run_callbacks`; Lightning adds them to the Trainer
that ``main_pretrain.py`` built, and :class:`RunCheckpointer` (a subclass of solo-learn's
``Checkpointer``) replaces solo-learn's. :func:`resolve_auto_resume` runs when the method is built
(``CueCo.add_and_assert_specific_cfg``), before ``main_pretrain.py`` reads ``auto_resume``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from solo.utils.checkpointer import Checkpointer
from torch.utils.data import BatchSampler, Sampler

from cueco_plugin.config import CUECO_DEFAULTS
from cueco_plugin.preflight import is_rank_zero

PARTIAL_SUFFIX = ".part"  # a checkpoint being written; never ends in .ckpt

#: config keys (and everything under them) that do not shape the model or the schedule: a
#: checkpoint whose args.json differs from the current config only in these is resumed
RESUME_IGNORED = (
    "auto_resume",
    "resume_from_checkpoint",
    "wandb_run_id",
    "wandb",
    "checkpoint",
    "auto_umap",
    "knn_eval",
    "default_root_dir",
    "enable_progress_bar",
    "log_every_n_steps",
    "num_sanity_val_steps",
    "limit_val_batches",
    "data.num_workers",
    "data.val_path",
    "debug_augmentations",
    # speed only: the same math and the same state dict
    "method_kwargs.compile_backbones",
    "method_kwargs.compile_mode",
)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a whole ``torch.save`` archive (its zip directory, written last, is
    there): a file cut short by a kill is not."""
    return path.is_file() and zipfile.is_zipfile(path)


# ------------------------------------------------------------------------------ auto-resume
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_IGNORED)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: saved -> current"`` for every key (dotted) that shapes the model or the schedule
    and differs; empty when a checkpoint with config ``saved`` may be resumed under
    ``current``."""
    a, b = _flatten(saved), _flatten(current)
    for flat in (a, b):  # a CueCo option added after a run was saved: that run had its default
        if flat.get("method") == "cueco":
            for key, default in CUECO_DEFAULTS.items():
                flat.setdefault(f"method_kwargs.{key}", default)
    keys = sorted(k for k in set(a) | set(b) if not _ignored(k) and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys]


def find_resumable(cfg: DictConfig) -> tuple[Path | None, str]:
    """The newest complete checkpoint under ``checkpoint.dir/<method>/*/`` whose ``args.json``
    matches ``cfg`` (see :func:`config_differences`) and is younger than
    ``auto_resume.max_hours``, with a sentence saying why it was taken or why none was."""
    root = Path(cfg.checkpoint.dir) / cfg.method
    oldest = datetime.now() - timedelta(hours=float(cfg.auto_resume.get("max_hours", 36)))
    current = OmegaConf.to_container(cfg, resolve=True)
    found: list[tuple[float, Path, list[str]]] = []
    partial: list[Path] = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        try:
            saved = json.loads((folder / "args.json").read_text())
        except (OSError, ValueError):
            continue
        for ckpt in folder.glob("*.ckpt"):
            if not is_complete_checkpoint(ckpt):
                partial.append(ckpt)
                continue
            mtime = ckpt.stat().st_mtime
            if datetime.fromtimestamp(mtime) >= oldest:
                found.append((mtime, ckpt, config_differences(saved, current)))
    note = "".join(f"; skipped incomplete checkpoint {p}" for p in partial)
    matching = [item for item in found if not item[2]]
    if matching:
        ckpt = max(matching, key=lambda item: item[0])[1]
        return ckpt, f"resuming from {ckpt}, the newest complete checkpoint of this config{note}"
    if not found:
        return None, f"starting a new run: no complete checkpoint under {root}{note}"
    _, newest, diffs = max(found, key=lambda item: item[0])
    shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
    return None, (
        f"starting a new run: no checkpoint under {root} has this config; the newest, {newest}, "
        f"differs in {shown} (pass resume_from_checkpoint=... to resume it anyway){note}"
    )


def _resume_wandb_run(args_json: Path) -> None:
    """Continues the W&B run a resumed checkpoint belongs to, as solo-learn's ``AutoResumer``
    does: ``main_pretrain.py`` builds its ``WandbLogger`` with ``id=None`` once solo-learn's
    auto-resume is off, and ``wandb.init`` then reads ``WANDB_RUN_ID`` / ``WANDB_RESUME``."""
    run_id = json.loads(args_json.read_text()).get("wandb_run_id")
    if run_id:
        os.environ.setdefault("WANDB_RUN_ID", str(run_id))
        os.environ.setdefault("WANDB_RESUME", "allow")


def resolve_auto_resume(cfg: DictConfig) -> DictConfig:
    """With ``auto_resume.enabled`` and no ``resume_from_checkpoint``: sets
    ``resume_from_checkpoint`` to :func:`find_resumable`'s checkpoint (or leaves it None) and
    prints why; always turns solo-learn's own auto-resume (which compares a few keys only and may
    take a partial file) off. Modifies ``cfg`` in place and returns it."""
    enabled = bool(OmegaConf.select(cfg, "auto_resume.enabled", default=False))
    if enabled and OmegaConf.select(cfg, "resume_from_checkpoint", default=None) is None:
        ckpt, why = find_resumable(cfg)
        cfg.resume_from_checkpoint = None if ckpt is None else str(ckpt)
        if ckpt is not None and OmegaConf.select(cfg, "wandb.enabled", default=False):
            _resume_wandb_run(ckpt.parent / "args.json")
        if is_rank_zero():
            _say(f"CueCo auto-resume: {why}")
    if enabled:
        cfg.auto_resume.enabled = False
    return cfg


# ------------------------------------------------------------------------------ checkpoints
def _replace_atomically(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)  # the rename itself survives a power loss
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunCheckpointer(Checkpointer):
    """solo-learn's ``Checkpointer`` (same files: ``args.json`` and ``<name>-<run>-ep=<e>.ckpt``
    each ``frequency`` epochs) with three changes:

    - every run gets a new folder ``checkpoint.dir/<method>/<date>-<time>-<hex>/`` (solo-learn
      used the logger's version, 0 for every new CSV log folder); a run resumed from a checkpoint
      in such a folder continues in it; under W&B the run id names the folder, as in solo-learn;
    - files are written to ``<file>.part`` and renamed when complete;
    - :meth:`save_now` writes ``<name>-<run>-ep=<e>-step=<s>.ckpt`` at any step (interrupts).
    """

    def initial_setup(self, trainer: Trainer) -> None:
        resumed = Path(trainer.ckpt_path).resolve() if trainer.ckpt_path else None
        logdir = self.logdir.resolve()
        if isinstance(trainer.logger, WandbLogger):  # kept in args.json for the next resume
            self.wandb_run_id = str(trainer.logger.version)
        if resumed is not None and resumed.parent.parent == logdir:
            version = resumed.parent.name
        elif isinstance(trainer.logger, WandbLogger):
            version = str(trainer.logger.version)
            self.wandb_run_id = version
        else:
            version = self._new_folder() if trainer.is_global_zero else ""
            version = trainer.strategy.broadcast(version, src=0)
        self.path = self.logdir / version
        self.ckpt_placeholder = f"{self.cfg.name}-{version}" + "-ep={}.ckpt"
        keep_resumed = resumed is not None and resumed.parent == self.path.resolve()
        self.last_ckpt = resumed if keep_resumed and not self.keep_prev else None
        if trainer.is_global_zero:
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in self.path.glob(f"*{PARTIAL_SUFFIX}"):
                stale.unlink()

    def _new_folder(self) -> str:
        self.logdir.mkdir(parents=True, exist_ok=True)
        while True:
            version = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                (self.logdir / version).mkdir()
                return version
            except FileExistsError:
                continue

    def save_args(self, trainer: Trainer) -> None:
        if trainer.is_global_zero:
            args = OmegaConf.to_container(self.cfg, resolve=True)  # compared resolved on resume
            args["wandb_run_id"] = getattr(self, "wandb_run_id", None)
            final = self.path / "args.json"
            tmp = final.with_name(final.name + PARTIAL_SUFFIX)
            tmp.write_text(json.dumps(args, default=lambda o: "<not serializable>"))
            _replace_atomically(tmp, final)

    def _write(self, trainer: Trainer, final: Path) -> Path:
        tmp = final.with_name(final.name + PARTIAL_SUFFIX)
        trainer.save_checkpoint(tmp)  # on every rank: the strategy writes on rank 0 only
        if trainer.is_global_zero:
            _replace_atomically(tmp, final)
            if self.last_ckpt and Path(self.last_ckpt) != final and not self.keep_prev:
                Path(self.last_ckpt).unlink(missing_ok=True)
        self.last_ckpt = final
        return final

    def save(self, trainer: Trainer) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, self.path / self.ckpt_placeholder.format(trainer.current_epoch))

    def save_now(self, trainer: Trainer) -> Path | None:
        """Writes a checkpoint of the current step; None before the run folder exists."""
        if getattr(self, "path", None) is None:
            return None
        name = self.ckpt_placeholder.format(trainer.current_epoch)
        name = name.replace(".ckpt", f"-step={trainer.global_step}.ckpt")
        return self._write(trainer, self.path / name)


# ------------------------------------------------------------------------------ interrupts
class SaveOnInterrupt(Callback):
    """SIGTERM or SIGINT (Ctrl-C) during ``fit``: the current step ends, a checkpoint of it is
    written (with a :class:`RunCheckpointer`), a message names it, and the process exits with
    status 128 + the signal number (143 for SIGTERM, 130 for SIGINT).

    Lightning already turns SIGTERM into ``SIGTERMException`` (a ``SystemExit`` with status 0)
    at the end of the step; this callback routes SIGINT through the same handler, writes the
    checkpoint in ``on_exception`` and sets the exit status. A second Ctrl-C stops at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: Any = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if self.signum is not None or not callable(lightning_handler):
            raise KeyboardInterrupt
        self.signum = signal.SIGINT
        _say("CueCo: Ctrl-C received: stopping after this step (Ctrl-C again to stop now)")
        lightning_handler(signal.SIGTERM, frame)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        if isinstance(exception, KeyboardInterrupt):
            when = "a second Ctrl-C" if self.signum is not None else "Ctrl-C before training"
            _say(f"CueCo: stopped by {when}; no checkpoint of this step was written")
            raise SystemExit(128 + signal.SIGINT)
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.signum or signal.SIGTERM
        checkpointer = next((c for c in trainer.callbacks if isinstance(c, RunCheckpointer)), None)
        path = checkpointer.save_now(trainer) if checkpointer is not None else None
        exception.code = 128 + signum
        if trainer.is_global_zero:
            saved = (
                f"saved {path}; resume with resume_from_checkpoint='{path}' or auto_resume"
                if path is not None
                else "no checkpoint written (checkpoint.enabled is off or training had not begun)"
            )
            _say(
                f"CueCo: stopped by {signal.Signals(signum).name} after step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}): {saved}; exit status {exception.code}"
            )


# ------------------------------------------------------------------------------ exact resume
class _SkipFirst(Sampler):
    """The wrapped sampler's indices without the first ``skip``; reports the full length so
    Lightning's batch counting is unchanged."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class ResumeMidEpoch(Callback):
    """A run resumed from a mid-epoch checkpoint (an interrupt) continues with the batches the
    interrupted run had not trained on yet, instead of Lightning's restart of the epoch's data:
    with a data order fixed per epoch (``DistributedSampler``, i.e. ``strategy=ddp``) the resumed
    run sees exactly the batches of the uninterrupted one. A loader that says it starts there
    itself (``resumes_mid_epoch``: DALI CIFAR's ``EpochAlignedLoader``) is left as it is."""

    def __init__(self) -> None:
        self._wrapped: tuple[BatchSampler, Any] | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loop = trainer.fit_loop.epoch_loop
        done = loop.batch_progress.current.completed
        if not loop.restarting or not 0 < done < trainer.num_training_batches:
            return
        if getattr(trainer.train_dataloader, "resumes_mid_epoch", False):
            return
        batch_sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if not isinstance(batch_sampler, BatchSampler) or fetcher is None:
            _say(f"CueCo: this loader cannot skip the {done} batches already trained this epoch")
            return
        self._wrapped = (batch_sampler, batch_sampler.sampler)
        batch_sampler.sampler = _SkipFirst(batch_sampler.sampler, done * batch_sampler.batch_size)
        iter(fetcher)  # a fresh iterator over the rest of the epoch, in this epoch's order

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._wrapped is not None:
            batch_sampler, sampler = self._wrapped
            batch_sampler.sampler = sampler
            self._wrapped = None


def run_callbacks(cfg: Any) -> list[Callback]:
    """Lightning callbacks the CueCo method adds to every run (``configure_callbacks``): a
    :class:`RunCheckpointer` replacing solo-learn's when ``checkpoint.enabled``, then
    :class:`SaveOnInterrupt` and :class:`ResumeMidEpoch`."""
    callbacks: list[Callback] = []
    if OmegaConf.select(cfg, "checkpoint.enabled", default=False):
        callbacks.append(
            RunCheckpointer(
                cfg,
                logdir=os.path.join(cfg.checkpoint.dir, cfg.method),
                frequency=cfg.checkpoint.frequency,
                keep_prev=cfg.checkpoint.keep_prev,
            )
        )
    return [*callbacks, SaveOnInterrupt(), ResumeMidEpoch()]
