"""Draws /image's pictures (the path of a request through the stack) into this folder: python -m
services.httpbin.images.draw. The files are committed; Pillow (a dependency of the load tools' matplotlib) is
needed only to redraw them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
HOPS = ("client", "nginx", "httpbin")
SIZE = (300, 100)
BOX = (80, 40)
COLORS = {"background": "#f7f4ea", "box": "#2f6690", "text": "#ffffff", "arrow": "#3a3a3a"}


def box_left(i: int) -> int:
    return 10 + i * 100


def draw() -> Image.Image:
    image = Image.new("RGB", SIZE, COLORS["background"])
    pen = ImageDraw.Draw(image)
    top = (SIZE[1] - BOX[1]) // 2
    for i, hop in enumerate(HOPS):
        left = box_left(i)
        pen.rounded_rectangle((left, top, left + BOX[0], top + BOX[1]), radius=8, fill=COLORS["box"])
        pen.text((left + BOX[0] // 2, top + BOX[1] // 2), hop, fill=COLORS["text"], anchor="mm")
        if i:
            y = top + BOX[1] // 2
            pen.line((left - 20, y, left - 2, y), fill=COLORS["arrow"], width=2)
            pen.polygon(((left - 2, y), (left - 8, y - 4), (left - 8, y + 4)), fill=COLORS["arrow"])
    return image


def svg() -> str:
    top = (SIZE[1] - BOX[1]) // 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE[0]}" height="{SIZE[1]}" '
             f'viewBox="0 0 {SIZE[0]} {SIZE[1]}">',
             f'<rect width="100%" height="100%" fill="{COLORS["background"]}"/>']
    for i, hop in enumerate(HOPS):
        left = box_left(i)
        parts.append(f'<rect x="{left}" y="{top}" width="{BOX[0]}" height="{BOX[1]}" rx="8" fill="{COLORS["box"]}"/>')
        parts.append(f'<text x="{left + BOX[0] // 2}" y="{top + BOX[1] // 2 + 4}" fill="{COLORS["text"]}" '
                     f'font-family="sans-serif" font-size="12" text-anchor="middle">{hop}</text>')
        if i:
            y = top + BOX[1] // 2
            parts.append(f'<path d="M{left - 20} {y}H{left - 8}" stroke="{COLORS["arrow"]}" stroke-width="2"/>')
            parts.append(f'<path d="M{left - 2} {y}l-6 -4v8z" fill="{COLORS["arrow"]}"/>')
    parts.append("</svg>\n")
    return "\n".join(parts)


def main() -> None:
    image = draw()
    image.save(HERE / "hops.png", optimize=True)
    image.save(HERE / "hops.jpeg", quality=85)
    image.save(HERE / "hops.webp", quality=85)
    (HERE / "hops.svg").write_text(svg())


if __name__ == "__main__":
    main()
