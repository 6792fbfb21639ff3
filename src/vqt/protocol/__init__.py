"""The VTAB-1k protocol behind `vqt train` and `vqt sweep`, usable from Python (`run_train`, `run_sweep`).

The grid on train800 judged on val200, the chosen configuration on train800val200 with N seeds, tested at the
last epoch (docs/design.md §2). This package module imports nothing: its modules load on first use.
"""
