# GrinningFace workspace. `make eval` and `make test` are the README's two commands.
VENV ?= .venv
ARGS ?=
TRIALS ?= 20
OUT ?= outputs/baselines

# make mini RECIPE=baseline: the mini recipe without the scene probe
RECIPE ?= scene_probe
.PHONY: setup eval test test-fast lint lock clean mini

setup:            ## install system packages, .venv, ROS 2 wheels, gf_interfaces, workspace packages
	scripts/setup.sh

eval: setup       ## the main job: simulated GrinningFace evaluation of the oracle and chance baselines
	$(VENV)/bin/gf-launch sim_eval policy:=oracle trials:=$(TRIALS) output_dir:=$(OUT)/oracle $(ARGS)
	$(VENV)/bin/gf-launch sim_eval policy:=chance trials:=$(TRIALS) output_dir:=$(OUT)/chance $(ARGS)
	$(VENV)/bin/gf-report compare $(OUT)/oracle $(OUT)/chance --plot $(OUT)/comparison.png

mini: setup       ## a learned policy end to end on a CPU: demos -> training -> sweep -> 4-protocol evaluation -> report
	$(VENV)/bin/gf-mini run $(RECIPE) $(ARGS)

test: setup       ## every test, end-to-end ones included
	scripts/test.sh $(ARGS)

test-fast: setup  ## skip the slow end-to-end tests
	scripts/test.sh -m "not slow" $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src training

lock:             ## rewrite requirements/constraints.txt from the current .venv (not the ROS 2 tooling wheels: no PyPI)
	$(VENV)/bin/python -m pip freeze --exclude-editable | grep -vE '^(gf[-_]|[a-z_]+_msgs==|rclpy==|rcutils==|rosidl_|rmw_dds_common==|ament_cmake_test==|launch[a-z_]*==|ros2[a-z]*==|osrf[-_]pycommon==|composition_interfaces==)' \
	  | sed 's/^torch==.*/torch==2.13.0/' | sort -f > requirements/constraints.body
	{ head -2 requirements/constraints.txt; cat requirements/constraints.body; } > requirements/constraints.new
	mv requirements/constraints.new requirements/constraints.txt; rm requirements/constraints.body

clean:
	rm -rf .build $(VENV) .gf
