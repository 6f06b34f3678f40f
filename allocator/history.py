"""What the allocator saw, kept on disk: the forecast's memory of earlier days and the planner's
record of what each stage completed with how many consumers.

Every look appends one line of JSON per stage to ``<directory>/<UTC date>.jsonl``. Lines, not a
database: appends are cheap (a day of 10 s looks over five stages is ~4 MB), a line torn by a
crash is skipped on reading, an operator can read or delete a day with ordinary tools, and
retention is deleting files (``keep_days``).

Two readers:

- `History.forecast`: the arrival rate at this time of day on the last ``days`` days (their mean
  per ``bucket_s`` bucket, which smooths one day's noise and spikes), now and the highest within
  a lead. `allocator.decide.forecast_rate` scales it by how today compares.
- `History.samples`: looks in which a stage had a backlog, so that what it completed was its
  capacity with that many consumers: the planner's curves (`allocator.planner.curves`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from allocator.planner import Sample

log = logging.getLogger(__name__)

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Record:
    """One stage at one look."""

    at: float
    """Unix time, seconds."""
    stage: str
    consumers: int
    arrival: float
    """Events/s appended to the stage's input."""
    completed: float
    """Events/s the stage's group committed."""
    lag: float
    service: float | None = None
    """One consumer's events per busy second, if measured."""


def _day(at: float) -> str:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%Y-%m-%d")


@dataclass
class _Profile:
    """One day's mean arrival rate per time-of-day bucket, per stage (NaN: nothing recorded)."""

    stamp: tuple[int, int]
    """(size, mtime) of the file it was read from: appends change the size at once, while the
    mtime may not within a clock tick."""
    rates: dict[str, npt.NDArray[np.float64]]


@dataclass
class History:
    directory: Path
    days: int = 7
    """How many earlier days the forecast averages."""
    bucket_s: float = 300.0
    keep_days: int = 35
    _profiles: dict[str, _Profile] = field(default_factory=dict)
    _pruned: str = ""

    def __post_init__(self) -> None:
        if self.days < 1 or self.bucket_s <= 0 or self.keep_days < self.days + 1:
            raise ValueError("history: days >= 1, bucket_s > 0, keep_days > days")
        self.directory = Path(self.directory)

    # -- writing ------------------------------------------------------------------------------

    def record(self, records: Sequence[Record]) -> None:
        """Append one look. Raises OSError (the loop logs it and goes on without history)."""
        if not records:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[str]] = {}
        for r in records:
            line = {
                "at": round(r.at, 3),
                "stage": r.stage,
                "consumers": r.consumers,
                "arrival": round(r.arrival, 3),
                "completed": round(r.completed, 3),
                "lag": round(r.lag, 1),
            }
            if r.service is not None:
                line["service"] = round(r.service, 3)
            by_day.setdefault(_day(r.at), []).append(json.dumps(line, separators=(",", ":")))
        for day, lines in by_day.items():
            with (self.directory / f"{day}.jsonl").open("a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        today = max(by_day)
        if today != self._pruned:
            self._prune(today)
            self._pruned = today

    def _prune(self, today: str) -> None:
        cutoff = dt.date.fromisoformat(today) - dt.timedelta(days=self.keep_days)
        for path in self.directory.glob("*.jsonl"):
            try:
                day = dt.date.fromisoformat(path.stem)
            except ValueError:
                continue  # not ours
            if day < cutoff:
                path.unlink(missing_ok=True)
                log.info("history: dropped %s (older than %d days)", path.name, self.keep_days)

    # -- reading ------------------------------------------------------------------------------

    def read(self, day: str) -> Iterator[Record]:
        """The records of one UTC day (``YYYY-MM-DD``); torn or foreign lines are skipped."""
        path = self.directory / f"{day}.jsonl"
        try:
            f = path.open(encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                try:
                    d = json.loads(line)
                    yield Record(
                        float(d["at"]),
                        str(d["stage"]),
                        int(d["consumers"]),
                        float(d["arrival"]),
                        float(d["completed"]),
                        float(d["lag"]),
                        float(d["service"]) if d.get("service") is not None else None,
                    )
                except (ValueError, KeyError, TypeError):
                    continue

    def forecast(self, stage: str, now: float, lead_s: float) -> tuple[float | None, float | None]:
        """(rate the recorded days saw at this time, the highest they saw within ``lead_s``),
        each the mean over the days that have it; (None, None) with no history here."""
        lead = max(lead_s, 0.0)
        offsets = np.append(np.arange(0.0, lead, self.bucket_s), lead)
        at_now: list[float] = []
        ahead = np.zeros(len(offsets))
        seen = np.zeros(len(offsets))
        for k in range(1, self.days + 1):
            for i, off in enumerate(offsets):
                rate = self._rate_at(stage, now + off - k * DAY_S)
                if rate is None:
                    continue
                if i == 0:
                    at_now.append(rate)
                ahead[i] += rate
                seen[i] += 1
        if not at_now or not seen.any():
            return None, None
        means = ahead[seen > 0] / seen[seen > 0]
        return float(np.mean(at_now)), float(means.max())

    def _rate_at(self, stage: str, at: float) -> float | None:
        profile = self._profile(_day(at))
        rates = profile.rates.get(stage) if profile is not None else None
        if rates is None:
            return None
        bucket = int((at % DAY_S) // self.bucket_s)
        value = float(rates[min(bucket, len(rates) - 1)])
        return None if math.isnan(value) else value

    def _profile(self, day: str) -> _Profile | None:
        """A day's profile, read once (again only if its file changed: the current day grows)."""
        path = self.directory / f"{day}.jsonl"
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._profiles.get(day)
        if cached is not None and cached.stamp == stamp:
            return cached
        n = math.ceil(DAY_S / self.bucket_s)
        sums: dict[str, npt.NDArray[np.float64]] = {}
        counts: dict[str, npt.NDArray[np.float64]] = {}
        for r in self.read(day):
            b = min(int((r.at % DAY_S) // self.bucket_s), n - 1)
            sums.setdefault(r.stage, np.zeros(n))[b] += r.arrival
            counts.setdefault(r.stage, np.zeros(n))[b] += 1
        rates = {}
        for s, total in sums.items():
            c = counts[s]
            rates[s] = np.divide(total, c, out=np.full(n, np.nan), where=c > 0)
        profile = _Profile(stamp, rates)
        self._profiles[day] = profile
        if len(self._profiles) > self.days + 2:  # keep only the days a forecast reads
            del self._profiles[min(self._profiles)]
        return profile

    def peak(self, stage: str) -> float:
        """The highest arrival rate any recorded look of ``stage`` saw (0 with none)."""
        top = 0.0
        for path in sorted(self.directory.glob("*.jsonl")):
            for r in self.read(path.stem):
                if r.stage == stage:
                    top = max(top, r.arrival)
        return top

    def samples(self, *, since: float = 0.0, in_flight_s: float = 1.0) -> list[Sample]:
        """Looks since ``since`` in which a stage had more lag than ``in_flight_s`` of arrivals
        (a backlog: it completed what it could, so the rate is capacity, not demand)."""
        out = []
        for path in sorted(self.directory.glob("*.jsonl")):
            try:
                end = dt.datetime.fromisoformat(path.stem).replace(tzinfo=dt.UTC).timestamp()
            except ValueError:
                continue
            if end + DAY_S < since:
                continue
            for r in self.read(path.stem):
                if r.at < since or r.consumers <= 0 or r.completed <= 0:
                    continue
                if r.lag > max(r.arrival, 0.0) * in_flight_s:
                    out.append(Sample(r.stage, r.consumers, r.completed))
        return out
