"""Build a real launch_ros LaunchDescription from a gf_bringup.graphs.Graph (ROS 2 installs)."""

from __future__ import annotations

from gf_bringup.graphs import Graph


def launch_description(graph: Graph):
    """DeclareLaunchArgument per graph argument; nodes are created once the arguments are known."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable, Shutdown
    from launch_ros.actions import Node

    from gf_bringup.keystore import keystore_variable
    from gf_bringup.runtime import SECURE_NETWORK, node_environment, package_file

    def create_nodes(context):
        values = graph.resolve_args({a.name: context.launch_configurations[a.name] for a in graph.args})
        graph.check_args(values)  # a wrong argument stops the launch in one line, before any node starts
        # The nodes inherit the launch's environment (a sourced workspace, the user's domain and
        # DDS profile); only the variables the workspace needs and the user left unset are added.
        keystore = keystore_variable(values.get("keystore", ""))
        added = {**keystore, **node_environment({**context.environment, **keystore}, network=values.get("network") or None)}
        actions = [SetEnvironmentVariable(k, v) for k, v in added.items()]
        secure = values.get("network") == SECURE_NETWORK
        for spec in graph.active_nodes(values):
            parameters = []
            if spec.params_file:
                parameters.append(str(package_file(spec.package, spec.params_file)))
            parameters.append(graph.node_parameters(spec, values))
            # The required node ending ends the graph; any other node ending on its own (a crash, an
            # OOM kill) ends it too, so that its work is never scored as the policy's failure.
            reason = "the evaluation ended" if spec.required else f"node {spec.name} exited: stopping the graph"
            actions.append(Node(
                package=spec.package, executable=spec.executable, name=spec.name, namespace=values["namespace"].strip("/"),
                output="screen", parameters=parameters, on_exit=Shutdown(reason=reason),
                ros_arguments=["--enclave", spec.enclave] if secure else None,
            ))
        return actions

    arguments = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description) for a in graph.args]
    return LaunchDescription([*arguments, OpaqueFunction(function=create_nodes)])
