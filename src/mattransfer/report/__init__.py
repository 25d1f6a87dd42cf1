"""The study report: figures and the answers to the research questions, from a study's results table."""

from mattransfer.report.render import write_report

__all__ = ["write_report"]
