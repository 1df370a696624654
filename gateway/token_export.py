"""Tokens as a spreadsheet (xlsx or csv): one row each, never a secret or a digest. Used by `gateway tokens export`
and, next, the admin API's export endpoints.

Every cell is data, never a formula: spreadsheet programs run a cell that starts with `=`, `+`, `-` or `@`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from gateway.vocabulary import TokenRecord

EXPORT_COLUMNS = (
    "id",
    "name",
    "type",
    "company",
    "permissions",
    "status",
    "created",
    "not_before",
    "expires",
    "last_used",
)


def export_row(r: TokenRecord, now: float) -> list[Any]:
    def when(ts: float | None) -> dt.datetime | None:
        if ts is None:
            return None
        # Spreadsheets have no time zones: naive UTC, whole seconds.
        return dt.datetime.fromtimestamp(int(ts), dt.UTC).replace(tzinfo=None)

    return [
        r.id,
        r.name,
        r.type,
        r.company,
        ", ".join(sorted(r.permissions)),
        r.status(now),
        when(r.created_at),
        when(r.not_before),
        when(r.expires),
        when(r.last_used_at),
    ]


# A cell starting with one of these is a formula to a spreadsheet program (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        cells = []
        for value in row:
            if value is None:
                cells.append("")
            elif isinstance(value, dt.datetime):
                cells.append(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
            elif isinstance(value, str) and value.startswith(_FORMULA_START):
                cells.append("'" + value)
            else:
                cells.append(value)
        writer.writerow(cells)
    return out.getvalue()


def xlsx_bytes(rows: list[list[Any]]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    assert sheet is not None  # a new workbook always has its first sheet
    sheet.title = "tokens"
    sheet.append(EXPORT_COLUMNS)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append([ILLEGAL_CHARACTERS_RE.sub("?", v) if isinstance(v, str) else v for v in row])
        for cell in sheet[sheet.max_row]:
            if isinstance(cell.value, dt.datetime):
                cell.number_format = "yyyy-mm-dd hh:mm:ss"
            elif cell.data_type == "f":
                cell.data_type = "s"  # a name like "=HYPERLINK(...)" is text, never a formula
    sheet.freeze_panes = "A2"
    sheet.auto_filter.ref = sheet.dimensions
    for column, width in zip("ABCDEFGHIJ", (26, 24, 11, 16, 32, 15, 20, 20, 20, 20), strict=True):
        sheet.column_dimensions[column].width = width
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
