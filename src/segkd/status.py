"""Where a study's runs stand: done, stale, running, interrupted, failed or missing, and how long the rest takes.

A study runs for days; `segkd status` answers "what is left, what broke, when will it end" from the
files the runs leave behind, without opening a checkpoint (a teacher's is large and slow to read): a run's
`metrics.json` (its spec and speed once finished), its `progress.json` (iteration, speed, process,
rewritten by the training loop at every log point), the presence of `partial.pt`, and the tail of its
log. The run grid is `segkd.runs.expected_runs`, the Snakefile's own, so both list the same runs.

A run's state, decided in this order:

1. done: metrics.json exists and its `params` is the study's run spec (canonical JSON).
2. running: progress.json names a live process. On this host the process must exist, not be a
   zombie, and (where /proc tells) have started before the file's last update, so a recycled pid
   does not count. On another host a pid cannot be checked: the run counts as running while its last
   update is recent, within `REMOTE_WINDOW_S` or three log intervals of the run, whichever is longer.
   A live run of another spec is stale (its metrics will not be the study's).
3. failed: the log ends with an error (a `segkd train: error: ...` line or a traceback) written after
   the last progress update. A failed run that left a partial.pt is failed, not interrupted: running it
   again resumes it, but it may fail again. A traceback ending in KeyboardInterrupt is an interruption.
4. stale: metrics.json (or progress.json) of another spec: the workflow will train it again. A stale
   partial.pt makes that job stop until the run directory is removed (train refuses to resume it).
5. interrupted: progress.json or partial.pt without a live process (killed, node lost, Ctrl-C);
   `snakemake --rerun-incomplete` resumes it from partial.pt. Unless the log is newer and recent, and
   logs no step: the workflow rewrites a job's log when it starts it, so that is the job restarting
   (loading data, models and partial.pt before its first log point): running.
6. running (starting): only a log, written within `REMOTE_WINDOW_S`, without an error: a job that has
   not reached its first log point.
7. missing: nothing yet.

The time left is estimated per job kind (a teacher model; the baseline; the students of one teacher and
method): each kind's speed is the median images/s of its done runs, else of its runs in progress,
else that of the closest kind that has one (said so), else unknown. A run's remaining time is its
remaining iterations x batch size / speed; a run that resumes counts from its last checkpoint. Speeds
are of the training loop only: startup and the final evaluation are not counted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from segkd import layout
from segkd.config import ABSENT, SpecChange, Study, spec_changes, spec_hash, spec_json
from segkd.runs import Run, expected_runs

STATES = ("done", "running", "interrupted", "failed", "stale", "missing")
REMOTE_WINDOW_S = 600.0  # a run on another host (or a starting job) counts as running this long after its last update
LOG_TAIL_BYTES = 16 * 1024  # how much of a log's end is read: enough for a traceback, never the whole log
SHOWN_CHANGES = 3  # spec differences shown per stale run
SHOWN_MISSING = 10  # missing runs listed in the text (the table counts them all)

Group = tuple[str, str]  # (teacher, method): a job kind; a teacher run's group is (model, "")


@dataclass(frozen=True)
class RunState:
    """What the files of one run say about it."""

    run: Run
    state: str  # one of STATES
    iterations: int  # what the study asks of the run
    batch_size: int
    dir: Path
    log: Path
    iteration: int | None = None  # reached so far (progress.json), where known
    resumes_at: int | None = None  # interrupted / failed: the iteration its partial.pt resumes from
    updated: float | None = None  # unix time of the last progress update
    age_s: float | None = None  # seconds since then (or since the log was written, for a starting job)
    pid: int | None = None
    host: str | None = None
    images_per_s: float | None = None  # measured by this run (done: metrics.json; else progress.json)
    error: str | None = None  # failed: the log's last error line
    changes: tuple[SpecChange, ...] = ()  # stale: spec differences (run vs study), all of them
    detail: str | None = None  # a few words more (why stale, a starting job, ...)

    @property
    def group(self) -> Group:
        return (self.run.teacher, self.run.method)

    @property
    def remaining_iterations(self) -> int:
        if self.state == "done":
            return 0
        if self.state == "running" and self.iteration is not None:
            return max(self.iterations - self.iteration, 0)
        if self.state in ("running", "interrupted", "failed") and self.resumes_at is not None:
            return max(self.iterations - self.resumes_at, 0)
        return self.iterations


@dataclass(frozen=True)
class Speed:
    """A job kind's training speed and where it comes from."""

    images_per_s: float | None
    source: str  # measured (done runs) | in progress (progress.json) | borrowed | unknown
    runs: int = 0  # runs it is the median of
    like: Group | None = None  # borrowed: the kind it is borrowed from


