"""Report sections, one file per study part, registered under the part's name; importing this package
registers them all, in the report's order. The contract: `base`."""

from mattransfer.report.parts import part1, part2, part3, part4  # noqa: F401  (registration, in this order)
from mattransfer.report.parts import dft_to_expt  # noqa: F401
from mattransfer.report.parts.base import SECTIONS, Context, Section, register_section

__all__ = ["SECTIONS", "Context", "Section", "register_section"]
