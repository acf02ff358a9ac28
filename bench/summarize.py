"""Assemble bench/results/summary.md, the committed report, from each benchmark's markdown section."""

from __future__ import annotations

from bench.common import RESULTS


def main() -> None:
    sections = [p.read_text().strip() for p in sorted(RESULTS.glob("*.md")) if p.name != "summary.md"]
    text = "# fnserve benchmarks\n\nWritten by `make bench`; each section names the machine it ran on.\n\n"
    (RESULTS / "summary.md").write_text(text + "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
