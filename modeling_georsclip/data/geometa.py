"""Typed geo-metadata parsed from RS3 captions.

RS5M's RS3 captions for fMoW images are generated from the fMoW metadata and carry it in the text, in a few
dozen phrasings ("its geospatial tag corresponds to utm zone 18T and records the date as 15 o'clock,
June 9, 2016 ... amidst 0% cloud cover ... off-nadir: 33.10?"). These regular expressions recover the
values into the dataset's typed, nullable columns; a value the caption does not state stays ``None``.
No library parses this caption grammar, hence the hand-written patterns.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

GEO_COLUMNS: tuple[str, ...] = ("latitude", "longitude", "utm_zone", "gsd", "date", "cloud_cover", "off_nadir")

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_GSD = re.compile(
    r"(?:ground sample distance|\bpixel\b[^.\d]{0,30})\D{0,30}?(\d+(?:\.\d+)?)\s*m\b", re.IGNORECASE
)
_UTM = re.compile(r"\butm zone:?\s+(\d{1,2}[C-HJ-NP-X])\b", re.IGNORECASE)
_DATE = re.compile(
    r"(?:(\d{1,2}) o'clock,\s*)?\b(January|February|March|April|May|June|July|August|September|October|November"
    r"|December)\s+(\d{1,2}),\s*(\d{4})\b",
    re.IGNORECASE,
)
_OFF_NADIR = re.compile(r"off-nadir\D{0,20}?" + _NUMBER)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_CLOUD = re.compile(r"cloud", re.IGNORECASE)
_LATITUDE = re.compile(r"\blat(?:itude)?\s*[:=]?\s*" + _NUMBER, re.IGNORECASE)
_LONGITUDE = re.compile(r"\blon(?:gitude)?g?\s*[:=]?\s*" + _NUMBER, re.IGNORECASE)

# How far (characters) a percentage may sit from the word "cloud" to be read as cloud cover.
_CLOUD_WINDOW = 40


def _cloud_cover(text: str) -> float | None:
    """The percentage closest to a mention of clouds ("0% cloud cover", "cloudiness of 15%")."""
    clouds = [m.start() for m in _CLOUD.finditer(text)]
    if not clouds:
        return None
    best: tuple[int, float] | None = None
    for match in _PERCENT.finditer(text):
        distance = min(min(abs(match.start() - c), abs(match.end() - c)) for c in clouds)
        if distance <= _CLOUD_WINDOW and (best is None or distance < best[0]):
            best = (distance, float(match.group(1)))
    return None if best is None else best[1]


def _iso_date(text: str) -> str | None:
    """``"15 o'clock, June 9, 2016"`` -> ``"2016-06-09T15:00"``; without the hour -> ``"2016-06-09"``."""
    match = _DATE.search(text)
    if not match:
        return None
    hour, month, day, year = match.groups()
    try:
        when = datetime.strptime(f"{month.title()} {int(day)} {year}", "%B %d %Y")
    except ValueError:
        return None
    if hour is not None and 0 <= int(hour) <= 23:
        return when.replace(hour=int(hour)).strftime("%Y-%m-%dT%H:00")
    return when.strftime("%Y-%m-%d")


def _float(pattern: re.Pattern, text: str) -> float | None:
    match = pattern.search(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def parse_geo_metadata(caption: str) -> dict[str, float | str | None]:
    """Return every column of ``GEO_COLUMNS``: the value stated in ``caption`` or ``None``."""
    latitude = _float(_LATITUDE, caption)
    longitude = _float(_LONGITUDE, caption)
    if latitude is not None and not -90 <= latitude <= 90:
        latitude = None
    if longitude is not None and not -180 <= longitude <= 180:
        longitude = None
    utm = _UTM.search(caption)
    return {
        "latitude": latitude,
        "longitude": longitude,
        "utm_zone": utm.group(1).upper() if utm else None,
        "gsd": _float(_GSD, caption),
        "date": _iso_date(caption),
        "cloud_cover": _cloud_cover(caption),
        "off_nadir": _float(_OFF_NADIR, caption),
    }
