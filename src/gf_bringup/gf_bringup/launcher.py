"""`gf-launch GRAPH [name:=value ...]`: start a graph of gf_bringup.graphs without ``ros2 launch``.

Nodes run as separate processes (default, like ``ros2 launch``: one console script each, output
prefixed with the node name) or composed in one process on one multi-threaded executor
(``--composed``: less start-up time and memory). The graph ends when its required node exits
(e.g. the eval node after the last trial); the exit code is that node's.

Unless ROS_DOMAIN_ID is set, each run gets a random domain of its own, so two runs on one machine
never talk to each other; the loopback-only DDS profile keeps everything on this machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from gf_bringup.domains import claim_domain
from gf_bringup.graphs import Graph, NodeSpec, load_graphs, load_object, params_file_key
from gf_bringup.keystore import keystore_variable
from gf_bringup.runtime import SECURE_NETWORK, configure_environment, console_script, package_file


def parse_assignments(items: list[str]) -> dict[str, str]:
    """['policy:=oracle', 'trials:=5'] -> {'policy': 'oracle', 'trials': '5'}."""
    out = {}
    for item in items:
        if ":=" not in item:
            raise ValueError(f"expected name:=value, got {item!r}")
        name, value = item.split(":=", 1)
        out[name] = value
    return out


def node_ros_args(graph: Graph, node: NodeSpec, values: dict[str, str], workdir: Path) -> list[str]:
    """The ``--ros-args`` a node gets: its package params file, then the graph's parameters."""
    args = ["--ros-args", "-r", f"__node:={node.name}"]
    if values.get("namespace"):
        args += ["-r", f"__ns:=/{values['namespace'].strip('/')}"]
    if values.get("network") == SECURE_NETWORK:
        args += ["--enclave", node.enclave]
    if node.params_file:
        args += ["--params-file", str(package_file(node.package, node.params_file))]
    params = graph.node_parameters(node, values)
    if params:
        path = workdir / f"{node.name}.params.yaml"
        path.write_text(yaml.safe_dump({params_file_key(node.name): {"ros__parameters": params}}, sort_keys=True), encoding="utf-8")
        args += ["--params-file", str(path)]
    return args


def companion_command(graph: Graph, values: dict[str, str]) -> str:
    """The command that joins a running graph from another terminal: same domain and network,
    same namespace (a graph started here is on a ROS domain of its own)."""
    exe = console_script(graph.companion)
    env = f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}"
    if os.environ.get("GF_NETWORK", "loopback") != "loopback":
        env += f" GF_NETWORK={os.environ['GF_NETWORK']}"
    namespace = values.get("namespace", "").strip("/")
    return f"{env} {exe}" + (f" --ros-args -r __ns:=/{namespace}" if namespace else "")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the starter dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _pump(prefix: str, stream, sink) -> None:
    for line in iter(stream.readline, ""):
        sink.write(f"[{prefix}] {line}" if not line.startswith("\n") else line)
        sink.flush()


def run_processes(graph: Graph, values: dict[str, str], workdir: Path) -> int:
    """Each node in its own process; returns the exit code of the required node (130 after Ctrl-C,
    that of another node that ended on its own, or 128 + its signal)."""
    import shutil

    procs: dict[str, subprocess.Popen] = {}
    required = None
    for node in graph.active_nodes(values):
        exe = shutil.which(node.executable) or str(Path(sys.executable).parent / node.executable)
        cmd = [exe, *node_ros_args(graph, node, values, workdir)]
        # Own process group (so Ctrl-C reaches each node once, from us) and no orphans.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True, preexec_fn=_die_with_parent)
        procs[node.name] = proc
        threading.Thread(target=_pump, args=(node.name, proc.stdout, sys.stdout), daemon=True).start()
        if node.required:
            required = node.name
    interrupted = False
    dead: tuple[str, int] | None = None

    def _stop(signum, frame):  # noqa: ARG001
        nonlocal interrupted
        interrupted = True

    old = signal.signal(signal.SIGINT, _stop), signal.signal(signal.SIGTERM, _stop)
    try:
        while not interrupted:
            if required and procs[required].poll() is not None:
                break
            # Any other node ending on its own (a crash, an OOM kill, a policy that cannot start)
            # ends the graph at once: its work would otherwise be scored as the policy's failure.
            dead = next(((name, p.returncode) for name, p in procs.items() if name != required and p.poll() is not None), None)
            if dead is not None:
                print(f"[gf-launch] node {dead[0]} exited with code {dead[1]}: stopping the graph "
                      "(the same command resumes an evaluation where it stopped)", flush=True)
                break
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
        _terminate(procs)
    if interrupted:
        return 130
    if dead is not None:
        return _exit_status(dead[1]) or 1
    if required is None:
        return 0
    code = procs[required].returncode
    return _exit_status(code) if code is not None else 1


