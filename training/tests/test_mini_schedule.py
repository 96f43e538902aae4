"""gf-mini run-comparison: the comparison's jobs, their order and needs, and the scheduler that
runs them N at a time as real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gf_training import mini
from gf_training.mini_comparison import CONTROL, DECIDING_ROWS, comparison_rows
from gf_training.mini_schedule import Job, JobProcess, comparison_jobs, run_comparison, run_jobs


def test_every_row_runs_after_what_it_starts_from_and_the_deciding_rows_twice():
    jobs = comparison_jobs(seeds=2)
    names = [job.name for job in jobs]
    by_name = {job.name: job for job in jobs}
    for i, job in enumerate(jobs):  # the order is a valid start order
        assert set(job.needs) <= set(names[:i]), job
    for recipe in comparison_rows():
        assert recipe.slug in names
        assert (recipe.slug + "_seed1" in names) == (recipe.name in DECIDING_ROWS)
    assert by_name["scratch_full"].needs == ("tokenizer", "demos")
    assert by_name["vlm_full_seed1"].needs == ("tokenizer", "demos", "vlm")
    assert by_name["vlapre_full"].needs == ("tokenizer", "demos", "vla-pretrain")
    assert by_name["vla-pretrain"].needs == ("vlm",) and by_name["vlm"].needs == ("vlm-table",)
    assert by_name["vlm-table"].needs == ("vlm-names",)
    assert by_name["vlm-names"].needs == ("tokenizer",)
    # Every first seed is queued before any second one.
    assert max(names.index(r.slug) for r in comparison_rows()) < min(n for n, j in enumerate(jobs) if j.seed)
    # A row's job is the command a user types, and runs in the directory it is named after.
    root = Path("/data")
    seed1 = by_name["vlm_full_seed1"]
    assert seed1.command(root)[1:] == ["run", "vlm-full", "--root", "/data", "--seed", "1"]
    assert seed1.plan(root).run_dir.name == "vlm_full_seed1"
    assert by_name["demos"].command(root)[1:] == ["run", CONTROL, "--root", "/data", "--stages", "demos"]


def test_chosen_rows_bring_only_what_they_need():
    names = [job.name for job in comparison_jobs(["vlapre-full"], seeds=2)]
    assert names == ["tokenizer", "demos", "vlm-names", "vlm-table", "vlm", "vla-pretrain", "vlapre_full"]
    with pytest.raises(ValueError, match="vlm-nothing"):
        comparison_jobs(["vlm-nothing"])


def _recording_start(log: Path, codes: dict[str, int], seconds: float = 0.3):
    """Start each job as a real process that notes its start and end in ``log``."""
    def start(job: Job) -> subprocess.Popen:
        script = (f"import time\nopen({str(log)!r}, 'a').write(f'start {job.name} {{time.time()}}\\n')\n"
                  f"time.sleep({seconds})\nopen({str(log)!r}, 'a').write(f'end {job.name} {{time.time()}}\\n')\n"
                  f"raise SystemExit({codes.get(job.name, 0)})")
        return subprocess.Popen([sys.executable, "-c", script])
    return start


def _intervals(log: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        _, name, t = line.split()
        out.setdefault(name, []).append(float(t))
    return out


def test_jobs_run_at_most_n_at_once_after_their_needs_and_a_failure_skips_its_users(tmp_path):
    jobs = [Job("a", CONTROL), Job("b", CONTROL), Job("c", CONTROL, needs=("a",)),
            Job("d", CONTROL, needs=("b",)), Job("e", CONTROL, needs=("c",)), Job("f", CONTROL)]
    log = tmp_path / "log"
    messages: list[str] = []
    codes = run_jobs(jobs, _recording_start(log, {"b": 3}), limit=2, say=messages.append, poll_s=0.02)
    assert codes == {"a": 0, "b": 3, "c": 0, "d": None, "e": 0, "f": 0}
    spans = _intervals(log)
    assert "d" not in spans and set(spans) == {"a", "b", "c", "e", "f"}
    assert spans["c"][0] >= spans["a"][1] and spans["e"][0] >= spans["c"][1]
    # At no job's start were more than two running.
    for name, (begin, _) in spans.items():
        assert sum(b <= begin < e for b, e in spans.values()) <= 2, name
    assert any("b: failed with exit code 3" in m for m in messages)
    assert any(m.startswith("[gf-mini] d: not started, it needs b") for m in messages)


def test_a_job_finished_earlier_is_not_started_but_its_users_are(tmp_path):
    jobs = [Job("made", CONTROL), Job("user", CONTROL, needs=("made",))]
    log = tmp_path / "log"
    codes = run_jobs(jobs, _recording_start(log, {}, seconds=0.0), limit=1, say=lambda m: None,
                     is_done=lambda job: job.name == "made", poll_s=0.02)
    assert codes == {"made": 0, "user": 0}
    assert set(_intervals(log)) == {"user"}


def test_whether_a_job_finished_earlier_is_asked_once_though_it_waits_for_a_slot(tmp_path):
    asked: list[str] = []
    jobs = [Job("first", CONTROL), Job("second", CONTROL), Job("third", CONTROL, needs=("first",))]
    codes = run_jobs(jobs, _recording_start(tmp_path / "log", {}, seconds=0.3), limit=1, say=lambda m: None,
                     is_done=lambda job: asked.append(job.name) or False, poll_s=0.02)
    assert codes == {"first": 0, "second": 0, "third": 0}
    assert sorted(asked) == ["first", "second", "third"]


def test_a_need_that_is_not_a_job_is_refused():
    with pytest.raises(ValueError, match="needs"):
        run_jobs([Job("a", CONTROL, needs=("ghost",))], lambda job: pytest.fail("started"), 1, lambda m: None)


def test_run_comparison_runs_the_real_command_logs_it_and_reports_a_failure(tmp_path):
    # A stage gf-mini does not know fails at once in the real command; its user (which would
    # generate the demos if it ran) is skipped.
    jobs = [Job("broken", CONTROL, stages=("no-such-stage",)), Job("after", CONTROL, needs=("broken",))]
    assert not jobs[0].done(tmp_path)
    messages: list[str] = []
    assert run_comparison(tmp_path, jobs, limit=2, say=messages.append) == 1
    log = tmp_path / "runs/mini/comparison/logs/broken.log"
    assert "unknown stage(s) ['no-such-stage']" in log.read_text()
    assert not (tmp_path / "runs/mini/comparison/logs/after.log").exists()
    assert any("not done: broken, after" in m for m in messages)
    assert (tmp_path / "runs/mini/comparison/comparison.md").exists()


def test_the_dry_run_lists_the_jobs_and_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a dry run started a command"))
    assert mini.main(["run-comparison", "--root", str(tmp_path), "--rows", "scratch-full", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["tokenizer", "demos", "scratch_full", "scratch_full_seed1"]
    assert all("(to run" in line for line in lines)
    with pytest.raises(SystemExit):
        mini.main(["run-comparison", "--root", str(tmp_path), "--rows", "nothing", "--dry-run"])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its parent's wait is missing


def test_an_interrupted_comparison_stops_its_jobs_and_what_they_started(tmp_path):
    # The job starts a child of its own (as gf-mini run starts gf-train) and waits for it.
    pid_file = tmp_path / "grandchild"
    script = ("import subprocess, sys\np = subprocess.Popen(['sleep', '60'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\np.wait()")
    processes = []

    def start(job: Job) -> JobProcess:
        processes.append(JobProcess([sys.executable, "-c", script], tmp_path / f"{job.name}.log"))
        return processes[-1]

    def say(message: str) -> None:
        if "started" in message:  # Ctrl-C once the job's own child runs
            for _ in range(200):
                if pid_file.exists() and pid_file.read_text():
                    break
                time.sleep(0.05)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs([Job("long", CONTROL)], start, limit=1, say=say, poll_s=0.02)
    grandchild = int(pid_file.read_text())
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert processes[0].poll() is not None
