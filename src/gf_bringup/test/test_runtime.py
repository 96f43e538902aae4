"""The runtime environment: loopback DDS profile, environment variables, asset resolution."""

import os
import xml.etree.ElementTree as ET

import pytest

from gf_bringup.runtime import configure_environment, node_environment, profile_path, random_domain_id

NS = {"d": "http://www.eprosima.com"}


def test_loopback_profile_binds_only_127_0_0_1_and_has_a_16_mib_shm_segment():
    root = ET.parse(profile_path("loopback")).getroot()
    addresses = [a.text for a in root.iter("{http://www.eprosima.com}address")]
    assert addresses and all(a == "127.0.0.1" for a in addresses)
    assert root.find(".//d:useBuiltinTransports", NS).text == "false"
    shm = [t for t in root.iter("{http://www.eprosima.com}transport_descriptor") if t.find("d:type", NS).text == "SHM"]
    assert int(shm[0].find("d:segment_size", NS).text) == 16 * 1024 * 1024
    assert not list(root.iter("{http://www.eprosima.com}metatrafficMulticastLocatorList"))


def test_configure_environment_forces_localhost_discovery_in_loopback_mode():
    env = configure_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(profile_path("loopback"))
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"


def test_robot_network_mode_is_one_switch():
    env = configure_environment({"GF_NETWORK": "robot"})
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(profile_path("robot"))
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    with pytest.raises(ValueError, match="unknown network mode"):
        configure_environment({"GF_NETWORK": "internet"})


def test_explicit_asset_dir_wins_and_default_points_at_the_resolved_assets():
    assert configure_environment({"MS_ASSET_DIR": "/somewhere"})["MS_ASSET_DIR"] == "/somewhere"
    assert "MS_ASSET_DIR" in os.environ  # set up for this session by conftest / set-up


def test_random_domain_ids_stay_in_the_safe_range():
    ids = {random_domain_id() for _ in range(200)}
    assert min(ids) >= 1 and max(ids) <= 101 and len(ids) > 20


def test_launch_files_add_only_what_the_user_left_unset():
    user = {
        "ROS_DOMAIN_ID": "42", "AMENT_PREFIX_PATH": "/ws/install/gf_eval:/opt/ros/jazzy",
        "FASTDDS_DEFAULT_PROFILES_FILE": "/home/me/my_profile.xml", "MS_ASSET_DIR": "/data/assets",
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "GF_NETWORK": "loopback", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }
    added = node_environment(user)
    assert not {"ROS_DOMAIN_ID", "FASTDDS_DEFAULT_PROFILES_FILE", "MS_ASSET_DIR", "GF_NETWORK"} & set(added)
    # the venv's ament index, when it has one, is appended: the sourced workspace keeps precedence
    prefixes = added.get("AMENT_PREFIX_PATH", user["AMENT_PREFIX_PATH"]).split(os.pathsep)
    assert prefixes[:2] == ["/ws/install/gf_eval", "/opt/ros/jazzy"]
    assert node_environment({})["FASTDDS_DEFAULT_PROFILES_FILE"] == str(profile_path("loopback"))


def test_loopback_mode_keeps_discovery_local_even_against_the_users_setting():
    assert node_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert node_environment({"ROS_DISTRO": "humble"})["ROS_LOCALHOST_ONLY"] == "1"  # Humble's older switch
    assert "ROS_LOCALHOST_ONLY" not in node_environment({"ROS_DISTRO": "jazzy"})