@dataclass(frozen=True)
class GroupCount:
    """One row of the table: a job kind's runs by state, its speed and its time left."""

    group: Group
    kind: str  # teacher | baseline | student
    counts: dict[str, int]
    speed: Speed
    remaining_s: float  # over the runs of known speed
    unknown_runs: int  # not-done runs whose speed is unknown

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Eta:
    compute_s: float  # sum of every not-done job's remaining time (known speeds only; a cohort is one job)
    jobs: int
    unknown_runs: int

    @property
    def wall_s(self) -> float:
        """With `jobs` parallel jobs: a plain division (it ignores that students wait for their teacher)."""
        return self.compute_s / self.jobs


@dataclass(frozen=True)
class StudyStatus:
    study: str
    runs: list[RunState]
    groups: list[GroupCount]
    eta: Eta
    problems: list[str] = field(default_factory=list)  # preflight: what makes every job fail

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.runs)


# ------------------------------------------------------------------------------------------ files


def read_metrics(path: Path) -> dict:
    """A metrics.json without its `history`, which is most of the file and none of what status reads.

    The history list (flat records of numbers) is cut out unparsed; should that ever not yield valid
    JSON (another layout), the whole file is parsed.
    """
    text = path.read_bytes()
    match = _HISTORY.search(text)
    if match is not None:
        end = text.find(b"]", match.end())
        if end >= 0:
            try:
                return json.loads(text[:match.start()] + b'"history": null' + text[end + 1:])
            except ValueError:
                pass
    return json.loads(text)


_HISTORY = re.compile(rb'"history"\s*:\s*\[')


