"""The documentation's shell examples, run as a reader would: every ```sh block of README.md and then of each
docs/ page in the site's navigation order (`documents()`), in order, in one bash session (variables like $B, $ID,
$JAR carry from block to block, and from page to page), against a running stack, with each command's output
checked against what its comment claims. The stack is a test's own (its addresses and ports), so each command is
first moved onto it: 127.0.0.1:8080 becomes the stack's public address, 127.0.10.x its net, var/ its state.

What a comment claims and how it is checked:
- a status code first in the comment ("# 401", "# 204, then 404", "# 206 Partial Content"): for a command that
  shows its status lines (curl -i, -I, -v, -D -), those statuses, in that order, among the status lines printed;
- every command exits 0 (EXPECTED_EXIT says where the claim is a failure) and no grep prints "binary file
  matches" (its match is hidden: the text claims a line).
Commands that start a stack, a load test, a benchmark or a capture (SKIPPED) and lines for the other mode are not
run here: their own tests run them."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from stack.topology import Site

# The commands not run against the test's stack, by what they start with or say, and why.
SKIPPED: dict[str, str] = {
    "make up": "starts a stack of its own (the end-to-end tests run it)",
    "make test": "the whole suite",
    "make loadtest": "Locust's UI or a timed load run (tests/e2e runs a bounded one)",
    "make compare": "a benchmark (minutes); tests/unit/test_compare.py checks its plumbing",
    "make trace": "captures packets as root; tests/unit/test_trace.py and the e2e trace test run it",
    "python -m wire.trace": "the same trace",
    "make rawhttp": "the same tool as python -m wire.rawhttp, which runs",
    "make tcp-vs-udp": "runs the socket lessons, which the lines around it run one by one",
    "make trace-dns": "captures as root; the dig lines beside it ask the same",
    "# in a browser": "a browser",
    "make iolab": "the IO lab's benchmark (minutes); tests/unit/test_iolab.py runs its servers",
    "python -m iolab": "the IO lab (tests/unit/test_iolab.py)",
    "make restart": "restarts instances; the chaos and restart tests run it under load",
    "WEB_WORKERS=3 make up": "restarts the stack with another setting (tests/e2e: web under another worker class)",
    "WEB_SERVER=": "restarts web under another server (tests/e2e/test_wsgi_servers.py runs each)",
    "make chaos": "the chaos run (minutes); its faults are tested one by one in tests/e2e",
    "make down": "stops the stack the other examples need",
    "make stores": "a benchmark over both stores",
    "make scaling": "a benchmark",
    "make soak": "a long run",
    "docker": "Compose and Swarm (tests/e2e/test_compose.py and test_swarm.py run them in CI's engine)",
    "make swarm": "Swarm (tests/e2e/test_swarm.py)",
    "make kubernetes": "renders manifests (tests/config/test_kubernetes.py)",
    "kind ": "a Kubernetes cluster, which this machine cannot run",
    "kubectl": "a Kubernetes cluster, which this machine cannot run",
    "for image in": "loads images into kind",
    "STORE=postgres": "restarts the stack on Postgres (tests/e2e's Postgres stack)",
}
SKIPPED_WHEN_COMMAND_HAS = {
    "127.0.0.1 9000": "talks to the IO lab's sigio server, which the line before starts in the background",
}
SKIPPED_WHEN_COMMENT_SAYS = {
    "Compose:": "Compose mode's address (this stack is native)",
    "408 after 75 s": "waits 75 s by design (tests/e2e checks the slow-client timeout with a short one)",
}
# Commands whose claim is a failure: (a piece of the command, the exit status it must end with).
EXPECTED_EXIT: dict[str, int] = {
    "--tls-max 1.1": 35,  # curl: SSL connect error (the protocol version alert)
    "Host: elsewhere.example": 52,  # curl: empty reply (nginx's 444)
}


@dataclass
class Example:
    line: int  # the line of its first line in its document
    command: str
    claim: str  # its trailing comment, if any
    document: str = "README.md"


def nav_pages(root: Path) -> list[str]:
    """Every page mkdocs.yml's nav lists, in its order (a reader's order), as paths under docs/."""

    def flatten(entries: list) -> list[str]:
        pages = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            pages.extend(flatten(value) if isinstance(value, list) else [value])
        return pages

    return flatten(yaml.safe_load((root / "mkdocs.yml").read_text())["nav"])


def documents(root: Path) -> list[Path]:
    """README.md, then every hand-written docs/ page in the nav's order (the report pages a hook generates from
    loadtest/ and iolab/ have no file under docs/)."""
    return [root / "README.md"] + [root / "docs" / page for page in nav_pages(root) if (root / "docs" / page).exists()]


def all_examples(root: Path) -> list[Example]:
    return [example for document in documents(root)
            for example in examples(document.read_text(), str(document.relative_to(root)))]


def shell_blocks(readme: str) -> list[tuple[int, list[str]]]:
    """Every ```sh block: (line of its first command, its lines)."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(readme.splitlines(), start=1):
        if current is None and line.strip() == "```sh":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _complete(text: str) -> bool:
    """bash's own parser decides where a command ends (quotes over lines, for ... done); a line ending in a
    backslash continues (bash -n takes a trailing backslash at the end of its input as complete)."""
    if text.rstrip(" ").endswith("\\"):
        return False
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0


