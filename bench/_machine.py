"""The machine a benchmark ran on, printed at the top of every benchmark's output.

Figures mean nothing without it: CPU model, cores, memory, Python, OS and the date of the run.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import TextIO


def _cpu_model() -> str:
    """Model name, plus family/model/stepping, clock and cache: VMs often say only "Processor"."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine()
    extra = []
    if "cpu family" in fields and "model" in fields:
        extra.append(
            f"family {fields['cpu family']} model {fields['model']} stepping {fields.get('stepping', '?')}"
        )
    if "cpu MHz" in fields:
        extra.append(f"{float(fields['cpu MHz']):.0f} MHz")
    if "cache size" in fields:
        extra.append(f"cache {fields['cache size']}")
    return f"{name} ({', '.join(extra)})" if extra else name


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
                    return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine_info() -> dict[str, str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "memory": _memory(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def print_machine(file: TextIO | None = None) -> None:
    out = file if file is not None else sys.stdout
    print("machine:", file=out)
    for key, value in machine_info().items():
        print(f"  {key:<7} {value}", file=out)


if __name__ == "__main__":
    print_machine()
