"""Measures html_to_text on a realistic 1 MB HTML email against BeautifulSoup's html.parser."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from bs4 import BeautifulSoup

from agent.pipeline.parse import html_to_text

TARGET_BYTES = 1024 * 1024
RUNS = 21
BS4_RUNS = 3

_VOCABULARY = (
    "delivery transfer files project review final draft assets shared folder please find "
    "attached the latest version of our proposal with all images and videos included thanks "
    "regards team meeting schedule invoice payment confirmation order shipment tracking"
)
_WORDS = _VOCABULARY.split()

_STYLE = """<style type="text/css">
body { margin: 0; padding: 0; font-family: Helvetica, Arial, sans-serif; }
table.wrapper { width: 100%; border-collapse: collapse; }
td.cell { padding: 8px 12px; border-bottom: 1px solid #eeeeee; }
.button a { background: #0061fe; color: #ffffff; padding: 10px 16px; border-radius: 4px; }
@media only screen and (max-width: 600px) { .column { display: block !important; } }
</style>"""


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _section(rng: random.Random, index: int) -> str:
    rows = "".join(
        f'<tr><td class="cell" style="color:#333333;font-size:14px">{_sentence(rng, 8)}</td>'
        f'<td class="cell"><a href="https://example.com/track/{index}/{row}?utm_source=mail'
        f'&amp;utm_medium=email">Details&nbsp;&raquo;</a></td></tr>'
        for row in range(6)
    )
    return (
        f'<div class="section" id="s{index}"><div class="column"><div class="inner">'
        f"<h2>Section {index}: {_sentence(rng, 4)}</h2>"
        f"<p>{_sentence(rng, 30)} <b>{_sentence(rng, 5)}</b> <i>{_sentence(rng, 6)}</i></p>"
        f'<table class="wrapper" role="presentation" cellpadding="0" cellspacing="0">{rows}</table>'
        f'<p class="button"><a href="https://www.dropbox.com/scl/fi/abc{index}/file{index}.zip'
        f'?rlkey=k{index}&amp;dl=0">Download your files</a></p>'
        "<!-- tracking pixel follows -->"
        f'<img src="https://example.com/pixel/{index}.gif" width="1" height="1" alt="">'
        f"<ul><li>{_sentence(rng, 6)}</li><li>{_sentence(rng, 7)}</li></ul>"
        "</div></div></div>\n"
    )


def build_document(target_bytes: int = TARGET_BYTES, seed: int = 7) -> str:
    """A deterministic HTML email of about target_bytes: tables, links, styles, nested divs."""
    rng = random.Random(seed)
    head = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Your files are ready</title>'
        f"{_STYLE}<script>var tracking = {{id: 42}};</script></head><body>"
    )
    parts = [head]
    size = len(head)
    index = 0
    while size < target_bytes - 100:
        section = _section(rng, index)
        parts.append(section)
        size += len(section.encode("utf-8"))
        index += 1
    parts.append("<footer><p>Unsubscribe &middot; Privacy</p></footer></body></html>")
    return "".join(parts)


def _median_ms(func: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall-clock and median CPU milliseconds (CPU time is immune to noisy neighbours)."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        func()
        wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> dict[str, float]:
    """Times html_to_text and bs4 on the same document; prints and returns milliseconds."""
    document = build_document()
    size = len(document.encode("utf-8"))
    html_to_text(document, size)  # warm-up: per-thread parser and stylesheet
    ours, ours_cpu = _median_ms(lambda: html_to_text(document, size), RUNS)
    bs4, bs4_cpu = _median_ms(lambda: BeautifulSoup(document, "html.parser").get_text(), BS4_RUNS)
    figures = {
        "document_bytes": float(size),
        "html_to_text_ms": round(ours, 2),
        "html_to_text_cpu_ms": round(ours_cpu, 2),
        "bs4_html_parser_ms": round(bs4, 2),
        "bs4_html_parser_cpu_ms": round(bs4_cpu, 2),
        "speedup": round(bs4 / ours, 1) if ours else 0.0,
    }
    print(
        f"document: {size} bytes\n"
        f"html_to_text (lxml): {ours:.2f} ms wall, {ours_cpu:.2f} ms CPU (median of {RUNS})\n"
        f"bs4 html.parser get_text: {bs4:.2f} ms wall, {bs4_cpu:.2f} ms CPU "
        f"(median of {BS4_RUNS})\n"
        f"speedup: {figures['speedup']:.1f}x"
    )
    return figures


if __name__ == "__main__":
    main()
