"""A sequence diagram of one traced request, drawn as SVG (or an HTML page around the SVG): `make trace FORMAT=svg`.

Lanes are the parties (client, DNS, nginx, the service and its server), time runs down the page, and each
captured packet is an arrow between two lanes, labelled with its flags, its bytes and its time. On loopback most
packets are microseconds apart and a few waits are milliseconds, so the time axis is compressed: each arrow gets
at least one row of its own, and a longer gap gets proportionally more room, up to a cap; the times on the left are
the kernel's, never the drawing's. Spans beside a lane show where a hop spent its time (nginx's edge time, the
app's, the database's), from the response's Server-Timing.

Nothing here talks to the network: wire/trace.py builds a Diagram from what it captured and saw."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from stack.topology import ROOT

LANE_WIDTH = 230
LEFT_MARGIN = 110  # the time labels
TOP = 92  # lane headers
ROW = 30  # the least room between two arrows
GAP_PX_PER_MS = 24  # extra room for a longer gap, up to GAP_CAP
GAP_CAP = 120
COLOURS = {"dns": "#f9a825", "datagram": "#f9a825", "control": "#3f51b5", "data": "#2e7d32", "tls": "#8e24aa",
           "close": "#c62828"}


@dataclass(frozen=True)
class Lane:
    key: str
    title: str
    subtitle: str = ""


@dataclass(frozen=True)
class Message:
    """One packet (or, without a capture, one step the client saw) from one lane to another."""

    time: float  # seconds since the epoch
    source: str  # lane keys
    target: str
    label: str  # what it is: "SYN", "GET /web/json", "HTTP/1.1 200 OK"
    size: int  # payload bytes (0 for a bare TCP segment)
    detail: str  # everything else, shown as its tooltip and in the HTML table
    kind: str = "control"  # a key of COLOURS: dns | datagram | control | data | tls | close
    src: str = ""  # address:port on each side, for the reader and the tests
    dst: str = ""


@dataclass(frozen=True)
class Span:
    """A stretch of time a lane spent on the request (from Server-Timing or an access line)."""

    lane: str
    start: float
    duration: float  # seconds
    label: str


@dataclass
class Diagram:
    title: str
    t0: float
    lanes: list[Lane]
    messages: list[Message] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # access lines and other facts, printed under the drawing

    def ms(self, when: float) -> str:
        return f"+{(when - self.t0) * 1000:.3f} ms"


class TimeAxis:
    """Compressed but monotonic: time → y. Each message's time gets a row; gaps get room by their length."""

    def __init__(self, times: list[float]) -> None:
        self.points: list[tuple[float, float]] = []
        y = float(TOP + 20)
        previous = None
        for when in sorted(set(times)):
            if previous is not None:
                y += ROW + min(GAP_CAP, (when - previous) * 1000 * GAP_PX_PER_MS)
            self.points.append((when, y))
            previous = when

    def y(self, when: float) -> float:
        points = self.points
        if not points:
            return float(TOP + 20)
        if when <= points[0][0]:
            return points[0][1]
        for (t1, y1), (t2, y2) in zip(points, points[1:], strict=False):
            if when <= t2:
                return y1 + (y2 - y1) * (when - t1) / (t2 - t1)
        # past the last point: the same scale as a gap, capped
        return points[-1][1] + min(GAP_CAP, (when - points[-1][0]) * 1000 * GAP_PX_PER_MS)

    @property
    def bottom(self) -> float:
        return (self.points[-1][1] if self.points else TOP) + 40


