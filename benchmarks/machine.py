"""The machine a benchmark ran on, as its results name it: CPU model, native bfloat16 or not, cores, threads.

python benchmarks/machine.py      # prints the line
"""

from __future__ import annotations

import os
import platform


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe():
    """``{"cpu", "cores", "native_bf16", "threads", "torch", "gpu"}`` of this machine and process."""
    import torch

    from n2v_estimator.runtime.compute import _cpu_has_native_bf16

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "native_bf16": _cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def line(machine=None):
    """One line for a results table: ``AMD EPYC, 2 cores (native bfloat16), 2 threads, torch 2.13.0+cpu``."""
    m = machine or describe()
    bf16 = "native bfloat16" if m["native_bf16"] else "no native bfloat16"
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']}, {m['cores']} cores ({bf16}), {m['threads']} threads, torch {m['torch']}{gpu}"


if __name__ == "__main__":
    print(line())
