"""Polling helpers shared by the unit tests that run real processes."""

from __future__ import annotations

import json
import os
import time

import psutil


def wait_for(pred, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll pred until it is true or the timeout passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def live(pid: int) -> bool:
    """Is the process there and not a zombie?"""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and live(proc.pid):
                pids.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return pids


def reported(agent) -> dict:
    """What the agent's next heartbeat would carry, decoded: {alloc id: entry}."""
    return {
        alloc_id: json.loads(entry) for alloc_id, (_, entry) in agent.heartbeat_reports().items()
    }
