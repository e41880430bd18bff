"""Structured logs: one line per event, `key=value` or JSON.

Modules log a short lowercase event with %-style key=value pairs, for example
`log.info("block committed height=%d hash=%s", ...)`. The kv format prints
that line behind a timestamp, level and logger; the JSON format splits the
pairs into fields so log shippers can index them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_PAIR = re.compile(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} event={record.getMessage()}"
        )
        if record.exc_info:
            # One line per event: the traceback's last line says what failed.
            line += f" error={self.formatException(record.exc_info).splitlines()[-1]!r}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event = _PAIR.split(message, maxsplit=1)[0].strip()
        doc = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        for key, value in _PAIR.findall(message):
            doc.setdefault(key, value.strip("'\""))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc)


def setup_logging(level: str = "info", fmt: str = "kv", node: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print one unstructured line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
