"""The one machine record of every benchmark: date, device, machine, library versions and the
load average, so that a saved number says where, with what and under which load it was
measured."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_DISTRIBUTIONS = (
    "torch torchvision lightning torchmetrics solo-learn hydra-core omegaconf scikit-learn numpy "
    "pillow nvidia-dali-cuda120 cueco-plugin"
).split()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def device_name() -> str:
    """``torch.cuda.get_device_name()`` on a GPU machine, else ``"cpu"``."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (None without one) and OS of this machine."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    probes = (("/proc/cpuinfo", "model name", "cpu_model"), ("/proc/meminfo", "MemTotal", "mem"))
    for path, key, field in probes:
        try:
            line = next(x for x in Path(path).read_text().splitlines() if x.startswith(key))
        except (OSError, StopIteration):
            continue
        value = line.split(":", 1)[1].strip()
        if field == "mem":
            info["memory_gib"] = round(int(value.split()[0]) / 2**20, 1)
        else:
            info[field] = value
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
        info["cuda"] = torch.version.cuda
    return info


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries a result depends on, and the git commit."""
    out: dict[str, str | None] = {}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import solo

        out["solo_path"] = str(Path(solo.__file__).resolve().parent)
    except ImportError:
        out["solo_path"] = None
    try:
        git = ["git", "-C", str(REPO)]
        out["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], timeout=20, check=False)
        out["git_dirty"] = str(dirty.returncode != 0)
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None  # e.g. the device machine's copy has no .git
    return out


def machine_record() -> dict[str, Any]:
    """Everything above in one dict, plus the UTC date and the command line."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device_name(),
        "machine": machine_info(),
        "versions": versions(),
        "load_average": load_average(),
    }


def save_result(base: Path, result: dict[str, Any], markdown: str) -> None:
    """Writes ``base.json`` (the result) and ``base.md`` (its table) and prints the table."""
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"saved {base}.json and {base}.md")


def describe(record: dict[str, Any]) -> list[str]:
    """Markdown bullet lines of a :func:`machine_record` for a results file."""
    m, v = record["machine"], record["versions"]
    skip = ("solo-learn", "solo_path", "git_commit", "git_dirty")
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val and k not in skip)
    commit = (v.get("git_commit") or "unknown (no .git)")[:12]
    return [
        f"- Date: {record['date']}; device: {record['device']}; CPU: {m.get('cpu_model', '?')}, "
        f"{m.get('usable_cores')} usable cores, {m.get('memory_gib')} GiB; {m['platform']}",
        f"- Versions: Python {m['python']}, {libs}, solo-learn {v.get('solo-learn')} "
        f"({v.get('solo_path')}); commit {commit}"
        + (" with uncommitted changes" if v.get("git_dirty") == "True" else ""),
        f"- Load average (1, 5, 15 min) at start: {record['load_average']}"
        + (f", at end: {record['load_average_end']}" if "load_average_end" in record else ""),
        f"- Command: `{record['command']}`",
    ]