def _text(x: float, y: float, content: str, **attributes: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{html.escape(value)}"' for name, value in attributes.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{html.escape(content)}</text>'


def svg(diagram: Diagram) -> str:
    """The diagram as a standalone SVG document (no scripts, no external references)."""
    centre = {lane.key: LEFT_MARGIN + LANE_WIDTH * index + LANE_WIDTH / 2 for index, lane in enumerate(diagram.lanes)}
    axis = TimeAxis([m.time for m in diagram.messages] + [s.start for s in diagram.spans]
                    + [s.start + s.duration for s in diagram.spans])
    width = LEFT_MARGIN + LANE_WIDTH * len(diagram.lanes) + 20
    height = axis.bottom + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
           f'height="{height:.0f}" font-family="sans-serif" font-size="12">',
           f"<title>{html.escape(diagram.title)}</title>",
           "<defs>" + "".join(
               f'<marker id="head-{kind}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
               f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
               for kind, colour in COLOURS.items()) + "</defs>",
           '<rect x="0" y="0" width="100%" height="100%" fill="white"/>',
           _text(10, 22, diagram.title, font_size="15", font_weight="bold")]
    for lane in diagram.lanes:
        x = centre[lane.key]
        out.append(f'<g class="lane" data-lane="{html.escape(lane.key)}">'
                   f'<rect x="{x - LANE_WIDTH / 2 + 12:.1f}" y="38" width="{LANE_WIDTH - 24}" height="40" rx="6" '
                   f'fill="#f4f6fb" stroke="#3f51b5"/>'
                   + _text(x, 55, lane.title, text_anchor="middle", font_weight="bold")
                   + _text(x, 70, lane.subtitle, text_anchor="middle", font_size="10", fill="#555")
                   + f'<line x1="{x:.1f}" y1="78" x2="{x:.1f}" y2="{axis.bottom:.1f}" stroke="#bbb" '
                     f'stroke-dasharray="4 4"/></g>')
    stacked: dict[str, int] = {}  # spans on one lane: their labels one under the other
    for span in diagram.spans:
        x, top, bottom = centre[span.lane], axis.y(span.start), axis.y(span.start + span.duration)
        below = 13 * stacked.get(span.lane, 0)
        stacked[span.lane] = stacked.get(span.lane, 0) + 1
        tall = max(bottom - top, 3)
        out.append(f'<g class="span"><rect x="{x - 5:.1f}" y="{top:.1f}" width="10" height="{tall:.1f}" '
                   f'fill="#ffe0b2" stroke="#ef6c00"/>'
                   + _text(x + 9, top + 10 + below, f"{span.label} {span.duration * 1000:.3f} ms", font_size="10",
                           fill="#ef6c00") + "</g>")
    for message in diagram.messages:
        y = axis.y(message.time)
        x1, x2 = centre[message.source], centre[message.target]
        colour = COLOURS.get(message.kind, "#333")
        size = f" ({message.size} B)" if message.size else ""
        middle = (x1 + x2) / 2
        out.append(f'<g class="packet" data-time="{message.time:.6f}" data-src="{html.escape(message.src)}" '
                   f'data-dst="{html.escape(message.dst)}" data-kind="{message.kind}">'
                   f"<title>{html.escape(message.detail)}</title>"
                   + _text(LEFT_MARGIN - 8, y + 4, diagram.ms(message.time), text_anchor="end", font_size="10",
                           fill="#555")
                   + f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" stroke="{colour}" '
                     f'stroke-width="1.6" marker-end="url(#head-{message.kind})"/>'
                   + _text(middle, y - 4, message.label + size, text_anchor="middle", fill=colour) + "</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def page(diagram: Diagram) -> str:
    """An HTML page: the SVG inline, every packet as a table row, and the notes (access lines). Self-contained."""
    rows = "\n".join(
        f"<tr class=\"packet\"><td>{html.escape(diagram.ms(m.time))}</td><td>{html.escape(m.src)}</td>"
        f"<td>{html.escape(m.dst)}</td><td>{html.escape(m.label)}</td><td>{m.size}</td>"
        f"<td><code>{html.escape(m.detail)}</code></td></tr>" for m in diagram.messages)
    notes = "\n".join(f"<li><code>{html.escape(note)}</code></li>" for note in diagram.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(diagram.title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin-top: 1em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
code {{ font-size: 11px; }}
</style></head>
<body>
<h1>{html.escape(diagram.title)}</h1>
<p>Time runs down; each arrow is one packet the kernel saw (hover for its sequence numbers). The time axis is
compressed: the times on the left are the real ones.</p>
{svg(diagram)}
<h2>Every packet</h2>
<table><thead><tr><th>time</th><th>from</th><th>to</th><th>what</th><th>bytes</th><th>detail</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<h2>What the hops logged</h2>
<ul>
{notes}
</ul>
</body></html>
"""


def render(diagram: Diagram, form: str) -> str:
    if form == "svg":
        return svg(diagram)
    if form == "html":
        return page(diagram)
    raise ValueError(f"no such picture format: {form!r} (svg or html)")


def write(diagram: Diagram, form: str, out: Path | None, stem: str) -> Path:
    """The picture in `form` at `out`, or by default at reports/<stem>.<form> (reports/ is where every tool's
    output goes, and git ignores it)."""
    path = out or ROOT / "reports" / f"{stem}.{form}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(diagram, form))
    return path
