"""Expand an iCalendar file with an independent implementation (icalendar +
recurring-ical-events, PyPI) and print one JSON object per instance, as
`avwarden bookings expand` does, for tests/it/ical.rs to compare.

Usage: expand_peer.py FILE FROM TO FLOATING_TZ

Where the library is known to differ from RFC 5545, the line says so and gives
what RFC 5545 asks of the library's own wall-clock time:

- `rfc_start_utc`: the start is a local time that does not exist (DST gap).
  dateutil reads it with the offset after the gap; §3.3.5 says the offset before
  the gap (NY 02:30 on 8 March 2026 is 03:30 EDT = 07:30Z, not 06:30Z).
- `end_exact` false: Python adds the duration to a zoned start in wall-clock
  time, while §3.8.5.3 makes DTEND - DTSTART an exact duration; the two differ
  when an instance spans a UTC offset change or starts in a gap.
"""

import datetime as dt
import json
import sys
import zoneinfo

from dateutil import tz as dtz

import icalendar
import recurring_ical_events


def main():
    path, start, stop, floating_name = sys.argv[1:5]
    with open(path, "rb") as f:
        cal = icalendar.Calendar.from_ical(f.read())
    x_wr = cal.get("X-WR-TIMEZONE")
    floating = zoneinfo.ZoneInfo(str(x_wr) if x_wr else floating_name)
    utc = dt.timezone.utc

    def instant(v):
        if isinstance(v, dt.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=floating)
            return v.astimezone(utc)
        return dt.datetime.combine(v, dt.time(0), tzinfo=floating).astimezone(utc)

    def text(t):
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    window = (
        dt.datetime.fromisoformat(start.replace("Z", "+00:00")),
        dt.datetime.fromisoformat(stop.replace("Z", "+00:00")),
    )
    for ev in recurring_ical_events.of(cal).between(*window):
        s = ev.decoded("DTSTART")
        e = ev.decoded("DTEND") if "DTEND" in ev else s
        s_utc, e_utc = instant(s), instant(e)
        end_exact = True
        rfc_start = None
        if isinstance(s, dt.datetime) and s.tzinfo is not None:
            if not dtz.datetime_exists(s):
                before = s
                while not dtz.datetime_exists(before):
                    before -= dt.timedelta(minutes=15)
                naive = s.replace(tzinfo=None)
                rfc_start = text((naive - before.utcoffset()).replace(tzinfo=utc))
            end_exact = rfc_start is None and s.utcoffset() == e.utcoffset()
        print(
            json.dumps(
                {
                    "uid": str(ev.get("UID")),
                    "start_utc": text(s_utc),
                    "end_utc": text(e_utc),
                    "all_day": not isinstance(s, dt.datetime),
                    "status": str(ev.get("STATUS")) if ev.get("STATUS") else None,
                    "end_exact": end_exact,
                    "rfc_start_utc": rfc_start,
                }
            )
        )


main()
