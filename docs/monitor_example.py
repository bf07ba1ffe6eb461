"""Runnable example of the Python API (executed by tests/test_checks.py).

Simulates one minute of a module with a silent chip, feeds it to a Monitor, and prints the
verdicts, the bad-channel list and the status changes the handlers saw.
"""

import tempfile
from pathlib import Path

from larpix_dqm.exporter import Monitor
from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, write_run

with tempfile.TemporaryDirectory() as tmp:  # the simulated run and the history, removed at the end
    workdir = Path(tmp)
    simulator = Simulator(
        Monitor(packaged_layout()).geometry, SimulationConfig(seed=1), Faults(silent_chips=[(1, 1, 11)])
    )
    (run,) = write_run(simulator, workdir, "raw", seconds=60, realtime=False, start_time=1_700_000_000)

    monitor = Monitor(packaged_layout(), window=60)
    changes = []
    monitor.add_status_handler(changes.append)
    monitor.add_metric_handler(lambda name, value, meta: name == "detector_status" and print("detector status", value))

    packets = monitor.add_file(run)
    evaluation = monitor.update()
    table = monitor.chip_table()
    print(f"{packets} packets, {len(table['chip_id'])} chips, detector status {evaluation.results.detector_status}")
    for change in changes:
        print(change)  # e.g. "chip 1-1-11: ok -> error (hit_rate_ratio, silent_fraction)"
    print("silent channels:", len(monitor.channels("silent")))
    monitor.export_history(workdir / "history.csv")
