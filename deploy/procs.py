"""Process-table helpers (Linux /proc) used to prove that `down` leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; it only waits for its parent to reap it


def _parents() -> dict[int, int]:
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            table[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return table


def parent(pid: int) -> int | None:
    """The process's parent PID, or None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def descendants(root: int) -> set[int]:
    """Every live process below `root` in the process tree (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {pid for pid in found if alive(pid)}


def ancestors(pid: int) -> set[int]:
    parents = _parents()
    found: set[int] = set()
    while pid in parents and pid not in found:
        found.add(pid)
        pid = parents[pid]
    return found


# Only these programs are ever the stack's; a shell or `make` that merely has STACK_VAR set is not.
STACK_PROGRAMS = (b"services.", b"gunicorn", b"nginx", b"supervisord", b"locust")


def marked(var: Path) -> set[int]:
    """Live processes of the stack instance whose state lives in `var`: one of the stack's programs with
    STACK_VAR=var in its environment (every supervised program gets it) or a path inside var on its command
    line (nginx rewrites its own). Never this process or its ancestors."""
    found: set[int] = set()
    needles = {"environ": f"STACK_VAR={var}\0".encode(), "cmdline": f"{var}/".encode()}
    mine = ancestors(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if not any(program in cmdline for program in STACK_PROGRAMS):
            continue
        for part, needle in needles.items():
            try:
                if needle in Path(f"/proc/{entry}/{part}").read_bytes():
                    found.add(int(entry))
                    break
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return {pid for pid in found if alive(pid)}
