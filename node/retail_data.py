"""Reading the UCI Online Retail data (data/) into invoices the replay can use.

Each CSV row is one line of an invoice. Lines are read in file order (which is
time order) and grouped by invoice number. What cannot be used is skipped and
counted by reason, never raised:

    malformed            a field that does not parse (number, date)
    no_customer          a guest order (empty CustomerID)
    bad_debt_adjustment  an `A` invoice (an accounting entry, not a purchase)
    stock_write_off      a sale invoice line with a negative quantity (stock
                         written off as damaged or lost, price 0)
    zero_price           a line with unit price 0 (nothing paid)
    negative_price       a line with a negative unit price
    non_positive_total   a sale invoice whose lines add up to nothing

Amounts are exact: quantity x unit price in Decimal, summed per invoice, then
turned into pence rounded down (stated rounding; prices have at most three
decimals in this data). A `C` invoice is a cancellation or return; its total is
negative and becomes a refund of the customer's earlier purchases.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
HEADER = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]


@dataclass
class Invoice:
    number: str
    customer: str
    country: str
    time_s: int  # data time read as UTC (the replay's program zone is UTC)
    pence: int  # positive for a sale, negative for a cancellation
    lines: int = 0

    @property
    def is_cancellation(self) -> bool:
        return self.number.startswith("C")


@dataclass
class ReadStats:
    rows: int = 0
    rows_used: int = 0
    skipped: Counter = field(default_factory=Counter)
    invoices_skipped: Counter = field(default_factory=Counter)


def data_files(folder: Path = DATA_DIR) -> list[Path]:
    files = sorted(folder.glob("online_retail_*.csv.gz"))
    if not files:
        raise FileNotFoundError(f"no online_retail_*.csv.gz files in {folder}")
    return files


def read_rows(paths: Iterable[Path], limit: int | None = None) -> Iterator[list[str]]:
    """Data rows of the files in order, at most `limit` of them."""
    count = 0
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != HEADER:
                raise ValueError(f"{path}: unexpected header {header}")
            for row in reader:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield row


def parse_time(text: str) -> int:
    when = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return int(when.timestamp())


def read_invoices(
    paths: Iterable[Path], limit: int | None = None
) -> tuple[list[Invoice], ReadStats]:
    """Invoices in time order, and what was read and skipped."""
    stats = ReadStats()
    invoices: dict[str, Invoice] = {}
    totals: dict[str, Decimal] = {}
    for row in read_rows(paths, limit):
        stats.rows += 1
        reason = line_skip_reason(row)
        if reason is not None:
            stats.skipped[reason] += 1
            continue
        number, _, _, quantity, date, price, customer, country = row
        invoice = invoices.get(number)
        if invoice is None:
            invoice = Invoice(number, customer, country, parse_time(date), 0)
            invoices[number] = invoice
            totals[number] = Decimal(0)
        totals[number] += int(quantity) * Decimal(price)
        invoice.lines += 1
        stats.rows_used += 1

    used = []
    for number, invoice in invoices.items():
        invoice.pence = int(
            (totals[number] * 100).to_integral_value(rounding=ROUND_FLOOR)
        )
        if not invoice.is_cancellation and invoice.pence <= 0:
            stats.invoices_skipped["non_positive_total"] += 1
            stats.rows_used -= invoice.lines
            stats.skipped["non_positive_total"] += invoice.lines
            continue
        used.append(invoice)
    used.sort(key=lambda i: i.time_s)  # stable: file order within a minute
    return used, stats


def line_skip_reason(row: list[str]) -> str | None:
    if len(row) != len(HEADER):
        return "malformed"
    number, _, _, quantity, date, price, customer, country = row
    if number.startswith("A"):
        return "bad_debt_adjustment"
    try:
        q = int(quantity)
        p = Decimal(price)
        parse_time(date)
    except (ValueError, InvalidOperation):
        return "malformed"
    if not number or not country:
        return "malformed"
    if not customer:
        return "no_customer"
    if q < 0 and not number.startswith("C"):
        return "stock_write_off"
    if p < 0:
        return "negative_price"
    if p == 0:
        return "zero_price"
    if q == 0:
        return "malformed"
    return None
