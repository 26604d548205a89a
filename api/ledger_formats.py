"""The ledgers' file formats (CONTRACT §7): CSV in UTF-8 with a BOM, formula-looking cells escaped, and XLSX with
Chinese headers, frozen header rows and real Excel datetimes in the district's zone; one sheet per ledger (an API
answer has one, the monthly report's workbook several: `XlsxBook`).

A ledger is a list of `Column`s (a Chinese header, an English JSON key, a width) and rows of plain values: str, int,
bool, datetime (aware; written in the district's zone), date or None. Writers take rows in batches and write into a
spooled temporary file (memory up to `SPOOL_BYTES`, disk beyond), so that a year's ledger never sits in memory."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any
from zoneinfo import ZoneInfo

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE as _ILLEGAL

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
SPOOL_BYTES = 8 * 1024 * 1024
BOM = "\ufeff"
# OWASP CSV injection: a cell starting with one of these is read as a formula by Excel, LibreOffice, Sheets
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Column:
    header: str  # Chinese, as the bureau files it
    key: str  # the JSON key
    width: float  # characters, for XLSX


def escape_formula(text: str) -> str:
    """A text cell that a spreadsheet could read as a formula, with a leading apostrophe (shown as text)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_cell(value: Any, zone: ZoneInfo) -> str | int:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, int):
        return value  # our own numbers (floor, level): a -1 floor stays a number
    if isinstance(value, datetime):
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return escape_formula(str(value))


def spooled() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - handed to the response, closed there


class CsvLedger:
    """CSV: UTF-8 with a BOM (Excel then reads the Chinese right), CRLF lines, text cells escaped."""

    def __init__(self, columns: Sequence[Column], zone: ZoneInfo) -> None:
        self.zone = zone
        self.file = spooled()
        self._text = io.TextIOWrapper(self.file, encoding="utf-8", newline="", write_through=True)
        self._text.write(BOM)
        self._csv = csv.writer(self._text)
        self._csv.writerow([c.header for c in columns])

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        self._csv.writerows([[csv_cell(v, self.zone) for v in row] for row in rows])

    def finish(self) -> IO[bytes]:
        self._text.flush()
        self._text.detach()  # the binary file stays open for the response
        self.file.seek(0)
        return self.file


class XlsxBook:
    """An XLSX workbook through openpyxl's write-only mode (rows go to a temporary file as they come, not into
    memory), one `sheet()` per ledger, in the order they are made."""

    def __init__(self, zone: ZoneInfo) -> None:
        from openpyxl import Workbook

        self.zone = zone
        self._wb = Workbook(write_only=True)

    def title(self, text: str) -> None:
        """The workbook's title (File → Properties)."""
        self._wb.properties.title = text

    def sheet(self, columns: Sequence[Column], name: str) -> XlsxSheet:
        return XlsxSheet(self._wb.create_sheet(name), columns, self.zone)

    def save(self, file: IO[bytes]) -> None:
        self._wb.save(file)  # type: ignore[arg-type]

    def finish(self) -> IO[bytes]:
        out = spooled()
        self.save(out)
        out.seek(0)
        return out


class XlsxSheet:
    """One sheet: bold Chinese headers, the header row frozen, column widths set, times as naive local datetimes
    and dates as Excel dates.

    Text is always written as a string cell (never a formula, whatever it starts with), with the control characters
    XML cannot carry removed."""

    def __init__(self, ws: Any, columns: Sequence[Column], zone: ZoneInfo) -> None:
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Font
        from openpyxl.utils import get_column_letter

        self.zone = zone
        self._cell = WriteOnlyCell
        self._ws = ws
        for i, col in enumerate(columns, start=1):
            ws.column_dimensions[get_column_letter(i)].width = col.width
        ws.freeze_panes = "A2"
        bold = Font(bold=True)
        header = []
        for col in columns:
            cell = WriteOnlyCell(ws, value=col.header)
            cell.font = bold
            header.append(cell)
        ws.append(header)

    def _value(self, value: Any) -> Any:
        if value is None or isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, bool):
            return "是" if value else "否"
        if isinstance(value, datetime):  # openpyxl gives a datetime a date format of its own
            return value.astimezone(self.zone).replace(tzinfo=None)
        if isinstance(value, date):
            return value
        text = _ILLEGAL.sub("", str(value))
        if not text.startswith("="):
            return text
        cell = self._cell(self._ws, value=None)  # a plain value starting with '=' would be written as a formula
        cell.value = text
        cell.data_type = "s"
        return cell

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self._ws.append([self._value(v) for v in row])


class XlsxLedger:
    """A workbook of one sheet: the ledger an API request asks for."""

    def __init__(self, columns: Sequence[Column], zone: ZoneInfo, sheet: str) -> None:
        self._book = XlsxBook(zone)
        self._sheet = self._book.sheet(columns, sheet)

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        self._sheet.add(rows)

    def finish(self) -> IO[bytes]:
        return self._book.finish()


def chunks(file: IO[bytes], size: int = 64 * 1024) -> Iterator[bytes]:
    """The file's bytes in chunks, closing it at the end (a response body)."""
    try:
        while block := file.read(size):
            yield block
    finally:
        file.close()
