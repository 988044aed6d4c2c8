"""The run report: one self-contained HTML file that shows recorded runs, with no server."""

# build_report(paths) reads the record (the events of one run id merge, several run ids are
# overlaid); Report.html() renders the page and write_report writes it whole. The page embeds
# uPlot (see assets) and opens from file:// with no network.

from esper.karn.report.assets import AssetError, uplot_dist
from esper.karn.report.build import Report, ReportError, build_report, write_report
from esper.karn.report.charts import CHARTS
from esper.karn.report.views import MAX_POINTS, Band, Marker, RunView, Series

__all__ = [
    "CHARTS",
    "MAX_POINTS",
    "AssetError",
    "Band",
    "Marker",
    "Report",
    "ReportError",
    "RunView",
    "Series",
    "build_report",
    "uplot_dist",
    "write_report",
]
