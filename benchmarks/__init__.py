"""msresnet's benchmarks: the scale benchmark's plan and runs, its one publishing pipeline (run records ->
``results/summary.csv`` -> every page), and the speed, data and cost measurements.

Run them as modules from the repository root (``python -m benchmarks.scale_bench --quick``); they need the
``bench`` extra (pandas) beside the library.
"""