def read_progress(path: Path) -> dict | None:
    """progress.json, or None when absent or unreadable (caught mid-write by a non-atomic writer)."""
    try:
        progress = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def log_tail(path: Path, size: int = LOG_TAIL_BYTES) -> list[str]:
    """The last lines of a log (its last `size` bytes), tqdm's carriage returns split as lines."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            length = f.tell()
            f.seek(max(length - size, 0))
            data = f.read()
    except OSError:
        return []
    lines = re.split(r"\r\n|\r|\n", data.decode("utf-8", errors="replace"))
    return lines[1:] if length > size else lines  # the first line of a cut tail is partial


_SEGKD_ERROR = re.compile(r"^segkd [\w-]+: (?:error|training diverged): ")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Diverged)(?::|$)")
_STEP = re.compile(r"^\[[^\]]+\] it \d+/\d+ ")  # the training loop's log point: "[name] it 50/40000 loss=..."
_TRAINING = re.compile(r"^\[[^\]]+\] (?:it \d+/\d+|resuming from iteration)")


def last_error(lines: list[str]) -> str | None:
    """The error the log ends with: a `segkd <cmd>: error: ...` line or a traceback's exception line.

    None when the last error is followed by training progress (the job went on) or there is none. A
    message that continues on the next line (`invalid study parameters:`) gets that line appended.
    """
    found, in_traceback = None, False
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback:
            if line and not line[0].isspace():  # the frames are indented; the exception line is not
                found, in_traceback = i, False
        elif _SEGKD_ERROR.match(line) or _EXCEPTION.match(line):
            found = i
        elif found is not None and _TRAINING.match(line):
            found = None
    if found is None:
        return None
    text = lines[found].rstrip()
    following = next((line.strip() for line in lines[found + 1:] if line.strip()), "")
    if text.endswith(":") and following and not following.startswith("Traceback"):
        text += " " + following
    return text


# --------------------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state letter, start time as unix time) of a process, from Linux's /proc; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": the comm may hold spaces
    return fields[0], _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


@lru_cache(maxsize=1)
def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


@lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


def is_alive(progress: dict, now: float, log_every: int) -> bool:
    """Whether the process that wrote `progress` is still training (see the module doc for the rule)."""
    pid, host, updated = progress.get("pid"), progress.get("host"), progress.get("updated")
    if not isinstance(updated, (int, float)):
        return False
    if host != _hostname() or not isinstance(pid, int) or pid <= 0:
        speed, batch = progress.get("images_per_s"), progress.get("batch_size")
        interval = log_every * batch / speed if isinstance(speed, (int, float)) and speed > 0 and batch else 0.0
        return now - updated < max(REMOTE_WINDOW_S, 3 * interval)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    try:
        stat = _proc_stat(pid)
    except (OSError, ValueError, IndexError):
        stat = None
    if stat is None:
        return True
    state, started = stat
    return state != "Z" and started <= updated + 1.0  # a process started after the update did not write it


# ------------------------------------------------------------------------------------------ states


def run_state(run: Run, study: Study, runs_root: Path = layout.RUNS, logs_root: Path = layout.LOGS,
              now: float | None = None) -> RunState:
    """Where one run stands (the rules are in the module doc)."""
    now = time.time() if now is None else now
    spec = run.spec(study)
    run_dir = runs_root / run.dir.relative_to(layout.RUNS)
    log = logs_root / run.log.relative_to(layout.LOGS)
    train = spec["train"]
    base = dict(run=run, iterations=spec["iterations"], batch_size=train["batch_size"], dir=run_dir, log=log)

    metrics_path, progress_path = run_dir / layout.METRICS, run_dir / layout.PROGRESS
    metrics = None
    if metrics_path.is_file():
        try:
            metrics = read_metrics(metrics_path)
        except (OSError, ValueError):
            metrics = {}  # unreadable: treated as another spec's
        recorded = metrics.get("params")
        if recorded is not None and spec_json(recorded) == spec_json(spec):
            return RunState(state="done", iteration=spec["iterations"],
                            images_per_s=_positive(metrics.get("images_per_s")), **base)

    progress = read_progress(progress_path)
    has_partial = (run_dir / layout.PARTIAL).is_file()
    wanted = spec_hash(spec)
    same_spec = progress is not None and progress.get("spec_sha256", wanted) == wanted
    seen: dict = {}
    if progress is not None:
        updated = progress.get("updated") if isinstance(progress.get("updated"), (int, float)) else None
        seen = dict(updated=updated, age_s=None if updated is None else now - updated, pid=progress.get("pid"),
                    host=progress.get("host"))
        if same_spec:
            iteration = progress.get("iteration")
            seen.update(iteration=iteration if isinstance(iteration, int) else None,
                        images_per_s=_positive(progress.get("images_per_s")))
        if is_alive(progress, now, train["log_every"]):
            if same_spec:
                return RunState(state="running", **base, **seen)
            return RunState(state="stale", detail=f"its process runs another spec ({progress.get('spec_sha256')} "
                                                  f"vs {wanted})", **base, **seen)

    resumes_at = _resume_point(seen.get("iteration"), train["checkpoint_every"], has_partial) if same_spec else None
    error = _log_error(log, after=[p for p in (metrics_path, progress_path) if p.exists()])
    if error is not None and not error.startswith("KeyboardInterrupt"):
        return RunState(state="failed", error=error, resumes_at=resumes_at, **base, **seen)

    if metrics is not None:
        changes = tuple(spec_changes(metrics.get("params"), spec)) if metrics.get("params") is not None else ()
        detail = None if changes else "metrics.json unreadable or without params"
        return RunState(state="stale", changes=changes, detail=detail, **base, **seen)
    if progress is not None and not same_spec:
        detail = f"progress.json of another spec ({progress.get('spec_sha256')} vs {wanted})"
        if has_partial:
            detail += f"; its partial.pt stops the next job: remove {run_dir}"
        return RunState(state="stale", detail=detail, **base, **seen)
    if progress is not None or has_partial:
        resumes_at = resumes_at if progress is not None else None
        restarted = _new_attempt_age(log, progress_path if progress is not None else run_dir / layout.PARTIAL, now)
        if restarted is not None and error is None:
            return RunState(state="running", resumes_at=resumes_at, detail="restarted, no step logged yet",
                            **base, **{**seen, "iteration": None, "age_s": restarted})
        detail = "stopped by Ctrl-C" if error else None
        return RunState(state="interrupted", resumes_at=resumes_at, detail=detail, **base, **seen)

    if error is not None:
        return RunState(state="missing", detail="stopped by Ctrl-C before its first checkpoint", **base)
    if log.is_file():
        age = now - log.stat().st_mtime
        if age < REMOTE_WINDOW_S:
            return RunState(state="running", age_s=age, detail="started, no progress yet", **base)
        return RunState(state="missing", detail=f"a log without progress: {log}", **base)
    return RunState(state="missing", **base)


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value > 0 and value != float("inf") else None


def _resume_point(iteration: int | None, checkpoint_every: int, has_partial: bool) -> int | None:
    """The iteration a run resumes from: its last periodic checkpoint, or 0 without partial.pt."""
    if not has_partial:
        return 0
    return None if iteration is None else iteration // checkpoint_every * checkpoint_every


def _new_attempt_age(log: Path, since: Path, now: float) -> float | None:
    """The age of the log if it is a new attempt's: the workflow rewrites a job's log when it starts it, so
    a log written after the dead process's last file, recently, without any step logged, is a job
    that is restarting (loading data, models and partial.pt) before its first log point."""
    try:
        written = log.stat().st_mtime
        if written < since.stat().st_mtime or now - written >= REMOTE_WINDOW_S:
            return None
    except OSError:
        return None
    steps = any(_STEP.match(line) for line in log_tail(log))
    return None if steps else now - written


def _log_error(log: Path, after: list[Path]) -> str | None:
    """The log's last error, if the log was written after every one of `after` (the latest attempt's)."""
    try:
        written = log.stat().st_mtime_ns
    except OSError:
        return None
    if any(written < p.stat().st_mtime_ns for p in after):
        return None
    return last_error(log_tail(log))


def run_states(study: Study, runs_root: Path = layout.RUNS, logs_root: Path = layout.LOGS,
               now: float | None = None) -> list[RunState]:
    """Every run of the study, in study order, with its state."""
    now = time.time() if now is None else now
    return [run_state(run, study, Path(runs_root), Path(logs_root), now) for run in expected_runs(study)]


# --------------------------------------------------------------------------------------- estimates


def _groups(states: list[RunState]) -> dict[Group, list[RunState]]:
    groups: dict[Group, list[RunState]] = {}
    for s in states:
        groups.setdefault(s.group, []).append(s)
    return groups


def _closest(group: Group, kind: str, kinds: dict[Group, str], teachers: list[str]) -> list[Group]:
    """Other kinds, closest first: a student borrows from the same teacher's other methods, then the
    same method of other teachers, then any student, then the baseline; the baseline from students;
    a teacher from other teachers only (a student's speed says little about a teacher's)."""
    if kind == "teacher":
        return [g for g in kinds if kinds[g] == "teacher" and g != group]
    students = [g for g in kinds if kinds[g] == "student" and g != group]
    if kind == "baseline":
        return students
    teacher, method = group
    same_teacher = [g for g in students if g[0] == teacher]
    same_method = sorted((g for g in students if g[1] == method and g[0] != teacher),
                         key=lambda g: teachers.index(g[0]) if g[0] in teachers else len(teachers))
    rest = [g for g in students if g not in same_teacher and g not in same_method]
    return same_teacher + same_method + rest + [g for g in kinds if kinds[g] == "baseline"]


def speeds(states: list[RunState], teachers: list[str] = ()) -> dict[Group, Speed]:
    """Each job kind's speed: measured, in progress, borrowed from the closest kind, or unknown."""
    groups = _groups(states)
    kinds = {g: members[0].run.kind for g, members in groups.items()}
    own: dict[Group, Speed] = {}
    for g, members in groups.items():
        done = [s.images_per_s for s in members if s.state == "done" and s.images_per_s]
        going = [s.images_per_s for s in members if s.state != "done" and s.images_per_s]
        if done:
            own[g] = Speed(statistics.median(done), "measured", len(done))
        elif going:
            own[g] = Speed(statistics.median(going), "in progress", len(going))
    result = {}
    for g in groups:
        if g in own:
            result[g] = own[g]
            continue
        like = next((c for c in _closest(g, kinds[g], kinds, list(teachers)) if c in own), None)
        result[g] = Speed(own[like].images_per_s, "borrowed", own[like].runs, like) if like else Speed(None, "unknown")
    return result