def _exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _terminate(procs: dict[str, subprocess.Popen], grace: float = 5.0) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_composed(graph: Graph, values: dict[str, str], workdir: Path) -> int:
    """All nodes in this process on one multi-threaded executor; returns the required node's code."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from gf_bringup.rosutil import multi_threaded_executor

    # Not sys.argv: rcl would read the graph's name:=value arguments as (deprecated) remap rules
    # for every node and warn about each; the nodes get their own arguments as cli_args.
    rclpy.init(args=sys.argv[:1])
    nodes, required = [], None
    # Two threads: more only adds GIL contention (measured with rclpy's own executor: 4 threads
    # made lock-step trials 10x slower).
    executor = multi_threaded_executor(2)
    try:
        for spec in graph.active_nodes(values):
            cls = load_object(spec.node_class)
            node = cls(cli_args=node_ros_args(graph, spec, values, workdir))
            nodes.append(node)
            executor.add_node(node)
            if spec.required:
                required = node
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
    finally:
        for node in nodes:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return int(getattr(required, "exit_code", 0)) if required is not None else 0


def main(argv: list[str] | None = None) -> int:
    graphs = load_graphs()
    parser = argparse.ArgumentParser(
        prog="gf-launch", description=__doc__.split("\n\n")[0],
        epilog="graphs: " + "; ".join(f"{g.name}: {g.description}" for g in graphs.values()),
    )
    parser.add_argument("graph", choices=sorted(graphs), help="graph to start")
    parser.add_argument("assignments", nargs="*", help="launch arguments as name:=value")
    parser.add_argument("--composed", action="store_true", help="run every node in this process")
    parser.add_argument("--show-args", action="store_true", help="print the graph's arguments and exit")
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the node commands and exit")
    # Intermixed: options may come anywhere (`gf-launch sim_eval --composed policy:=oracle`).
    args = parser.parse_intermixed_args(argv)
    graph = graphs[args.graph]
    if args.show_args:
        for a in graph.args:
            print(f"  {a.name}:={a.default!s:<18} {a.description}")
        return 0
    try:
        values = graph.resolve_args(parse_assignments(args.assignments))
        graph.check_args(values)
        if args.composed and values.get("network") == SECURE_NETWORK:
            raise ValueError(f"--composed cannot run network:={SECURE_NETWORK}: one process is one enclave")
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.update(keystore_variable(values.get("keystore", "")))
    try:
        configure_environment(network=values.get("network") or None)
    except ValueError as exc:  # robot-secure where it cannot run: one line, before any node starts
        print(f"gf-launch: cannot start {graph.name}: {exc}", file=sys.stderr, flush=True)
        return 2
    if not os.environ.get("ROS_DOMAIN_ID"):
        # A random domain nobody on this machine uses: two lock-step graphs must never meet. Its
        # lock is held until this process exits.
        domain, _lock = claim_domain()
        os.environ["ROS_DOMAIN_ID"] = str(domain)
    print(f"[gf-launch] {graph.name}: ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, network={os.environ['GF_NETWORK']}, "
          f"{'composed' if args.composed else 'processes'}", flush=True)
    if graph.companion:
        print(f"[gf-launch] in another terminal: {companion_command(graph, values)}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"gf-launch-{graph.name}-") as tmp:
        workdir = Path(tmp)
        if args.print_only:
            for node in graph.active_nodes(values):
                print(node.executable, " ".join(node_ros_args(graph, node, values, workdir)))
                for path in workdir.glob(f"{node.name}.params.yaml"):
                    print("  " + path.read_text().replace("\n", "\n  "))
            return 0
        if args.composed:
            return run_composed(graph, values, workdir)
        return run_processes(graph, values, workdir)