def examples(readme: str, document: str = "README.md") -> list[Example]:
    found = []
    for start, lines in shell_blocks(readme):
        pending: list[str] = []
        first = start
        for offset, line in enumerate(lines):
            if not pending:
                first = start + offset
                if not line.strip() or line.lstrip().startswith("#") and not line.lstrip().startswith("# in"):
                    continue
            pending.append(line)
            text = "\n".join(pending)
            if _complete(text):
                comment = re.search(r"\s{2,}#\s?(.*)$", pending[-1])
                found.append(Example(first, text, comment.group(1) if comment else "", document))
                pending = []
    return found


def skip_reason(example: Example) -> str | None:
    stripped = example.command.lstrip()
    for start, why in SKIPPED.items():
        if stripped.startswith(start):
            return why
    for piece, why in SKIPPED_WHEN_COMMAND_HAS.items():
        if piece in example.command:
            return why
    for words, why in SKIPPED_WHEN_COMMENT_SAYS.items():
        if words in example.claim:
            return why
    return None


def localized(command: str, site: Site, root: Path) -> str:
    """The command as it reads for the test's stack instead of the default one."""
    host, port, tls = site.public_host, site.public_port, site.tls_port
    replacements = [
        ("127.0.0.1:8080", f"{host}:{port}"), ("127.0.0.1 8080", f"{host} {port}"),
        ("127.0.0.1:8443", f"{host}:{tls}"), ("localhost:8443", f"{host}:{tls}"),
        ("127.0.0.1:80", f"{host}:80"), ("127.0.0.1 80", f"{host} 80"),  # the stream ports, on nginx's address
        ("127.0.10.", f"{site.net}."), ("var/", f"{site.var}/"), ("@README.md", f"@{root / 'README.md'}"),
    ]
    for old, new in replacements:
        command = command.replace(old, new)
    return command


def claimed_statuses(claim: str) -> list[int]:
    """ "401", "204, then 404", "201 (409 on a second run)", "200; without -u: 401": the codes this command shows,
    before any parenthesis or semicolon (what follows is about another run)."""
    if not re.match(r"[1-5][0-9]{2}\b", claim):
        return []
    return [int(code) for code in re.findall(r"\b([1-5][0-9]{2})\b", re.split(r"[(;]", claim)[0])]


SHOWS_STATUS = re.compile(r"curl\b[^|;]*\s-(?:[a-zA-Z]*[iIv][a-zA-Z]*)\b|curl\b[^|;]*-D -")


def check(example: Example, output: str, status: int) -> list[str]:
    """What is wrong with one command's run: [] when its claims hold."""
    wrong = []
    expected_exit = next((code for piece, code in EXPECTED_EXIT.items() if piece in example.command), 0)
    if status != expected_exit:
        wrong.append(f"exit status {status}, expected {expected_exit}")
    if "binary file matches" in output:
        wrong.append("grep printed 'binary file matches' instead of the line the text claims")
    codes = claimed_statuses(example.claim)
    if codes and SHOWS_STATUS.search(example.command):
        shown = [int(code) for code in re.findall(r"^(?:< )?HTTP/[0-9.]+ ([0-9]{3})", output, re.MULTILINE)]
        # "201 (409 on a second run)": the parenthesis names what a stack that already ran the examples says.
        again = [int(c) for c in re.findall(r"\(([1-5][0-9]{2}) on a second run", example.claim)]
        position = 0
        for code in codes:
            if code not in shown[position:] and not set(again) & set(shown[position:]):
                wrong.append(f"claims {code}, the status lines say {shown}")
                break
            position = shown.index(code, position) + 1 if code in shown[position:] else position + 1
    return wrong


def run(examples_to_run: list[Example], site: Site, env: dict[str, str], root: Path,
        timeout: float = 600) -> list[tuple[Example, str, int]]:
    """Run the commands in one bash session, in order; each one's output (stdout and stderr) and exit status."""
    script = ["exec 2>&1", f"cd {root}"]
    for index, example in enumerate(examples_to_run):
        script.append(f"printf '\\n@@begin {index}\\n'")
        script.append("{\n" + localized(example.command, site, root) + "\n} </dev/null")
        script.append(f"printf '\\n@@end {index} %d\\n' $?")
    result = subprocess.run(["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=root)
    outcomes = []
    for index, example in enumerate(examples_to_run):
        match = re.search(rf"\n@@begin {index}\n(.*?)\n@@end {index} (\d+)\n", result.stdout, re.DOTALL)
        outcomes.append((example, match.group(1), int(match.group(2))) if match else (example, result.stdout[-500:],
                                                                                        -1))
    return outcomes
