"""Shared pytest setup: the GPU skip, and how tests are spread over workers.

`make test` runs the suite on three pytest-xdist workers (`--dist loadgroup`). Every test file stays on
one worker (its module fixtures are built once), every test that talks to the local Slurm runs on the
same worker (one daemon, one queue), and the longest groups are handed out first.
"""

import os
import signal
from pathlib import Path

# One thread per process: three workers on two cores, each with its own ranks and subprocesses (which
# inherit this); more threads only make OpenMP spin against the other workers. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Transparent huge pages for malloc's large blocks (glibc >= 2.35; older ones ignore the tunable), in
# every process the tests start: a full-vocabulary step allocates and frees logits of ~100 MB, each
# time faulted in afresh 4 KiB at a time (tiny recipe, 6 steps: 2.87M -> 0.12M page faults, system time
# 7.1 s -> 3.9 s, wall 18.8 s -> 15.6 s, the same peak memory). `make test` sets it for pytest too.
if "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The longest test groups, longest first (seconds on this 2-core machine, from `--durations=0`): they
# start first, so that no worker is left running one of them alone at the end. The Slurm group mostly
# waits on the scheduler. The other groups follow in file order. Only the order depends on this list.
LONGEST_GROUPS = {
    "slurm": 201,
    "tests/vq/test_vq_train.py": 119,
    "tests/distributed/test_engine_cli.py": 130,
    "tests/bench/test_bench_scripts.py": 106,
    "tests/distributed/test_convert_cli.py": 99,
    "tests/distributed/test_context_parallel.py": 89,
    "tests/distributed/test_checkpoint_resume.py": 66,
    "tests/distributed/test_checkpoint_reshard.py": 54,
    "tests/preprocess/test_preprocess_tool.py": 52,
    "tests/distributed/test_optimizer_state.py": 35,
}


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: hand out the groups in collection order
        config.option.loadscopereorder = False


def _group_of(item) -> str:
    return "slurm" if item.get_closest_marker("slurm") is not None else item.nodeid.split("::")[0]


@pytest.hookimpl(wrapper=True)  # a wrapper runs before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_group_of(item)))
    # pytest-xdist hands out groups in this order (pytest_configure)
    items.sort(key=lambda item: -LONGEST_GROUPS.get(_group_of(item), 0))
    yield
    if config.getoption("loadgroup", default=False) and items and "@" not in items[0].nodeid:
        # pytest-xdist tags each node id with its group; without the tag, groups are silently spread
        # over workers and two Slurm tests queue behind each other's whole-node jobs.
        raise pytest.UsageError("pytest-xdist did not apply the test groups (pytest and pytest-xdist versions "
                                "do not match: see the pytest pin in setup.py)")
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the lent GPU machine with -m gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any keyword (a folder named gpu)
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _close_idle_rank_pools():
    """After each test, close the rank pools this worker keeps (tests/distributed/launcher.py) while
    memory runs short: the other worker may need it."""
    yield
    from tests.distributed.launcher import close_idle_pools_if_memory_is_short

    close_idle_pools_if_memory_is_short()


@pytest.fixture(autouse=True)
def _reap_orphans(request):
    """After each test, kill what its processes left behind: megatron-core's checkpoint writer
    processes outlive a rank that a test SIGKILLs mid-save (they wait forever on the dead parent)."""
    yield
    marker = f"PYTEST_CURRENT_TEST={request.node.nodeid} ".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if proc.joinpath("stat").read_text().split()[3] != "1":  # orphans only (parent pid 1)
                continue
            if marker in proc.joinpath("environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, IndexError):
            continue
