"""Nothing the project runs sends packets outside 127.0.0.0/8 (strace of every network syscall)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (scripts/setup.sh installs it)")

BIN = os.path.dirname(sys.executable)
ADDRESS = re.compile(r'sin6?_addr=inet_(?:addr|pton)\((?:AF_INET6, )?"([^"]+)"\)')
SEND_CALLS = ("connect(", "sendto(", "sendmsg(", "sendmmsg(")


def outside_loopback(trace: str) -> list[str]:
    """Lines of an strace log that send to / connect to a non-loopback IP address."""
    bad = []
    for line in trace.splitlines():
        if not any(call in line for call in SEND_CALLS):
            continue
        for address in ADDRESS.findall(line):
            if not (address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")):
                bad.append(line)
    return bad


def traced(cmd: list[str], tmp_path, timeout: float) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "strace.log"
    strace = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(log)]
    proc = subprocess.run(strace + cmd, capture_output=True, text=True, timeout=timeout)
    return proc, log.read_text()


def test_the_strace_filter_recognises_outside_traffic():
    line = '123 sendto(5, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(7400), sin_addr=inet_addr("239.255.0.1")}, 16) = 1'
    assert outside_loopback(line) == [line]
    assert outside_loopback(line.replace("239.255.0.1", "127.0.0.1")) == []


def test_dds_round_trip_stays_on_loopback(tmp_path):
    proc, trace = traced([os.path.join(BIN, "gf"), "doctor", "--only", "ros2"], tmp_path, 120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sendmsg(" in trace or "sendto(" in trace  # the trace did see the DDS traffic
    assert outside_loopback(trace) == []


@pytest.mark.slow
def test_simulated_evaluation_graph_stays_on_loopback(tmp_path):
    cmd = [os.path.join(BIN, "gf-launch"), "sim_eval", "policy:=oracle", "trials:=1", "protocols:=[Val]",
           f"output_dir:={tmp_path / 'eval'}"]
    proc, trace = traced(cmd, tmp_path, 600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "eval" / "results.jsonl").exists()
    assert outside_loopback(trace) == []