def remaining_s(state: RunState, speed: Speed) -> float | None:
    """Seconds of training the run still needs (None when its kind's speed is unknown)."""
    if state.remaining_iterations == 0:
        return 0.0
    if speed.images_per_s is None:
        return None
    return state.remaining_iterations * state.batch_size / speed.images_per_s


def study_status(study: Study, runs_root: Path = layout.RUNS, logs_root: Path = layout.LOGS, jobs: int = 1,
                 problems: list[str] = (), now: float | None = None) -> StudyStatus:
    """The whole picture: every run's state, the table by job kind, and the time left."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    states = run_states(study, runs_root, logs_root, now)
    by_kind = speeds(states, study.teachers)
    groups, jobs_left = [], {}
    for g, members in _groups(states).items():
        left = [remaining_s(s, by_kind[g]) for s in members]
        known = sum(x for x in left if x is not None)
        n_unknown = sum(x is None for x in left)
        groups.append(GroupCount(g, members[0].run.kind, {st: sum(s.state == st for s in members) for st in STATES},
                                 by_kind[g], known, n_unknown))
        for s, x in zip(members, left):
            # the students of a cohort train in one job, at its pace: the job's time is theirs, once
            job = (s.run.teacher, s.run.seed, s.run.fold) if s.run.in_cohort else s.run
            before = jobs_left.get(job, 0.0)
            jobs_left[job] = None if x is None or before is None else max(x, before)
    total_s = sum(x for x in jobs_left.values() if x is not None)
    unknown = sum(x is None for x in jobs_left.values())
    return StudyStatus(study.name, states, groups, Eta(total_s, jobs, unknown), list(problems))


# ----------------------------------------------------------------------------------------- output


def kind_label(group: Group, kind: str) -> str:
    """segformer_b2 teacher, baseline, segformer_b2/kd."""
    if kind == "teacher":
        return f"{group[0]} teacher"
    return "baseline" if kind == "baseline" else f"{group[0]}/{group[1]}"


def as_json(status: StudyStatus) -> dict:
    """Everything, for scripts: every run, the counts by state and by kind, the time left."""
    speed_of = {g.group: g.speed for g in status.groups}

    def run_entry(s: RunState) -> dict:
        left = remaining_s(s, speed_of[s.group])
        return {
            "label": s.run.label, "kind": s.run.kind, "teacher": None if s.run.kind == "baseline" else s.run.teacher,
            "method": s.run.method or None, "model": s.run.model, "seed": s.run.seed, "fold": s.run.fold,
            "dir": str(s.dir), "log": str(s.log), "state": s.state, "iteration": s.iteration,
            "iterations": s.iterations, "resumes_at": s.resumes_at, "remaining_iterations": s.remaining_iterations,
            "remaining_s": left, "updated": s.updated, "age_s": s.age_s, "pid": s.pid, "host": s.host,
            "images_per_s": s.images_per_s, "error": s.error,
            "spec_diff": [{"key": c.key, "run": _plain(c.run), "study": _plain(c.study)} for c in s.changes],
            "detail": s.detail,
        }

    def group_entry(g: GroupCount) -> dict:
        like = kind_label(g.speed.like, _kind_of(status, g.speed.like)) if g.speed.like else None
        return {"kind": g.kind, "teacher": None if g.kind == "baseline" else g.group[0],
                "method": g.group[1] or None, "label": kind_label(g.group, g.kind), **g.counts, "total": g.total,
                "images_per_s": g.speed.images_per_s, "speed_source": g.speed.source, "speed_runs": g.speed.runs,
                "speed_like": like, "remaining_s": g.remaining_s, "unknown_runs": g.unknown_runs}

    return {
        "study": status.study,
        "problems": status.problems,
        "counts": {"total": len(status.runs), **{st: status.count(st) for st in STATES}},
        "groups": [group_entry(g) for g in status.groups],
        "eta": {"compute_s": status.eta.compute_s, "compute_h": status.eta.compute_s / 3600, "jobs": status.eta.jobs,
                "wall_s": status.eta.wall_s, "wall_h": status.eta.wall_s / 3600,
                "unknown_runs": status.eta.unknown_runs,
                "note": "training time only (startup and evaluation not counted); wall = compute / jobs, "
                        "ignoring that students wait for their teacher"},
        "runs": [run_entry(s) for s in status.runs],
    }


def _plain(value: Any) -> Any:
    return None if value is ABSENT else value


def _kind_of(status: StudyStatus, group: Group) -> str:
    return next(g.kind for g in status.groups if g.group == group)


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 45 s, 12 min, 3.4 h, 2.1 d."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _run_line(s: RunState) -> str:
    if s.state == "done":
        what = f"{s.images_per_s:.1f} img/s" if s.images_per_s else ""
    elif s.state == "running":
        if s.iteration is None:
            resuming = f", resumes at {s.resumes_at}" if s.resumes_at else ""
            what = f"{s.detail} (log written {duration(s.age_s)} ago){resuming}"
        else:
            where = f"pid {s.pid}" + (f" on {s.host}" if s.host and s.host != _hostname() else "")
            what = f"iteration {s.iteration} of {s.iterations}, updated {duration(s.age_s)} ago ({where})"
    elif s.state == "interrupted":
        parts = [s.detail] if s.detail else []
        if s.iteration is not None:
            parts.append(f"iteration {s.iteration} of {s.iterations}")
        if s.age_s is not None:
            parts.append(f"last update {duration(s.age_s)} ago")
        parts.append(f"resumes at {s.resumes_at}" if s.resumes_at is not None else "resumes from partial.pt")
        what = ", ".join(parts)
    elif s.state == "failed":
        at = f"iteration {s.iteration} of {s.iterations}: " if s.iteration is not None else ""
        error = s.error if len(s.error) <= 200 else s.error[:197] + "..."
        what = f"{at}{error}  [{s.log}]"
    elif s.state == "stale":
        shown = "; ".join(str(c) for c in s.changes[:SHOWN_CHANGES])
        more = f" (+{len(s.changes) - SHOWN_CHANGES} more)" if len(s.changes) > SHOWN_CHANGES else ""
        what = shown + more if s.changes else (s.detail or "")
    else:
        what = s.detail or ""
    return f"  {s.state:<12} {s.run.label:<{_LABEL_WIDTH}} {what}".rstrip()


_ATTENTION = ("failed", "running", "interrupted", "stale", "missing")  # the order of the not-done list
_LEGEND = {
    "failed": "failed: the last error of the job's log",
    "interrupted": "interrupted: `snakemake --rerun-incomplete` resumes them from partial.pt",
    "stale": "stale: the run's value vs the study's; trained again",
}


_LABEL_WIDTH = 34


def format_text(status: StudyStatus, show_all: bool = False) -> str:
    """A terminal page: preflight problems, a line of totals, the table by kind, the time left, the
    runs that need attention (every run with `show_all`)."""
    lines = []
    if status.problems:
        lines.append(f"preflight: {len(status.problems)} problem{'s' * (len(status.problems) > 1)} "
                     "(every job that needs it would fail):")
        lines += [f"  {p}" for p in status.problems]
        lines.append("")
    states = ", ".join(f"{status.count(st)} {st}" for st in STATES if status.count(st))
    lines.append(f"study {status.study}: {len(status.runs)} runs: {states}")
    lines.append("")

    header = ["teacher", "method", *STATES, "img/s", "left"]
    rows, notes = [], []
    for g in status.groups:
        speed = "?" if g.speed.images_per_s is None else f"{g.speed.images_per_s:.1f}"
        if g.speed.source == "borrowed":
            speed += "*"
            notes.append(f"{kind_label(g.group, g.kind)} as {kind_label(g.speed.like, _kind_of(status, g.speed.like))}")
        elif g.speed.source == "in progress":
            speed += "~"
        left = duration(g.remaining_s) if g.remaining_s else "-"
        if g.unknown_runs:
            left = f"{left} + {g.unknown_runs} runs ?" if g.remaining_s else f"{g.unknown_runs} runs ?"
        method = "(teacher)" if g.kind == "teacher" else g.group[1]
        rows.append([g.group[0], method, *(str(g.counts[st] or ".") for st in STATES), speed, left])
    total = status.eta.compute_s
    rows.append(["total", "", *(str(status.count(st) or ".") for st in STATES), "",
                 f"{total / 3600:.1f} h" if total >= 3600 else duration(total)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    if any(g.speed.source == "in progress" for g in status.groups):
        notes.insert(0, "~ measured on runs in progress (no run of the kind done yet)")
    if notes:
        lines.append("img/s: " + "; ".join(n if n.startswith("~") else f"* {n}" for n in notes))
    lines.append("")

    eta = status.eta
    if eta.compute_s or eta.unknown_runs:
        lines.append(f"left: {eta.compute_s / 3600:.1f} compute hours (training only: startup and evaluation "
                     "not counted)" + (f", plus {eta.unknown_runs} runs of unknown speed" if eta.unknown_runs else ""))
        lines.append(f"      with {eta.jobs} parallel job{'s' * (eta.jobs > 1)}: about {duration(eta.wall_s)} "
                     "(total / jobs, a simple division: students wait for their teacher)")
    else:
        lines.append("left: nothing, every run is done")

    if show_all:
        shown = status.runs
    else:
        shown = sorted((r for r in status.runs if r.state != "done"), key=lambda r: _ATTENTION.index(r.state))
    if shown:
        lines.append("")
        lines.append("runs:" if show_all else "not done:")
        missing_seen = 0
        for s in shown:
            missing_seen += s.state == "missing"
            if show_all or s.state != "missing" or missing_seen <= SHOWN_MISSING:
                lines.append(_run_line(s))
        if not show_all and missing_seen > SHOWN_MISSING:
            lines.append(f"  ... and {missing_seen - SHOWN_MISSING} more missing (--all lists every run)")
        legend = [text for state, text in _LEGEND.items() if status.count(state)]
        if legend:
            lines.append("(" + "; ".join(legend) + ")")
    return "\n".join(lines)
